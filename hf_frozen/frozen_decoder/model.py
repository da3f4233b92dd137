"""`FrozenDecoderModel`: an encoder-decoder model whose decoder side is frozen bit for bit.

The wrapper mirrors `peft.PeftModel`: it wraps the base model in place, forwards attribute lookups to it, and
saves only what training changes (the encoder side) plus a fingerprint of the frozen decoder it needs.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel

from ..fingerprint import fingerprint_tensors
from ..hub import HubMixin, resolve_file
from ..io import load_tensors, save_tensors
from ..zero3 import any_partitioned, full_copies, full_numel, gathered
from .config import FrozenDecoderConfig
from .freezing import check_encoder_decoder, freeze_all_but_encoder
from .sides import TensorSides, module_prefix, split_sides

WEIGHTS_NAME = "hf_frozen_model.safetensors"


class FrozenDecoderModel(HubMixin, nn.Module):
    """An encoder-decoder model with a frozen decoder; a drop-in model for `Seq2SeqTrainer`.

    Create one with `hf_frozen.get_frozen_model(model, FrozenDecoderConfig(...))` and load one with
    `hf_frozen.AutoFrozenModel.from_pretrained(...)`. The base model is modified in place.

    Args:
        base_model ([`~transformers.PreTrainedModel`]): an encoder-decoder model (T5, BART, Marian, ...).
        config ([`FrozenDecoderConfig`]): what to train on the encoder side.
    """

    def __init__(self, base_model: PreTrainedModel, config: FrozenDecoderConfig) -> None:
        super().__init__()
        check_encoder_decoder(base_model)
        if getattr(base_model, "_hf_frozen_adapter", None):
            raise ValueError(
                f"This {type(base_model).__name__} already carries an hf-frozen adapter (wrapping changes the base "
                "model in place). Load a fresh copy of the base model for each adapter."
            )
        config = copy.deepcopy(config)
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(base_model.config, "_name_or_path", None) or None
        self.base_model = base_model
        self.frozen_config = config
        self.encoder_prefix = module_prefix(base_model, base_model.get_encoder())
        freeze_all_but_encoder(base_model, self.encoder_prefix, config)
        base_model._hf_frozen_adapter = config.ADAPTER_TYPE

        sides = self._sides()
        leaking = sorted(name for name, t in sides.decoder.items() if t.requires_grad)
        if leaking:  # A guard against bugs here and in exotic architectures: never train the decoder.
            raise RuntimeError(f"Decoder-side tensors would be trained: {leaking}. Please report this.")
        # What the artifact stores: exactly the encoder-side weights that train.
        self.artifact_keys = sorted(name for name, t in sides.encoder.items() if t.requires_grad)
        config.decoder_fingerprint = fingerprint_tensors(sides.decoder)
        config.frozen_encoder_fingerprint = self._frozen_encoder_fingerprint(sides)

        # Tied tensors would be saved once per name, which safetensors refuses (Trainer checkpoints of a
        # non-PreTrainedModel are plain `save_file(model.state_dict())`): keep each once, restore on load.
        self._aliases = {f"base_model.{a}": f"base_model.{c}" for a, c in sides.aliases.items()}
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_restore_aliases)
        # Trainer keeps only the dataset columns that `model.forward` names: show it the base model's signature.
        self.forward = functools.update_wrapper(
            functools.partial(FrozenDecoderModel.forward, self), base_model.forward
        )

    @classmethod
    def from_base_model(cls, base_model: PreTrainedModel, config: FrozenDecoderConfig) -> FrozenDecoderModel:
        """What `hf_frozen.get_frozen_model` calls."""
        return cls(base_model, config)

    # -- plumbing ---------------------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper lacks come from the base model (`config`, `generation_config`, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)

    def get_base_model(self) -> PreTrainedModel:
        return self.base_model

    def _sides(self) -> TensorSides:
        return split_sides(self.base_model, self.encoder_prefix)

    def _frozen_encoder_fingerprint(self, sides: TensorSides) -> str | None:
        stored = set(self.artifact_keys)
        frozen = {name: t for name, t in sides.encoder.items() if name not in stored}
        return fingerprint_tensors(frozen) if frozen else None

    # -- inspection -------------------------------------------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters), each tied tensor counted once."""
        params = {id(p): p for p in self.base_model.parameters()}.values()
        return sum(full_numel(p) for p in params if p.requires_grad), sum(full_numel(p) for p in params)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def decoder_fingerprint(self) -> str:
        """The fingerprint of the decoder side as it is now (the config holds the one recorded at wrap time)."""
        return fingerprint_tensors(self._sides().decoder)

    def verify_frozen(self) -> None:
        """Raise if any decoder-side tensor differs from when the adapter was applied."""
        current = self.decoder_fingerprint()
        if current != self.frozen_config.decoder_fingerprint:
            raise RuntimeError(
                f"The decoder changed since the frozen-decoder adapter was applied (fingerprint "
                f"{self.frozen_config.decoder_fingerprint[:12]}... is now {current[:12]}...). Something trained or "
                "edited decoder-side weights (an optimizer built before `get_frozen_model`, `tie_weights()` after a "
                "resize, manual edits): the encoder would no longer match the shared decoder."
            )

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors the artifact stores: the trainable encoder-side weights, by base-model name.

        These are the live parameters (under DeepSpeed ZeRO-3, partitioned ones); `save_pretrained` gathers them.
        """
        encoder = self._sides().encoder
        return {name: encoder[name] for name in self.artifact_keys}

    # -- save / load ------------------------------------------------------------------------------------------

    def save_pretrained(
        self, save_directory: str | os.PathLike, is_main_process: bool = True, verify: bool = True, **kwargs: Any
    ) -> None:
        """Write the encoder-only artifact: `hf_frozen_model.safetensors` and `hf_frozen_config.json`.

        Under DeepSpeed ZeRO-3, call it on every process (as with `Trainer.save_model`): the weights are
        gathered from all of them, and only the main process writes.

        Args:
            save_directory (`str`): folder to write to (created if needed); other files in it are kept.
            is_main_process (`bool`, defaults to `True`): only the main process writes (as in transformers).
            verify (`bool`, defaults to `True`): first check that the decoder is still the recorded one, so that
                an artifact can never claim a decoder it was not trained against.
        """
        partitioned = any_partitioned(self.base_model.parameters())
        if not (is_main_process or partitioned):
            return
        if verify:
            self.verify_frozen()
        tensors = full_copies(self.encoder_state_dict())
        if not is_main_process:
            return
        metadata = {"adapter_type": self.frozen_config.ADAPTER_TYPE}
        save_tensors(tensors, os.path.join(save_directory, WEIGHTS_NAME), metadata)
        self.frozen_config.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        base_model: PreTrainedModel | str | None = None,
        is_trainable: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
        **base_model_kwargs: Any,
    ) -> FrozenDecoderModel:
        """Load an encoder artifact onto its frozen base model.

        Args:
            path_or_repo_id (`str`): local folder or Hub repo id of the artifact.
            base_model (`PreTrainedModel` or `str`, *optional*): the base model, or its Hub id or path. Defaults
                to the base recorded in the artifact. Its decoder must match the recorded fingerprint.
            is_trainable (`bool`, defaults to `False`): keep the encoder trainable (to continue training);
                otherwise the model is put in eval mode with every weight frozen.
            revision, token: for the artifact on the Hub.
            base_model_kwargs: passed to `AutoModelForSeq2SeqLM.from_pretrained` when the base is loaded here.
        """
        config = FrozenDecoderConfig.from_pretrained(path_or_repo_id, revision=revision, token=token)
        # Read the weights before loading a possibly large base model, so a broken artifact fails fast.
        tensors = load_tensors(resolve_file(path_or_repo_id, WEIGHTS_NAME, revision=revision, token=token))
        if base_model is None or isinstance(base_model, str):
            base_id = base_model or config.base_model_name_or_path
            if not base_id:
                raise ValueError(
                    f"The artifact {path_or_repo_id} records no base model: pass `base_model=` (a model or its id)."
                )
            if base_id == config.base_model_name_or_path and config.revision:
                base_model_kwargs.setdefault("revision", config.revision)
            base_model = AutoModelForSeq2SeqLM.from_pretrained(base_id, **base_model_kwargs)
        model = cls(base_model, _without_fingerprints(config))
        model._check_fingerprints(config, source=str(path_or_repo_id))
        model.load_encoder_state_dict(tensors, source=str(path_or_repo_id))
        if not is_trainable:
            model.requires_grad_(False)
            model.eval()
        return model

    def _check_fingerprints(self, recorded: FrozenDecoderConfig, source: str) -> None:
        base_name = getattr(self.base_model.config, "_name_or_path", "") or type(self.base_model).__name__
        if recorded.decoder_fingerprint != self.frozen_config.decoder_fingerprint:
            raise ValueError(
                f"The encoder in {source} was trained against a different decoder than the one of base model "
                f"{base_name!r}: recorded decoder fingerprint {str(recorded.decoder_fingerprint)[:16]}..., this base "
                f"has {self.frozen_config.decoder_fingerprint[:16]}... Load it onto the base it was trained with "
                f"(recorded: {recorded.base_model_name_or_path!r}), in the same dtype."
            )
        if recorded.frozen_encoder_fingerprint != self.frozen_config.frozen_encoder_fingerprint:
            raise ValueError(
                f"The artifact {source} relies on frozen encoder weights of its base model (LoRA base weights or a "
                f"frozen embedding) that differ in base model {base_name!r}. Load it onto the base it was trained "
                f"with (recorded: {recorded.base_model_name_or_path!r})."
            )

    def load_encoder_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "the given tensors") -> None:
        """Copy artifact tensors into the encoder, refusing any missing, extra or mis-shaped tensor."""
        copy_artifact_tensors(self.encoder_state_dict(), tensors, source)

    def model_card(self) -> str:
        config = self.frozen_config
        base = config.base_model_name_or_path or "unknown"
        trainable, total = self.get_nb_trainable_parameters()
        return f"""---
