"""Joint training of one task encoder per task on one frozen decoder, with the ordinary `Trainer`. A mixin of
`MultiEncoderModel`."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel

from .config import FrozenDecoderConfig
from .freezing import resolve_lora_targets, trainable_encoder_names
from .sides import module_prefix
from .task_names import check_task_name

if TYPE_CHECKING:
    from .multi_encoder import MultiEncoderModel


class JointTraining:
    """`for_training` and `add_task_ids`: one trainable encoder per task, routed example by example."""

    @classmethod
    def for_training(
        cls, base_model: PreTrainedModel, tasks: list[str], config: FrozenDecoderConfig | None = None
    ) -> MultiEncoderModel:
        """One trainable encoder per task, all starting from the base encoder, on one frozen decoder.

        Train it with the ordinary `Trainer` on a `mix_tasks` stream whose rows carry `task_ids`
        (`model.add_task_ids(stream)`); each batch is routed example by example to its task's encoder.
        `save_pretrained` then writes one frozen-decoder artifact per task.
        """
        if isinstance(tasks, str) or not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"`tasks` must be a non-empty list of distinct names, got {tasks!r}.")
        for name in tasks:
            check_task_name(name)
        config = copy.deepcopy(config or FrozenDecoderConfig())
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(base_model.config, "_name_or_path", None) or None
        # The same trainable set as `FrozenDecoderModel`, read before the base model is frozen.
        trainable = trainable_encoder_names(base_model, module_prefix(base_model, base_model.get_encoder()), config)
        resolve_lora_targets(base_model.get_encoder(), config)
        model = cls(base_model, decoder_dtype=config.decoder_dtype)
        for name in tasks:
            encoder = model._copy_encoder(config, trainable, trainable).train()
            model._register(name, encoder, config, model.record_for(encoder, model._own_names(encoder)), serving=False)
        return model

    def add_task_ids(self, dataset: Any, task_column: str = "task") -> Any:
        """Add the integer column `task_ids` (the Trainer batches tensors, not task names) from `task_column`."""
        index = {name: i for i, name in enumerate(self.task_configs)}
        unknown = sorted(set(dataset[task_column]) - set(index))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown} in column {task_column!r}; the model has {list(index)}.")
        return dataset.map(lambda row: {"task_ids": index[row[task_column]]})
