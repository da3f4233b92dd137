"""A model behind an API that the user wraps in a Python function."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..config import DecTConfig
from ..prompt import PromptTemplate
from .base import check_answer_comes_last


class CallableBackbone:
    """A model behind an API: `fn(prompts, label_words) -> (hidden_states or None, label_word_scores or None)`.

    Prompts are the template rendered with `answer_placeholder` in the answer slot, or cut at the slot
    (causal style) when it is None. `name` identifies the model and its version in the cache key: change it
    whenever the service's model changes.
    """

    kind = "callable"

    def __init__(
        self, fn: Callable[..., Any], config: DecTConfig, name: str, answer_placeholder: str | None = None
    ) -> None:
        if not name:
            raise ValueError("A callable backbone needs `backbone_name=` (model and version) to key its cache.")
        self.fn = fn
        self.config = config
        self.prompt = PromptTemplate(config.template)
        self.answer_placeholder = answer_placeholder
        if answer_placeholder is None:
            check_answer_comes_last(self.prompt, "a callable backbone without `answer_placeholder`")
        self.fingerprint = hashlib.sha256(f"callable|{name}|{answer_placeholder}".encode()).hexdigest()
        self.settings_fingerprint = ""  # everything about the service is in `name`

    def render(self, text: str, text_pair: str | None) -> str:
        return self.prompt.render(text, text_pair, self.answer_placeholder)

    def query(self, inputs: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, np.ndarray | None]:
        prompts = [self.render(text, pair) for text, pair in inputs]
        result = self.fn(prompts, self.config.label_words)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError("The backbone callable must return a tuple (hidden_states, label_word_scores or None).")
        n, c = len(prompts), self.config.num_classes
        # No hidden states (an API with log-probabilities only) is valid beside a feature model, which gives them.
        hidden = np.zeros((n, 0), np.float32) if result[0] is None else np.asarray(result[0], dtype=np.float32)
        scores = None if result[1] is None else np.asarray(result[1], dtype=np.float32)
        if hidden.ndim != 2 or hidden.shape[0] != n:
            raise ValueError(
                f"The backbone callable returned hidden states of shape {hidden.shape}, expected ({n}, d)."
            )
        if scores is not None and scores.shape != (n, c):
            raise ValueError(f"The backbone callable returned scores of shape {scores.shape}, expected ({n}, {c}).")
        return hidden, scores
