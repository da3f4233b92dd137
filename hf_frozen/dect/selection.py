"""Choosing how DecT scores, on the training cache only: calibration, then the head and its settings.

`choose_head_settings` first decides whether to calibrate the prompt's label-word scores (`calibration_helps`:
a comparison that trains nothing), then scores every candidate of every allowed head type by cross-validation
(`cross_validate_heads`): each head type cross-validates all its candidates on all folds at once
(`heads.Head.cross_validate`), and every candidate is judged by the cross-entropy of its out-of-fold scores at
their best temperature. `pick_candidate` keeps the lowest. Nothing here names a head type: the heads' shared
interface (`heads/base.py`) is all it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch.nn import functional as F

from .config import DecTConfig
from .heads import HEADS, Candidate, Head, PromptOnlyHead

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
# election tweets on MiniLM (81.3% to 82.0%, the probe 82.6%). From `ONE_SPLIT_FROM` training examples on, one
# split into 3 folds already holds out every example once, averaging hundreds of held-out losses, and repeats (or a
# fourth fold) would only multiply the time of the choice: at 64 shots x 20 classes, 3 repeats of 4 folds took
# about a minute on 2 cores (bench/bench_head_choice.py).
CV_REPEATS = 3
ONE_SPLIT_FROM = 256

# Cross-validation reads at most this many training examples, a stratified draw (every class keeps the same share
# and at least 2 examples); the chosen head is then fitted on all of them. The candidates' cost grows with the
# examples times their rank, and their ranking is already stable at a few hundred held-out examples. With this and
# the prototype head's dot-product distances, the choice at 64 shots x 20 classes went from 10.6 s to 1.7 s
# (d = 384) and from 16.7 s to 1.4 s (d = 576) on 2 cores (bench/bench_head_choice.py, docs/dect.md).
MAX_CV_EXAMPLES = 512

# (raw label-word scores (N, C), calibrate) -> zero-shot scores (N, C); see `DecTModel.zero_shot_scores`.
ZeroShotScorer = Callable[[torch.Tensor, bool], torch.Tensor]


@dataclass
class HeadChoice:
    """What `choose_head_settings` decided, and the cross-validation behind it."""

    candidate: Candidate  # the head type and its settings
    calibrate: bool | None  # None without label-word scores
    cv_results: dict[str, dict[str, float]] = field(default_factory=dict)  # per candidate: held-out loss, accuracy

    @property
    def name(self) -> str:
        return self.candidate.name


def head_types_for(config: DecTConfig, has_scores: bool) -> list[type[Head]]:
    """The head types `config.head` allows, simplest first. `"auto"` tries the prompt alone (when there are
    label-word scores and the zero-shot weight is unset), the prototype decoder and the linear head."""
    if config.head != "auto":
        return [HEADS[config.head]]
    types = sorted(HEADS.values(), key=lambda head: head.simplicity)
    if not has_scores or config.zero_shot_weight is not None:
        types.remove(PromptOnlyHead)
    return types


def choose_head_settings(
    hidden: torch.Tensor,
    raw_scores: torch.Tensor | None,
    labels: torch.Tensor,
    config: DecTConfig,
    zero_shot: ZeroShotScorer,
    steps: list[int] | None = None,
) -> HeadChoice:
    """Pick whether to calibrate (see `calibration_helps`), then the head among the types `config.head` allows
    and its settings (the prototype head's steps among `steps`, by default the configured ones), by
    cross-validation on the training cache.

    Args:
        zero_shot: turns raw label-word scores into zero-shot scores, calibrated or not.
    """
    if steps is None:
        steps = [config.steps] if config.steps is not None else config.steps_candidates
    if raw_scores is None:  # no label-word scores (a plain encoder): the head alone
        calibrate, scores, weights = None, None, [0.0]
    else:
        calibrate = calibration_helps(raw_scores, labels, zero_shot) if config.calibrate is None else config.calibrate
        scores = zero_shot(raw_scores, calibrate)
        weights = config.zero_shot_weight_candidates if config.zero_shot_weight is None else [config.zero_shot_weight]
    types = head_types_for(config, scores is not None)
    if PromptOnlyHead in types and scores is None:
        raise ValueError("`head='prompt'` scores with the prompt's label words, but this backbone gives no scores.")
    candidates = [c for head in types for c in head.candidates(config, weights, steps)]
    chosen, results = cross_validate_heads(hidden, scores, labels, candidates, config)
    return HeadChoice(chosen, calibrate, results)


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


def cross_validate_heads(
    hidden: torch.Tensor,
    scores: torch.Tensor | None,
    labels: torch.Tensor,
    candidates: list[Candidate],
    config: DecTConfig,
    folds: int = 4,
) -> tuple[Candidate, dict[str, dict[str, float]]]:
    """Pick a candidate on the training cache: held-out cross-entropy, then `pick_candidate`'s rule.

    Every candidate is scored by the cross-entropy of its predictions on held-out stratified folds, example by
    example, after one temperature per candidate fitted on all its out-of-fold scores. The folds are drawn
    `CV_REPEATS` times (once from `ONE_SPLIT_FROM` examples on) and each example's loss averaged over the draws.

    With fewer than 2 examples in some class no fold can be held out: the prompt alone is kept if it gets at least
    half of the training examples right, else (or without the prompt) the fallback of the simplest trained head
    type (`Head.fallback`: the prototype head with the smallest zero-shot weight and the most steps). On SmolLM2's
    1-shot `text_sources` pool dev split (10 draws) that took DecT from the prompt's 28.3% to 49.0%, the probe
    48.8%; the prompt stayed on Rotten Tomatoes, SMS spam and election tweets.

    Returns:
        The chosen candidate, and per candidate (by `Candidate.name`) its mean held-out loss and accuracy.
    """
    num_classes = config.num_classes
    if int(np.bincount(labels.numpy(), minlength=num_classes).min()) < 2 or len(candidates) == 1:
        return _fallback(candidates, scores, labels), {}
    if len(labels) > MAX_CV_EXAMPLES:
        rows = stratified_subsample(labels, MAX_CV_EXAMPLES, config.head_seed)
        hidden, labels = hidden[rows], labels[rows]
        scores = None if scores is None else scores[rows]
    y = labels.numpy()
    large = len(y) >= ONE_SPLIT_FROM  # one split of 3 folds: each still holds out a third, 85 examples or more
    folds = min(3 if large else folds, int(np.bincount(y).min()))
    repeats = 1 if large else CV_REPEATS
    folds_idx = []  # `repeats` stratified splits into `folds` folds, each with its own shuffle
    for repeat in range(repeats):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.head_seed + repeat)
        folds_idx += [(torch.from_numpy(t), torch.from_numpy(v)) for t, v in splitter.split(np.zeros(len(y)), y)]
    prior = torch.zeros(len(y), num_classes) if scores is None else scores.float()
    fold_logits: dict[Candidate, torch.Tensor] = {}
    for head in dict.fromkeys(c.head for c in candidates):  # each head type, in the candidates' order
        fold_logits.update(head.cross_validate(hidden, prior, labels, folds_idx,
                                               [c for c in candidates if c.head is head], config))  # fmt: skip
    losses, correct = {}, {}
    repeated_labels = labels.repeat(repeats)
    for c in candidates:
        held_out = torch.zeros(repeats, len(y), num_classes)  # out-of-fold logits, per repeat
        for f, (_, val_idx) in enumerate(folds_idx):
            held_out[f // folds, val_idx] = fold_logits[c][f, val_idx].float()
        logits = held_out.reshape(-1, num_classes)
        # Each candidate's out-of-fold logits at their best temperature: the held-out cross-entropy then measures
        # how well a candidate ranks the classes, not the scale of its scores, which predictions ignore. Without
        # it, the prompt's loss was inflated by its scale, and strongly regularised linear heads (small,
        # under-confident logits) looked worse than they predicted. On MiniLM's pool dev splits
        # (bench/choose_dect_defaults.py, 5 seeds) it raised 4-shot `text_sources` from 58.4% to 62.4%.
        logits = fit_temperature(logits, repeated_labels) * logits
        # Per example, the mean over the repeats (`pick_candidate` compares the means of these).
        losses[c] = F.cross_entropy(logits, repeated_labels, reduction="none").view(repeats, -1).mean(0)
        correct[c] = (logits.argmax(1) == repeated_labels).float().view(repeats, -1).mean(0)
    chosen = pick_candidate(candidates, losses)
    summary = {c.name: {"loss": losses[c].mean().item(), "accuracy": correct[c].mean().item()} for c in candidates}
    return chosen, summary


def stratified_subsample(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted row indices of about `size` examples, each class keeping its share of `labels` (at least 2)."""
    generator = torch.Generator().manual_seed(seed)
    share = size / len(labels)
    rows = []
    for c in torch.unique(labels):
        members = (labels == c).nonzero().squeeze(1)
        keep = min(len(members), max(2, round(share * len(members))))
        rows.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(rows).sort().values


def _fallback(candidates: list[Candidate], scores: torch.Tensor | None, labels: torch.Tensor) -> Candidate:
    """Without a fold to hold out: the prompt alone, unless it gets fewer than half of the training examples
    right; else the fallback of the simplest trained head type."""
    trained = [c for c in candidates if c.head is not PromptOnlyHead]
    prompt_right = None if scores is None else (scores.argmax(1) == labels).float().mean().item()
    if not trained or (candidates[0].head is PromptOnlyHead and prompt_right >= 0.5):
        return candidates[0]
    first = trained[0].head
    return first.fallback([c for c in trained if c.head is first])


def pick_candidate(candidates: list[Candidate], losses: dict[Candidate, torch.Tensor]) -> Candidate:
    """The candidate with the lowest mean held-out loss; on a tie, the simplest (`candidates` lists it first, so
    the prompt alone wins a tie with any head).

    An earlier rule kept the prompt unless the best head beat it by one standard error of their paired difference.
    With the batched solver's exact minima and repeated cross-validation (`CV_REPEATS`) that benefit of the doubt
    no longer paid: on SmolLM2's pool dev splits (bench/choose_dect_defaults.py, 5 seeds; 12 cells on Rotten
    Tomatoes, SMS spam and election tweets) it met the floor in 9 cells, the plain lowest loss in 10 (64-shot Rotten
    Tomatoes: 80.2% to 80.5%, the probe 81.2%), half a standard error in 9.
    """
    return min(candidates, key=lambda c: losses[c].mean().item())


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The factor t (0.01 to 1000, on a log grid) with the lowest cross-entropy of `t * scores`."""
    grid = torch.logspace(-2, 3, 51)
    losses = torch.stack([F.cross_entropy(t * scores.float(), labels) for t in grid])
    return float(grid[losses.argmin()])
