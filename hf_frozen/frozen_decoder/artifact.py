"""The frozen-decoder artifact: a task encoder's weights plus the fingerprints of the frozen model it needs.

Written and read the same way by `FrozenDecoderModel` and `MultiEncoderModel`:

    adapter_model.safetensors     the trainable encoder-side tensors, under PEFT's names
                                  (`base_model.model.<name in the base model>`, LoRA weights without the
                                  adapter name)
    hf_frozen_record.json         FrozenDecoderRecord: fingerprints of the decoder side and of the frozen
                                  encoder-side tensors the artifact relies on (LoRA base weights, a tied embedding)
    hf_frozen_config.json         FrozenDecoderConfig: how the encoder was trained

    adapter_config.json           PEFT's `LoraConfig`, for an encoder trained with LoRA alone: the artifact is then
                                  a PEFT adapter (`PeftModel.from_pretrained(base, folder)` opens it)

Loading checks both fingerprints before any tensor is copied, so an encoder never lands on a decoder it was not
trained against.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

from ..config import CONFIG_NAME, PEFT_CONFIG_NAME, adapter_file_writers, load_adapter_files
from ..errors import ArtifactError
from ..utils.io import write_files_together
from ..utils.zero3 import full_copies, gathered
from .base import BASE_PREFIX
from .config import FrozenDecoderConfig
from .freezing import ADAPTER_NAME, lora_config
from .record import FrozenDecoderRecord

_ADAPTER_NAME_IN_KEY = re.compile(rf"\.(lora_[A-Za-z_]+)\.{ADAPTER_NAME}(?=\.|$)")
_LORA_KEY = re.compile(r"\.(lora_[A-Za-z_]+)(?=\.|$)")


def to_file_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base-model names -> the names in the weights file, PEFT's (prefixed, LoRA weights without adapter name)."""
    return {BASE_PREFIX + _ADAPTER_NAME_IN_KEY.sub(r".\1", name): t for name, t in tensors.items()}


def from_file_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `to_file_names`; names of hf-frozen 0.1 files (plain base-model names) pass unchanged."""
    if not all(name.startswith(BASE_PREFIX) for name in tensors):
        return tensors
    return {_LORA_KEY.sub(rf".\1.{ADAPTER_NAME}", name.removeprefix(BASE_PREFIX)): t for name, t in tensors.items()}


def peft_adapter_config(config: FrozenDecoderConfig, encoder_prefix: str) -> str | None:
    """PEFT's `adapter_config.json` for an encoder trained with LoRA alone, else `None` (PEFT could not rebuild
    a private encoder embedding or a fully trained encoder).

    The targets are written as one regular expression anchored at the encoder, so PEFT adapts the encoder's
    layers and never the decoder's same-named ones.
    """
    if config.encoder_training != "lora" or config.train_encoder_embeddings:
        return None
    targets = "|".join(re.escape(name) for name in config.lora_target_modules)
    peft_config = lora_config(config)
    peft_config.target_modules = rf"{re.escape(encoder_prefix)}(.*\.)?({targets})"
    peft_config.task_type = "SEQ_2_SEQ_LM"
    peft_config.inference_mode = True  # as PEFT writes it
    peft_config.base_model_name_or_path = config.base_model_name_or_path
    peft_config.revision = config.revision
    return json.dumps(peft_config.to_dict(), indent=2, sort_keys=True, default=sorted) + "\n"


def save_encoder_artifact(
    save_directory: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    config: FrozenDecoderConfig,
    record: FrozenDecoderRecord,
    encoder_prefix: str,
    is_main_process: bool = True,
) -> None:
    """Write an artifact. Under ZeRO-3 call it on every process: the tensors are gathered, the main one writes."""
    tensors = full_copies(tensors)
    if is_main_process:
        write_files_together(save_directory, encoder_artifact_writers(tensors, config, record, encoder_prefix))


def encoder_artifact_writers(
    tensors: dict[str, torch.Tensor],
    config: FrozenDecoderConfig,
    record: FrozenDecoderRecord,
    encoder_prefix: str,
    on_checksum: Any = None,
) -> dict[str, Any]:
    """The files of an artifact (file name -> `write(path)`), PEFT's `adapter_config.json` among them when PEFT
    can load it; `on_checksum(sha256)` is called with the weights' checksum as they are written."""
    peft_config = peft_adapter_config(config, encoder_prefix)
    extra = {PEFT_CONFIG_NAME: peft_config} if peft_config else None
    return adapter_file_writers(to_file_names(tensors), config, record, extra, on_checksum)


