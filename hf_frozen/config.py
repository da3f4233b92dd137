"""What every hf-frozen artifact is made of: a config, a record and a weights file, and how they are read.

- The **config** (`hf_frozen_config.json`) holds the user's hyperparameters only. It follows PEFT's `PeftConfig`
  conventions (dataclass fields with `help` metadata, sorted JSON on disk), under its own file name: PEFT's
  `adapter_config.json` is written beside it only where PEFT can load the artifact as it stands (an encoder
  trained with LoRA alone).
- The **record** (`hf_frozen_record.json`) holds what applying or fitting the adapter learned: fingerprints of
  the frozen model it needs, choices made by cross-validation. hf-frozen writes it; users never do.
- The **weights** (`adapter_model.safetensors`, PEFT's name; `hf_frozen_model.safetensors` in 0.1) hold the
  trained tensors, safetensors only.

hf-frozen 0.1 wrote the record's fields into the config; such artifacts still load (`AdapterRecord.LEGACY_KEYS`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import typing
from typing import Any, ClassVar, TypeVar

from packaging.version import InvalidVersion, Version

from ._version import __version__
from .errors import ArtifactError
from .utils.hub import resolve_file
from .utils.io import (
    atomic_write_text,
    finish_interrupted_save,
    read_tensors,
    sha256_file,
    tensor_writer,
    write_files_together,
)
from .utils.logging import get_logger

logger = get_logger(__name__)

CONFIG_NAME = "hf_frozen_config.json"
RECORD_NAME = "hf_frozen_record.json"
# PEFT's file name: transformers' Trainer resumes from a checkpoint that holds it, and an encoder-LoRA artifact
# is then a PEFT adapter as it stands.
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "hf_frozen_model.safetensors"  # what hf-frozen 0.1 wrote
PEFT_CONFIG_NAME = "adapter_config.json"  # written beside an artifact that PEFT can load as it stands

ConfigT = TypeVar("ConfigT", bound="FrozenAdapterConfig")


def _to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@dataclasses.dataclass
class AdapterRecord:
    """Base of each adapter's record: what applying or fitting it learned, written by hf-frozen beside the weights.

    Subclasses are plain dataclasses whose fields all have defaults.
    """

    # Record field -> the key hf-frozen 0.1 wrote it under in the config, for artifacts that have no record file.
    LEGACY_KEYS: ClassVar[dict[str, str]] = {}

    # Fields that hold a SHA-256 in hex when set: a record read from a file is refused otherwise.
    SHA256_FIELDS: ClassVar[tuple[str, ...]] = ("weights_sha256",)

    # SHA-256 of the weights file saved with this record, checked on load (unset in artifacts of hf-frozen 0.1).
    weights_sha256: str | None = None

    def to_json_string(self) -> str:
        return _to_json({**dataclasses.asdict(self), "hf_frozen_version": __version__})

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `hf_frozen_record.json` into `save_directory`, atomically."""
        atomic_write_text(os.path.join(save_directory, RECORD_NAME), self.to_json_string())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the given dict") -> AdapterRecord:
        """Keep the known fields; a record written by a newer hf-frozen may carry more, which this one ignores.

        Each known field must have its declared type (and pass `check`): a record read from a file may be damaged
        or crafted, and is refused with an `ArtifactError` naming `source` rather than used.
        """
        types = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        for name, value in data.items():
            if name in known and not _has_type(value, types[name]):
                raise ArtifactError(
                    f"{source} is damaged: its field `{name}` must be {_describe(types[name])}, got {value!r:.80}. "
                    "Save the artifact again, or download it again."
                )
        record = cls(**{k: v for k, v in data.items() if k in known})
        problem = record.check()
        if problem:
            raise ArtifactError(f"{source} is damaged: {problem}. Save the artifact again, or download it again.")
        return record

    def check(self) -> str | None:
        """What is wrong with the values of a record read from a file (each field has its type already), or None."""
        for name in self.SHA256_FIELDS:
            value = getattr(self, name)
            if value is not None and not re.fullmatch("[0-9a-f]{64}", value):
                return f"`{name}` must be a SHA-256 in hex, got {value!r:.80}"
        return None


def _has_type(value: Any, annotation: Any) -> bool:
    """Whether a value read from JSON has the type a record field declares (`int`, `float | str | None`, ...)."""
    for kind in typing.get_args(annotation) or (annotation,):
        if kind is type(None) and value is None:
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
        if kind in (str, dict, list) and isinstance(value, kind):
            return True
    return False


def _describe(annotation: Any) -> str:
    kinds = typing.get_args(annotation) or (annotation,)
    return " or ".join("null" if kind is type(None) else f"a JSON {kind.__name__}" for kind in kinds)


