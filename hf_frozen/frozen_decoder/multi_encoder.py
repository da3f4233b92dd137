"""`MultiEncoderModel`: one frozen decoder held once in memory, any number of named task encoders.

Each task encoder is built from a frozen-decoder artifact. It is a copy of the base model's encoder in which
only the artifact's tensors are new; every frozen tensor (LoRA's base weights, a tied embedding) is the
base model's own object, shared. A mixed batch is encoded group by group, each group through its task's
encoder and trimmed to its own padding so that it sees exactly what it would see alone. The decoder then runs
once over the whole batch.
"""

from __future__ import annotations

import copy
import os
import re
from itertools import chain
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from ..utils.fingerprint import numeric_config
from .artifact import (
    check_fingerprints,
    copy_artifact_tensors,
    frozen_encoder_fingerprint,
    load_encoder_artifact,
    save_encoder_artifact,
)
from .base import FrozenDecoderBase
from .config import FrozenDecoderConfig
from .freezing import apply_encoder_training, resolve_lora_targets, trainable_encoder_names
from .model import FrozenDecoderModel
from .record import FrozenDecoderRecord
from .sides import module_prefix

_TASK_NAME = re.compile(r"[\w+=@][\w+=@-]*")
# Names a `torch.nn.ModuleDict` already uses for itself (`parameters`, `training`, ...) cannot name a task.
_TAKEN = frozenset(dir(nn.ModuleDict()))


def check_task_name(name: Any) -> None:
    """Task names name folders and modules: word characters and `+ = @ -`, never a path or a dotted name."""
    if isinstance(name, str) and _TASK_NAME.fullmatch(name) and name in _TAKEN:
        raise ValueError(
            f"The task name {name!r} is taken by the module that holds the task encoders "
            "(`torch.nn.ModuleDict`): choose another, e.g. 'task_" + name + "'."
        )
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise ValueError(
            f"A task name must be letters, digits and '_', '+', '=', '@' or '-' (not first), got {name!r}: it names "
            "the task's folder when saving and its module, so '/', '.' and spaces are refused. Example: "
            "'summarize_cnn'."
        )


