"""`FrozenDecoderRecord`: what a task encoder needs of its base model, saved beside its weights."""

from __future__ import annotations

import dataclasses

from ..config import AdapterRecord


@dataclasses.dataclass
class FrozenDecoderRecord(AdapterRecord):
    """What a frozen-decoder artifact needs of its base model.

    Args:
        decoder_fingerprint (`str`): SHA-256 of every decoder-side tensor of the base model.
        frozen_encoder_fingerprint (`str`, *optional*): SHA-256 of the encoder-side tensors the artifact does
            not store but relies on (LoRA's base weights, a frozen embedding); `None` when there are none.
        base_config (`dict`, *optional*): the base model's config fields that change what the decoder computes
            (`utils.fingerprint.numeric_config`); unset in artifacts of hf-frozen 0.1.
    """

    SHA256_FIELDS = ("weights_sha256", "decoder_fingerprint", "frozen_encoder_fingerprint")
    LEGACY_KEYS = {"decoder_fingerprint": "decoder_fingerprint",
                   "frozen_encoder_fingerprint": "frozen_encoder_fingerprint"}  # fmt: skip

    decoder_fingerprint: str | None = None
    frozen_encoder_fingerprint: str | None = None
    base_config: dict | None = None
