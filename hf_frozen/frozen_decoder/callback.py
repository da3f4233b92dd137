"""`FrozenDecoderCallback`: guards the frozen decoder inside a user's own `Trainer` and saves encoder artifacts.

It serves both frozen-decoder models. A `FrozenDecoderModel` needs it only for the checks: transformers' Trainer
saves it as it saves a PEFT model (the encoder-only artifact is each checkpoint's model). For a
`MultiEncoderModel.for_training` it also writes one artifact per task, in `checkpoint-*/<task>/`.

With `push_to_hub=True`, the Trainer pushes `output_dir` after each save (`hub_strategy="every_save"`, and the
root of `"checkpoint"` / `"all_checkpoints"`) having copied into it only the file names it knows
(`adapter_model.safetensors`, `adapter_config.json`): the repo would hold new weights beside a stale record and
config. `on_push_begin` first puts the whole artifact of the checkpoint being pushed into `output_dir`.
"""

from __future__ import annotations

import os
from typing import Any

from peft import PeftModel
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..config import copy_artifact
from ..utils.logging import get_logger
from ..utils.zero3 import any_partitioned
from .base import FrozenDecoderBase
from .deepspeed_config import check_deepspeed_config, deepspeed_config_of

logger = get_logger(__name__)


def unwrap_frozen_model(model: nn.Module | None) -> FrozenDecoderBase:
    """Find the `FrozenDecoderModel` or `MultiEncoderModel` inside DDP / DeepSpeed / compile wrappers."""
    current = model
    while current is not None and not isinstance(current, FrozenDecoderBase):
        current = getattr(current, "module", None) or getattr(current, "_orig_mod", None)
    if current is None:
        raise TypeError(
            f"FrozenDecoderCallback needs the Trainer's model to be a FrozenDecoderModel or MultiEncoderModel, got "
            f"{type(model).__name__}. Wrap it first: "
            "`model = hf_frozen.get_frozen_model(model, FrozenDecoderConfig())`."
        )
    return current


def optimized_tensors(optimizer: Any) -> list:
    """The model tensors an optimizer updates, looking through accelerate's and DeepSpeed's wrappers.

    A DeepSpeed ZeRO optimizer's own `param_groups` hold flat fp32 partitions, not the model's parameters; the
    parameters they stand for are in `bit16_groups` (ZeRO-1/2) or `fp16_groups` (ZeRO-3).
    """
    current = optimizer
    while current is not None:
        for attribute in ("bit16_groups", "fp16_groups"):
            groups = getattr(current, attribute, None)
            if groups is not None:
                return [p for group in groups for p in group]
        current = getattr(current, "optimizer", None)
    return [p for group in optimizer.param_groups for p in group["params"]]


class FrozenDecoderCallback(TrainerCallback):
    """Checks the freeze when training starts and ends; writes the task artifacts of a `MultiEncoderModel` with
    each checkpoint.

    Args:
        save_artifact_with_checkpoints (`bool`, defaults to `True`): for a `MultiEncoderModel`, write each
            task's encoder artifact into every `checkpoint-*/<task>/` folder. (A `FrozenDecoderModel`'s artifact
            is written by the Trainer itself.)

    Example:
        ```python
        trainer = Seq2SeqTrainer(model=frozen_model, args=args, train_dataset=ds, callbacks=[FrozenDecoderCallback()])
        ```
    """

    def __init__(self, save_artifact_with_checkpoints: bool = True) -> None:
        self.save_artifact_with_checkpoints = save_artifact_with_checkpoints

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Before DeepSpeed starts: its engine would otherwise already have rewritten the decoder in place.
        ds_config = deepspeed_config_of(args)
        if ds_config is not None:
            check_deepspeed_config(ds_config, unwrap_frozen_model(kwargs.get("model")))

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = unwrap_frozen_model(kwargs.get("model"))
        model.verify_frozen()
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            trainable = {id(p) for p in model.parameters() if p.requires_grad}
            stray = sum(1 for p in optimized_tensors(optimizer) if id(p) not in trainable)
            if stray:
                raise RuntimeError(
                    f"The optimizer holds {stray} frozen tensor(s) (decoder side or frozen encoder weights). Build "
                    "the optimizer after `get_frozen_model`, from `p for p in model.parameters() if p.requires_grad`."
                )
        n_trainable, n_total = model.get_nb_trainable_parameters()
        if state.is_world_process_zero:
            logger.info(
                "Frozen decoder: training %s of %s parameters (%.2f%%), decoder fingerprint %s",
                f"{n_trainable:,d}",
                f"{n_total:,d}",
                100 * n_trainable / n_total,
                model.expected_decoder_fingerprint[:16],
            )

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        model = unwrap_frozen_model(kwargs.get("model"))
        if not self.save_artifact_with_checkpoints or isinstance(model, PeftModel):
            return  # the Trainer saved a PeftModel's artifact itself
        # Every process calls this (under ZeRO-3 the weights are gathered from all of them); only the main one writes.
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        model.save_pretrained(folder, is_main_process=state.is_world_process_zero)

    def on_push_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = unwrap_frozen_model(kwargs.get("model"))
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if isinstance(model, PeftModel):  # the Trainer saved the checkpoint's artifact: push that one, whole
            copy_artifact(checkpoint, args.output_dir)
        elif not any_partitioned(model.parameters()):  # a set: `on_save` writes the checkpoint only after the push
            model.save_pretrained(checkpoint)
            model.save_pretrained(args.output_dir)
        else:
            logger.warning(
                "A MultiEncoderModel partitioned by ZeRO-3 cannot be gathered on the main process alone for the "
                "Trainer's push: use `hub_strategy='end'` (or `trainer.save_model()` then `trainer.push_to_hub()`)."
            )

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        unwrap_frozen_model(kwargs.get("model")).verify_frozen()
