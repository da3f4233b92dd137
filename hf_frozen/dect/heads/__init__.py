"""DecT's output-side heads, trained on the cached features in seconds, behind one interface (`base.Head`): the
prompt alone, the paper's prototype decoder and a linear head. `HEADS` names them as `DecTConfig.head` and the
record do."""

from .base import Candidate, DecTOutput, Head, with_prompt
from .linear import LinearHead, fit_linear_head
from .prompt_only import PromptOnlyHead
from .prototype import DecTHead, train_head, train_heads_together
from .statistics import FEATURE_SCALINGS, feature_statistics, shrunk_scale, wants_standardization

HEADS: dict[str, type[Head]] = {head.kind: head for head in (PromptOnlyHead, DecTHead, LinearHead)}

__all__ = [
    "FEATURE_SCALINGS",
    "HEADS",
    "Candidate",
    "DecTHead",
    "DecTOutput",
    "Head",
    "LinearHead",
    "PromptOnlyHead",
    "feature_statistics",
    "fit_linear_head",
    "shrunk_scale",
    "train_head",
    "train_heads_together",
    "wants_standardization",
    "with_prompt",
]
