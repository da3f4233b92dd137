"""`MultiEncoderModel`: one frozen decoder held once in memory, any number of named task encoders.

Each task encoder is built from a frozen-decoder artifact. It is a copy of the base model's encoder in which
only the artifact's tensors are new; every frozen tensor (LoRA's base weights, a tied embedding) is the
base model's own object, shared. A mixed batch is encoded group by group, each group through its task's
encoder and trimmed to its own padding so that it sees exactly what it would see alone; the rows of plain LoRA
task encoders instead share one pass of the base encoder, each row group adding its own adapter's update
(`mixed_lora.py`). The decoder then runs once over the whole batch.
"""

from __future__ import annotations

import copy
from itertools import chain
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..errors import ArtifactError
from ..registry import register_adapter
from .artifact import check_fingerprints, copy_artifact_tensors, load_encoder_artifact
from .base import FrozenDecoderBase
from .config import FrozenDecoderConfig
from .freezing import apply_encoder_training, check_encoder_decoder
from .joint_training import JointTraining
from .mixed_lora import LoraAdapters, LoraParts, lora_parts
from .model import FrozenDecoderModel
from .precision import cast_decoder_side, install_boundary_casts
from .record import FrozenDecoderRecord
from .residency import LeastRecentlyUsed
from .routing import MixedTaskRouting
from .sides import module_prefix
from .task_names import MAX_TASK_NAME_BYTES, check_task_name
from .task_set import MultiEncoderSetConfig, TaskSetPersistence

__all__ = ["MAX_TASK_NAME_BYTES", "MultiEncoderModel", "check_task_name"]


class MultiEncoderModel(TaskSetPersistence, JointTraining, MixedTaskRouting, FrozenDecoderBase):
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
        actual = self.record_for(encoder, self._own_names(encoder))
        check_fingerprints(record, actual, f"Task {name!r}: the encoder in {source}", self.base_name(),
                           config.base_model_name_or_path)  # fmt: skip
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

    def _own_names(self, encoder: nn.Module) -> set[str]:
        """The names, inside the encoder, of a task encoder's own tensors: what its artifact stores."""
        return {n.removeprefix(self.encoder_prefix) for n in self._own_tensors(encoder)}

    def _check_tasks(self, tasks: list[str]) -> None:
        unknown = sorted(set(tasks) - set(self.task_configs))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; this model serves {sorted(self.task_configs)}.")


register_adapter(MultiEncoderSetConfig, MultiEncoderModel, load=MultiEncoderModel.from_set)
