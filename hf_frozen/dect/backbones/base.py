"""What every DecT backbone offers: a batch of (text, text pair) inputs in, hidden states and label-word scores out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..prompt import PromptTemplate


class Backbone(Protocol):
    kind: str
    fingerprint: str  # weights, vocabulary and chat template (or a callable's name)
    settings_fingerprint: str  # the model config and tokenizer pipeline ("" for a callable)

    def query(self, inputs: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, np.ndarray | None]:
        """(hidden (N, d), label-word scores (N, C) or None) for a batch of (text, text_pair)."""
        ...


def check_answer_comes_last(prompt: PromptTemplate, what: str) -> None:
    """Prompts cut at the answer slot (causal LMs, APIs) would lose the text if the slot came before it."""
    if not prompt.answer_comes_last():
        raise ValueError(
            f"`template` {prompt.template!r} puts {{answer}} before the text, but {what} reads the answer after the "
            "prompt, which is cut at {answer}: every prompt would lose its text. Put {answer} last, e.g. "
            "'{text} It was {answer}'."
        )
