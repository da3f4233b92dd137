"""The prompt alone: the zero-shot label-word scores, no trained head. Cross-validation's simplest candidate."""

from __future__ import annotations

from typing import Any

import torch

from .base import Candidate, DecTOutput, Head, with_prompt

NAME = "prompt_only"  # its key in `cv_results`


class PromptOnlyHead(Head):
    """Scores are the prompt's zero-shot scores, unchanged (`kind = "prompt"`). Nothing to train or save."""

    kind = "prompt"
    simplicity = 0

    @classmethod
    def candidates(cls, config, weights, steps) -> list[Candidate]:
        return [Candidate.of(cls)]

    @classmethod
    def candidate_name(cls, settings: dict[str, Any]) -> str:
        return NAME

    @classmethod
    def cross_validate(cls, hidden, prior, labels, folds, candidates, config) -> dict[Candidate, torch.Tensor]:
        return {candidates[0]: prior.float().expand(len(folds), -1, -1)}

    @classmethod
    def build(cls, hidden_size, config, settings) -> PromptOnlyHead:
        return cls()

    def fit(self, hidden, scores, labels, config) -> None:
        if scores is None:
            raise ValueError("The prompt-only head needs the prompt's label-word scores; this backbone gives none.")

    def forward(self, hidden_states: torch.Tensor, zero_shot_scores: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> DecTOutput:  # fmt: skip
        if zero_shot_scores is None:
            raise ValueError("The prompt-only head scores with the prompt's label-word scores, and got none.")
        return with_prompt(torch.zeros_like(zero_shot_scores, dtype=torch.float32), torch.tensor(1.0),
                           zero_shot_scores, labels)  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {"zero_shot_weight": None, "steps": 0}

    def describe(self, config) -> str:
        return "the prompt alone: its calibrated or raw label-word scores, no trained head"