library_name: hf-frozen
base_model: {base}
tags:
- hf-frozen
- frozen-decoder
---

# Frozen-decoder task encoder

This repository holds only the **encoder side** of a fine-tuned `{type(self.base_model).__name__}`: its decoder,
decoder embeddings and LM head are the unchanged ones of [`{base}`](https://huggingface.co/{base}), so many task
encoders can share one decoder.

- Encoder training: `{config.encoder_training}` (encoder input embeddings trained: `{config.train_encoder_embeddings}`)
- Trainable parameters: {trainable:,d} of {total:,d}
- Decoder fingerprint (SHA-256): `{config.decoder_fingerprint}`

## Usage

```python
from hf_frozen import AutoFrozenModel

model = AutoFrozenModel.from_pretrained("<this repo id>")  # loads {base} and checks the decoder fingerprint
outputs = model.generate(**inputs, num_beams=3)
```
"""


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


def _without_fingerprints(config: FrozenDecoderConfig) -> FrozenDecoderConfig:
    fresh = copy.deepcopy(config)
    fresh.decoder_fingerprint = fresh.frozen_encoder_fingerprint = None
    return fresh


def _drop_aliases(module: FrozenDecoderModel, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for alias in module._aliases:
        state_dict.pop(prefix + alias, None)


def _restore_aliases(module: FrozenDecoderModel, state_dict: dict, prefix: str, *args: Any) -> None:
    for alias, canonical in module._aliases.items():
        if prefix + alias not in state_dict and prefix + canonical in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + canonical]
