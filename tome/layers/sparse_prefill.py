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

from dataclasses import dataclass

import torch

from tome.errors import InvalidRequestError


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
    group = heads // keys.shape[1]
    k = keys[0].repeat_interleave(group, 0)  # [heads, n, d]: one key set per query head
    v = values[0].repeat_interleave(group, 0)
    q = query[0]
    first_position = context - num_queries
    columns, distances = _estimate_pattern(q, k, scale, first_position, config)
    out = torch.empty_like(q)
    for start in range(0, num_queries, config.query_block):
        end = min(start + config.query_block, num_queries)
        rows = torch.arange(first_position + start, first_position + end, device=q.device)
        out[:, start:end] = _attend_block(q[:, start:end], k, v, rows, columns, distances, scale)
    return out[None]


def _estimate_pattern(
    q: torch.Tensor, k: torch.Tensor, scale: float, first_position: int, config: SparsePrefillConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head: which key columns ([heads, n] bool) and which distances ([heads, n] bool,
    indexed by query position - key position) to keep, from the last queries' attention."""
    heads, num_queries, _ = q.shape
    context, device = k.shape[1], q.device
    last = min(config.last_queries, num_queries)
    end = first_position + num_queries
    positions = torch.arange(end - last, end, device=device)
    keys_at = torch.arange(context, device=device)
    distance = positions[:, None] - keys_at[None, :]  # [last, n]
    visible = distance >= 0
    scores = torch.einsum("hqd,hkd->hqk", q[:, -last:].float(), k.float()) * scale
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    column_score = probs.sum(1)
    column_score[:, : config.sink] = float("inf")
    distance_score = torch.zeros(heads, context, device=device).scatter_add_(
        1, distance.clamp(min=0).expand(heads, -1, -1).reshape(heads, -1), probs.reshape(heads, -1)
    )
    distance_score[:, : config.local] = float("inf")
    return (
        _top_mask(column_score, config.vertical + config.sink),
        _top_mask(distance_score, config.slash + config.local),
    )


def _top_mask(score: torch.Tensor, count: int) -> torch.Tensor:
    top = score.topk(min(count, score.shape[1]), dim=1).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, top, True)


def _attend_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor,
    columns: torch.Tensor,
    distances: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [heads, b, d] at positions `rows`: attention over exactly the kept keys."""
    heads = q.shape[0]
    seen = int(rows[-1]) + 1
    candidates = columns[:, :seen] | _distance_cover(distances, int(rows[0]), seen)
    # Kept key positions per head, padded with `seen` (an index no row may attend to).
    key_positions = torch.arange(seen, device=q.device)
    order = torch.where(candidates, key_positions, seen).sort(dim=1).values
    keep = order[:, : int(candidates.sum(1).max())]  # [heads, c]
    padded = keep.clamp(max=seen - 1)
    k_kept = k.gather(1, padded[..., None].expand(-1, -1, k.shape[2]))
    v_kept = v.gather(1, padded[..., None].expand(-1, -1, v.shape[2]))
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
