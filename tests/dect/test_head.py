"""The heads: the prototype head's standardisation of the hidden states, the linear head."""

import torch

from ..tiny_dect import make, sentiment


def test_standardisation_is_fitted_and_can_be_switched_off():
    on = make("callable", standardize_hidden=True, head="prototype")
    off = make("callable", standardize_hidden=False, head="prototype")
    on.fit(sentiment(16))
    off.fit(sentiment(16))
    hidden, _, _ = on.features(sentiment(16))
    torch.testing.assert_close(on.head.feature_mean, hidden.mean(0))
    assert torch.equal(off.head.feature_mean, torch.zeros_like(off.head.feature_mean))
    assert torch.equal(off.head.feature_scale, torch.ones_like(off.head.feature_scale))


def test_standardisation_by_default_only_when_a_few_dimensions_dominate():
    from hf_frozen.dect.heads import DecTHead

    torch.manual_seed(0)
    even = torch.randn(32, 16)
    massive = even.clone()
    massive[:, 3] = 20 + massive[:, 3]  # one massive activation dimension, as in decoder LMs
    labels = torch.arange(32) % 2
    for hidden, standardized in ((even, False), (massive, True)):
        head = DecTHead(16, 2, 8)
        head.fit_statistics(hidden)
        head.init_radius(hidden, labels)
        assert bool((head.feature_scale != 1).any()) is standardized


def test_linear_head_without_the_prompt_is_scikit_learns_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from hf_frozen.dect.heads import LinearHead, fit_linear_head

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 12, generator=generator) * 2
    labels = torch.arange(60) % 3
    hidden = centres[labels] + torch.randn(60, 12, generator=generator) * 3
    head = LinearHead(12, 3, regularization=0.5)
    fit_linear_head(head, hidden, None, labels)
    standardized = ((hidden - head.feature_mean) / head.feature_scale).numpy()
    reference = LogisticRegression(C=0.5, tol=1e-8, max_iter=5000).fit(standardized, labels.numpy())
    with torch.no_grad():
        probabilities = head(hidden).logits.softmax(-1).numpy()
    assert abs(probabilities - reference.predict_proba(standardized)).max() < 1e-3


def test_linear_head_is_chosen_saved_and_loaded(tmp_path):
    from hf_frozen import AutoFrozenModel
    from hf_frozen.dect.heads import LinearHead

    from ..tiny_dect import ClusterAPI

    dect = make("callable", head="linear", regularization_candidates=[0.3, 3.0])
    dect.fit(sentiment(32))
    assert isinstance(dect.head, LinearHead) and dect.record.head_type == "linear"
    assert dect.record.regularization in (0.3, 3.0) and dect.record.steps == 0
    assert not any(name.startswith("weight=") for name in dect.cv_results), "prototype heads were not asked for"
    assert dect.evaluate(sentiment(100, seed=3))["accuracy"] > 0.9
    dect.save_pretrained(tmp_path / "head")
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "head", base_model=ClusterAPI())
    assert isinstance(loaded.head, LinearHead) and loaded.record.head_type == "linear"
    saved = dect.head.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in loaded.head.state_dict().items())


def test_global_scaling_keeps_the_dimensions_relative_sizes():
    from sklearn.linear_model import LogisticRegression

    from hf_frozen.dect.heads import LinearHead, fit_linear_head

    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(60) % 3
    hidden = torch.randn(60, 6, generator=generator) * torch.tensor([5.0, 1, 1, 1, 1, 0.1])
    hidden[:, 0] += 4 * labels  # the informative dimension is also the widest
    head = LinearHead(6, 3, regularization=0.2, scaling="global")
    fit_linear_head(head, hidden, None, labels)
    assert torch.equal(head.feature_scale, head.feature_scale[0].expand(6)), "one scale for every dimension"
    torch.testing.assert_close(head.feature_scale[0], hidden.var(0, unbiased=False).mean().sqrt())
    scaled = ((hidden - head.feature_mean) / head.feature_scale).numpy()
    reference = LogisticRegression(C=0.2, tol=1e-8, max_iter=5000).fit(scaled, labels.numpy())
    with torch.no_grad():
        probabilities = head(hidden).logits.softmax(-1).numpy()
    assert abs(probabilities - reference.predict_proba(scaled)).max() < 1e-3


def test_linear_head_scaling_is_recorded_and_loaded(tmp_path):
    import pytest

    from hf_frozen import AutoFrozenModel
    from hf_frozen.dect.heads import LinearHead

    with pytest.raises(ValueError, match="scaling"):
        LinearHead(4, 2, scaling="per_class")
    dect = make("callable", head="linear", regularization_candidates=[1.0])
    dect.fit(sentiment(32))
    assert dect.record.scaling in ("per_dimension", "global")
    assert {name.rsplit(", ", 1)[-1] for name in dect.cv_results if name.startswith("linear")} == {
        "per_dimension scaling",
        "global scaling",
    }, "both scalings are cross-validated"
    dect.save_pretrained(tmp_path / "head")
    loaded = AutoFrozenModel.from_pretrained(tmp_path / "head", base_model=dect.backbone.fn)
    assert loaded.head.scaling == dect.record.scaling == loaded.record.scaling
    hidden, scores, _ = dect.features(sentiment(20, seed=5))  # the stand-in API's answers are random per call
    with torch.no_grad():
        torch.testing.assert_close(loaded.head(hidden, scores).logits, dect.head(hidden, scores).logits)
