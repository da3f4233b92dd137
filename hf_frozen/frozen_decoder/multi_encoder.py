"""`MultiEncoderModel`: one frozen decoder held once in memory, any number of named task encoders.

Each task encoder is built from a frozen-decoder artifact. It is a copy of the base model's encoder in which
only the artifact's tensors are new; every frozen tensor (LoRA's base weights, a tied embedding) is the
base model's own object, shared. A mixed batch is encoded group by group, each group through its task's
encoder and trimmed to its own padding so that it sees exactly what it would see alone; the rows of plain LoRA
task encoders instead share one pass of the base encoder, each row group adding its own adapter's update
(`mixed_lora.py`). The decoder then runs once over the whole batch.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from itertools import chain
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from ..errors import ArtifactError
from ..registry import register_adapter
from ..utils.fingerprint import numeric_config
from ..utils.hub import build_model_card, loading_recorded_base
from ..utils.zero3 import full_copies
from .artifact import check_fingerprints, copy_artifact_tensors, frozen_encoder_fingerprint, load_encoder_artifact
from .base import FrozenDecoderBase
from .config import FrozenDecoderConfig
from .freezing import apply_encoder_training, check_encoder_decoder, resolve_lora_targets, trainable_encoder_names
from .mixed_lora import LoraAdapters, LoraParts, lora_parts, mixed_lora
from .model import FrozenDecoderModel
from .precision import cast_decoder_side, install_boundary_casts
from .record import FrozenDecoderRecord
from .residency import LeastRecentlyUsed
from .sides import module_prefix
from .task_set import MultiEncoderSetConfig, check_task_checksums, load_task_set, save_task_set

_TASK_NAME = re.compile(r"[\w+=@][\w+=@-]*")
# A task name names a folder: well under the 255 bytes a file name may have on common file systems.
MAX_TASK_NAME_BYTES = 128
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
    if len(name.encode("utf-8")) > MAX_TASK_NAME_BYTES:
        raise ValueError(
            f"A task name names the task's folder, so it must be at most {MAX_TASK_NAME_BYTES} bytes; got one of "
            f"{len(name.encode('utf-8'))} ({name[:40]!r}...). Choose a shorter name."
        )


class MultiEncoderModel(FrozenDecoderBase):
    """Serve many task encoders on one frozen decoder.

    Args:
        base_model ([`~transformers.PreTrainedModel`]): the encoder-decoder base every task was trained on.
        max_resident_encoders (`int`, *optional*, defaults to `None`): keep at most this many task encoders that
            were added from files (a folder or Hub repo) in memory, the least recently used leaving first; one that
            is needed again is read back from its safetensors file and checked again (a cold task). `None` keeps
            every task resident. A batch that needs more tasks than this holds them all while it runs.
        decoder_dtype (`str`, *optional*, defaults to `None`): hold the shared decoder in `"bfloat16"` or
            `"float16"`, for tasks trained with `FrozenDecoderConfig(decoder_dtype=...)`. `from_pretrained` reads
            it from the tasks' configs.

    Example:
        ```python
        server = MultiEncoderModel.from_pretrained("google-t5/t5-base", {"summarize": "me/t5-sum", "qa": "me/t5-qa"})
        server.generate(input_ids=ids, attention_mask=mask, tasks=["qa", "summarize", "qa"], num_beams=3)
        ```
    """

    def __init__(
        self, base_model: PreTrainedModel, max_resident_encoders: int | None = None, decoder_dtype: str | None = None
    ) -> None:
        if decoder_dtype is not None:
            check_encoder_decoder(base_model)
            FrozenDecoderConfig(decoder_dtype=decoder_dtype)  # validates the name
            cast_decoder_side(base_model, module_prefix(base_model, base_model.get_encoder()), decoder_dtype)
        super().__init__(base_model)  # fingerprints the decoder as it is now
        base_model.eval().requires_grad_(False)
        self.decoder_dtype = decoder_dtype
        # Task encoders are deep copies of the base encoder and carry these hooks along (deepcopy keeps the hook
        # functions), so every one of them hands the decoder its own dtype.
        self._boundary_casts = install_boundary_casts(base_model, self.encoder_prefix) if decoder_dtype else []
        self._residency = LeastRecentlyUsed(max_resident_encoders)  # validates it
        # The task encoders in memory (all of them unless `max_resident_encoders`). A served plain LoRA task is held
        # as its adapter alone, in `lora_adapters`: it only ever runs in the shared pass (`mixed_lora.py`).
        self.encoders = nn.ModuleDict()
        self.lora_adapters = nn.ModuleDict()
        # Every task, resident or not, in the order added: the registry that task names and `task_ids` refer to.
        self.task_configs: dict[str, FrozenDecoderConfig] = {}
        self.task_records: dict[str, FrozenDecoderRecord] = {}
        self.lora_parts: dict[str, LoraParts | None] = {}  # per task: its LoRA pairs, if it can share a pass
        self._sources: dict[str, tuple[Any, str | None, str | bool | None]] = {}  # task -> (artifact, revision, token)
        self._sizes: dict[str, dict[str, int]] = {}

    @property
    def max_resident_encoders(self) -> int | None:
        return self._residency.capacity

    @classmethod
    def from_pretrained(
        cls,
        base_model: PreTrainedModel | str | os.PathLike | None,
        tasks: dict[str, Any] | str | os.PathLike | None = None,
        max_resident_encoders: int | None = None,
        **base_model_kwargs: Any,
    ) -> MultiEncoderModel:
        """A base model (or its id) plus task encoders: `{name: artifact folder, Hub repo id or model}`, or a saved
        set (a folder or Hub repo written by `save_pretrained` / `push_to_hub`; `base_model=None` then loads the
        base the set records).

        With `max_resident_encoders=K`, at most K of them stay in memory (see the class docstring): each is still
        read and checked once here, so a broken artifact fails now rather than at its first request.
        """
        if isinstance(tasks, (str, os.PathLike)):
            return cls.from_set(tasks, base_model, max_resident_encoders=max_resident_encoders, **base_model_kwargs)
        if isinstance(base_model, (str, os.PathLike)):
            base_model = AutoModelForSeq2SeqLM.from_pretrained(base_model, **base_model_kwargs)
        model = cls(base_model, max_resident_encoders=max_resident_encoders,
                    decoder_dtype=_tasks_decoder_dtype(tasks or {}))  # fmt: skip
        for name, artifact in (tasks or {}).items():
            model.add_task(name, artifact)
        return model

    @classmethod
    def from_set(
        cls,
        path_or_repo_id: str | os.PathLike,
        base_model: PreTrainedModel | str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        max_resident_encoders: int | None = None,
        **base_model_kwargs: Any,
    ) -> MultiEncoderModel:
        """Load a set saved by `save_pretrained` (a folder) or `push_to_hub` (a Hub repo, downloaded whole), onto
        `base_model` or the base the set records. Every task's weights are checked against the set's manifest."""
        set_config, set_record, folder = load_task_set(path_or_repo_id, revision, token)
        if not isinstance(base_model, PreTrainedModel):
            base_id = base_model or set_config.base_model_name_or_path
            if not base_id:
                raise ValueError(f"The set {path_or_repo_id} records no base model: pass `base_model=`.")
            if base_id == set_config.base_model_name_or_path and set_config.revision:
                base_model_kwargs.setdefault("revision", set_config.revision)
            with contextlib.nullcontext() if base_model else loading_recorded_base(base_id, path_or_repo_id):
                base_model = AutoModelForSeq2SeqLM.from_pretrained(base_id, **base_model_kwargs)
        model = cls(base_model, max_resident_encoders=max_resident_encoders, decoder_dtype=set_config.decoder_dtype)
        for name in set_config.tasks:
            model.add_task(name, os.path.join(folder, name))
        check_task_checksums(set_record, model.task_records, folder)
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
        if name in self.task_configs and not replace:
            raise ValueError(f"Task {name!r} already exists: pass `replace=True` to swap its encoder.")
        self._load_task(name, artifact, revision, token)
        self._residency.touch([name])
        self._evict(keep={name})

    def _load_task(
        self,
        name: str,
        artifact: Any,
        revision: str | None,
        token: str | bool | None,
        read_back: bool = False,
    ) -> None:
        """Build, check and register the encoder of `artifact` under `name` (what `add_task` does, less eviction).

        `read_back`: an evicted task is being read back; its weights and config must be those registered when it
        was added.
        """
        if isinstance(artifact, FrozenDecoderModel):
            config, record, tensors = artifact.frozen_config, artifact.record, artifact.encoder_state_dict()
            source = f"the model for {name!r}"
        else:
            source = str(artifact)
            config, record, tensors = load_encoder_artifact(artifact, revision=revision, token=token)
            if read_back and self._changed_since_added(name, config, record):
                raise ArtifactError(
                    f"Task {name!r}: {source} changed after the task was added (its weights or config differ from "
                    "those read then), so it is not served. Add the task again (`add_task(name, folder, "
                    "replace=True)`) to serve what the folder holds now."
                )
        if config.decoder_dtype != self.decoder_dtype:
            raise ValueError(
                f"Task {name!r}: the encoder in {source} was trained against a decoder held in "
                f"{config.decoder_dtype or 'the base model dtype'} (`decoder_dtype={config.decoder_dtype!r}`), this "
                f"model holds its decoder in {self.decoder_dtype or 'the base model dtype'}. Serve tasks of one "
                f"`decoder_dtype` together: `MultiEncoderModel(base, decoder_dtype={config.decoder_dtype!r})`."
            )
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
        self._register(name, encoder, config, record, serving=True)
        if isinstance(artifact, FrozenDecoderModel):
            self._sources.pop(name, None)  # an in-memory model cannot be read back: it stays resident
        else:
            self._sources[name] = (artifact, revision, token)

    def _changed_since_added(self, name: str, config: FrozenDecoderConfig, record: FrozenDecoderRecord) -> bool:
        """Whether an artifact read back for `name` differs from what was registered when the task was added."""
        registered = self.task_configs[name], self.task_records[name]
        return (config.to_dict(), record.weights_sha256) != (registered[0].to_dict(), registered[1].weights_sha256)

    def _register(
        self, name: str, encoder: nn.Module, config: FrozenDecoderConfig, record: FrozenDecoderRecord, serving: bool
    ) -> None:
        """Hold `encoder` under `name`; a served plain LoRA task keeps its adapter and lets the encoder copy go."""
        private = self._own_tensors(encoder, buffers=True)
        parts = lora_parts(encoder, private)
        self._drop(name)
        if serving and parts is not None:
            self.lora_adapters[name] = LoraAdapters(parts)
        else:
            self.encoders[name] = encoder
        self.lora_parts[name] = parts
        self.task_configs[name] = copy.deepcopy(config)
        self.task_records[name] = copy.deepcopy(record)
        self._sizes[name] = {"parameters": sum(t.numel() for t in private.values()),
                             "bytes": sum(t.numel() * t.element_size() for t in private.values())}  # fmt: skip

    def _drop(self, name: str) -> None:
        """Free a task's encoder or adapter (its config and record stay: it can be read back)."""
        for held in (self.encoders, self.lora_adapters):
            if name in held:
                del held[name]
        self.lora_parts[name] = None

    def _resident(self, name: str) -> bool:
        return name in self.encoders or name in self.lora_adapters

    def _task_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """What a task's artifact stores: its encoder's own tensors, or its adapter's."""
        if name in self.lora_adapters:
            return self.lora_adapters[name].artifact_tensors(self.encoder_prefix)
        return self._own_tensors(self.encoders[name])

    def remove_task(self, name: str) -> None:
        self._check_tasks([name])
        self._drop(name)
        for table in (self.task_configs, self.task_records, self.lora_parts, self._sources, self._sizes):
            table.pop(name, None)
        self._residency.forget(name)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Each task with the size of what it adds (parameters and bytes private to its encoder) and whether its
        encoder is in memory now."""
        return {
            name: {"encoder_training": config.encoder_training, **self._sizes[name], "resident": self._resident(name)}
            for name, config in self.task_configs.items()
        }

    # -- which task encoders stay in memory -------------------------------------------------------------------

    def _make_resident(self, names: list[str]) -> None:
        """Read back, from their files, the encoders of `names` that were evicted (each is checked again, and
        refused unless its weights and config are exactly those registered when it was added)."""
        for name in names:
            if not self._resident(name):
                self._load_task(name, *self._sources[name], read_back=True)
        self._residency.touch(names)

    def _evict(self, keep: set[str] = frozenset()) -> None:
        """Drop the least recently used file-backed encoders beyond `max_resident_encoders`, never one in `keep`."""
        for name in self._residency.to_evict({n for n in self._sources if self._resident(n)}, keep):
            self._drop(name)

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
        unknown = sorted(set(tasks) - set(self.task_configs))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; this model serves {sorted(self.task_configs)}.")

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
        model = cls(base_model, decoder_dtype=config.decoder_dtype)
        for name in tasks:
            encoder = model._copy_encoder(config, trainable, trainable).train()
            model._register(name, encoder, config, model._record_of(encoder), serving=False)
        return model

    def add_task_ids(self, dataset: Any, task_column: str = "task") -> Any:
        """Add the integer column `task_ids` (the Trainer batches tensors, not task names) from `task_column`."""
        index = {name: i for i, name in enumerate(self.task_configs)}
        unknown = sorted(set(dataset[task_column]) - set(index))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown} in column {task_column!r}; the model has {list(index)}.")
        return dataset.map(lambda row: {"task_ids": index[row[task_column]]})

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs: Any) -> None:
        """Write the set: one frozen-decoder artifact per task, in `save_directory/<task>/` (each loadable on its
        own), and the set's manifest, committed together (`task_set.py`): a kill leaves the old set or the new one.
        `MultiEncoderModel.from_pretrained(base, save_directory)` and `AutoFrozenModel` load it.

        Under DeepSpeed ZeRO-3, call it on every process: the weights are gathered, the main process writes.
        """
        if not self.takes_part_in_save(is_main_process):
            return
        self.verify_frozen()
        tasks = {}
        for name in self.task_configs:
            self._make_resident([name])
            tasks[name] = (full_copies(self._task_tensors(name)), self.task_configs[name], self.task_records[name])
            self._evict(keep={name})
        if is_main_process:
            save_task_set(save_directory, tasks, self.set_config(), self.expected_decoder_fingerprint,
                          self.encoder_prefix)  # fmt: skip

    def set_config(self) -> MultiEncoderSetConfig:
        """The set's manifest: the base model the tasks record, the decoder's dtype, the tasks in order."""
        first = next(iter(self.task_configs.values()), FrozenDecoderConfig())
        return MultiEncoderSetConfig(
            base_model_name_or_path=first.base_model_name_or_path or self.base_name(), revision=first.revision,
            decoder_dtype=self.decoder_dtype, tasks=list(self.task_configs),
        )  # fmt: skip

    def model_card(self, repo_id: str | None = None) -> str:
        """The README.md that `push_to_hub` uploads with a set."""
        rows = "\n".join(f"| `{name}` | {c.encoder_training} | {self._sizes[name]['parameters']:,d} |"
                         for name, c in self.task_configs.items())  # fmt: skip
        body = f"""
