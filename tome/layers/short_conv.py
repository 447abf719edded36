"""The short causal convolution of linear-attention layers (KDA, Gated DeltaNet, Mamba):
depthwise over time, a few taps per channel, then SiLU. Its state per sequence is the last
taps - 1 inputs, so a prompt prefilled in chunks, or a token decoded after it, sees
exactly the inputs one pass over the whole sequence would have seen."""

import torch
import torch.nn.functional as F
from torch import nn


class ShortConvolution(nn.Module):
    """weight [channels, 1, taps], as checkpoints store nn.Conv1d's depthwise weight."""

    def __init__(self, channels: int, taps: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, taps), requires_grad=False)

    @property
    def state_width(self) -> int:
        """Inputs a sequence's state keeps: taps - 1."""
        return self.weight.shape[-1] - 1

    def forward_chunk(
        self, x: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sequence's tokens x [tokens, channels], after the inputs kept in `state`
        [channels, taps - 1] (None: the sequence starts here, zeros before it). Returns
        silu(conv) [tokens, channels] in x's dtype and the new state."""
        channels = x.shape[1]
        if state is None:
            state = x.new_zeros(channels, self.state_width)
        inputs = torch.cat((state.to(x.dtype), x.T), dim=1)
        out = F.conv1d(inputs[None].to(self.weight.dtype), self.weight, groups=channels)[0]
        return F.silu(out).T.to(x.dtype), inputs[:, -self.state_width :]

    def forward_step(self, x: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """One token for each of a batch of sequences: x [seqs, channels], states [seqs,
        channels, taps - 1], updated in place. Returns silu(conv) [seqs, channels]."""
        window = torch.cat((states, x[..., None].to(states.dtype)), dim=-1)
        states.copy_(window[..., 1:])
        out = (window.to(self.weight.dtype) * self.weight[:, 0]).sum(dim=-1)
        return F.silu(out).to(x.dtype)
