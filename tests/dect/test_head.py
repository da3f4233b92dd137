"""The prototype head: standardisation of the hidden states."""

import torch

from ..tiny_dect import make, sentiment


def test_standardisation_is_fitted_and_can_be_switched_off():
    on, off = make("callable", standardize_hidden=True), make("callable", standardize_hidden=False)
    on.fit(sentiment(16))
    off.fit(sentiment(16))
    hidden, _, _ = on.features(sentiment(16))
    torch.testing.assert_close(on.head.feature_mean, hidden.mean(0))
    assert torch.equal(off.head.feature_mean, torch.zeros_like(off.head.feature_mean))
    assert torch.equal(off.head.feature_scale, torch.ones_like(off.head.feature_scale))


def test_standardisation_by_default_only_when_a_few_dimensions_dominate():
    from hf_frozen.dect.head import DecTHead

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
