"""Prompt logprobs: the log-probability of each prompt token given the tokens before it.

Computed from a prefill chunk's hidden states a bounded number of rows at a time, so a long
prompt never materializes a prompt x vocabulary tensor of logits."""

from collections.abc import Callable

import torch

from tome.engine.outputs import TokenLogprob

ROWS_PER_SLICE = 512


def prompt_logprobs(
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: list[int],
    top_n: int,
) -> list[TokenLogprob]:
    """Row i of `hidden` predicts `targets[i]`: its logprob, and the top_n likeliest tokens
    with theirs (none when top_n is 0)."""
    result: list[TokenLogprob] = []
    target_tensor = torch.tensor(targets, dtype=torch.long, device=hidden.device)
    for start in range(0, len(targets), ROWS_PER_SLICE):
        rows = slice(start, start + ROWS_PER_SLICE)
        logprobs = compute_logits(hidden[rows]).float().log_softmax(dim=-1)
        chosen = logprobs.gather(1, target_tensor[rows].unsqueeze(1)).squeeze(1).tolist()
        if top_n > 0:
            top = logprobs.topk(top_n, dim=-1)  # sorted, best first
            alternatives = [
                dict(zip(ids, values, strict=True))
                for ids, values in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            ]
        else:
            alternatives = [{} for _ in chosen]
        result.extend(
            TokenLogprob(token_id, logprob, top)
            for token_id, logprob, top in zip(targets[rows], chosen, alternatives, strict=True)
        )
    return result