# Task encoders on one frozen decoder

{len(self.task_configs)} task encoders of `{self.set_config().base_model_name_or_path}`, served together on its one
frozen decoder by [hf-frozen](https://github.com/hf-frozen/hf-frozen).

| task | encoder training | trained parameters |
|---|---|---|
{rows}

## Usage

```python
from hf_frozen import AutoFrozenModel

server = AutoFrozenModel.from_pretrained("{repo_id or "<this repo id>"}")  # loads the base, checks every task
server.generate(input_ids=ids, attention_mask=mask, tasks=[...], num_beams=3)
```
"""
        return build_model_card(self.set_config().base_model_name_or_path, ["frozen-decoder", "multi-encoder"],
                                "text2text-generation", body)  # fmt: skip

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
        self._make_resident(list(dict.fromkeys(tasks)))
        try:
            return self._encode(input_ids, attention_mask, tasks)
        finally:
            self._evict()

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tasks: list[str]) -> tuple:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        empty = (~attention_mask.bool().any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"Rows {empty[:10]} of `attention_mask` are all zeros: those examples have no token to encode. Drop "
                "them from the batch, or give each at least one token (an empty text still has its end token)."
            )
        # Plain LoRA tasks share one pass of the base encoder: a served one always (it holds no encoder of its own),
        # one being trained (`for_training`) in eval mode and with another beside it (alone it gains nothing).
        shared = {t for t in dict.fromkeys(tasks) if self.lora_parts.get(t)
                  and (t in self.lora_adapters or not self.encoders[t].training)}  # fmt: skip
        if len(shared) == 1 and next(iter(shared)) in self.encoders:
            shared = set()
        passes: dict[str | None, list[int]] = {}  # task (None: the shared pass) -> its rows
        for i, task in enumerate(tasks):
            passes.setdefault(None if task in shared else task, []).append(i)
        hidden = None
        for task, row_list in passes.items():
            rows = torch.tensor(row_list, device=input_ids.device)
            mask = attention_mask[rows]
            # Trim the group to its own padding, so each example is encoded as it would be alone.
            used = mask.any(0).nonzero().flatten()
            cols = torch.arange(int(used.min()), int(used.max()) + 1, device=input_ids.device)
            inputs = {"input_ids": input_ids[rows][:, cols], "attention_mask": mask[:, cols]}
            if task is not None:
                states = self.encoders[task](**inputs).last_hidden_state  # (b, t, d)
            else:
                states = self._shared_lora_pass(inputs, [tasks[i] for i in row_list])
            if hidden is None:
                hidden = states.new_zeros(*input_ids.shape, states.shape[-1])
            hidden[rows.unsqueeze(1), cols.unsqueeze(0)] = states
        return hidden, attention_mask

    def _shared_lora_pass(self, inputs: dict[str, torch.Tensor], tasks: list[str]) -> torch.Tensor:
        """One base-encoder pass over rows of several plain LoRA tasks, each row group adding its own adapter."""
        device = inputs["input_ids"].device
        groups = [
            (torch.tensor([i for i, t in enumerate(tasks) if t == task], device=device), self.lora_parts[task])
            for task in dict.fromkeys(tasks)
        ]
        encoder = self.get_base_model().get_encoder()
        with mixed_lora(encoder, groups):
            return encoder(**inputs).last_hidden_state

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
            names = list(self.task_configs)
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


def _tasks_decoder_dtype(tasks: dict[str, Any]) -> str | None:
    """The one `decoder_dtype` the tasks were trained with (read from their configs alone), for the server."""
    found = {}
    for name, artifact in tasks.items():
        if isinstance(artifact, FrozenDecoderModel):
            found[name] = artifact.frozen_config.decoder_dtype
        else:
            found[name] = FrozenDecoderConfig.from_pretrained(artifact).decoder_dtype
    dtypes = set(found.values())
    if len(dtypes) > 1:
        raise ValueError(
            f"The tasks were trained against decoders held in different dtypes ({found}); one model shares one "
            "decoder. Serve each `decoder_dtype` with a MultiEncoderModel of its own."
        )
    return dtypes.pop() if dtypes else None


register_adapter(MultiEncoderSetConfig, MultiEncoderModel, load=MultiEncoderModel.from_set)
