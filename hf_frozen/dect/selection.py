"""Choosing how DecT scores, on the training cache only: calibration, the zero-shot weight and the training steps.

`choose_head_settings` first decides whether to calibrate the prompt's label-word scores (`calibration_helps`:
a comparison that trains nothing), then picks the zero-shot weight and the number of steps together by
cross-validation (`cross_validate_head`), with "the prompt alone" among the choices. The heads of every fold and
weight train in one batched run (`train_heads_together`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch.nn import functional as F

from .config import DecTConfig
from .head import DecTHead, shrunk_scale, wants_standardization

# Weight value meaning "the prompt alone": stored as a flag, since JSON has no infinity.
PROMPT_ONLY = "prompt_only"

# (raw label-word scores (N, C), calibrate) -> zero-shot scores (N, C); see `DecTModel.zero_shot_scores`.
ZeroShotScorer = Callable[[torch.Tensor, bool], torch.Tensor]


@dataclass
class HeadChoice:
    """What `choose_head_settings` decided, and the cross-validation behind it."""

    zero_shot_weight: float | str  # a float (0 without label-word scores), or PROMPT_ONLY
    steps: int
    calibrate: bool | None  # None without label-word scores
    cv_results: dict[str, dict[str, float]] = field(default_factory=dict)  # per choice: held-out loss, accuracy


def choose_head_settings(
    hidden: torch.Tensor,
    raw_scores: torch.Tensor | None,
    labels: torch.Tensor,
    config: DecTConfig,
    zero_shot: ZeroShotScorer,
    template: DecTHead,
    steps: list[int] | None = None,
) -> HeadChoice:
    """Pick whether to calibrate (see `calibration_helps`), then the zero-shot weight and the number of steps
    (among `steps`, by default the configured ones) by cross-validation on the training cache.

    Args:
        zero_shot: turns raw label-word scores into zero-shot scores, calibrated or not.
        template: the untrained head every fold's head starts from.
    """
    if steps is None:
        steps = [config.steps] if config.steps is not None else config.steps_candidates
    if raw_scores is None:  # no label-word scores (a plain encoder): the head alone
        calibrate, scores, weights = None, None, [0.0]
    else:
        calibrate = calibration_helps(raw_scores, labels, zero_shot) if config.calibrate is None else config.calibrate
        scores = zero_shot(raw_scores, calibrate)
        weights = config.zero_shot_weight_candidates if config.zero_shot_weight is None else [config.zero_shot_weight]
    weight, chosen_steps, results = cross_validate_head(
        hidden, scores, labels, weights, steps, template, config.head_learning_rate, config.head_seed,
        include_prompt=config.zero_shot_weight is None,
    )  # fmt: skip
    return HeadChoice(weight, chosen_steps, calibrate, results)


def calibration_helps(raw_scores: torch.Tensor, labels: torch.Tensor, zero_shot: ZeroShotScorer) -> bool:
    """Whether the calibrated prompt alone is clearly better than the uncalibrated one on the training cache.

    Calibration against an empty input is a heuristic: it undoes a prompt's lean towards some label words,
    but measured here it cost SmolLM2 14 points of zero-shot accuracy on SMS spam and 0.5 on Rotten Tomatoes.
    So it is used only when the prompt's held-in cross-entropy with it beats that without it by more than
    one standard error, a comparison that trains nothing and so is far less noisy than cross-validating
    both (which, at 4 shots on SMS spam, kept the calibrated prompt for 2 of 5 seeds at 69% accuracy).
    """
    with_calibration = F.cross_entropy(zero_shot(raw_scores, True), labels, reduction="none")
    without = F.cross_entropy(zero_shot(raw_scores, False), labels, reduction="none")
    return clearly_worse(without, with_calibration)


def clearly_worse(losses: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether per-example `losses` exceed `reference`'s on the same examples by more than one standard error of
    their paired difference: the bar a less simple choice must clear before DecT prefers it."""
    gap = losses.float() - reference.float()
    if len(gap) < 2:
        return False  # one example tells nothing apart
    return bool(gap.mean() > gap.std() / len(gap) ** 0.5)


