"""Choosing how DecT scores, on the training cache only: calibration, the head type, the zero-shot weight, and the
prototype head's steps or the linear head's regularisation.

`choose_head_settings` first decides whether to calibrate the prompt's label-word scores (`calibration_helps`:
a comparison that trains nothing), then scores every candidate by cross-validation (`cross_validate_head`): the
prompt alone, the prototype heads (every fold and weight in one batched run, `train_heads_together`) and the
linear heads (every fold, weight, C and feature scaling in one batched solve, `cross_validate_linear`), each
by the cross-entropy of its out-of-fold scores at their best temperature. `pick_candidate` keeps the lowest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch.nn import functional as F

from .config import DecTConfig
from .head import FEATURE_SCALINGS, DecTHead, feature_statistics, shrunk_scale, wants_standardization
from .logistic import solve_logistic

# Calibrate whenever it lowers the prompt's mean cross-entropy on the training examples by more than this many
# nats, even without a clear (one standard error) win. At one shot per class the standard error of two examples
# decides nothing, while the gain itself tells the sets apart: measured on SmolLM2's pool shots (20 draws at one
# shot per class), it lay between -0.04 and 0.08 on SMS spam (where calibration costs 14 points) and at 0.00 on
# Rotten Tomatoes, but between 0.01 and 0.44 (median 0.15) on election tweets (where it gains 10 points) and
# above 3 on `text_sources`.
CALIBRATION_GAIN = 0.1

# Cross-validation splits the training cache `CV_REPEATS` times into folds, each time with another shuffle, and
# averages every example's held-out loss over them: one split of 8 examples into 4 folds decides on noise. On
# the pool dev splits (bench/choose_dect_defaults.py, 32 cells, 5 seeds) three repeats raised the cells that meet
# the floor from 24 to 26: 16-shot election tweets on SmolLM2 (72.1% to 74.7%, the probe 74.9%) and 64-shot
# election tweets on MiniLM (81.3% to 82.0%, the probe 82.6%).
CV_REPEATS = 3

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
    head_type: str = "prototype"  # or "linear"
    regularization: float | None = None  # the linear head's C
    scaling: str | None = None  # the linear head's feature scaling
    name: str = ""  # the chosen candidate's key in `cv_results`


def choose_head_settings(
    hidden: torch.Tensor,
    raw_scores: torch.Tensor | None,
    labels: torch.Tensor,
    config: DecTConfig,
    zero_shot: ZeroShotScorer,
    template: DecTHead,
    steps: list[int] | None = None,
    head_types: list[str] | None = None,
) -> HeadChoice:
    """Pick whether to calibrate (see `calibration_helps`), then the head type, the zero-shot weight and the
    number of steps (among `steps`, by default the configured ones) or the linear head's regularisation, by
    cross-validation on the training cache.

    Args:
        zero_shot: turns raw label-word scores into zero-shot scores, calibrated or not.
        template: the untrained prototype head every fold's prototype head starts from.
        head_types: the head types to choose among; by default those `config.head` allows.
    """
    if steps is None:
        steps = [config.steps] if config.steps is not None else config.steps_candidates
    if head_types is None:
        head_types = ["prototype", "linear"] if config.head == "auto" else [config.head]
    if raw_scores is None:  # no label-word scores (a plain encoder): the head alone
        calibrate, scores, weights = None, None, [0.0]
    else:
        calibrate = calibration_helps(raw_scores, labels, zero_shot) if config.calibrate is None else config.calibrate
        scores = zero_shot(raw_scores, calibrate)
        weights = config.zero_shot_weight_candidates if config.zero_shot_weight is None else [config.zero_shot_weight]
    grid = Grid(weights, steps if "prototype" in head_types else [],
                config.regularization_candidates if "linear" in head_types else [])  # fmt: skip
    chosen, results = cross_validate_head(
        hidden, scores, labels, grid, template, config.head_learning_rate, config.head_seed,
        include_prompt=config.zero_shot_weight is None,
    )  # fmt: skip
    # The prompt alone is recorded as a prototype head with the PROMPT_ONLY weight, as before 0.2.
    head_type = "prototype" if chosen.head_type == "prompt" else chosen.head_type
    return HeadChoice(chosen.weight, chosen.steps or max(steps), calibrate, results, head_type,
                      chosen.regularization, chosen.scaling, chosen.name)  # fmt: skip


def calibration_helps(raw_scores: torch.Tensor, labels: torch.Tensor, zero_shot: ZeroShotScorer) -> bool:
    """Whether the calibrated prompt alone is clearly better than the uncalibrated one on the training cache.

    Calibration against an empty input is a heuristic: it undoes a prompt's lean towards some label words,
    but measured here it cost SmolLM2 14 points of zero-shot accuracy on SMS spam and 0.5 on Rotten Tomatoes.
    So it is used only when the prompt's held-in cross-entropy with it beats that without it by more than
    one standard error, or by more than `CALIBRATION_GAIN` nats per example: comparisons that train nothing and
    so are far less noisy than cross-validating both (which, at 4 shots on SMS spam, kept the calibrated prompt
    for 2 of 5 seeds at 69% accuracy).
    """
    with_calibration = F.cross_entropy(zero_shot(raw_scores, True), labels, reduction="none")
    without = F.cross_entropy(zero_shot(raw_scores, False), labels, reduction="none")
    gain = (without - with_calibration).mean().item()
    return clearly_worse(without, with_calibration) or gain > CALIBRATION_GAIN


def clearly_worse(losses: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether per-example `losses` exceed `reference`'s on the same examples by more than one standard error of
    their paired difference: the bar a less simple choice must clear before DecT prefers it."""
    gap = losses.float() - reference.float()
    if len(gap) < 2:
        return False  # one example tells nothing apart
    return bool(gap.mean() > gap.std() / len(gap) ** 0.5)


