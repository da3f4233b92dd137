"""A multi-encoder set: many task encoders of one base model as one artifact, in a folder or one Hub repo.

    hf_frozen_config.json     MultiEncoderSetConfig: the base model, the decoder dtype, the task names in order
    hf_frozen_record.json     MultiEncoderSetRecord: the decoder fingerprint and each task's weights checksum
    <task>/                   each task's frozen-decoder artifact (artifact.py), loadable on its own

The whole set is committed by one journal in the set's folder (`utils/io.py`): a kill leaves the old set or the
new one, every task of it, never a mix. Loading a set checks every task's weights against the manifest's
checksum, so a task folder replaced inside a set is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING, Any

from transformers import AutoModelForSeq2SeqLM, PreTrainedModel

from ..config import (
    CONFIG_NAME,
    RECORD_NAME,
    AdapterRecord,
    FrozenAdapterConfig,
    check_choice,
    read_json_object,
    write_text,
)
from ..errors import ArtifactError
from ..utils.hub import build_model_card, loading_recorded_base
from ..utils.io import finish_interrupted_save, write_files_together
from ..utils.zero3 import full_copies
from .artifact import encoder_artifact_writers
from .config import FrozenDecoderConfig
from .model import FrozenDecoderModel
from .record import FrozenDecoderRecord
from .task_names import check_task_name

if TYPE_CHECKING:
    from .multi_encoder import MultiEncoderModel


@dataclasses.dataclass
class MultiEncoderSetRecord(AdapterRecord):
    """What a set's manifest checks: the shared decoder and each task's weights.

    Args:
        decoder_fingerprint (`str`): SHA-256 of the decoder side every task was trained against.
        task_weights_sha256 (`dict`): task name -> SHA-256 of its `adapter_model.safetensors`.
    """

    SHA256_FIELDS = ("decoder_fingerprint",)

    decoder_fingerprint: str | None = None
    task_weights_sha256: dict | None = None


@dataclasses.dataclass
class MultiEncoderSetConfig(FrozenAdapterConfig):
    """The manifest of a multi-encoder set (written by `MultiEncoderModel.save_pretrained`; users never write it).

    Args:
        base_model_name_or_path (`str`, *optional*): the base model every task was trained on.
        revision (`str`, *optional*): its revision on the Hub.
        decoder_dtype (`str`, *optional*): the dtype the shared decoder is held in (`FrozenDecoderConfig`).
        tasks (`list[str]`): the task names, in the order the model holds them (`task_ids` refer to it).
    """

    ADAPTER_TYPE = "multi_encoder"
    RECORD_CLASS = MultiEncoderSetRecord

    base_model_name_or_path: str | None = dataclasses.field(default=None, metadata={"help": "The shared base."})
    revision: str | None = dataclasses.field(default=None, metadata={"help": "The base's revision on the Hub."})
    decoder_dtype: str | None = dataclasses.field(default=None, metadata={"help": "The shared decoder's dtype."})
    tasks: list[str] = dataclasses.field(default_factory=list, metadata={"help": "The task names, in order."})

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, list) or not self.tasks or len(set(map(str, self.tasks))) != len(self.tasks):
            raise ValueError(f"`tasks` must be a non-empty list of distinct task names, got {self.tasks!r:.200}.")
        for name in self.tasks:
            check_task_name(name)
        if self.decoder_dtype is not None:
            check_choice(self, "decoder_dtype", ("bfloat16", "float16"))
        for name in ("base_model_name_or_path", "revision"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"`{name}` must be a string or unset, got {getattr(self, name)!r:.80}.")


def save_task_set(
    save_directory: str | os.PathLike,
    tasks: dict[str, tuple[dict[str, Any], FrozenDecoderConfig, FrozenDecoderRecord]],
    set_config: MultiEncoderSetConfig,
    decoder_fingerprint: str,
    encoder_prefix: str,
) -> None:
    """Write every task's artifact (`tasks`: name -> (tensors, config, record)) and the manifest, as one commit."""
    checksums: dict[str, str] = {}
    writers: dict[str, Any] = {}
    for name, (tensors, config, record) in tasks.items():
        task_files = encoder_artifact_writers(
            tensors,
            config,
            record,
            encoder_prefix,
            on_checksum=lambda sha, name=name: checksums.__setitem__(name, sha),
        )
        writers.update({f"{name}/{file}": write for file, write in task_files.items()})  # fmt: skip

    def write_record(path: str) -> None:  # last: every task's weights, hence its checksum, are written by then
        record = MultiEncoderSetRecord(decoder_fingerprint=decoder_fingerprint, task_weights_sha256=checksums)
        write_text(path, record.to_json_string())

    writers[CONFIG_NAME] = lambda path: write_text(path, set_config.to_json_string())
    writers[RECORD_NAME] = write_record
    write_files_together(save_directory, writers)


def load_task_set(
    path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> tuple[MultiEncoderSetConfig, MultiEncoderSetRecord, str]:
    """(manifest config, manifest record, local folder) of a set in a folder or a Hub repo (downloaded whole)."""
    folder = os.fspath(path_or_repo_id)
    if not os.path.isdir(folder):
        from huggingface_hub import snapshot_download

        folder = snapshot_download(folder, revision=revision, token=token)
    finish_interrupted_save(folder)
    config = MultiEncoderSetConfig.from_pretrained(folder)
    record_path = os.path.join(folder, RECORD_NAME)
    if not os.path.isfile(record_path):
        raise FileNotFoundError(f"{folder} has no {RECORD_NAME}: the multi-encoder set is incomplete.")
    record_dict = read_json_object(record_path)
    record_dict.pop("hf_frozen_version", None)
    record = MultiEncoderSetRecord.from_dict(record_dict, source=record_path)
    checksums = record.task_weights_sha256 or {}
    if sorted(checksums) != sorted(config.tasks) or not all(isinstance(v, str) for v in checksums.values()):
        raise ArtifactError(
            f"{record_path} is damaged: its checksums name the tasks {sorted(checksums)[:10]}, its {CONFIG_NAME} "
            f"the tasks {config.tasks[:10]}. Save the set again, or download it again."
        )
    for name in config.tasks:
        task_folder = os.path.join(folder, name)
        if os.path.islink(task_folder) or not os.path.isdir(task_folder):
            raise ArtifactError(
                f"The multi-encoder set in {folder} lists the task {name!r}, but has no folder for it."
            )
    return config, record, folder


def check_task_checksums(record: MultiEncoderSetRecord, loaded: dict[str, FrozenDecoderRecord], folder: str) -> None:
    """Refuse a set whose task folders do not hold the weights its manifest lists (a task replaced inside it)."""
    for name, task_record in loaded.items():
        if task_record.weights_sha256 != record.task_weights_sha256[name]:
            raise ArtifactError(
                f"Task {name!r} of the multi-encoder set in {folder} holds other weights than the set's "
                f"{RECORD_NAME} lists: the task folder was replaced or changed after the set was saved. Save the set "
                "again, or download it again."
            )


class TaskSetPersistence:
    """Loading and saving a `MultiEncoderModel`: from task artifacts or a saved set, and as a set. A mixin."""

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