def load_encoder_artifact(
    path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> tuple[FrozenDecoderConfig, FrozenDecoderRecord, dict[str, torch.Tensor]]:
    """(config, record, tensors by base-model name) of an artifact in a local folder or a Hub repository.

    LoRA weights whose rank is not the config's `lora_r` are refused here, before any layer is built from the
    config (a damaged `lora_r` could otherwise ask for any amount of memory).
    """
    config, record, tensors = load_adapter_files(path_or_repo_id, FrozenDecoderConfig, revision, token)
    ranks = {int(t.shape[0]) if t.dim() == 2 else -1 for name, t in tensors.items() if ".lora_A" in name}
    if config.encoder_training == "lora" and ranks != {config.lora_r} or config.encoder_training != "lora" and ranks:
        raise ArtifactError(
            f"The artifact {path_or_repo_id} is damaged: its {CONFIG_NAME} says `encoder_training="
            f"{config.encoder_training!r}`, `lora_r={config.lora_r}`, but its weights hold LoRA matrices of rank(s) "
            f"{sorted(ranks) or 'none'}. Save it again, or download it again."
        )
    return config, record, from_file_names(tensors)


def check_fingerprints(
    recorded: FrozenDecoderRecord, actual: FrozenDecoderRecord, what: str, base_name: str, recorded_base: str | None
) -> None:
    """Refuse an artifact whose recorded fingerprints differ from those of the base model it is loaded onto.

    `what` starts the message: "The encoder in <folder>", or "Task 'qa': the encoder in <folder>".
    """
    if recorded.decoder_fingerprint != actual.decoder_fingerprint:
        raise ValueError(
            f"{what} was trained against a different decoder than the one of base model {base_name!r}: recorded "
            f"decoder fingerprint {str(recorded.decoder_fingerprint)[:16]}..., this base has "
            f"{str(actual.decoder_fingerprint)[:16]}... Load it onto the base it was trained with (recorded: "
            f"{recorded_base!r}), in the same dtype."
        )
    if recorded.base_config is not None and recorded.base_config != actual.base_config:
        fields = sorted(k for k in recorded.base_config.keys() | actual.base_config.keys()
                        if recorded.base_config.get(k) != actual.base_config.get(k))  # fmt: skip
        changes = ", ".join(
            f"{k}: {recorded.base_config.get(k)!r} -> {actual.base_config.get(k)!r}" for k in fields[:5]
        )
        raise ValueError(
            f"{what} was trained against a decoder with another config than base model {base_name!r} ({changes}): "
            f"the same weights would compute something else. Load it onto the base it was trained with (recorded: "
            f"{recorded_base!r}), with its config unchanged."
        )
    if recorded.frozen_encoder_fingerprint != actual.frozen_encoder_fingerprint:
        raise ValueError(
            f"{what} relies on frozen encoder weights of its base model (LoRA base weights or a frozen embedding) "
            f"that differ in base model {base_name!r}. Load it onto the base it was trained with (recorded: "
            f"{recorded_base!r})."
        )


def copy_artifact_tensors(targets: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy `tensors` into `targets` (same names), refusing any missing, extra or mis-shaped tensor first."""
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"The weights in {source} do not match this frozen-decoder model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all), unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all). Was the artifact saved with "
            f"another `encoder_training` / `train_encoder_embeddings` setting or another architecture?"
        )
    with gathered(targets.values(), modify=True):  # under ZeRO-3, shapes and values are the full ones here
        for name, target in targets.items():
            if tensors[name].shape != target.shape:
                raise ValueError(
                    f"Tensor {name!r} in {source} has shape {tuple(tensors[name].shape)}, the model expects "
                    f"{tuple(target.shape)}: the artifact belongs to another architecture."
                )
        with torch.no_grad():
            for name, target in targets.items():
                target.copy_(tensors[name])
