"""Refuse, before training starts, a DeepSpeed config that would rewrite the frozen decoder's weights.

DeepSpeed edits every parameter of the model it is given, trainable or not, in two places:
- `fp16.enabled` / `bf16.enabled` cast all parameters to half precision in place when the engine starts, so an
  fp32 decoder stops being the fingerprinted one (and the task encoder stops matching the shared decoder). A
  decoder already held in that dtype (`FrozenDecoderConfig.decoder_dtype`) is left as it is, and is accepted;
  an fp32 engine with a bf16/fp16 decoder is accepted too (mixed dtypes: the boundary casts of `precision.py`);
- `compression_training` quantizes or prunes the weights of every matching layer, the decoder's included.
One more key decides whether the Trainer can save at all, and would otherwise only fail at the first checkpoint:
- `zero_optimization.stage3_gather_16bit_weights_on_model_save` must be true for a `FrozenDecoderModel`: the
  Trainer treats it as a PEFT model, gathers only its trainable tensors and hands them to `save_pretrained`.
  It must be false for a `MultiEncoderModel` in training: the Trainer would write a consolidated copy of the
  whole model in which tied tensors stay shared, which `safetensors` refuses; `FrozenDecoderCallback` writes
  the task artifacts instead.
The optimizer itself is safe: the Trainer hands DeepSpeed the trainable parameters only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft import PeftModel

from .base import BASE_PREFIX, FrozenDecoderBase

_HALF_PRECISION = (("fp16", torch.float16), ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16))


def deepspeed_config_of(args: Any) -> Mapping[str, Any] | None:
    """The DeepSpeed config a Trainer will use: from `--deepspeed`, or from an `accelerate launch` config."""
    hf_config = getattr(args, "hf_deepspeed_config", None)
    if hf_config is not None:
        return hf_config.config
    plugin = getattr(args, "deepspeed_plugin", None)
    return getattr(plugin, "deepspeed_config", None)


def check_deepspeed_config(config: Mapping[str, Any], model: FrozenDecoderBase) -> None:
    """Raise a `ValueError` naming the key if DeepSpeed would change the frozen decoder under `config`."""
    decoder_dtypes = {t.dtype for t in model.decoder_tensors().values() if t.is_floating_point()}
    for key, dtype in _HALF_PRECISION:
        enabled = (config.get(key) or {}).get("enabled", False)
        # "auto" is resolved from the TrainingArguments later (`--bf16` / `--fp16`); the Trainer fills it in
        # before the callbacks run, so only `accelerate launch` configs can still hold it here.
        if enabled is True and decoder_dtypes - {dtype}:
            have = ", ".join(sorted(str(d).removeprefix("torch.") for d in decoder_dtypes))
            want = str(dtype).removeprefix("torch.")
            raise ValueError(
                f"DeepSpeed config key `{key}.enabled` is true: DeepSpeed would cast every parameter to {want} when "
                f"training starts, the frozen decoder ({have}) included, so it would no longer be the decoder the "
                f"task encoder is trained for. Hold the decoder in {want} from the start with "
                f'`FrozenDecoderConfig(decoder_dtype="{want}")` (the encoder keeps fp32 master weights in '
                f"DeepSpeed's optimizer), or set `{key}.enabled` to false: an fp32 engine also trains an fp32 "
                f"encoder against a `decoder_dtype` decoder."
            )
    zero = config.get("zero_optimization") or {}
    gather_key = "stage3_gather_16bit_weights_on_model_save"
    gather = zero.get(gather_key)
    if zero.get("stage") == 3 and isinstance(model, PeftModel) and gather is not True:
        raise ValueError(
            f"DeepSpeed ZeRO-3 config key `zero_optimization.{gather_key}` is {gather!r}: the Trainer could then "
            "not gather the encoder to save it, and `save_model()` would leave only DeepSpeed's sharded files. Set "
            "it to true (for `accelerate launch`: `zero3_save_16bit_model: true`): for a FrozenDecoderModel the "
            "Trainer gathers only the trainable encoder tensors, as for a PEFT adapter."
        )
    aliases = model.tensor_aliases()
    if zero.get("stage") == 3 and not isinstance(model, PeftModel) and gather is True and aliases:
        raise ValueError(
            f"DeepSpeed config key `zero_optimization.{gather_key}` is true: the Trainer would then save a "
            f"consolidated copy of the whole {type(model).__name__} whose tied tensors (e.g. "
            f"{sorted(aliases)[0].removeprefix(BASE_PREFIX)!r}) share memory, which safetensors refuses, "
            "and the run would fail at its first checkpoint. Set it to false (for `accelerate launch`: "
            "`zero3_save_16bit_model: false`): every checkpoint still holds DeepSpeed's state for resuming and "
            "the gathered task artifacts that `FrozenDecoderCallback` writes."
        )
    for technique, settings in (config.get("compression_training") or {}).items():
        shared = settings.get("shared_parameters", {}) if isinstance(settings, Mapping) else {}
        if shared.get("enabled", False):
            raise ValueError(
                f"DeepSpeed config key `compression_training.{technique}.shared_parameters.enabled` is true: "
                "compression rewrites the weights of every matching layer, the frozen decoder's included, which "
                "would change the decoder that all task encoders share. Set it to false."
            )