def choice_name(weight: float | str, steps: int) -> str:
    """How `cv_results` names a choice: `"prompt_only"`, or `"weight=1.0, steps=10"`."""
    return PROMPT_ONLY if weight == PROMPT_ONLY else f"weight={float(weight)}, steps={steps}"


def cross_validate_head(
    hidden: torch.Tensor,
    scores: torch.Tensor | None,
    labels: torch.Tensor,
    weights: list[float],
    steps: list[int],
    template: DecTHead,
    learning_rate: float,
    seed: int,
    folds: int = 4,
    include_prompt: bool = True,
) -> tuple[float | str, int, dict[str, dict[str, float]]]:
    """Pick the zero-shot weight and the number of steps on the training cache: held-out cross-entropy,
    one-standard-error rule.

    Every choice is scored by the cross-entropy of its predictions on held-out stratified folds, example by
    example. The choices, simplest first: the prompt alone (`PROMPT_ONLY`, with `scores` and `include_prompt`),
    then each weight from the largest (most prompt-like) down, each with its step counts from the fewest (closest
    to the initial head) up. The choice kept is the simplest one whose loss exceeds the best choice's by at most one
    standard error of their paired difference. With a few dozen examples, differences between choices are
    mostly noise (at 16 shots per class a fold holds 8 examples); the rule trusts the prompt, and a lightly
    trained head, unless the data clearly say otherwise. Measured on SmolLM2 / Rotten Tomatoes (bench/), it keeps
    DecT at or above the prompt where picking the best cross-validated accuracy fell below it; choosing the
    steps too (10 or 30) lifted MiniLM / Rotten Tomatoes at 64 shots from 2.2 points under a logistic-regression
    probe to 0.4 under (docs/dect.md).

    Every fold's head starts as a copy of the untrained `template`. With a single choice nothing is trained.
    With fewer than 2 examples in some class no fold can be held out: the prompt alone is kept, or, without
    the prompt, the smallest weight with the most steps.

    Returns:
        The chosen weight (a float, or `PROMPT_ONLY`), the chosen steps, and per choice (named by `choice_name`)
        its mean held-out loss and accuracy.
    """
    num_classes = template.prototypes.shape[0]
    y = labels.numpy()
    weights = sorted(set(map(float, weights)), reverse=True)
    steps = sorted(set(steps))
    prompt = scores is not None and include_prompt
    if int(np.bincount(y, minlength=num_classes).min()) < 2:
        return (PROMPT_ONLY if prompt else weights[-1]), steps[-1], {}
    choices: list[tuple[float | str, int]] = [(w, s) for w in weights for s in steps]
    if prompt:
        choices.insert(0, (PROMPT_ONLY, steps[-1]))
    if len(choices) == 1:
        return choices[0][0], choices[0][1], {}  # nothing to choose
    splitter = StratifiedKFold(n_splits=min(folds, int(np.bincount(y).min())), shuffle=True, random_state=seed)
    folds_idx = [(torch.from_numpy(t), torch.from_numpy(v)) for t, v in splitter.split(np.zeros(len(y)), y)]
    # One head per (fold, weight), all trained at once, read at every step count: same maths as training each
    # alone, a fraction of the time.
    in_training = torch.zeros(len(folds_idx) * len(weights), len(y), dtype=torch.bool)
    for f, (train_idx, _) in enumerate(folds_idx):
        in_training[f * len(weights) : (f + 1) * len(weights), train_idx] = True
    prior = torch.zeros(len(y), num_classes) if scores is None else scores
    fold_logits = train_heads_together(
        template, hidden, prior, labels, in_training, torch.tensor(weights * len(folds_idx)), steps, learning_rate
    )
    losses = {choice: torch.zeros(len(y)) for choice in choices}
    correct = {choice: torch.zeros(len(y)) for choice in choices}
    for f, (_, val_idx) in enumerate(folds_idx):
        for choice in choices:
            weight, n_steps = choice
            if weight == PROMPT_ONLY:
                logits = prior[val_idx]
            else:
                logits = fold_logits[n_steps][f * len(weights) + weights.index(weight), val_idx]
            losses[choice][val_idx] = F.cross_entropy(logits.float(), labels[val_idx], reduction="none")
            correct[choice][val_idx] = (logits.argmax(1) == labels[val_idx]).float()
    best = min(choices, key=lambda c: losses[c].mean().item())
    chosen = next(c for c in choices if not clearly_worse(losses[c], losses[best]))  # the simplest
    summary = {
        choice_name(*c): {"loss": losses[c].mean().item(), "accuracy": correct[c].mean().item()} for c in choices
    }
    return chosen[0], chosen[1], summary


