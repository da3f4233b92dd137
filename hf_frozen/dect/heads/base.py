"""What every DecT head is: one interface for the prompt alone, the prototype decoder and the linear head.

A head reads the cached features (`hidden`, (N, d), from the backbone or a second feature model) and the prompt's
zero-shot scores (`scores`, (N, C), or None without label-word scores), and gives class logits. Each head type
implements the same five things, so that selection, fitting, the Trainer path, saving and the model card never
switch on a head's name:

- `candidates(config, weights, steps)`: the settings cross-validation tries for this type;
- `cross_validate(...)`: the out-of-fold logits of every candidate, all folds at once;
- `build(hidden_size, config, settings)` and `fit(hidden, scores, labels, config)`: one head, trained on the cache;
- `forward(hidden, scores, labels)`: the logits (and the loss with labels), as a Trainer calls it;
- `settings()` (what the record keeps) and `describe(config)` (a line of the model card).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

if TYPE_CHECKING:
    from ..config import DecTConfig

Folds = Sequence[tuple[torch.Tensor, torch.Tensor]]  # (training rows, held-out rows) per fold


@dataclass
class DecTOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def with_prompt(
    logits: torch.Tensor, weight: torch.Tensor, zero_shot_scores: torch.Tensor | None, labels: torch.Tensor | None
) -> DecTOutput:
    """A head's logits plus the weighted zero-shot scores (every head mixes the prompt in the same way), and the
    cross-entropy when `labels` are given."""
    if zero_shot_scores is not None:
        logits = logits + weight * zero_shot_scores.float()
    loss = F.cross_entropy(logits, labels) if labels is not None else None
    return DecTOutput(loss=loss, logits=logits)


@dataclass(frozen=True)
class Candidate:
    """One way to score that cross-validation tries: a head type and its settings (a sorted tuple of items, so
    that candidates hash and compare by value)."""

    head: type[Head]
    settings: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, head: type[Head], **settings: Any) -> Candidate:
        return cls(head, tuple(sorted(settings.items())))

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.settings).get(key, default)

    @property
    def name(self) -> str:
        """How `cv_results` names it, e.g. `"prompt_only"`, `"weight=1.0, steps=10"`, `"linear, C=0.1, ..."`."""
        return self.head.candidate_name(dict(self.settings))


class Head(nn.Module):
    """The interface every DecT head implements (see the module docstring). Subclasses set `kind`, the name a
    record and `DecTConfig.head` use, and `trained_by_steps`: whether a Trainer's optimizer steps train it (the
    prototype head), or it is solved once on the cache (the linear head) or has nothing to train (the prompt)."""

    kind: ClassVar[str]
    trained_by_steps: ClassVar[bool] = False
    # Where a head type stands among the candidates: lower is simpler, and wins a tie.
    simplicity: ClassVar[int]

    @classmethod
    def candidates(cls, config: DecTConfig, weights: list[float], steps: list[int]) -> list[Candidate]:
        raise NotImplementedError

    @classmethod
    def candidate_name(cls, settings: dict[str, Any]) -> str:
        raise NotImplementedError

    @classmethod
    def cross_validate(
        cls,
        hidden: torch.Tensor,
        prior: torch.Tensor,
        labels: torch.Tensor,
        folds: Folds,
        candidates: list[Candidate],
        config: DecTConfig,
    ) -> dict[Candidate, torch.Tensor]:
        """Each candidate's logits on every example (folds, N, C), row f fitted on fold f's training rows only.
        `prior` holds the zero-shot scores (zeros without label-word scores)."""
        raise NotImplementedError

    @classmethod
    def fallback(cls, candidates: list[Candidate]) -> Candidate:
        """The candidate to take when no fold can be held out (a class with a single example)."""
        return candidates[-1]

    @classmethod
    def build(cls, hidden_size: int, config: DecTConfig, settings: dict[str, Any]) -> Head:
        raise NotImplementedError

    def fit(self, hidden: torch.Tensor, scores: torch.Tensor | None, labels: torch.Tensor, config: DecTConfig) -> None:
        """Train this head on the cached features, as its settings say."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The record fields this head's settings fill (`DecTRecord`): zero-shot weight, steps, C, scaling."""
        raise NotImplementedError

    def describe(self, config: DecTConfig) -> str:
        """One line of the model card: what the head is and how it was set."""
        raise NotImplementedError