@dataclass(frozen=True)
class Candidate:
    """One way to score: the prompt alone, or a head type with its zero-shot weight and steps or regularisation."""

    head_type: str  # "prompt", "prototype" or "linear"
    weight: float | str = PROMPT_ONLY
    steps: int | None = None
    regularization: float | None = None
    scaling: str | None = None  # the linear head's, one of `head.FEATURE_SCALINGS`

    @property
    def name(self) -> str:
        """How `cv_results` names it: `"prompt_only"`, `"weight=1.0, steps=10"`, `"linear, weight=1.0, C=0.1"`."""
        if self.head_type == "prompt":
            return PROMPT_ONLY
        if self.head_type == "linear":
            return f"linear, weight={float(self.weight)}, C={self.regularization}, {self.scaling} scaling"
        return f"weight={float(self.weight)}, steps={self.steps}"


@dataclass
class Grid:
    """The candidate settings: zero-shot weights, prototype step counts, linear regularisations (C) and scalings."""

    weights: list[float]
    steps: list[int]
    regularizations: list[float]
    scalings: tuple[str, ...] = FEATURE_SCALINGS

    def candidates(self, prompt: bool) -> list[Candidate]:
        """Simplest first: the prompt alone, then the prototype heads (from the largest weight, the most
        prompt-like, down; fewest steps first), then the linear heads (strongest regularisation first)."""
        weights = sorted(set(map(float, self.weights)), reverse=True)
        out = [Candidate("prompt")] if prompt else []
        out += [Candidate("prototype", w, s) for w in weights for s in sorted(set(self.steps))]
        out += [Candidate("linear", w, None, float(c), scaling) for scaling in self.scalings
                for c in sorted(set(self.regularizations)) for w in weights]  # fmt: skip
        return out


