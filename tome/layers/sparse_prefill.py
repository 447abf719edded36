"""Training-free sparse attention for long prefill chunks: the vertical-slash pattern of
MInference (Jiang et al., 2024).

In long prompts most heads attend to a few key columns seen by every query ("vertical":
attention sinks, headings, the question) and to a few fixed distances ("slash": the local
window and periodic structure). Both are estimated per head from the chunk's last queries,
whose attention over the whole context is computed exactly; every query then attends only
to the chosen columns and diagonals (its causal part). Attention cost falls from
queries x context to queries x (vertical + slash) per head, at the price of missing what
the last queries did not look at.

The pattern is applied exactly: a kept key is one in a chosen column, or one at a chosen
distance from its query. Work is done a block of query rows at a time over the union of
keys any row of the block keeps, so memory stays bounded by block x kept keys.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tome.errors import InvalidRequestError

# (kv_head, start, end) -> that KV head's keys at context positions start..end-1, [end - start, d]
KeyReader = Callable[[int, int, int], torch.Tensor]
# Scores of one slice in the pattern's estimation: 64 MB of float32, however long the context.
ESTIMATE_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class SparsePrefillConfig:
    """When and how sparsely a prefill chunk attends. Counts are per attention head."""

    min_context: int = 16384  # dense below this context length
    last_queries: int = 64  # the queries whose exact attention estimates the pattern
    vertical: int = 1024  # key columns kept
    slash: int = 1024  # query-key distances kept
    sink: int = 64  # the first keys, always kept
    local: int = 256  # distances 0..local-1, always kept
    query_block: int = 128  # query rows computed together

    def __post_init__(self) -> None:
        for name in ("min_context", "last_queries", "vertical", "slash", "local", "query_block"):
            if getattr(self, name) < 1:
                raise InvalidRequestError(f"sparse prefill: {name} must be at least 1")
        if self.sink < 0:
            raise InvalidRequestError("sparse prefill: sink cannot be negative")


def vertical_slash_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    config: SparsePrefillConfig,
) -> torch.Tensor:
    """query [1, heads, q, d] are the last q positions of a context whose keys and values
    are [1, kv_heads, n, d]. Returns [1, heads, q, d] in the query's dtype."""
    heads, num_queries, context = query.shape[1], query.shape[2], keys.shape[2]
    num_kv_heads = keys.shape[1]
    q = query[0]
    last = min(config.last_queries, num_queries)
    columns, distances = estimate_pattern(
        q[:, -last:],
        lambda kv_head, start, end: keys[0, kv_head, start:end],
        num_kv_heads,
        context,
        scale,
        config,
    )
    # Each query head reads its KV head's rows in place: no per-head copy of the context.
    kv_of_head = torch.arange(heads, device=q.device) // (heads // num_kv_heads)
    first_position = context - num_queries
    out = torch.empty_like(q)
    for start in range(0, num_queries, config.query_block):
        end = min(start + config.query_block, num_queries)
        rows = torch.arange(first_position + start, first_position + end, device=q.device)
        out[:, start:end] = _attend_block(
            q[:, start:end], keys[0], values[0], kv_of_head, rows, columns, distances, scale
        )
    return out[None]