class MultiEncoderModel(FrozenDecoderBase):
    """Serve many task encoders on one frozen decoder.

    Args:
        base_model ([`~transformers.PreTrainedModel`]): the encoder-decoder base every task was trained on.

    Example:
        ```python
        server = MultiEncoderModel.from_pretrained("google-t5/t5-base", {"summarize": "me/t5-sum", "qa": "me/t5-qa"})
        server.generate(input_ids=ids, attention_mask=mask, tasks=["qa", "summarize", "qa"], num_beams=3)
        ```
    """

    def __init__(self, base_model: PreTrainedModel) -> None:
        super().__init__(base_model)
        base_model.eval().requires_grad_(False)
        self.encoders = nn.ModuleDict()
        self.task_configs: dict[str, FrozenDecoderConfig] = {}
        self.task_records: dict[str, FrozenDecoderRecord] = {}

    @classmethod
    def from_pretrained(
        cls,
        base_model: PreTrainedModel | str | os.PathLike,
        tasks: dict[str, Any] | None = None,
        **base_model_kwargs: Any,
    ) -> MultiEncoderModel:
        """A base model (or its id) plus task encoders: `{name: artifact folder, Hub repo id or model}`."""
        if isinstance(base_model, (str, os.PathLike)):
            base_model = AutoModelForSeq2SeqLM.from_pretrained(base_model, **base_model_kwargs)
        model = cls(base_model)
        for name, artifact in (tasks or {}).items():
            model.add_task(name, artifact)
        return model

    # -- tasks ------------------------------------------------------------------------------------------------

    def add_task(
        self,
        name: str,
        artifact: Any,
        replace: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> None:
        """Add (or with `replace=True`, swap in) the encoder of `artifact` under `name`.

        Args:
            name (`str`): the task name used in `generate(tasks=...)`.
            artifact: a local folder or Hub repo id holding a frozen-decoder artifact, or a `FrozenDecoderModel`.
            replace (`bool`, defaults to `False`): allow overwriting an existing task.
        """
        check_task_name(name)
        if name in self.encoders and not replace:
            raise ValueError(f"Task {name!r} already exists: pass `replace=True` to swap its encoder.")
        if isinstance(artifact, FrozenDecoderModel):
            config, record, tensors = artifact.frozen_config, artifact.record, artifact.encoder_state_dict()
            source = f"the model for {name!r}"
        else:
            source = str(artifact)
            config, record, tensors = load_encoder_artifact(artifact, revision=revision, token=token)
        # The artifact's tensors are the task's own; every other encoder tensor is the base model's, shared.
        own = {k.removeprefix(self.encoder_prefix) for k in tensors if k.startswith(self.encoder_prefix)}
        encoder = self._copy_encoder(config, own, trainable=set()).requires_grad_(False).eval()
        check_fingerprints(record, self._record_of(encoder), f"Task {name!r}: the encoder in {source}",
                           self.base_name(), config.base_model_name_or_path)  # fmt: skip
        outside = sorted(k for k in tensors if not k.startswith(self.encoder_prefix))
        if outside:
            raise ValueError(f"Task {name!r}: {source} holds tensors outside the encoder: {outside[:5]}.")
        copy_artifact_tensors(self._own_tensors(encoder), tensors, f"{source} (task {name!r})")
        # Built completely before it replaces anything: a failure leaves the served tasks as they were.
        self.encoders[name] = encoder
        self.task_configs[name] = copy.deepcopy(config)
        self.task_records[name] = copy.deepcopy(record)

    def remove_task(self, name: str) -> None:
        self._check_tasks([name])
        del self.encoders[name]
        del self.task_configs[name]
        del self.task_records[name]

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Each task with the size of what it adds: parameters and bytes private to its encoder."""
        listing = {}
        for name, encoder in self.encoders.items():
            private = self._own_tensors(encoder, buffers=True).values()
            listing[name] = {
                "encoder_training": self.task_configs[name].encoder_training,
                "parameters": sum(t.numel() for t in private),
                "bytes": sum(t.numel() * t.element_size() for t in private),
            }
        return listing

    def _copy_encoder(self, config: FrozenDecoderConfig, own: set[str], trainable: set[str]) -> nn.Module:
        """A copy of the base encoder in which only the `own` tensors (names inside the encoder) are new, set up
        for `config`'s encoder training with `trainable` training.

        `copy.deepcopy` with a memo: every other tensor (frozen weights, LoRA's base weights, a tied embedding)
        stays the base model's own object, so it is held once however many tasks there are.
        """
        base_encoder = self.get_base_model().get_encoder()
        named = chain(base_encoder.named_parameters(remove_duplicate=False), base_encoder.named_buffers())
        memo = {id(t): t for n, t in named if n not in own}
        encoder = copy.deepcopy(base_encoder, memo)
        apply_encoder_training(encoder, trainable, config)
        return encoder

    def _own_tensors(self, encoder: nn.Module, buffers: bool = False) -> dict[str, torch.Tensor]:
        """The tensors of a task encoder that are not the base model's, by base-model name."""
        shared = {id(t) for t in chain(self.get_base_model().parameters(), self.get_base_model().buffers())}
        named = chain(encoder.named_parameters(), encoder.named_buffers() if buffers else ())
        return {self.encoder_prefix + n: t for n, t in named if id(t) not in shared}

    def _record_of(self, encoder: nn.Module) -> FrozenDecoderRecord:
        """The fingerprints a task encoder relies on, as `FrozenDecoderModel` records them."""
        own = {n.removeprefix(self.encoder_prefix) for n in self._own_tensors(encoder)}
        return FrozenDecoderRecord(
            decoder_fingerprint=self.expected_decoder_fingerprint,
            frozen_encoder_fingerprint=frozen_encoder_fingerprint(
                encoder, self.encoder_prefix, self.decoder_tensors(), own
            ),
            base_config=numeric_config(self.get_base_model().config),
        )

    def _check_tasks(self, tasks: list[str]) -> None:
        unknown = sorted(set(tasks) - set(self.encoders))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; this model serves {sorted(self.encoders)}.")

    # -- joint training of one encoder per task ---------------------------------------------------------------

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
        model = cls(base_model)
        for name in tasks:
            encoder = model._copy_encoder(config, trainable, trainable).train()
            model.encoders[name] = encoder
            model.task_configs[name] = copy.deepcopy(config)
            model.task_records[name] = model._record_of(encoder)
        return model

    def add_task_ids(self, dataset: Any, task_column: str = "task") -> Any:
        """Add the integer column `task_ids` (the Trainer batches tensors, not task names) from `task_column`."""
        index = {name: i for i, name in enumerate(self.encoders)}
        unknown = sorted(set(dataset[task_column]) - set(index))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown} in column {task_column!r}; the model has {list(index)}.")
        return dataset.map(lambda row: {"task_ids": index[row[task_column]]})

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs: Any) -> None:
        """Write one frozen-decoder artifact per task, in `save_directory/<task>/`, each loadable on its own.

        Under DeepSpeed ZeRO-3, call it on every process: the weights are gathered, the main process writes.
        """
        if not self.takes_part_in_save(is_main_process):
            return
        self.verify_frozen()
        for name, encoder in self.encoders.items():
            folder = os.path.join(save_directory, name)
            save_encoder_artifact(folder, self._own_tensors(encoder), self.task_configs[name],
                                  self.task_records[name], self.encoder_prefix, is_main_process)  # fmt: skip

    # -- inference --------------------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tasks: list[str]) -> tuple:
        """Run each example through its task's encoder; returns (encoder hidden states (B, T, d), attention mask)."""
        if isinstance(tasks, str):
            raise TypeError(f"`tasks` must be a list with one task name per example, got the string {tasks!r}.")
        tasks = list(tasks)
        if len(tasks) != input_ids.shape[0]:
            raise ValueError(
                f"`tasks` names {len(tasks)} task(s) but the batch holds {input_ids.shape[0]} examples: give one "
                "task per example."
            )
        self._check_tasks(tasks)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = None
        for task in dict.fromkeys(tasks):
            rows = torch.tensor([i for i, t in enumerate(tasks) if t == task], device=input_ids.device)
            mask = attention_mask[rows]
            # Trim the group to its own padding, so each example is encoded exactly as it would be alone.
            used = mask.any(0).nonzero().flatten()
            cols = torch.arange(int(used.min()), int(used.max()) + 1, device=input_ids.device)
            out = self.encoders[task](input_ids=input_ids[rows][:, cols], attention_mask=mask[:, cols])
            states = out.last_hidden_state  # (b, t, d)
            if hidden is None:
                hidden = states.new_zeros(*input_ids.shape, states.shape[-1])
            hidden[rows.unsqueeze(1), cols.unsqueeze(0)] = states
        return hidden, attention_mask

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        tasks: list[str] | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generate for a batch whose examples belong to different tasks, decoding them all in one batch.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, length)`), attention_mask: the inputs.
            tasks (`list[str]`): the task of each example.
            generate_kwargs: passed to `generate` (`num_beams=3`, `max_new_tokens`, ...).
        """
        if tasks is None:
            raise ValueError("Pass `tasks=[...]`, one task name per example.")
        hidden, attention_mask = self.encode(input_ids, attention_mask, tasks)
        return self.get_base_model().generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=attention_mask, **generate_kwargs
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        tasks: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Scores (and the loss, given `labels`) for a mixed-task batch; tasks by name or by `task_ids`."""
        if tasks is None and task_ids is not None:
            names = list(self.encoders)
            ids = task_ids.tolist() if isinstance(task_ids, torch.Tensor) else list(task_ids)
            bad = sorted({i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(names)})
            if bad:
                raise ValueError(
                    f"`task_ids` must be integers in 0..{len(names) - 1} (this model's tasks: {names}), got {bad}."
                )
            tasks = [names[i] for i in ids]
        if tasks is None:
            raise ValueError("Pass `tasks=[...]` (one task name per example) or `task_ids`.")
        hidden, attention_mask = self.encode(input_ids, attention_mask, tasks)
        return self.get_base_model()(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=attention_mask, labels=labels,
            **kwargs,
        )  # fmt: skip
