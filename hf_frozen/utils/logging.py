"""hf-frozen's loggers and progress bars live in transformers' logging tree.

So the switches users already know govern hf-frozen's output too: `transformers.logging.set_verbosity_info()` (or
`TRANSFORMERS_VERBOSITY=info`) shows its INFO lines, `set_verbosity_error()` hides its warnings, its handlers and
`enable_propagation()` apply, and `transformers.utils.logging.disable_progress_bar()` (or
`HF_HUB_DISABLE_PROGRESS_BARS=1`) hides its progress bars.
"""

from __future__ import annotations

import logging

from transformers.utils import logging as hf_logging
from transformers.utils.logging import tqdm

__all__ = ["get_logger", "tqdm"]


def get_logger(name: str) -> logging.Logger:
    """The logger of an hf-frozen module, a child of transformers' library logger (`transformers.hf_frozen...`)."""
    return hf_logging.get_logger(f"transformers.{name}")
