"""Centring and scaling the cached features before a head reads them (shared by the prototype and linear heads)."""

from __future__ import annotations

import torch

# `standardize=None` standardises h when its largest per-dimension RMS exceeds this many times the median one.
# Measured on the bench's training caches: SmolLM2 21.9 to 25.2, MiniLM 1.7 to 2.5.
MASSIVE_DIMENSION_RATIO = 8.0

# How the linear head scales the centred hidden states before its L2 penalty. "per_dimension" (the shrunk scale
# of `DecTHead.fit_statistics`) treats every dimension alike; "global" divides all of them by one number, the
# root mean variance, so that dimensions that vary more cost less to use, as in a probe fitted on the raw
# features, while C keeps one meaning whatever the backbone's scale. Measured on pool dev splits
# (bench/choose_dect_defaults.py, MiniLM, 16 cells): with per-dimension scaling alone DecT met the floor in 14,
# 1.1 points under the raw-feature probe on 64-shot election tweets and 16-shot `text_sources`; with both, in 15.
FEATURE_SCALINGS = ("per_dimension", "global")


def wants_standardization(hidden_states: torch.Tensor, setting: bool | None) -> bool:
    """`setting`, or, when it is unset, whether a few dimensions dominate `hidden_states` (N, d)."""
    if setting is not None:
        return setting
    rms = hidden_states.float().square().mean(0).sqrt()
    return bool(rms.max() > MASSIVE_DIMENSION_RATIO * rms.median())


def shrunk_scale(variance: torch.Tensor) -> torch.Tensor:
    """Per-dimension scale sqrt(var_d + median(var)) over the last dimension (see `DecTHead.fit_statistics`)."""
    return (variance + variance.median(dim=-1, keepdim=True).values).sqrt().clamp_min(1e-6)


def feature_statistics(hidden_states: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) of `hidden_states` (..., N, d) over N: per dimension, or one for all (`FEATURE_SCALINGS`)."""
    mean = hidden_states.mean(-2)
    variance = hidden_states.var(-2, unbiased=False)
    if scaling == "per_dimension":
        return mean, shrunk_scale(variance)
    return mean, variance.mean(-1, keepdim=True).sqrt().clamp_min(1e-6).expand_as(variance).contiguous()
