"""Training the DecT head inside a user's own `Trainer`, with one backbone query per example at most.

The Trainer's model is `dect.new_head()`, a `DecTTrainerHead`: it holds one head of each type `DecTConfig.head`
allows. `DecTCollator` turns raw rows into cached features (querying the backbone only for rows never seen);
`DecTCallback` queries the whole training set once, in length-sorted batches, before the first step, and chooses
the head exactly as `fit` does (`head="auto"`: cross-validation among the prompt alone, the prototype decoder and
the linear head; else the named type). A head trained by steps (the prototype decoder) is then trained by the
Trainer's optimizer; the linear head is solved to its minimum there, once, and the prompt alone has nothing to
train (the Trainer's steps leave both unchanged). At the end the callback hands the chosen head back
(`DecTModel.use_head`), so that `trainer.evaluate()` and `dect.predict` score alike. Every later epoch reads
the cache.

Saves: the Trainer writes the `DecTTrainerHead`'s `state_dict` (`model.safetensors`, which resumes training); the
callback writes the DecT artifact beside it (the chosen head, calibration, record, config: what `AutoFrozenModel`
loads) into each `checkpoint-*` and, when training ends, into `output_dir`, so `trainer.save_model()` and
`push_to_hub()` carry it.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..config import copy_artifact
from ..utils.logging import get_logger
from .heads import HEADS, DecTOutput, Head
from .model import DecTModel
from .selection import head_types_for

logger = get_logger(__name__)


class DecTTrainerHead(nn.Module):
    """What a `Trainer` trains: a head of each type the config allows, the one `DecTCallback` chooses active.

    Args:
        dect ([`DecTModel`]): the model whose config sizes the heads (and whose backbone tells the feature size).
        hidden_size (`int`, *optional*): the feature size; unset, asked of `dect` (one query of the empty input).
    """

    def __init__(self, dect: DecTModel, hidden_size: int | None = None) -> None:
        super().__init__()
        hidden_size = hidden_size or dect.hidden_size()
        kinds = [head.kind for head in head_types_for(dect.config, has_scores=True)]
        self.heads = nn.ModuleDict({kind: HEADS[kind].build(hidden_size, dect.config, {}) for kind in kinds})
        self.active: str | None = None
        # The Trainer calls `backward` on every training loss; a head solved at train begin (or the prompt alone)
        # has nothing left to train, so its loss is tied to this zero parameter, which only ever gets a zero
        # gradient (and, with no weight decay on a zero, stays zero).
        self.anchor = nn.Parameter(torch.zeros(()))

    @property
    def head(self) -> Head:
        if self.active is None:
            raise RuntimeError("No head is chosen yet: train the DecTTrainerHead with `DecTCallback(dect)`.")
        return self.heads[self.active]

    def forward(
        self,
        hidden_states: torch.Tensor,
        zero_shot_scores: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> DecTOutput:
        out = self.head(hidden_states, zero_shot_scores, labels)
        if self.training and out.loss is not None and not self.head.trained_by_steps:
            out.loss = out.loss + 0.0 * self.anchor
        return out


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
    """Chooses, sets up and (for the linear head) solves the head of a `DecTTrainerHead` at train begin, as `fit`
    would, and returns it to its `DecTModel` afterwards.

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
        trainer_head = kwargs.get("model")
        if not isinstance(trainer_head, DecTTrainerHead):
            raise TypeError(
                f"DecTCallback trains the module `dect.new_head()` gives (a DecTTrainerHead), got "
                f"{type(trainer_head).__name__}."
            )
        loader = kwargs.get("train_dataloader")
        if loader is None:
            return
        self.queries_at_start = self.dect.num_queries
        # One batched, length-sorted pass over the training set, shared among the processes of a distributed run;
        # the collator then only reads the cache.
        hidden, raw, labels = self.dect.training_features(loader.dataset, split_across_processes=args.world_size > 1)
        # The Trainer sets the steps; cross-validation picks the rest at the configured (or largest) count.
        config = self.dect.config
        self.dect.choose_head(hidden, raw, labels, steps=[config.steps or max(config.steps_candidates)])
        chosen = self.dect.build_head(hidden.shape[1])
        scores = None if raw is None else self.dect.zero_shot_scores(raw)
        trainer_head.active = chosen.kind
        if chosen.trained_by_steps:
            # The Trainer's optimizer holds this head's parameters: set it up in place. Resumed from a checkpoint
            # (the Trainer loaded the weights before this call), the choices are made again, deterministically,
            # and the loaded weights kept.
            trainer_head.head.start_training(hidden, labels, chosen.settings(), initialize=state.global_step == 0)
        else:  # solved once here (or nothing to train); the Trainer's steps leave it as it is
            chosen.fit(hidden, scores, labels, config)
            trainer_head.heads[chosen.kind] = chosen
            chosen.requires_grad_(False)

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
        head = kwargs.get("model").head
        if head.trained_by_steps:
            head.steps = state.global_step
        self.dect.use_head(head)
        self._save_artifact(args, state, kwargs.get("model"), "")
        if state.is_world_process_zero:
            logger.info(
                "DecT head trained in the Trainer: %s head, %d backbone queries, zero-shot weight %s",
                head.kind, self.dect.num_queries - self.queries_at_start, self.dect.record.zero_shot_weight,
            )  # fmt: skip

    def _save_artifact(self, args: TrainingArguments, state: TrainerState, model: Any, folder: str) -> None:
        if not state.is_world_process_zero or not isinstance(model, DecTTrainerHead) or model.active is None:
            return
        # A copy: saving must not switch the live head to eval mode or end its training.
        snapshot = copy.copy(self.dect)
        snapshot.record = copy.deepcopy(self.dect.record)
        head = copy.deepcopy(model.head)
        if head.trained_by_steps:
            head.steps = state.global_step
        snapshot.use_head(head)
        snapshot.save_pretrained(os.path.join(args.output_dir, folder))
