"""Kimi Delta Attention's recurrence in plain torch: a chunked form for prefill and a
one-token update for decode, both in float32 (the state sums every token it has seen, so
rounding it to bfloat16 would drift), equal to transformers' `chunk_kimi_delta_attention`
and `recurrent_kimi_delta_attention`.

Per head, the state S [k_dim, v_dim] maps keys to values. Each token decays S channel by
channel (exp(g), g <= 0 per key channel: KDA's difference from Gated DeltaNet, whose decay
is one number per head), then writes v where S reads k back with strength beta (the delta
rule), and the token's output is q read through S:
    S = diag(exp(g)) S;  S += beta * k (v - k^T S);  o = q^T S.

The chunked form computes the same thing 64 tokens at a time (WY representation): within a
chunk the writes depend on each other through a unit lower-triangular system, solved once;
across chunks only S is carried. Pairwise decays inside a chunk, exp(g_i - g_j) per
channel, are never formed for the whole chunk as [64, 64, k_dim]: blocks below the
diagonal factor through a reference row between i and j (both factors at most 1, so
nothing overflows however strong the decay), and only the 8 x 8 blocks on the diagonal
are formed channel by channel (blocks of 4, 8, 16 and 32 rows tried, 8 ran fastest: 0.3 to
0.45 s for 1,024 tokens of 32 heads of 128 on one or two cores of a shared Xeon). The
decays are shared by the two products that need them (k with k, q with k)."""

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64  # transformers' and flash-linear-attention's
SUB_CHUNK = 8  # rows of the diagonal blocks whose decays are formed channel by channel
# Those decays for a group of chunks at most: 64 MB of float32, however long the prompt.
DECAY_ELEMENTS = 1 << 24
L2_EPS = 1e-6


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dimension, as flash-linear-attention (and
    transformers after it) normalise q and k: eps inside the root, not F.normalize's max."""
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True) + L2_EPS)


def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's tokens. q, k [tokens, heads, k_dim] (not yet normalised); v [tokens,
    heads, v_dim]; g [tokens, heads, k_dim] log decays; beta [tokens, heads]; state [heads,
    k_dim, v_dim] or None (zeros). Returns the outputs [tokens, heads, v_dim] and the final
    state, both float32."""
    tokens, heads, k_dim = k.shape
    q = l2_normalize(q.float()) * k_dim**-0.5
    k = l2_normalize(k.float())
    # [heads, chunks, chunk, dim], padded with tokens that write nothing and do not decay.
    q, k, v, g = (_chunked(x.float(), chunk_size) for x in (q, k, v, g))
    beta = _chunked(beta.float()[..., None], chunk_size)
    g = g.cumsum(dim=-2)  # decay from the chunk's start through each token
    state = k.new_zeros(heads, k_dim, v.shape[-1]) if state is None else state.float()
    out = torch.empty_like(v)
    # Some chunks at a time: their diagonal blocks' decays stay within DECAY_ELEMENTS.
    group = max(1, DECAY_ELEMENTS // (heads * chunk_size * SUB_CHUNK * k_dim))
    for first in range(0, k.shape[1], group):
        part = slice(first, first + group)
        out[:, part], state = _chunk_group(
            q[:, part], k[:, part], v[:, part], g[:, part], beta[:, part], state
        )
    return out.flatten(1, 2)[:, :tokens].transpose(0, 1), state


def _chunk_group(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive chunks, [heads, chunks, chunk, dim] each (g cumulative within each
    chunk, beta [..., 1]), after `state`: their outputs and the state after them."""
    k_beta = k * beta
    # The writes of a chunk: (I + L) W = [k*beta*exp(g), v*beta], L the strictly lower
    # triangle of beta_i k_i . k_j decayed from j to i.
    lower, scores = decayed_dots((k_beta, q), k, g)
    lower = lower.tril(-1)
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    writes = torch.linalg.solve_triangular(
        lower + eye, torch.cat((k_beta * g.exp(), v * beta), dim=-1), upper=False
    )
    w, u = writes.split([k.shape[-1], v.shape[-1]], dim=-1)
    out = torch.empty_like(u)
    for c in range(k.shape[1]):
        g_c, g_last = g[:, c], g[:, c, -1:]
        new_values = u[:, c] - w[:, c] @ state
        out[:, c] = (q[:, c] * g_c.exp()) @ state + scores[:, c] @ new_values
        state = state * g_last.exp().transpose(-1, -2) + (
            (k[:, c] * (g_last - g_c).exp()).transpose(-1, -2) @ new_values
        )
    return out, state


def _chunked(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[tokens, heads, dim] -> [heads, chunks, chunk_size, dim], zero-padded."""
    x = F.pad(x, (0, 0, 0, 0, 0, -x.shape[0] % chunk_size))
    return x.transpose(0, 1).unflatten(1, (-1, chunk_size))


def decayed_dots(
    lefts: tuple[torch.Tensor, ...], b: torch.Tensor, g: torch.Tensor
) -> list[torch.Tensor]:
    """For each a of `lefts`: [..., i, j] = sum over channels of a_i b_j exp(g_i - g_j) for
    j <= i, else 0. a, b, g [..., chunk, dim]; g non-increasing along the chunk (cumulative
    log decays). The decays are computed once for all of `lefts`."""
    size = g.shape[-2]
    outs = [a.new_zeros(*a.shape[:-1], size) for a in lefts]
    for start in range(0, size, SUB_CHUNK):
        rows = slice(start, start + SUB_CHUNK)
        g_rows = g[..., rows, :]
        if start:
            # Through row `start`: exp(g_i - g_start) and exp(g_start - g_j) are both <= 1.
            reference = g[..., start : start + 1, :]
            down = (g_rows - reference).exp()
            right = (b[..., :start, :] * (reference - g[..., :start, :]).exp()).transpose(-1, -2)
            for a, out in zip(lefts, outs, strict=True):
                out[..., rows, :start] = (a[..., rows, :] * down) @ right
        # Above the diagonal (j > i) exp(g_i - g_j) may overflow: those sums are dropped.
        decayed_b = (g_rows[..., :, None, :] - g_rows[..., None, :, :]).exp() * b[
            ..., None, rows, :
        ]
        for a, out in zip(lefts, outs, strict=True):
            out[..., rows, rows] = torch.einsum(
                "...ik,...ijk->...ij", a[..., rows, :], decayed_b
            ).tril()
    return outs


def recurrent_kda_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
) -> torch.Tensor:
    """One token of each of a batch of sequences. q, k, g [seqs, heads, k_dim]; v [seqs,
    heads, v_dim]; beta [seqs, heads]; state [seqs, heads, k_dim, v_dim] float32, updated
    in place. Returns the outputs [seqs, heads, v_dim], float32."""
    k_dim = k.shape[-1]
    q = (l2_normalize(q.float()) * k_dim**-0.5)[..., None, :]
    k = l2_normalize(k.float())[..., None, :]
    state.mul_(g.float().exp()[..., None])
    remembered = k @ state  # what S reads back for k: [seqs, heads, 1, v_dim]
    delta = (v.float()[..., None, :] - remembered) * beta.float()[..., None, None]
    state.add_(k.transpose(-1, -2) @ delta)
    return (q @ state).squeeze(-2)
