"""`DecTRecord`: what fitting a DecT head learned, saved beside its weights as `hf_frozen_record.json`."""

from __future__ import annotations

import dataclasses
import math

from ..config import AdapterRecord

MAX_HIDDEN_SIZE = 1 << 16  # the largest models have 16,384: a larger size is a damaged record


@dataclasses.dataclass
class DecTRecord(AdapterRecord):
    """The backbone a head was fitted on and the choices fitting made.

    Args:
        backbone_kind (`str`): `masked_lm`, `causal_lm`, `seq2seq_lm`, `encoder`, `endpoint` or `callable`.
        backbone_fingerprint (`str`): SHA-256 of the backbone's weights, vocabulary and chat template (or of a
            callable's name).
        backbone_settings_fingerprint (`str`, *optional*): SHA-256 of the backbone's config fields that change
            its outputs and of its tokenizer's whole pipeline (normaliser included); unset in heads of hf-frozen 0.1.
        hidden_size (`int`): size of the hidden states `h` the head reads.
        zero_shot_weight (`float`, *optional*): the weight of the zero-shot scores in the head's logits (chosen by
            cross-validation for the prototype head, learned by the linear head); unset for the prompt alone. Heads
            written before 0.3 stored the prompt alone here as `"prompt_only"`; it is read as `head_type="prompt"`.
        steps (`int`): the optimizer steps the head was trained for.
        calibrate (`bool`, *optional*): whether the zero-shot scores in use are calibrated (`None` without
            label-word scores).
        head_type (`str`, *optional*): `"prompt"`, `"prototype"` or `"linear"` (`heads.HEADS`); unset in heads
            written before 0.2 (prototype).
        regularization (`float`, *optional*): the linear head's inverse L2 strength C.
        scaling (`str`, *optional*): the linear head's feature scaling (`head.FEATURE_SCALINGS`); unset (read as
            `"per_dimension"`) in heads written before it was recorded.
        endpoint (`dict`, *optional*): for an endpoint backbone, its URL, model and scoring settings, and the name of
            the environment variable holding its API key (never the key).
        feature_model (`dict`, *optional*): the second model the head's features come from, when not the
            backbone: its kind, name or path, fingerprints, pooling and feature size (`features.FeatureModel`).
    """

    LEGACY_KEYS = {
        "backbone_kind": "backbone_kind",
        "backbone_fingerprint": "backbone_fingerprint",
        "hidden_size": "hidden_size",
        "zero_shot_weight": "selected_zero_shot_weight",
        "steps": "selected_steps",
        "calibrate": "selected_calibrate",
    }

    backbone_kind: str | None = None
    backbone_fingerprint: str | None = None
    backbone_settings_fingerprint: str | None = None
    hidden_size: int | None = None
    zero_shot_weight: float | str | None = None
    steps: int | None = None
    calibrate: bool | None = None
    head_type: str | None = None
    regularization: float | None = None
    scaling: str | None = None
    endpoint: dict | None = None
    feature_model: dict | None = None

    def __post_init__(self) -> None:
        if self.zero_shot_weight == "prompt_only":  # written before 0.3: the prompt alone was a weight value
            self.head_type, self.zero_shot_weight = "prompt", None

    def check(self) -> str | None:
        kinds = ("masked_lm", "causal_lm", "seq2seq_lm", "encoder", "endpoint", "callable")  # backbones/
        weight = self.zero_shot_weight
        if self.backbone_kind not in (None, *kinds):
            return f"it records the backbone kind {self.backbone_kind!r}, which is none of {list(kinds)}"
        if self.hidden_size is not None and not 0 < self.hidden_size <= MAX_HIDDEN_SIZE:
            return f"`hidden_size` must be from 1 to {MAX_HIDDEN_SIZE}, got {self.hidden_size!r}"
        if weight is not None and (isinstance(weight, str) or not math.isfinite(weight)):
            return f"`zero_shot_weight` must be a finite number, got {weight!r}"
        if self.steps is not None and self.steps < 0:
            return f"`steps` must be >= 0, got {self.steps!r}"
        if self.head_type not in (None, "prompt", "prototype", "linear"):  # heads.HEADS (heads/ needs torch)
            return f"`head_type` must be 'prompt', 'prototype' or 'linear', got {self.head_type!r}"
        if self.regularization is not None and self.regularization <= 0:
            return f"`regularization` must be > 0, got {self.regularization!r}"
        if self.scaling not in (None, "per_dimension", "global"):  # head.FEATURE_SCALINGS (head.py needs torch)
            return f"`scaling` must be 'per_dimension' or 'global', got {self.scaling!r}"
        return super().check()
