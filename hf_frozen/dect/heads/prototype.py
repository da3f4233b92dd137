"""The paper's prototype decoder: a bias-free projection, fixed prototypes and a learnable radius per class.

    s_c(x) = -|| normalize(W h) - p_c ||_2 + r_c + lambda * z_c

`h` is the hidden state the head reads (the backbone's at the answer position, or a feature model's), `z` the
zero-shot label-word scores (calibrated if in use), `p_c` fixed xavier-uniform prototypes and `r_c` a radius
initialised to the mean distance of class c's projected examples to their projected class mean (Cui et al.,
2023, and their reference code). Training is full-batch Adam on cross-entropy over `s`. Two departures: `h` is
standardised per dimension with the training cache's statistics before the projection (`DecTHead.fit_statistics`),
and lambda and the number of steps are chosen by cross-validation on the training cache instead of fixed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import Candidate, DecTOutput, Head, with_prompt
from .statistics import feature_statistics, shrunk_scale, wants_standardization


class DecTHead(Head):
    """The prototype decoder (`kind = "prototype"`). `forward` takes cached features, so it also trains inside a
    `Trainer`.

    Args:
        hidden_size (`int`): size of the hidden states the head reads.
        num_classes (`int`): number of classes.
        projection_dim (`int`): size of the prototype space (128 in the paper).
        seed (`int`): seed of the projection and prototype initialisation.
        standardize (`bool`, *optional*): standardise `h` per dimension with the training cache's statistics;
            unset, only when a few dimensions dominate it (see `wants_standardization`).
    """

    kind = "prototype"
    trained_by_steps = True
    simplicity = 1

    def __init__(
        self,
        hidden_size: int,
        num_classes: int,
        projection_dim: int = 128,
        seed: int = 0,
        standardize: bool | None = None,
    ) -> None:
        super().__init__()
        self.standardize = standardize
        self.steps = 0  # optimizer steps trained so far (recorded with the head)
        generator = torch.Generator().manual_seed(seed)
        self.projection = nn.Linear(hidden_size, projection_dim, bias=False)
        bound = 1.0 / hidden_size**0.5  # nn.Linear's default init, drawn from our generator for reproducibility
        with torch.no_grad():
            self.projection.weight.uniform_(-bound, bound, generator=generator)
        prototypes = torch.empty(num_classes, projection_dim)
        bound = (6.0 / (num_classes + projection_dim)) ** 0.5  # xavier-uniform
        prototypes.uniform_(-bound, bound, generator=generator)
        self.register_buffer("prototypes", prototypes)  # fixed, not learned
        self.radius = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("zero_shot_weight", torch.tensor(0.0))
        # Per-dimension standardisation of h, fitted on the training cache (see `fit_statistics`).
        self.register_buffer("feature_mean", torch.zeros(hidden_size))
        self.register_buffer("feature_scale", torch.ones(hidden_size))

    # -- the head interface (base.Head) ----------------------------------------------------------------------

    @classmethod
    def candidates(cls, config, weights: list[float], steps: list[int]) -> list[Candidate]:
        """From the largest weight (the most prompt-like) down, fewest steps first."""
        return [Candidate.of(cls, zero_shot_weight=w, steps=s)
                for w in sorted(set(map(float, weights)), reverse=True) for s in sorted(set(steps))]  # fmt: skip

    @classmethod
    def candidate_name(cls, settings: dict[str, Any]) -> str:
        return f"weight={float(settings['zero_shot_weight'])}, steps={settings['steps']}"

    @classmethod
    def cross_validate(cls, hidden, prior, labels, folds, candidates, config) -> dict[Candidate, torch.Tensor]:
        """One head per (fold, weight), all trained at once (`train_heads_together`) and read at every step
        count: the same maths as training each alone, a fraction of the time."""
        weights = sorted({c.get("zero_shot_weight") for c in candidates})
        in_training = torch.zeros(len(folds) * len(weights), len(labels), dtype=torch.bool)
        for f, (train_idx, _) in enumerate(folds):
            in_training[f * len(weights) : (f + 1) * len(weights), train_idx] = True
        template = cls.build(hidden.shape[1], config, {})
        steps = sorted({c.get("steps") for c in candidates})
        weight_of_copy = torch.tensor(weights * len(folds))
        snapshots = train_heads_together(template, hidden, prior, labels, in_training, weight_of_copy, steps,
                                         config.head_learning_rate)  # fmt: skip
        out = {}
        for c in candidates:
            rows = torch.arange(len(folds)) * len(weights) + weights.index(c.get("zero_shot_weight"))
            out[c] = snapshots[c.get("steps")][rows]
        return out

    @classmethod
    def build(cls, hidden_size: int, config, settings: dict[str, Any]) -> DecTHead:
        head = cls(hidden_size, config.num_classes, config.projection_dim, config.head_seed,
                   standardize=config.standardize_hidden)  # fmt: skip
        head.set_zero_shot_weight(float(settings.get("zero_shot_weight") or 0.0))
        head.steps = int(settings.get("steps") or 0)
        return head

    def set_zero_shot_weight(self, weight: float) -> None:
        self.zero_shot_weight.fill_(weight)
        self.weight_setting = weight  # as chosen (a float32 buffer would record 0.3 as 0.30000001192092896)

    def fit(self, hidden, scores, labels, config) -> None:
        train_head(self, hidden, scores, labels, self.steps, config.head_learning_rate)

    def start_training(self, hidden: torch.Tensor, labels: torch.Tensor, settings: dict[str, Any],
                       initialize: bool = True) -> None:  # fmt: skip
        """Set up for training by someone else's optimizer steps (a Trainer's): the chosen zero-shot weight, and
        (`initialize`) the statistics and radii `train_head` starts from. In place: the optimizer holds the
        parameters."""
        self.set_zero_shot_weight(float(settings.get("zero_shot_weight") or 0.0))
        if initialize:
            self.initialize(hidden, labels)

    def settings(self) -> dict[str, Any]:
        weight = getattr(self, "weight_setting", None)
        return {"zero_shot_weight": float(self.zero_shot_weight) if weight is None else weight, "steps": self.steps}

    def describe(self, config) -> str:
        return (f"a {self.projection.out_features}-dimensional prototype decoder trained for {self.steps} steps, "
                f"zero-shot weight {float(self.zero_shot_weight):g}")  # fmt: skip

    # -- the decoder -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def fit_statistics(self, hidden_states: torch.Tensor) -> None:
        """Centre and scale each dimension of h by the training cache's statistics.

        A departure from the reference code: decoder LMs' hidden states carry a few massive dimensions
        (SmolLM2: mean |h| up to 19 against a median of 0.75), which dominate `normalize(W h)` for a random W.
        The scale is sqrt(var_d + median(var)), shrunk towards a common value, so that the handful of
        examples of a few-shot run cannot blow up a dimension that happens not to vary between them.
        Measured on SmolLM2 / Rotten Tomatoes (5 seeds), the head alone went from 61% to 72% at 16 shots and
        from 65% to 78% at 64.
        """
        if not wants_standardization(hidden_states, self.standardize):
            self.feature_mean.zero_()
            self.feature_scale.fill_(1.0)
            return
        mean, scale = feature_statistics(hidden_states.float(), "per_dimension")
        self.feature_mean.copy_(mean)
        self.feature_scale.copy_(scale)

    def distances(self, hidden_states: torch.Tensor) -> torch.Tensor:
        standardized = (hidden_states.float() - self.feature_mean) / self.feature_scale
        projected = F.normalize(self.projection(standardized), dim=-1)  # (N, k)
        return sphere_distances(projected, self.prototypes)  # (N, C)

    def forward(
        self,
        hidden_states: torch.Tensor,
        zero_shot_scores: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> DecTOutput:
        return with_prompt(
            -self.distances(hidden_states) + self.radius, self.zero_shot_weight, zero_shot_scores, labels
        )

    def initialize(self, hidden_states: torch.Tensor, labels: torch.Tensor) -> None:
        """What training starts from: the standardisation statistics, then the radii, of the training cache."""
        self.fit_statistics(hidden_states)
        self.init_radius(hidden_states, labels)

    @torch.no_grad()
    def init_radius(self, hidden_states: torch.Tensor, labels: torch.Tensor) -> None:
        """r_c = mean distance of class c's projected examples to their projected class mean."""
        standardized = (hidden_states.float() - self.feature_mean) / self.feature_scale
        projected = F.normalize(self.projection(standardized), dim=-1)
        for c in range(self.radius.shape[0]):
            members = projected[labels == c]
            if len(members):
                self.radius[c] = (members - members.mean(0)).norm(dim=-1).mean()


