"""L2-regularised multinomial logistic regression with an offset, many problems at once, each to its own minimum.

The linear head's fit and its cross-validation (`selection.cross_validate_linear`: every fold x zero-shot weight x C
x feature scaling, 720 problems by default: 3 x 4 folds x 6 x 5 x 2) both solve

    argmin over (W, b) of  sum_i CE(x_i W + b + offset_i, y_i) + ||W||^2 / (2 C)

on a few dozen to a few hundred cached examples. Three things make that fast and close to the minimum:

- **Principal coordinates.** The penalised minimum lies in the span of the training rows (the gradient of the data
  term is X^T G, and W = -C X^T G at the minimum), so each feature group is rotated onto the right singular vectors
  of its training rows and solved in r = rank(X) <= min(n, d) coordinates: 24 instead of 576 for SmolLM2 at 16
  shots on two classes. W is rotated back at the end; the logits are those of the full problem.
- **Preconditioning.** Coordinate j of the rotated features has squared norm s_j^2 over the training rows, so its
  curvature lies between 1 / C and about s_j^2 / 4 + 1 / C. Each coordinate is rescaled by the square root of the
  latter (and the bias by that of n / 4), which evens out curvatures that spanned six orders of magnitude.
- **One L-BFGS per problem, batched.** Problems are stacked along a batch dimension, and every problem keeps its
  own L-BFGS history, step size (backtracking to the Armijo condition) and stopping test. A single L-BFGS over the
  summed losses (what this replaced) shares one line search among all problems, so the worst-conditioned one sets
  the step for all: at 200 iterations it was still 1 to 20 logits away from the minimum for weakly regularised
  problems. `bench/bench_linear_solver.py` compares the two, and scikit-learn, on real caches.
"""

from __future__ import annotations

import torch

HISTORY = 10  # L-BFGS correction pairs kept per problem
OFFSET_WEIGHT_C = 10.0  # inverse L2 strength on a learned offset weight: the weakest C of the default grid
ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
MAX_BACKTRACKS = 30