def estimate_pattern(
    last_queries: torch.Tensor,
    read_keys: KeyReader,
    num_kv_heads: int,
    context: int,
    scale: float,
    config: SparsePrefillConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head: which key columns ([heads, n] bool) and which distances ([heads, n] bool,
    indexed by query position - key position) to keep, from the attention of the context's
    last queries ([heads, last, d], at positions n - last .. n - 1) over all n keys.

    One KV head's group at a time, over slices of the context of ESTIMATE_ELEMENTS scores
    at most: the softmax's log-sum-exp first, then the probabilities. Memory stays bounded
    whatever the context length, and no key is copied per query head."""
    heads, last, _ = last_queries.shape
    device = last_queries.device
    group = heads // num_kv_heads
    span = max(1, ESTIMATE_ELEMENTS // (group * last))
    slices = [(start, min(start + span, context)) for start in range(0, context, span)]
    positions = torch.arange(context - last, context, device=device)
    column_score = torch.empty(heads, context, device=device)
    distance_score = torch.zeros(heads, context, device=device)
    for kv_head in range(num_kv_heads):
        group_heads = slice(kv_head * group, (kv_head + 1) * group)
        q = last_queries[group_heads].float()
        log_sum = torch.full((group, last), float("-inf"), device=device)
        for start, end in slices:
            scores, _ = _scores(q, read_keys(kv_head, start, end), positions, start, scale)
            log_sum = torch.logaddexp(log_sum, scores.logsumexp(-1))
        for start, end in slices:
            scores, distance = _scores(q, read_keys(kv_head, start, end), positions, start, scale)
            probs = (scores - log_sum[..., None]).exp()
            column_score[group_heads, start:end] = probs.sum(1)
            index = distance.clamp(min=0).reshape(1, -1).expand(group, -1)
            distance_score[group_heads].scatter_add_(1, index, probs.reshape(group, -1))
    column_score[:, : config.sink] = float("inf")
    distance_score[:, : config.local] = float("inf")
    return (
        _top_mask(column_score, config.vertical + config.sink),
        _top_mask(distance_score, config.slash + config.local),
    )


def _scores(
    q: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor, start: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [group, last, s] of float32 queries [group, last, d] at `positions` against
    keys [s, d] from context position `start` on, -inf where causality hides a key; and
    the query-key distances [last, s]."""
    keys_at = torch.arange(start, start + keys.shape[0], device=q.device)
    distance = positions[:, None] - keys_at[None, :]
    scores = torch.einsum("hqd,kd->hqk", q, keys.float()) * scale
    return scores.masked_fill(distance < 0, float("-inf")), distance


def _top_mask(score: torch.Tensor, count: int) -> torch.Tensor:
    top = score.topk(min(count, score.shape[1]), dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)


def _attend_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_of_head: torch.Tensor,
    rows: torch.Tensor,
    columns: torch.Tensor,
    distances: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [heads, b, d] at positions `rows`, k and v [kv_heads, n, d], kv_of_head [heads]:
    attention over exactly the kept keys."""
    heads = q.shape[0]
    seen = int(rows[-1]) + 1
    candidates = columns[:, :seen] | _distance_cover(distances, int(rows[0]), seen)
    # Kept key positions per head, padded with `seen` (an index no row may attend to).
    key_positions = torch.arange(seen, device=q.device)
    order = torch.where(candidates, key_positions, seen).sort(dim=1).values
    keep = order[:, : int(candidates.sum(1).max())]  # [heads, c]
    padded = keep.clamp(max=seen - 1)
    k_kept = k[kv_of_head[:, None], padded]  # [heads, c, d]: only the kept keys are copied
    v_kept = v[kv_of_head[:, None], padded]
    distance = rows[None, :, None] - keep[:, None, :]  # [heads, b, c]
    kept_distance = distances.gather(1, distance.clamp(min=0).reshape(heads, -1)).view_as(distance)
    in_column = columns.gather(1, padded)[:, None, :]
    allowed = (distance >= 0) & (keep[:, None, :] < seen) & (in_column | kept_distance)
    scores = torch.einsum("hbd,hcd->hbc", q.float(), k_kept.float()) * scale
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("hbc,hcd->hbd", probs, v_kept.float()).to(q.dtype)


def _distance_cover(distances: torch.Tensor, first_row: int, seen: int) -> torch.Tensor:
    """[heads, seen] bool: keys that some row in first_row..seen-1 keeps by distance, i.e.
    key j with a kept distance in first_row - j .. seen - 1 - j."""
    counts = torch.nn.functional.pad(distances.cumsum(1), (1, 0))  # counts[:, o] = kept < o
    keys_at = torch.arange(seen, device=distances.device)
    low = (first_row - keys_at).clamp(min=0)
    high = seen - keys_at  # exclusive, at most n since seen <= n
    return (counts[:, high] - counts[:, low]) > 0