def cross_validate_head(
    hidden: torch.Tensor,
    scores: torch.Tensor | None,
    labels: torch.Tensor,
    grid: Grid,
    template: DecTHead,
    learning_rate: float,
    seed: int,
    folds: int = 4,
    include_prompt: bool = True,
    repeats: int = CV_REPEATS,
) -> tuple[Candidate, dict[str, dict[str, float]]]:
    """Pick a candidate on the training cache: held-out cross-entropy, then `pick_candidate`'s rule.

    Every candidate is scored by the cross-entropy of its predictions on held-out stratified folds, example by
    example, after one temperature per candidate fitted on all its out-of-fold scores: the prompt alone (with
    `scores` and `include_prompt`), the prototype heads (trained together, see `train_heads_together`) and the
    linear heads (all folds and settings in one batched solve, `cross_validate_linear`).

    With fewer than 2 examples in some class no fold can be held out: the prompt alone is kept if it gets at least
    half of the training examples right, else (or without the prompt) the prototype head with the smallest
    zero-shot weight and the most steps (the linear head, where it is the only type). On SmolLM2's 1-shot
    `text_sources` pool dev split (10 draws) that took DecT from the prompt's 28.3% to 49.0%, the probe 48.8%;
    the prompt stayed on Rotten Tomatoes, SMS spam and election tweets.

    Returns:
        The chosen candidate, and per candidate (by `Candidate.name`) its mean held-out loss and accuracy.
    """
    num_classes = template.prototypes.shape[0]
    y = labels.numpy()
    prompt = scores is not None and include_prompt
    choices = grid.candidates(prompt)
    if int(np.bincount(y, minlength=num_classes).min()) < 2 or len(choices) == 1:
        prompt_right = None if scores is None else (scores.argmax(1) == labels).float().mean().item()
        return _fallback(choices, grid, prompt_right), {}
    folds = min(folds, int(np.bincount(y).min()))
    folds_idx = []  # `repeats` stratified splits into `folds` folds, each with its own shuffle
    for repeat in range(repeats):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        folds_idx += [(torch.from_numpy(t), torch.from_numpy(v)) for t, v in splitter.split(np.zeros(len(y)), y)]
    prior = torch.zeros(len(y), num_classes) if scores is None else scores.float()
    held_out = {c: torch.zeros(repeats, len(y), num_classes) for c in choices}  # out-of-fold logits, per repeat

    def record(choice: Candidate, fold: int, val_idx: torch.Tensor, logits: torch.Tensor) -> None:
        held_out[choice][fold // folds, val_idx] = logits.float()

    prototype_weights = sorted({c.weight for c in choices if c.head_type == "prototype"})
    if prototype_weights:
        # One head per (fold, weight), all trained at once, read at every step count: same maths as training
        # each alone, a fraction of the time.
        in_training = torch.zeros(len(folds_idx) * len(prototype_weights), len(y), dtype=torch.bool)
        for f, (train_idx, _) in enumerate(folds_idx):
            in_training[f * len(prototype_weights) : (f + 1) * len(prototype_weights), train_idx] = True
        fold_logits = train_heads_together(template, hidden, prior, labels, in_training,
                                           torch.tensor(prototype_weights * len(folds_idx)), grid.steps,
                                           learning_rate)  # fmt: skip
    linear_choices = [c for c in choices if c.head_type == "linear"]
    if linear_choices:
        linear_logits = cross_validate_linear(hidden, prior, labels, folds_idx, linear_choices)
    for f, (_, val_idx) in enumerate(folds_idx):
        for choice in choices:
            if choice.head_type == "prompt":
                record(choice, f, val_idx, prior[val_idx])
            elif choice.head_type == "prototype":
                row = f * len(prototype_weights) + prototype_weights.index(choice.weight)
                record(choice, f, val_idx, fold_logits[choice.steps][row, val_idx])
            else:
                logits = linear_logits[f * len(linear_choices) + linear_choices.index(choice), val_idx]
                record(choice, f, val_idx, logits)
    # Each candidate's out-of-fold logits at their best temperature: the held-out cross-entropy then measures how
    # well a candidate ranks the classes, not the scale of its scores, which predictions ignore. Without it, the
    # prompt's loss was inflated by its scale, and strongly regularised linear heads (small, under-confident
    # logits) looked worse than they predicted. On MiniLM's pool dev splits (bench/choose_dect_defaults.py, 5
    # seeds) it raised 4-shot `text_sources` from 58.4% to 62.4% and 4-shot election tweets from 62.1% to 63.5%.
    losses, correct = {}, {}
    repeated_labels = labels.repeat(repeats)
    for c in choices:
        logits = held_out[c].reshape(-1, num_classes)
        logits = fit_temperature(logits, repeated_labels) * logits
        # Per example, the mean over the repeats (`pick_candidate` compares the means of these).
        losses[c] = F.cross_entropy(logits, repeated_labels, reduction="none").view(repeats, -1).mean(0)
        correct[c] = (logits.argmax(1) == repeated_labels).float().view(repeats, -1).mean(0)
    chosen = pick_candidate(choices, losses)
    summary = {c.name: {"loss": losses[c].mean().item(), "accuracy": correct[c].mean().item()} for c in choices}
    return chosen, summary


def cross_validate_linear(
    hidden: torch.Tensor,
    prior: torch.Tensor,
    labels: torch.Tensor,
    folds_idx: list[tuple[torch.Tensor, torch.Tensor]],
    choices: list[Candidate],
) -> torch.Tensor:
    """Every linear candidate fitted on every fold's training part, as `LinearHead` and `fit_linear_head` fit one
    (per-fold feature statistics, the weighted prompt as an offset), all in one batched `solve_logistic`: one
    feature group per (fold, scaling), shared by the candidates with that scaling.
    Returns the logits of each (fold, candidate) on every example, (folds x candidates, N, C)."""
    hidden = hidden.float()
    scalings = sorted({c.scaling for c in choices})
    per_scaling = {scaling: [c for c in choices if c.scaling == scaling] for scaling in scalings}
    if len({len(group) for group in per_scaling.values()}) > 1:
        raise ValueError("every feature scaling needs the same linear candidates")  # `Grid` builds them so
    features, masks = [], []
    for train_idx, _ in folds_idx:
        for scaling in scalings:
            mean, scale = feature_statistics(hidden[train_idx], scaling)
            features.append((hidden - mean) / scale)
            mask = torch.zeros(len(hidden), dtype=torch.bool)
            mask[train_idx] = True
            masks.append(mask)
    offsets = torch.stack([torch.stack([c.weight * prior for c in per_scaling[s]]) for s in scalings])
    strengths = torch.tensor([[c.regularization for c in per_scaling[s]] for s in scalings])
    features = torch.stack(features)  # (folds x scalings, N, d)
    weight, bias = solve_logistic(features, offsets.repeat(len(folds_idx), 1, 1, 1), labels, prior.shape[1],
                                  strengths.repeat(len(folds_idx), 1), in_training=torch.stack(masks))  # fmt: skip
    logits = torch.einsum("gnd,gpdc->gpnc", features, weight) + bias.unsqueeze(2)  # (G, P, N, C)
    logits = logits.view(len(folds_idx), len(scalings), -1, *logits.shape[2:])
    offsets = offsets.unsqueeze(0)
    out = torch.empty(len(folds_idx), len(choices), *prior.shape)
    for position, choice in enumerate(choices):
        s, p = scalings.index(choice.scaling), per_scaling[choice.scaling].index(choice)
        out[:, position] = logits[:, s, p] + offsets[:, s, p]
    return out.view(-1, *prior.shape)


def _fallback(choices: list[Candidate], grid: Grid, prompt_right: float | None) -> Candidate:
    """Without a fold to hold out: the prompt alone, unless it gets fewer than half of the training examples
    right (`prompt_right`, the fraction it gets right); else the head that leans least on the prompt, trained the
    longest."""
    heads = [c for c in choices if c.head_type != "prompt"]
    if not heads or (choices[0].head_type == "prompt" and prompt_right >= 0.5):
        return choices[0]
    prototypes = [c for c in heads if c.head_type == "prototype"]
    if not prototypes:  # linear heads only: the strongest regularisation, with the smallest weight
        return min(heads, key=lambda c: float(c.weight))
    return Candidate("prototype", prototypes[-1].weight, max(grid.steps))


def pick_candidate(choices: list[Candidate], losses: dict[Candidate, torch.Tensor]) -> Candidate:
    """The candidate with the lowest mean held-out loss; on a tie, the simplest (`choices` lists it first, so the
    prompt alone wins a tie with any head).

    An earlier rule kept the prompt unless the best head beat it by one standard error of their paired difference.
    With the batched solver's exact minima and repeated cross-validation (`CV_REPEATS`) that benefit of the doubt
    no longer paid: on SmolLM2's pool dev splits (bench/choose_dect_defaults.py, 5 seeds; 12 cells on Rotten
    Tomatoes, SMS spam and election tweets) it met the floor in 9 cells, the plain lowest loss in 10 (64-shot Rotten
    Tomatoes: 80.2% to 80.5%, the probe 81.2%), half a standard error in 9. Rotten Tomatoes, where the prompt is
    the best choice, stayed above the floor at every shot count (4 shots: 80.2% to 79.9%, the prompt 80.3%).
    """
    return min(choices, key=lambda c: losses[c].mean().item())


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The factor t (0.01 to 1000, on a log grid) with the lowest cross-entropy of `t * scores`."""
    grid = torch.logspace(-2, 3, 51)
    losses = torch.stack([F.cross_entropy(t * scores.float(), labels) for t in grid])
    return float(grid[losses.argmin()])


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
