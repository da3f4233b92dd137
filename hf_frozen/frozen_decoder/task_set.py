"""A multi-encoder set: many task encoders of one base model as one artifact, in a folder or one Hub repo.

    hf_frozen_config.json     MultiEncoderSetConfig: the base model, the decoder dtype, the task names in order
    hf_frozen_record.json     MultiEncoderSetRecord: the decoder fingerprint and each task's weights checksum
    <task>/                   each task's frozen-decoder artifact (artifact.py), loadable on its own

The whole set is committed by one journal in the set's folder (`utils/io.py`): a kill leaves the old set or the
new one, every task of it, never a mix. Loading a set checks every task's weights against the manifest's
checksum, so a task folder replaced inside a set is refused.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

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
from ..utils.io import finish_interrupted_save, write_files_together
from .artifact import encoder_artifact_writers
from .config import FrozenDecoderConfig
from .record import FrozenDecoderRecord


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
        from .multi_encoder import check_task_name  # the one rule for task names

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
