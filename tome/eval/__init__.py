"""`tome eval`: long-context evaluation on tasks generated locally from a seed (passkey,
RULER-style needles, variable tracking, common words; English and Chinese), scored per
item and drawn as needle-in-a-haystack heatmaps."""

from tome.eval.config import EvalConfig
from tome.eval.items import EvalItem, ItemSpec
from tome.eval.runner import AnswerFn, ItemResult, run_grid
from tome.eval.scoring import score
from tome.eval.tasks import TASKS, generate_item
from tome.eval.token_counter import TokenCounter

__all__ = [
    "TASKS",
    "AnswerFn",
    "EvalConfig",
    "EvalItem",
    "ItemResult",
    "ItemSpec",
    "TokenCounter",
    "generate_item",
    "run_grid",
    "score",
]
