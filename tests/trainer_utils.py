"""A real Seq2SeqTrainer run on a tiny model: AdamW with weight decay, real optimizer steps."""

from __future__ import annotations

from typing import Any

from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from hf_frozen import FrozenDecoderCallback

from .tiny_models import copy_task_dataset


def training_args(output_dir: str, **overrides: Any) -> Seq2SeqTrainingArguments:
    defaults: dict[str, Any] = dict(
        output_dir=output_dir, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, weight_decay=0.1,
        optim="adamw_torch", lr_scheduler_type="constant", save_strategy="no", logging_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
    )  # fmt: skip
    defaults.update(overrides)
    return Seq2SeqTrainingArguments(**defaults)


def make_trainer(model, output_dir: str, callbacks=None, optimizers=(None, None), **overrides: Any) -> Seq2SeqTrainer:
    return Seq2SeqTrainer(
        model=model,
        args=training_args(output_dir, **overrides),
        train_dataset=copy_task_dataset(),
        callbacks=[FrozenDecoderCallback()] if callbacks is None else callbacks,
        optimizers=optimizers,
    )
