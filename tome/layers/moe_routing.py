"""DeepSeek's routers, as transformers computes them (float32 throughout), for the DeepSeek
and Kimi families: which k experts each token uses and with what weight.

- V2: softmax scores; top-k over all experts ("greedy"), or over the experts of the
  `topk_group` groups whose best expert scores highest ("group_limited_greedy").
- V3 (and Kimi-K2, Moonlight): sigmoid scores; experts are chosen on the scores plus
  `e_score_correction_bias` (the bias steers selection only), within the `topk_group`
  groups whose two best such scores sum highest; the chosen experts' plain scores,
  renormalised when `norm_topk_prob`.
Both scale the weights by `routed_scaling_factor`."""

import torch


def deepseek_v2_top_k(
    logits: torch.Tensor,
    k: int,
    method: str,
    n_group: int,
    topk_group: int,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [tokens, experts] float32 -> (weights, expert ids), each [tokens, k]."""
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    if method == "group_limited_greedy":
        group_best = scores.view(scores.shape[0], n_group, -1).amax(dim=-1)
        scores = scores.masked_fill(~_in_top_groups(group_best, topk_group, scores), 0.0)
    elif method != "greedy":
        raise ValueError(f"topk_method {method!r} is neither greedy nor group_limited_greedy")
    weights, ids = torch.topk(scores, k=k, dim=-1, sorted=False)
    return weights * scaling, ids


def deepseek_v3_top_k(
    logits: torch.Tensor,
    correction_bias: torch.Tensor,
    k: int,
    n_group: int,
    topk_group: int,
    renormalize: bool,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [tokens, experts] float32, correction_bias [experts] -> (weights, expert
    ids), each [tokens, k]."""
    scores = logits.sigmoid()
    for_choice = scores + correction_bias
    group_scores = for_choice.view(scores.shape[0], n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
    for_choice = for_choice.masked_fill(
        ~_in_top_groups(group_scores, topk_group, for_choice), float("-inf")
    )
    ids = torch.topk(for_choice, k=k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, ids


def _in_top_groups(
    group_scores: torch.Tensor, topk_group: int, scores: torch.Tensor
) -> torch.Tensor:
    """[tokens, experts] bool: whether each expert's group is among the token's topk_group
    best groups."""
    tokens, n_group = group_scores.shape
    chosen = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros(tokens, n_group, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, chosen, True)
    return mask[:, :, None].expand(tokens, n_group, scores.shape[1] // n_group).reshape_as(scores)
