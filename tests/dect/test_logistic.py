"""The linear head's solver: many regularised logistic regressions at once, each to its own minimum."""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from hf_frozen.dect.logistic import solve_logistic


def clusters(n: int, dimensions: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dimensions, generator=generator)
    return centres[labels] + 2 * torch.randn(n, dimensions, generator=generator), labels


def scikit_learn(features: torch.Tensor, labels: torch.Tensor, regularization: float) -> np.ndarray:
    """scikit-learn's probabilities, in float64 to a tight tolerance (three or more classes, where its multinomial
    penalty is ours)."""
    model = LogisticRegression(C=regularization, tol=1e-10, max_iter=10000).fit(features.double(), labels)
    return model.predict_proba(features.double())


def test_one_problem_with_more_dimensions_than_examples_is_scikit_learns():
    # 24 examples in 200 dimensions: solved in the training rows' 24 principal coordinates, rotated back.
    features, labels = clusters(24, 200, 3, seed=0)
    for regularization in (0.01, 1.0):
        weight, bias = solve_logistic(features, 0.0, labels, 3, regularization)
        assert weight.shape == (200, 3) and bias.shape == (3,)
        probabilities = (features @ weight + bias).softmax(-1).numpy()
        assert abs(probabilities - scikit_learn(features, labels, regularization)).max() < 1e-3


def objective(features, offset, labels, regularization, weight, bias) -> float:
    """The solver's objective, sum_i CE(x_i W + b + offset_i, y_i) + ||W||^2 / (2 C), in float64."""
    logits = features.double() @ weight.double() + bias.double() + offset.double()
    return float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
                 + weight.double().pow(2).sum() / (2 * regularization))  # fmt: skip


def float64_minimum(features, offset, labels, classes, regularization) -> float:
    """The objective's minimum, found by scipy's L-BFGS in float64 to a tight tolerance (the reference)."""
    from scipy.optimize import minimize

    d = features.shape[1]

    def value_and_gradient(flat):
        w = torch.tensor(flat, dtype=torch.float64, requires_grad=True)
        weight, bias = w[: d * classes].view(d, classes), w[d * classes :]
        logits = features.double() @ weight + bias + offset.double()
        value = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") + weight.pow(2).sum() / (
            2 * regularization
        )
        value.backward()
        return value.item(), w.grad.numpy().copy()

    result = minimize(value_and_gradient, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B",
                      options={"maxiter": 20000, "gtol": 1e-10, "ftol": 1e-15})  # fmt: skip
    return float(result.fun)


def test_batched_problems_each_reach_their_own_minimum():
    # Two feature groups (different training rows), each shared by problems that differ in C and offset: every
    # problem reaches its own minimum, whatever the other problems' conditioning. What is minimised is the
    # objective, so that is what is compared, against a float64 reference: a weakly regularised problem (C = 10) on
    # separable clusters has a flat valley at its minimum, where float32 solutions that differ in the order of their
    # sums (AVX2, AVX-512, AMX kernels) agree in the objective to about 1e-5 but not in the logits (0.03 apart were
    # seen). The bound, 1e-4 of the objective, is 18 times the largest gap seen here, and 17 times below that of the
    # same solver stopped after 50 iterations (2.6e-3 at C = 10), so a solver that stops short still fails.
    features, labels = clusters(40, 30, 4, seed=1)
    offset = torch.randn(40, 4, generator=torch.Generator().manual_seed(2))
    in_training = torch.ones(2, 40, dtype=torch.bool)
    in_training[0, :10], in_training[1, 30:] = False, False
    strengths = torch.tensor([[0.001, 0.1, 10.0], [0.001, 0.1, 10.0]])
    offsets = torch.stack([torch.stack([0 * offset, offset, 3 * offset])] * 2)
    weight, bias = solve_logistic(features.expand(2, -1, -1), offsets, labels, 4, strengths, in_training=in_training)
    for g in range(2):
        rows = in_training[g]
        for p in range(3):
            args = features[rows], offsets[g, p][rows], labels[rows], float(strengths[g, p])
            minimum = float64_minimum(args[0], args[1], args[2], 4, args[3])
            alone_weight, alone_bias = solve_logistic(args[0], args[1], args[2], 4, args[3])
            for w, b in ((weight[g, p], bias[g, p]), (alone_weight, alone_bias)):
                assert objective(*args, w, b) - minimum <= 1e-4 * max(1.0, abs(minimum)), (g, p, minimum)
            if strengths[g, p] <= 0.1:  # a well-conditioned minimum: the solutions themselves agree
                batched = features @ weight[g, p] + bias[g, p]
                torch.testing.assert_close(batched, features @ alone_weight + alone_bias, atol=0.02, rtol=0)
        # Without an offset the problem is scikit-learn's, on the group's training rows.
        probabilities = (features[rows] @ weight[g, 0] + bias[g, 0]).softmax(-1).numpy()
        assert abs(probabilities - scikit_learn(features[rows], labels[rows], 0.001)).max() < 1e-3


def test_the_offset_is_added_and_corrected_not_ignored():
    features, labels = clusters(30, 8, 3, seed=3)
    # A prompt that is always confidently right: with it as the offset, a strongly penalised head stays near zero.
    offset = 8.0 * torch.nn.functional.one_hot(labels, 3).float()
    weight, bias = solve_logistic(features, offset, labels, 3, 0.01)
    assert weight.abs().max() < 0.05
    without, _ = solve_logistic(features, 0.0, labels, 3, 0.01)
    assert without.abs().max() > 10 * weight.abs().max()


def test_degenerate_features_give_the_class_prior():
    # Identical rows, once centred (as the linear head centres them), span nothing: there is no direction to
    # weigh, so the solution is the bias alone, the log class prior.
    labels = torch.tensor([0, 0, 0, 1])
    weight, bias = solve_logistic(torch.zeros(4, 5), 0.0, labels, 2, 1.0)
    assert torch.equal(weight, torch.zeros(5, 2))
    torch.testing.assert_close(bias.softmax(-1), torch.tensor([0.75, 0.25]), atol=1e-4, rtol=0)