def solve_logistic(
    features: torch.Tensor,
    offsets: torch.Tensor | float,
    labels: torch.Tensor,
    num_classes: int,
    regularization: float | torch.Tensor,
    in_training: torch.Tensor | None = None,
    tolerance: float = 1e-6,
    max_iterations: int = 1000,
    learn_offset_weight: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Solve the problems above, each to its own minimum (to `tolerance`).

    `features` (N, d) with `offsets` (N, C) or a number and `regularization` a number is one problem, and returns
    W (d, C) and b (C,). `features` (G, N, d) are G feature groups, each shared by P problems that differ in their
    offset and C: `offsets` (G, P, N, C) and `regularization` (G, P), with `in_training` (G, N) the rows each group
    fits (all rows by default). Returns W (G, P, d, C) and b (G, P, C).

    With `learn_offset_weight`, each problem also learns a weight lambda of its offsets (logits x W + b + lambda *
    offset), under a weak penalty lambda^2 / (2 * OFFSET_WEIGHT_C) of its own: the linear head learns how far to
    trust the prompt instead of trying a grid of fixed weights, one problem where there were six. The penalty keeps
    the minimum unique where the offsets alone separate the training rows (unpenalised, lambda would grow without
    end there, and stop wherever rounding stopped it). Returns (W, b, lambda), lambda (G, P) or a 0-d tensor for one
    problem.

    `tolerance` bounds each problem's largest preconditioned gradient entry, relative to the number of rows it fits;
    a problem also stops when a step no longer lowers its loss (float32 rounding). Measured against scikit-learn's
    float64 minimum on the pool caches (`bench/bench_linear_solver.py`), the largest probability gap was 0.002 on
    SmolLM2 / Rotten Tomatoes at 16 shots and 0.11 on 7-class `text_sources` at 64 shots, where it comes from the
    weakly regularised problems (C = 10), whose minimum lies in a flat valley. In the measurements that set it, 1e-4
    left the logits 10 to 500 times farther from a float64 minimum.
    """
    single = features.dim() == 2
    features = features.float().unsqueeze(0) if single else features.float()
    groups, rows, _ = features.shape
    mask = torch.ones(groups, rows, dtype=torch.bool) if in_training is None else in_training.bool()
    strength = torch.as_tensor(regularization, dtype=torch.float32).reshape(groups, -1)
    problems = strength.shape[1]
    offsets = torch.as_tensor(offsets, dtype=torch.float32).expand(groups, problems, rows, num_classes)

    basis, singular = principal_coordinates(features, mask)  # (G, d, r), (G, r)
    rank = basis.shape[2]
    # Only the training rows enter the loss: gathered per group (padded to the largest group, padding weighted 0).
    order = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices
    fitted = int(mask.sum(1).max())
    order = order[:, :fitted]
    weights = torch.gather(mask, 1, order).float().unsqueeze(1)  # (G, 1, n)
    coordinates = torch.bmm(torch.gather(features, 1, order.unsqueeze(2).expand(-1, -1, features.shape[2])), basis)
    offsets = torch.gather(offsets, 2, order.view(groups, 1, fitted, 1).expand(-1, problems, -1, num_classes))
    targets = torch.gather(labels.expand(groups, rows), 1, order).unsqueeze(1).expand(-1, problems, -1)
    counts = mask.sum(1).float().view(groups, 1, 1)
    scale = (singular.square().unsqueeze(1) / 4 + 1 / strength.unsqueeze(2)).sqrt()  # (G, P, r)
    bias_scale = (counts / 4).sqrt().clamp_min(1.0)  # (G, 1, 1)
    penalty = 1 / (2 * strength.unsqueeze(2) * scale.square())  # per preconditioned coordinate
    linear_size = (rank + 1) * num_classes
    # The offset weight's curvature is at most the sum over rows of (spread of the row's offsets)^2 / 4.
    spread = offsets.amax(3) - offsets.amin(3)  # (G, P, n)
    offset_scale = ((spread.square() * weights).sum(2) / 4).sqrt().clamp_min(1.0)  # (G, P)

    def unpack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.view(groups, problems, -1)
        linear = x[:, :, :linear_size].reshape(groups, problems, rank + 1, num_classes)
        # (G, P, r, C), (G, P, C), (G, P)
        offset_weight = x[:, :, linear_size] / offset_scale if learn_offset_weight else torch.ones(groups, problems)
        return linear[:, :, :rank] / scale.unsqueeze(3), linear[:, :, rank] / bias_scale, offset_weight

    def objective(x: torch.Tensor) -> torch.Tensor:
        coefficient, bias, offset_weight = unpack(x)
        # One (n, r) x (r, P * C) product per group: the P problems share the group's coordinates.
        stacked = coefficient.permute(0, 2, 1, 3).reshape(groups, rank, problems * num_classes)
        products = torch.bmm(coordinates, stacked)
        logits = products.view(groups, fitted, problems, num_classes).transpose(1, 2) + bias.unsqueeze(2)
        logits = logits + offset_weight.view(groups, problems, 1, 1) * offsets
        per_example = -(logits.log_softmax(-1).gather(3, targets.unsqueeze(3)).squeeze(3))  # (G, P, n)
        data = (per_example * weights).sum(2)
        linear = x.view(groups, problems, -1)[:, :, :linear_size].reshape(groups, problems, rank + 1, num_classes)
        prior = (penalty * linear[:, :, :rank].square().sum(3)).sum(2)
        if learn_offset_weight:
            prior = prior + offset_weight.square() / (2 * OFFSET_WEIGHT_C)
        return (data + prior).reshape(-1)  # (G * P,)

    size = linear_size + (1 if learn_offset_weight else 0)
    x = minimize_each(objective, torch.zeros(groups * problems, size),
                      tolerance * counts.expand(groups, problems, 1).reshape(-1), max_iterations)  # fmt: skip
    coefficient, bias, offset_weight = unpack(x)
    weight = torch.einsum("gdr,gprc->gpdc", basis, coefficient)
    if single:
        weight, bias, offset_weight = weight[0, 0], bias[0, 0], offset_weight[0, 0]
    return (weight, bias, offset_weight) if learn_offset_weight else (weight, bias)


def principal_coordinates(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the right singular vectors (d, r) and singular values (r,) of its training rows, zero-padded
    to the largest rank among the groups (a zero column adds nothing to the logits, and its weight stays 0)."""
    bases, values = [], []
    for group, rows in zip(features, mask, strict=True):
        _, singular, right = torch.linalg.svd(rows.unsqueeze(1) * group, full_matrices=False)
        keep = singular > singular[:1].clamp_min(1e-12) * 1e-5  # drop directions the training rows do not span
        bases.append(right[keep].T)
        values.append(singular[keep])
    rank = max(len(v) for v in values)
    basis = torch.zeros(len(features), features.shape[2], rank)
    singular = torch.zeros(len(features), rank)
    for g, (b, v) in enumerate(zip(bases, values, strict=True)):
        basis[g, :, : len(v)], singular[g, : len(v)] = b, v
    return basis, singular


def minimize_each(objective, x: torch.Tensor, tolerance: torch.Tensor, max_iterations: int) -> torch.Tensor:
    """Minimise every row of `x` (M, p) under `objective`, which maps (M, p) to M independent values, by L-BFGS
    with a backtracking Armijo line search, each row with its own history, step and stopping test (its largest
    gradient entry under `tolerance[m]`). Rows that have stopped are no longer moved."""
    m, p = x.shape
    steps, changes = torch.zeros(m, HISTORY, p), torch.zeros(m, HISTORY, p)
    curvature = torch.zeros(m, HISTORY)  # 1 / (y . s), 0 for an empty slot
    value, gradient = _value_and_gradient(objective, x)
    active = gradient.abs().amax(1) > tolerance
    for iteration in range(max_iterations):
        if not active.any():
            break
        direction = -_two_loop(gradient, steps, changes, curvature, iteration)
        slope = (direction * gradient).sum(1)
        uphill = slope >= 0  # a stale history can point uphill: restart that row from the gradient
        direction[uphill] = -gradient[uphill]
        slope = torch.where(uphill, -gradient.square().sum(1), slope)
        # The first step has no curvature estimate: scale it to move the largest entry by at most 1.
        step = torch.ones(m) if iteration else (1 / gradient.abs().sum(1).clamp_min(1e-12)).clamp_max(1.0)
        step = step * active
        for _ in range(MAX_BACKTRACKS):
            candidate = x + step.unsqueeze(1) * direction
            with torch.no_grad():
                new_value = objective(candidate)
            failed = active & ~(new_value <= value + ARMIJO * step * slope)
            if not failed.any():
                break
            step = torch.where(failed, step / 2, step)
        else:
            step = torch.where(failed, torch.zeros(()), step)  # no decrease found: leave the row where it is
            candidate = x + step.unsqueeze(1) * direction
        new_value, new_gradient = _value_and_gradient(objective, candidate)
        s, y = candidate - x, new_gradient - gradient
        ys = (s * y).sum(1)
        keep = active & (ys > 1e-10)  # only pairs with positive curvature keep the inverse Hessian positive
        slot = iteration % HISTORY
        steps[keep, slot], changes[keep, slot] = s[keep], y[keep]
        curvature[keep, slot] = 1 / ys[keep]
        x = torch.where(active.unsqueeze(1), candidate, x)
        value_before = value
        value = torch.where(active, new_value, value)
        gradient = torch.where(active.unsqueeze(1), new_gradient, gradient)
        # A row also stops once a step no longer lowers its value beyond float32 rounding: past that point
        # the gradient test measures rounding noise, and the row would only spin until `max_iterations`.
        stalled = value >= value_before
        active = active & (gradient.abs().amax(1) > tolerance) & ~stalled
    return x


def _value_and_gradient(objective, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = objective(x)
        (gradient,) = torch.autograd.grad(value.sum(), x)  # rows are independent: each gets its own gradient
    return value.detach(), gradient


def _two_loop(
    gradient: torch.Tensor, steps: torch.Tensor, changes: torch.Tensor, curvature: torch.Tensor, iteration: int
) -> torch.Tensor:
    """The L-BFGS two-loop recursion, every row with its own history: an approximation of H^-1 g."""
    q = gradient.clone()
    order = [(iteration - 1 - k) % HISTORY for k in range(min(iteration, HISTORY))]  # newest first
    alphas = {}
    for k in order:
        alphas[k] = curvature[:, k] * (steps[:, k] * q).sum(1)
        q -= alphas[k].unsqueeze(1) * changes[:, k]
    if order:  # scale by the newest pair's s.y / y.y (rows with an empty slot keep the identity)
        newest = order[0]
        yy = changes[:, newest].square().sum(1)
        gamma = torch.where((curvature[:, newest] > 0) & (yy > 0), 1 / (curvature[:, newest] * yy).clamp_min(1e-30),
                            torch.ones(()))  # fmt: skip
        q *= gamma.unsqueeze(1)
    for k in reversed(order):
        beta = curvature[:, k] * (changes[:, k] * q).sum(1)
        q += (alphas[k] - beta).unsqueeze(1) * steps[:, k]
    return q