@dataclasses.dataclass
class FrozenAdapterConfig:
    """Fields and file handling shared by all hf-frozen adapter configs.

    Each adapter's field names are distinct from `TrainingArguments`' and from the other adapter's, so that one
    `HfArgumentParser` takes a config class beside the training arguments and a script's own dataclasses.
    """

    # Each subclass names its adapter type; it is written to disk so that `AutoFrozenModel` can dispatch.
    ADAPTER_TYPE: ClassVar[str] = ""
    # The adapter's record class: the keys hf-frozen 0.1 wrote into configs for it are skipped when reading.
    RECORD_CLASS: ClassVar[type[AdapterRecord]] = AdapterRecord
    # Field renames since hf-frozen 0.1 (old name -> new name), applied to saved configs when they are read.
    RENAMED_FIELDS: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        """All fields, plus the adapter type and the hf-frozen version that wrote them."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["adapter_type"] = self.ADAPTER_TYPE
        data["hf_frozen_version"] = __version__
        return data

    def to_json_string(self) -> str:
        return _to_json(self.to_dict())

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `hf_frozen_config.json` (sorted keys) into `save_directory`, atomically."""
        os.makedirs(save_directory, exist_ok=True)
        atomic_write_text(os.path.join(save_directory, CONFIG_NAME), self.to_json_string())

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any], source: str = "the given dict") -> ConfigT:
        """Build a config from a dict as written by `to_dict`.

        Keys this version does not know are dropped with a warning when the file was written by a newer
        hf-frozen (forward compatibility, as in PEFT); in a file from this or an older version they are a typo
        and raise `ValueError`.
        """
        moved = set(cls.RECORD_CLASS.LEGACY_KEYS.values())
        data = {cls.RENAMED_FIELDS.get(k, k): v for k, v in data.items() if k not in moved}
        adapter_type = data.pop("adapter_type", cls.ADAPTER_TYPE)
        if adapter_type != cls.ADAPTER_TYPE:
            raise ValueError(
                f"{source} describes a `{adapter_type}` adapter, not a `{cls.ADAPTER_TYPE}` one: load it with "
                "`hf_frozen.AutoFrozenModel.from_pretrained`, or with the config class of that adapter type."
            )
        written_by = _version_of(data.pop("hf_frozen_version", None), source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            if written_by is not None and written_by > Version(__version__):
                logger.warning(
                    "Ignoring keys %s in %s: it was written by hf-frozen %s and this is %s, which does not know them.",
                    unknown,
                    source,
                    written_by,
                    __version__,
                )
            else:
                raise ArtifactError(
                    f"Unknown field(s) {unknown} in {source} for `{cls.__name__}`. Known fields: {sorted(known)}. "
                    "Fix the spelling or remove the field."
                )
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError) as err:  # the config's own checks: name the file they came from
            raise ArtifactError(f"{source} holds an invalid `{cls.__name__}`: {err}") from None

    @classmethod
    def from_pretrained(
        cls: type[ConfigT],
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> ConfigT:
        """Load `hf_frozen_config.json` from a local folder or a Hub repository."""
        path = resolve_file(path_or_repo_id, CONFIG_NAME, revision=revision, token=token)
        return cls.from_dict(read_json_object(path), source=str(path))


def _version_of(written_by: Any, source: str) -> Version | None:
    """The hf-frozen version that wrote a file, from its `hf_frozen_version`; an `ArtifactError` naming the file when
    it is no version."""
    if written_by is None:
        return None
    try:
        return Version(written_by if isinstance(written_by, str) else "")
    except InvalidVersion:
        raise ArtifactError(
            f"{source} is damaged: `hf_frozen_version` must be a version such as {__version__!r}, got "
            f"{written_by!r:.80}. Save the artifact again, or download it again."
        ) from None


# hf-frozen's JSON files are a few kilobytes; a larger one is not ours, and is not read into memory.
MAX_JSON_BYTES = 16 << 20


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a JSON file that must hold an object, turning errors into a message that names the file."""
    with open(path, "rb") as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ArtifactError(f"{path} is over {MAX_JSON_BYTES >> 20} MB: not an hf-frozen file.")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); it is not a usable hf-frozen file.") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} holds a JSON {type(data).__name__}, not an object: not an hf-frozen file.")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def save_adapter_files(
    save_directory: str | os.PathLike,
    tensors: dict[str, Any],
    config: FrozenAdapterConfig,
    record: AdapterRecord,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Write an artifact's weights, record (with the weights' checksum), config and `extra_files` (name -> text)
    as one set: after a crash at any point, a reader finds the previous artifact or this one, whole (see
    `utils/io.py`). Other files in the folder are kept."""
    write_files_together(save_directory, adapter_file_writers(tensors, config, record, extra_files))


def adapter_file_writers(
    tensors: dict[str, Any],
    config: FrozenAdapterConfig,
    record: AdapterRecord,
    extra_files: dict[str, str] | None = None,
    on_checksum: Any = None,
) -> dict[str, Any]:
    """The files of one artifact, file name -> `write(path)`, for `write_files_together`. The record's
    `weights_sha256` is taken while the weights are written (they are written first); `on_checksum(sha256)` is
    then called too (a multi-encoder set's manifest collects them)."""
    record = dataclasses.replace(record)
    write_weights = tensor_writer(tensors, {"adapter_type": config.ADAPTER_TYPE})

    def write_weights_and_checksum(path: str) -> None:
        write_weights(path)
        record.weights_sha256 = sha256_file(path)
        if on_checksum is not None:
            on_checksum(record.weights_sha256)

    return {
        WEIGHTS_NAME: write_weights_and_checksum,
        RECORD_NAME: lambda path: write_text(path, record.to_json_string()),
        CONFIG_NAME: lambda path: write_text(path, config.to_json_string()),
        **{name: functools.partial(write_text, text=text) for name, text in (extra_files or {}).items()},
    }


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def load_adapter_files(
    path_or_repo_id: str | os.PathLike,
    config_class: type[FrozenAdapterConfig],
    revision: str | None = None,
    token: str | bool | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Read an artifact's (config, record, weights) from a local folder or a Hub repository, the record as
    `config_class.RECORD_CLASS`.

    An artifact written by hf-frozen 0.1 has no record file: its record is read from the config's old keys.
    """
    if os.path.isdir(path_or_repo_id):
        finish_interrupted_save(path_or_repo_id)
    config_path = resolve_file(path_or_repo_id, CONFIG_NAME, revision=revision, token=token)
    config_dict = read_json_object(config_path)
    config = config_class.from_dict(config_dict, source=str(config_path))
    record_class = config_class.RECORD_CLASS
    try:
        record_path = resolve_file(path_or_repo_id, RECORD_NAME, revision=revision, token=token)
        record_dict = read_json_object(record_path)
        _version_of(record_dict.pop("hf_frozen_version", None), record_path)
    except FileNotFoundError:
        legacy = {field: config_dict[key] for field, key in record_class.LEGACY_KEYS.items() if key in config_dict}
        if not legacy:
            raise
        record_path, record_dict = config_path, legacy
    record = record_class.from_dict(record_dict, source=str(record_path))
    if record.weights_sha256 is None and record_path != config_path:
        # Every record file hf-frozen writes holds the checksum; only 0.1's artifacts (no record file) lack it.
        raise ArtifactError(
            f"{record_path} is damaged: it has no `weights_sha256`, which every {RECORD_NAME} holds, so its weights "
            "cannot be verified. Save the artifact again, or download it again."
        )
    try:
        weights_path = resolve_file(path_or_repo_id, WEIGHTS_NAME, revision=revision, token=token)
    except FileNotFoundError as missing:
        try:
            weights_path = resolve_file(path_or_repo_id, LEGACY_WEIGHTS_NAME, revision=revision, token=token)
        except FileNotFoundError:
            raise missing from None
    tensors, weights_sha256 = read_tensors(weights_path)
    if record.weights_sha256 is not None and weights_sha256 != record.weights_sha256:
        raise ArtifactError(
            f"Weights file {weights_path} is corrupted or truncated: it does not match the checksum recorded in "
            f"{RECORD_NAME} (or it was changed after saving). Save the artifact again, or download it again."
        )
    # The checksum of what was read, also for an artifact of hf-frozen 0.1 that records none: what a server reads
    # back later (`MultiEncoderModel`'s cold tasks) must be these very weights.
    record.weights_sha256 = weights_sha256
    return config, record, tensors


def copy_artifact(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the artifact files of folder `source` (config, record, weights, PEFT's config) into `target`, as one
    set (`write_files_together`): a reader of `target` sees the old artifact or this one. A copy, not a second
    save: safetensors orders its metadata differently on each save, so two saves of one model differ in bytes."""
    names = [n for n in (CONFIG_NAME, RECORD_NAME, WEIGHTS_NAME, PEFT_CONFIG_NAME)
             if os.path.isfile(os.path.join(source, n))]  # fmt: skip
    write_files_together(target, {n: functools.partial(shutil.copyfile, os.path.join(source, n)) for n in names})


def check_positive(config: Any, name: str, allow_zero: bool = False, integer: bool = False) -> None:
    """Raise a `ValueError` naming `name` unless the field is a positive number (or zero when allowed), and a whole
    number when `integer`; finite in any case."""
    value = getattr(config, name)
    kinds = (int,) if integer else (int, float)
    ok = (
        isinstance(value, kinds)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        kind = "integer" if integer else "number"
        bound = f"a{'n' if integer else ''} {kind} >= 0" if allow_zero else f"a positive {kind}"
        raise ValueError(f"`{name}` must be {bound}, got {value!r} ({type(value).__name__}).")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming `name` unless the field is one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
