"""Training the DecT head inside a user's own `Trainer`, with one backbone query per example at most.

The Trainer's model is the head itself (`dect.new_head()`); `DecTCollator` turns raw rows into cached
features (querying the backbone only for rows never seen); `DecTCallback` queries the whole training set once,
in length-sorted batches, before the first step, and sets the head up as `fit` does (`DecTModel.prepare_head`);
at the end it hands the trained head back (`DecTModel.use_head`). Every later epoch reads the cache.

Saves: the Trainer writes the head's bare `state_dict` (`model.safetensors`, which resumes training); the callback
writes the DecT artifact beside it (head, calibration, record, config: what `AutoFrozenModel` loads) into each
`checkpoint-*` and, when training ends, into `output_dir`, so `trainer.save_model()` and `push_to_hub()` carry it.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..config import copy_artifact
from ..utils.logging import get_logger
from .head import DecTHead
from .model import DecTModel

logger = get_logger(__name__)


class DecTCollator:
    """Data collator: raw rows (text, optional text pair, label) -> cached DecT features as tensors."""

    def __init__(self, dect: DecTModel) -> None:
        self.dect = dect

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if rows and self.dect.config.text_column not in rows[0]:
            raise ValueError(
                f"Rows reach the DecT collator without the {self.dect.config.text_column!r} column: the Trainer "
                "dropped it. Set `remove_unused_columns=False` in the TrainingArguments."
            )
        hidden, scores, labels = self.dect.features(rows)
        batch = {"hidden_states": hidden}
        if scores is not None:
            batch["zero_shot_scores"] = scores
        if labels is not None:
            batch["labels"] = labels
        return batch


class DecTCallback(TrainerCallback):
    """Prepares a `DecTHead` for Trainer training and returns it to its `DecTModel` afterwards.

    Args:
        dect ([`DecTModel`]): the model whose backbone and cache provide the features.

    Example:
        ```python
        head = dect.new_head()
        args = TrainingArguments("out", remove_unused_columns=False, learning_rate=0.01, num_train_epochs=30,
                                 per_device_train_batch_size=len(train), lr_scheduler_type="constant")
        Trainer(model=head, args=args, train_dataset=train, data_collator=DecTCollator(dect),
                callbacks=[DecTCallback(dect)]).train()
        dect.evaluate(test)
        ```
    """

    def __init__(self, dect: DecTModel) -> None:
        self.dect = dect
        self.queries_at_start = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        head = kwargs.get("model")
        if not isinstance(head, DecTHead):
            raise TypeError(f"DecTCallback trains a DecTHead (`dect.new_head()`), got {type(head).__name__}.")
        loader = kwargs.get("train_dataloader")
        if loader is None:
            return
        self.queries_at_start = self.dect.num_queries
        # One batched, length-sorted pass over the training set, shared among the processes of a distributed run;
        # the collator then only reads the cache.
        hidden, raw, labels = self.dect.training_features(loader.dataset, split_across_processes=args.world_size > 1)
        # The Trainer sets the steps; cross-validation picks the weight at the configured (or largest) count.
        config = self.dect.config
        steps = [config.steps or max(config.steps_candidates)]
        # Resumed from a checkpoint (the Trainer loaded the head's weights before this call): the choices are
        # made again, deterministically, but the loaded weights are kept.
        self.dect.prepare_head(head, hidden, raw, labels, steps=steps, initialize=state.global_step == 0)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._save_artifact(args, state, kwargs.get("model"), f"checkpoint-{state.global_step}")

    def on_push_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The Trainer pushes right after saving a checkpoint, before `on_save` writes the DecT artifact, and copies
        # only the file names it knows into `output_dir`: write the artifact of this step into both first.
        checkpoint = f"checkpoint-{state.global_step}"
        self._save_artifact(args, state, kwargs.get("model"), checkpoint)
        if state.is_world_process_zero:  # the Trainer pushes from the main process only
            copy_artifact(os.path.join(args.output_dir, checkpoint), args.output_dir)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.dect.use_head(kwargs.get("model"), steps=state.global_step)
        self._save_artifact(args, state, self.dect.head, "")
        if state.is_world_process_zero:
            logger.info(
                "DecT head trained in the Trainer: %d backbone queries, zero-shot weight %s",
                self.dect.num_queries - self.queries_at_start,
                self.dect.record.zero_shot_weight,
            )

    def _save_artifact(self, args: TrainingArguments, state: TrainerState, head: Any, folder: str) -> None:
        if not state.is_world_process_zero:
            return
        # A copy: saving must not switch the live head to eval mode or end its training.
        snapshot = copy.copy(self.dect)
        snapshot.record = copy.deepcopy(self.dect.record)
        snapshot.use_head(copy.deepcopy(head), steps=state.global_step)
        snapshot.save_pretrained(os.path.join(args.output_dir, folder))