def train_heads_together(
    template: DecTHead,
    hidden: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    in_training: torch.Tensor,
    weights: torch.Tensor,
    checkpoints: list[int],
    learning_rate: float,
) -> dict[int, torch.Tensor]:
    """Train M copies of `template` at once, copy m on the examples `in_training[m]` with zero-shot weight
    `weights[m]`, exactly as `train_head` trains one (statistics, radii, full-batch Adam); return every copy's
    logits on every example, (M, N, C), after each number of steps in `checkpoints`.

    The copies' losses are summed, so each one's gradient is its own, and Adam's update is element-wise: the
    result equals M separate runs up to floating-point rounding, in one batched run instead of M small ones.
    """
    hidden = hidden.float()
    mask = in_training.float()  # (M, N)
    counts = mask.sum(1, keepdim=True)  # (M, 1)
    if wants_standardization(hidden, template.standardize):  # `DecTHead.fit_statistics`, per copy
        mean = mask @ hidden / counts  # (M, d)
        variance = (mask.unsqueeze(2) * (hidden.unsqueeze(0) - mean.unsqueeze(1)).square()).sum(1) / counts
        scale = shrunk_scale(variance)
    else:
        mean, scale = torch.zeros(len(mask), hidden.shape[1]), torch.ones(len(mask), hidden.shape[1])
    standardized = (hidden.unsqueeze(0) - mean.unsqueeze(1)) / scale.unsqueeze(1)  # (M, N, d)
    projection = template.projection.weight.detach().expand(len(mask), -1, -1).clone().requires_grad_(True)
    prototypes = template.prototypes

    def project() -> torch.Tensor:
        return F.normalize(torch.bmm(standardized, projection.transpose(1, 2)), dim=-1)  # (M, N, k)

    with torch.no_grad():  # `DecTHead.init_radius`, per copy
        projected = project()
        radius = torch.zeros(len(mask), prototypes.shape[0])
        for c in range(prototypes.shape[0]):
            members = mask * (labels == c).float()  # (M, N)
            n = members.sum(1).clamp_min(1)
            centre = torch.einsum("mn,mnk->mk", members, projected) / n.unsqueeze(1)
            spread = (projected - centre.unsqueeze(1)).norm(dim=-1)  # (M, N)
            radius[:, c] = (members * spread).sum(1) / n
    radius.requires_grad_(True)
    prior = weights.float().view(-1, 1, 1) * scores.float().unsqueeze(0)  # (M, N, C)
    optimizer = torch.optim.Adam([projection, radius], lr=learning_rate, fused=True)

    def logits() -> torch.Tensor:
        distances = torch.cdist(project(), prototypes.unsqueeze(0).expand(len(mask), -1, -1))
        return -distances + radius.unsqueeze(1) + prior

    targets = labels.expand(len(mask), -1)
    snapshots = {}
    for step in range(1, max(checkpoints) + 1):
        out = logits()
        per_example = F.cross_entropy(out.transpose(1, 2), targets, reduction="none")  # (M, N)
        loss = ((per_example * mask).sum(1) / counts.squeeze(1)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            with torch.no_grad():
                snapshots[step] = logits()
    return snapshots