def sphere_distances(projected: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """||a - p||_2 for unit rows a of `projected` (..., N, k) and rows p of `prototypes` (..., C, k): from
    |a|^2 = 1, |p|^2 and one matrix product, whose backward pass is far cheaper than `torch.cdist`'s."""
    squared = 1 + prototypes.square().sum(-1).unsqueeze(-2) - 2 * projected @ prototypes.transpose(-1, -2)
    return squared.clamp_min(1e-12).sqrt()


def train_head(
    head: DecTHead,
    hidden: torch.Tensor,
    scores: torch.Tensor | None,
    labels: torch.Tensor,
    steps: int,
    learning_rate: float,
    initialize: bool = True,
) -> list[float]:
    """Full-batch Adam on the cached features; returns the loss at each step.

    Args:
        initialize (`bool`, defaults to `True`): first fit the head's statistics and radii to the features
            (`DecTHead.initialize`); `False` trains the head as it is.
    """
    if initialize:
        head.initialize(hidden, labels)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, fused=True)  # one kernel per step on CPU too
    losses = []
    head.train()
    for _ in range(steps):
        loss = head(hidden, scores, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    head.steps = steps
    head.eval()
    return losses


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
    # Each copy's own training rows (padded to the largest count, padding weighted 0) are all that its training
    # steps read: the held-out rows are scored only at the checkpoints. At 64 shots x 20 classes that is a quarter
    # of the work of a step.
    order = torch.sort(in_training.to(torch.int8), dim=1, descending=True, stable=True).indices
    order = order[:, : int(counts.max())]  # (M, n)
    row_weight = torch.gather(mask, 1, order)  # (M, n): 1 for a training row, 0 for padding

    def standardize(rows: torch.Tensor | None) -> torch.Tensor:  # (M, n or N, d)
        picked = hidden.unsqueeze(0) if rows is None else hidden[rows]
        return (picked - mean.unsqueeze(1)) / scale.unsqueeze(1)

    standardized = standardize(order)
    projection = template.projection.weight.detach().expand(len(mask), -1, -1).clone().requires_grad_(True)
    prototypes = template.prototypes.unsqueeze(0).expand(len(mask), -1, -1)

    def project(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.bmm(features, projection.transpose(1, 2)), dim=-1)  # (M, rows, k)

    row_labels = labels[order]  # (M, n)
    with torch.no_grad():  # `DecTHead.init_radius`, per copy
        projected = project(standardized)
        radius = torch.zeros(len(mask), prototypes.shape[1])
        for c in range(prototypes.shape[1]):
            members = row_weight * (row_labels == c).float()  # (M, n)
            n = members.sum(1).clamp_min(1)
            centre = torch.einsum("mn,mnk->mk", members, projected) / n.unsqueeze(1)
            spread = (projected - centre.unsqueeze(1)).norm(dim=-1)  # (M, n)
            radius[:, c] = (members * spread).sum(1) / n
    radius.requires_grad_(True)
    prior = weights.float().view(-1, 1, 1) * scores.float().unsqueeze(0)  # (M, N, C)
    row_prior = torch.gather(prior, 1, order.unsqueeze(2).expand(-1, -1, prior.shape[2]))  # (M, n, C)
    optimizer = torch.optim.Adam([projection, radius], lr=learning_rate, fused=True)

    def logits(features: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return -sphere_distances(project(features), prototypes) + radius.unsqueeze(1) + offset

    snapshots = {}
    for step in range(1, max(checkpoints) + 1):
        out = logits(standardized, row_prior)
        per_example = F.cross_entropy(out.transpose(1, 2), row_labels, reduction="none")  # (M, n)
        loss = ((per_example * row_weight).sum(1) / counts.squeeze(1)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            with torch.no_grad():
                snapshots[step] = logits(standardize(None), prior)
    return snapshots
