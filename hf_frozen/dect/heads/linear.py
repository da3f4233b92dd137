"""The linear head: s_c(x) = w_c . std(h) + b_c + lambda * z_c, an L2-regularised logistic regression on the centred
and scaled features (per dimension, or by one scale for all: `FEATURE_SCALINGS`), with the prompt's scores as an
offset whose weight lambda it learns, trained to its minimum (`logistic.solve_logistic`).

Without label-word scores it is the linear probe a user would fit with scikit-learn on the same cache; with them it
corrects the prompt instead of replacing it. lambda is learned with W and b (under a weak penalty of its own,
`logistic.OFFSET_WEIGHT_C`), not picked from a grid:
one problem per (fold, C, scaling) instead of six, which is most of what brought the head choice at 64 shots x 20
classes from about a minute to seconds (bench/bench_head_choice.py). A fixed `DecTConfig.zero_shot_weight` is
used as given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..logistic import solve_logistic
from .base import Candidate, DecTOutput, Head, with_prompt
from .statistics import FEATURE_SCALINGS, feature_statistics


class LinearHead(Head):
    """A linear head (`kind = "linear"`): logits = W std(h) + b + lambda z, fitted by `fit_linear_head`.

    Args:
        hidden_size (`int`): size of the hidden states the head reads.
        num_classes (`int`): number of classes.
        regularization (`float`, defaults to `1.0`): inverse L2 strength C, as scikit-learn's
            `LogisticRegression(C=...)`: the loss is the summed cross-entropy plus ||W||^2 / (2C).
        scaling (`str`, defaults to `"per_dimension"`): how the centred features are scaled before the penalty,
            one of `FEATURE_SCALINGS`.
        zero_shot_weight (`float`, *optional*): a fixed weight of the prompt's scores; unset, `fit` learns it.
    """

    kind = "linear"
    simplicity = 2

    def __init__(self, hidden_size: int, num_classes: int, regularization: float = 1.0,
                 scaling: str = "per_dimension", zero_shot_weight: float | None = None) -> None:  # fmt: skip
        super().__init__()
        if scaling not in FEATURE_SCALINGS:
            raise ValueError(f"`scaling` must be one of {FEATURE_SCALINGS}, got {scaling!r}.")
        self.scaling = scaling
        self.learn_weight = zero_shot_weight is None
        self.regularization_setting = float(regularization)  # as given (the float32 buffer rounds 0.3)
        self.classifier = nn.Linear(hidden_size, num_classes)
        with torch.no_grad():  # the zero head: before fitting it predicts the prompt (or uniform) alone
            self.classifier.weight.zero_()
            self.classifier.bias.zero_()
        self.register_buffer("regularization", torch.tensor(float(regularization)))
        self.register_buffer("zero_shot_weight", torch.tensor(float(zero_shot_weight or 0.0)))
        self.register_buffer("feature_mean", torch.zeros(hidden_size))
        self.register_buffer("feature_scale", torch.ones(hidden_size))

    # -- the head interface (base.Head) ----------------------------------------------------------------------

    @classmethod
    def candidates(cls, config, weights: list[float], steps: list[int]) -> list[Candidate]:
        """Strongest regularisation first; the prompt's weight learned unless the config fixes it."""
        fixed = config.zero_shot_weight
        return [Candidate.of(cls, regularization=float(c), scaling=scaling, zero_shot_weight=fixed)
                for scaling in FEATURE_SCALINGS for c in sorted(set(config.regularization_candidates))]  # fmt: skip

    @classmethod
    def candidate_name(cls, settings: dict[str, Any]) -> str:
        weight = settings.get("zero_shot_weight")
        weight = "learned weight" if weight is None else f"weight={float(weight)}"
        return f"linear, {weight}, C={settings['regularization']}, {settings['scaling']} scaling"

    @classmethod
    def fallback(cls, candidates: list[Candidate]) -> Candidate:
        return candidates[0]  # the strongest regularisation

    @classmethod
    def cross_validate(cls, hidden, prior, labels, folds, candidates, config) -> dict[Candidate, torch.Tensor]:
        """Every candidate fitted on every fold's training part, as `fit` fits one (per-fold feature statistics,
        the prompt as an offset), in one batched `solve_logistic`: one feature group per (fold, scaling), shared
        by the candidates with that scaling."""
        hidden, prior = hidden.float(), prior.float()
        scalings = sorted({c.get("scaling") for c in candidates})
        per_scaling = {s: [c for c in candidates if c.get("scaling") == s] for s in scalings}
        if len({len(group) for group in per_scaling.values()}) > 1:
            raise ValueError("every feature scaling needs the same linear candidates")  # `candidates` builds them so
        fixed = candidates[0].get("zero_shot_weight")
        features, masks = [], []
        for train_idx, _ in folds:
            for scaling in scalings:
                mean, scale = feature_statistics(hidden[train_idx], scaling)
                features.append((hidden - mean) / scale)
                mask = torch.zeros(len(hidden), dtype=torch.bool)
                mask[train_idx] = True
                masks.append(mask)
        features = torch.stack(features)  # (folds x scalings, N, d)
        strengths = torch.tensor([[c.get("regularization") for c in per_scaling[s]] for s in scalings])
        strengths = strengths.repeat(len(folds), 1)  # (G, P)
        offsets = prior if fixed is None else fixed * prior
        offsets = offsets.expand(*strengths.shape, *prior.shape)
        learn = fixed is None and bool(prior.abs().sum() > 0)
        solved = solve_logistic(features, offsets, labels, prior.shape[1], strengths, in_training=torch.stack(masks),
                                learn_offset_weight=learn)  # fmt: skip
        lam = solved[2] if learn else torch.ones(strengths.shape)
        logits = torch.einsum("gnd,gpdc->gpnc", features, solved[0]) + solved[1].unsqueeze(2)
        logits = logits + lam.view(*lam.shape, 1, 1) * offsets  # (G, P, N, C)
        logits = logits.view(len(folds), len(scalings), *logits.shape[1:])
        return {c: logits[:, scalings.index(c.get("scaling")), per_scaling[c.get("scaling")].index(c)]
                for c in candidates}  # fmt: skip

    @classmethod
    def build(cls, hidden_size: int, config, settings: dict[str, Any]) -> LinearHead:
        return cls(hidden_size, config.num_classes, settings.get("regularization") or 1.0,
                   settings.get("scaling") or "per_dimension", settings.get("zero_shot_weight"))  # fmt: skip

    def fit(self, hidden, scores, labels, config) -> None:
        fit_linear_head(self, hidden, scores, labels)

    def settings(self) -> dict[str, Any]:
        return {"zero_shot_weight": float(self.zero_shot_weight), "steps": 0,
                "regularization": self.regularization_setting, "scaling": self.scaling}  # fmt: skip

    def describe(self, config) -> str:
        return (f"a linear head (regularised logistic regression, C = {float(self.regularization):g}, "
                f"{self.scaling} scaling), zero-shot weight {float(self.zero_shot_weight):.3g}")  # fmt: skip

    # -- the classifier --------------------------------------------------------------------------------------

    @torch.no_grad()
    def fit_statistics(self, hidden_states: torch.Tensor) -> None:
        """Centre h, then scale it as `self.scaling` says (`FEATURE_SCALINGS`)."""
        mean, scale = feature_statistics(hidden_states.float(), self.scaling)
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)

    def standardized(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """h with the fitted statistics applied: what the classifier reads."""
        return (hidden_states.float() - self.feature_mean) / self.feature_scale

    def forward(
        self,
        hidden_states: torch.Tensor,
        zero_shot_scores: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> DecTOutput:
        return with_prompt(self.classifier(self.standardized(hidden_states)), self.zero_shot_weight,
                           zero_shot_scores, labels)  # fmt: skip


def fit_linear_head(head: LinearHead, hidden: torch.Tensor, scores: torch.Tensor | None, labels: torch.Tensor) -> None:
    """Fit the statistics, then W, b (and lambda, unless fixed) to the minimum of the regularised loss."""
    head.fit_statistics(hidden)
    standardized = head.standardized(hidden)
    learn = head.learn_weight and scores is not None
    if scores is None:
        offset = 0.0
    else:
        offset = scores.float() if learn else head.zero_shot_weight * scores.float()
    solved = solve_logistic(standardized, offset, labels, head.classifier.out_features, float(head.regularization),
                            learn_offset_weight=learn)  # fmt: skip
    with torch.no_grad():
        head.classifier.weight.copy_(solved[0].T)
        head.classifier.bias.copy_(solved[1])
        if learn:
            head.zero_shot_weight.fill_(float(solved[2]))
    head.eval()
