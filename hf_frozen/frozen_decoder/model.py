"""`FrozenDecoderModel`: an encoder-decoder model whose decoder side is frozen bit for bit.

The wrapper mirrors `peft.PeftModel`: it wraps the base model in place, forwards attribute lookups to it, and
saves only what training changes (the encoder side) plus the fingerprints of the frozen model it needs
(`artifact.py`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel

from ..registry import register_adapter
from ..utils.hub import build_model_card, hub_id, loading_recorded_base
from ..utils.zero3 import any_partitioned, full_numel
from .artifact import (
    check_fingerprints,
    copy_artifact_tensors,
    load_encoder_artifact,
    peft_adapter_config,
    save_encoder_artifact,
)
from .base import BASE_PREFIX, FrozenDecoderBase, release_resize
from .config import FrozenDecoderConfig
from .freezing import (
    ADAPTER_NAME,
    apply_encoder_training,
    check_encoder_decoder,
    give_encoder_own_embeddings,
    resolve_lora_targets,
    trainable_encoder_names,
)
from .precision import back_to_one_dtype, cast_decoder_side, install_boundary_casts
from .record import FrozenDecoderRecord
from .sides import module_prefix, split_sides


class FrozenDecoderModel(FrozenDecoderBase, PeftModel):
    """An encoder-decoder model with a frozen decoder; a drop-in model for `Seq2SeqTrainer`.

    Create one with `hf_frozen.get_frozen_model(model, FrozenDecoderConfig(...))` and load one with
    `hf_frozen.AutoFrozenModel.from_pretrained(...)`. The base model is modified in place.

    It is a `peft.PeftModel` (without PeftModel's own initialisation, which would inject adapters) so that
    transformers' `Trainer` gives it the treatment it gives adapters: `save_model()`, every checkpoint and
    `push_to_hub()` call `save_pretrained` and write the encoder-only artifact; under DeepSpeed only the trainable
    tensors are gathered and checkpointed; resuming loads the artifact through `load_adapter`. It keeps PEFT's
    layout (`model.base_model.model` is the transformers model) and its one adapter is named `"default"`.

    Args:
        base_model ([`~transformers.PreTrainedModel`]): an encoder-decoder model (T5, BART, Marian, ...).
        config ([`FrozenDecoderConfig`]): what to train on the encoder side.

    Attributes:
        frozen_config ([`FrozenDecoderConfig`]): the config in use (LoRA targets resolved).
        record ([`FrozenDecoderRecord`]): the fingerprints of the frozen model, as saved with the artifact.
    """

    def __init__(self, base_model: PreTrainedModel, config: FrozenDecoderConfig) -> None:
        check_encoder_decoder(base_model)
        if getattr(base_model, "_hf_frozen_adapter", None):
            raise ValueError(
                f"This {type(base_model).__name__} already carries an hf-frozen adapter (wrapping changes the base "
                "model in place). Load a fresh copy of the base model for each adapter."
            )
        config = copy.deepcopy(config)
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(base_model.config, "_name_or_path", None) or None
        encoder = base_model.get_encoder()
        encoder_prefix = module_prefix(base_model, encoder)
        trainable = trainable_encoder_names(base_model, encoder_prefix, config)
        base_model.requires_grad_(False)
        if config.train_encoder_embeddings:
            give_encoder_own_embeddings(base_model, encoder_prefix)
        resolve_lora_targets(encoder, config)
        apply_encoder_training(encoder, trainable, config)
        if config.decoder_dtype is not None:
            cast_decoder_side(base_model, encoder_prefix, config.decoder_dtype)
        super().__init__(base_model)  # fingerprints the decoder side as it is now
        self._boundary_casts = install_boundary_casts(base_model, encoder_prefix) if config.decoder_dtype else []
        base_model._hf_frozen_adapter = config.ADAPTER_TYPE
        self.frozen_config = config

        sides = split_sides(base_model, encoder_prefix)
        leaking = sorted(name for name, t in sides.decoder.items() if t.requires_grad)
        if leaking:  # A guard against bugs here and in exotic architectures: never train the decoder.
            raise RuntimeError(f"Decoder-side tensors would be trained: {leaking}. Please report this.")
        # What the artifact stores: exactly the encoder-side weights that train.
        self.artifact_keys = sorted(name for name, t in sides.encoder.items() if t.requires_grad)
        self.record = self.record_for(encoder, {name.removeprefix(encoder_prefix) for name in self.artifact_keys})
        # Trainer keeps only the dataset columns that `model.forward` names: show it the base model's signature.
        self.forward = functools.update_wrapper(
            functools.partial(FrozenDecoderModel.forward, self), base_model.forward
        )

    @classmethod
    def from_base_model(cls, base_model: PreTrainedModel, config: FrozenDecoderConfig) -> FrozenDecoderModel:
        """What `hf_frozen.get_frozen_model` calls."""
        return cls(base_model, config)

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper lacks come from the base model (`config`, `generation_config`, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.get_base_model(), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.get_base_model()(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.get_base_model().generate(*args, **kwargs)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors the artifact stores: the trainable encoder-side weights, by base-model name.

        These are the live parameters (under DeepSpeed ZeRO-3, partitioned ones); `save_pretrained` gathers them.
        """
        encoder = split_sides(self.get_base_model(), self.encoder_prefix).encoder
        return {name: encoder[name] for name in self.artifact_keys}

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        verify: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the encoder-only artifact (weights, record and config; see `artifact.py`).

        Under DeepSpeed ZeRO-3, call it on every process (as `Trainer.save_model` does): the weights are
        gathered from all of them, and only the main process writes.

        Args:
            save_directory (`str`): folder to write to (created if needed); other files in it are kept.
            is_main_process (`bool`, defaults to `True`): only the main process writes (as in transformers).
            verify (`bool`, defaults to `True`): first check that the decoder is still the recorded one, so that
                an artifact can never claim a decoder it was not trained against.
            state_dict (`dict`, *optional*): the model's tensors, already gathered (what transformers' `Trainer`
                passes, as to a PEFT model: under ZeRO-3 it gathers the trainable tensors on the main process
                only, which then saves alone). Only the artifact's tensors are taken from it.
        """
        if state_dict is None:
            if not self.takes_part_in_save(is_main_process):
                return
            tensors = self.encoder_state_dict()
        else:
            if not is_main_process:
                return
            tensors = self._artifact_tensors_from(state_dict)
        # A decoder partitioned by ZeRO-3 can only be fingerprinted by all processes together; when the Trainer
        # saves from the main process alone, `FrozenDecoderCallback` checks it on all of them instead.
        if verify and (state_dict is None or not any_partitioned(self.parameters())):
            self.verify_frozen()
        save_encoder_artifact(
            save_directory, tensors, self.frozen_config, self.record, self.encoder_prefix, is_main_process
        )

    def _artifact_tensors_from(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [name for name in self.artifact_keys if BASE_PREFIX + name not in state_dict]
        if missing:
            raise ValueError(
                f"The state_dict given to save_pretrained lacks {len(missing)} of the {len(self.artifact_keys)} "
                f"trainable encoder tensors (e.g. {BASE_PREFIX + missing[0]!r}). Under DeepSpeed ZeRO-3, set "
                "`zero_optimization.stage3_gather_16bit_weights_on_model_save` to true so that the Trainer "
                "gathers them; or call save_pretrained without a state_dict."
            )
        return {name: state_dict[BASE_PREFIX + name] for name in self.artifact_keys}

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
        # Read the artifact before loading a possibly large base model, so a broken one fails fast.
        config, record, tensors = load_encoder_artifact(path_or_repo_id, revision=revision, token=token)
        if base_model is None or isinstance(base_model, str):
            base_id = base_model or config.base_model_name_or_path
            if not base_id:
                raise ValueError(
                    f"The artifact {path_or_repo_id} records no base model: pass `base_model=` (a model or its id)."
                )
            if base_id == config.base_model_name_or_path and config.revision:
                base_model_kwargs.setdefault("revision", config.revision)
            # The base the artifact records, not one the caller named: a failure names the artifact.
            with contextlib.nullcontext() if base_model else loading_recorded_base(base_id, path_or_repo_id):
                base_model = AutoModelForSeq2SeqLM.from_pretrained(base_id, **base_model_kwargs)
        model = cls(base_model, config)
        model._copy_in(config, record, tensors, str(path_or_repo_id))
        if not is_trainable:
            model.requires_grad_(False)
            model.eval()
        return model

    # -- the PeftModel members transformers' Trainer uses ----------------------------------------------------

    @property
    def active_adapters(self) -> list[str]:
        return [ADAPTER_NAME]

    @property
    def active_adapter(self) -> str:
        return ADAPTER_NAME

    def set_adapter(self, adapter_name: str) -> None:
        if adapter_name != ADAPTER_NAME:
            raise ValueError(f"A FrozenDecoderModel has one adapter, {ADAPTER_NAME!r}; got {adapter_name!r}.")

    def load_adapter(
        self, model_id: str | os.PathLike, adapter_name: str = ADAPTER_NAME, is_trainable: bool = False, **kwargs: Any
    ) -> None:
        """Load the encoder weights of an artifact (or of a `Trainer` checkpoint) into this model, after checking
        that it was trained against this model's decoder. What `Trainer` calls to resume or to load the best
        checkpoint. Which weights train stays as it is.
        """
        self.set_adapter(adapter_name)
        config, record, tensors = load_encoder_artifact(model_id, kwargs.get("revision"), kwargs.get("token"))
        self._copy_in(config, record, tensors, str(model_id))

    def _copy_in(
        self, config: FrozenDecoderConfig, record: FrozenDecoderRecord, tensors: dict[str, torch.Tensor], source: str
    ) -> None:
        """Check an artifact's fingerprints against this model's, then copy its encoder weights in."""
        check_fingerprints(record, self.record, f"The encoder in {source}", self.base_name(),
                           config.base_model_name_or_path)  # fmt: skip
        copy_artifact_tensors(self.encoder_state_dict(), tensors, source)

    # -- leaving hf-frozen -----------------------------------------------------------------------------------

    def merge_and_unload(self) -> PreTrainedModel:
        """The plain transformers model, with LoRA weights merged into the encoder's layers (as PEFT's
        `merge_and_unload`): `save_pretrained` on it writes a checkpoint that `AutoModelForSeq2SeqLM` loads and
        that generates what this model generates. The base model is changed in place; this wrapper is spent.

        An encoder trained with `train_encoder_embeddings=True` has its own copy of the embedding, which a stock
        checkpoint cannot hold (loading ties it back to the decoder's): it is refused. A decoder held in low
        precision (`decoder_dtype`) is cast back to the encoder's dtype, exactly (every bf16/fp16 value is an fp32
        one), since a plain model runs in one dtype.
        """
        if self.frozen_config.train_encoder_embeddings:
            raise ValueError(
                "This encoder has its own input embeddings (`train_encoder_embeddings=True`), which a plain "
                f"{type(self.get_base_model()).__name__} checkpoint cannot hold: loading it would tie the encoder "
                "back to the decoder's embeddings. Serve it with hf-frozen (`AutoFrozenModel`) instead."
            )
        base = self.get_base_model()
        encoder = base.get_encoder()
        with torch.no_grad():
            for name, module in list(encoder.named_modules()):
                if isinstance(module, LoraLayer):
                    module.merge(adapter_names=[ADAPTER_NAME])
                    parent_name, _, child = name.rpartition(".")
                    setattr(encoder.get_submodule(parent_name), child, module.get_base_layer())
            if self.frozen_config.decoder_dtype is not None:
                back_to_one_dtype(base, self.encoder_prefix, self._boundary_casts)
        del base._hf_frozen_adapter
        release_resize(base)
        return base

    def model_card(self, repo_id: str | None = None) -> str:
        """The README.md that `push_to_hub` uploads (through `huggingface_hub.ModelCard`)."""
        config = self.frozen_config
        base = config.base_model_name_or_path or "unknown"
        base_link = f"[`{base}`](https://huggingface.co/{base})" if hub_id(base) else f"`{base}`"
        # What the artifact trains, counted from its tensors: a model loaded for inference has nothing trainable.
        trainable = sum(full_numel(t) for t in self.encoder_state_dict().values())
        total = self.get_nb_trainable_parameters()[1]
        peft = peft_adapter_config(config, self.encoder_prefix) is not None
        body = f"""
# Frozen-decoder task encoder

This repository holds only the **encoder side** of a fine-tuned `{type(self.get_base_model()).__name__}`: its
decoder, decoder embeddings and LM head are the unchanged ones of {base_link}, so many task encoders can share
one decoder.

- Encoder training: `{config.encoder_training}` (encoder input embeddings trained: `{config.train_encoder_embeddings}`)
- Trained parameters (the artifact's): {trainable:,d} of {total:,d}
- Decoder fingerprint (SHA-256): `{self.record.decoder_fingerprint}`

## Usage

```python
from hf_frozen import AutoFrozenModel

model = AutoFrozenModel.from_pretrained("{repo_id or "<this repo id>"}")  # loads the base, checks the decoder
outputs = model.generate(**inputs, num_beams=3)
```
"""
        if peft:
            body += """
The encoder's LoRA weights are also a PEFT adapter: `PeftModel.from_pretrained(base_model, repo_id)`.
"""
        return build_model_card(base, ["frozen-decoder", *(["lora", "peft"] if peft else [])],
                                "text2text-generation", body)  # fmt: skip


register_adapter(FrozenDecoderConfig, FrozenDecoderModel)
