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


def test_batched_problems_each_reach_their_own_minimum():
    # Two feature groups (different training rows), each shared by problems that differ in C and offset: every
    # problem's solution equals the one it gets when solved alone, whatever the other problems' conditioning.
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
            alone_weight, alone_bias = solve_logistic(features[rows], offsets[g, p][rows], labels[rows], 4,
                                                      float(strengths[g, p]))  # fmt: skip
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
