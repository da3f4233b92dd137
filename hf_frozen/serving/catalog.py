"""The tasks a server answers for: which artifact each one is, what kind, and what it must still be when loaded.

The catalog is read once, in the process that starts the server, from the artifacts' small JSON files only (no
weights). Each replica then loads a task's weights when a request first needs it, and refuses them unless its
config and weights checksum are still those read here: a task folder changed on disk after the server started is
never served.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..config import CONFIG_NAME, RECORD_NAME, read_json_object
from ..errors import ArtifactError
from ..frozen_decoder.task_names import check_task_name
from ..utils.hub import resolve_file

GENERATION = "generation"  # a frozen-decoder task encoder: /v1/completions
CLASSIFICATION = "classification"  # a DecT head: /v1/classifications


@dataclasses.dataclass(frozen=True)
class ServedTask:
    """One task of a server.

    Args:
        name (`str`): the task id clients send as `"model"`.
        kind (`str`): `"generation"` (a frozen-decoder encoder) or `"classification"` (a DecT head).
        source (`str`): the artifact's local folder or Hub repo id.
        revision (`str`, *optional*): its Hub revision.
        config (`dict`): its config as read at start (`to_dict()`); a load that reads another is refused.
        weights_sha256 (`str`, *optional*): its weights' checksum as recorded at start; likewise.
        base (`str`, *optional*): the base model (generation) or backbone (classification) it records.
        labels (`list[str]`, *optional*): a DecT head's classes.
    """

    name: str
    kind: str
    source: str
    revision: str | None
    config: dict[str, Any]
    weights_sha256: str | None
    base: str | None = None
    labels: tuple[str, ...] | None = None

    def check_unchanged(self, config: Any, weights_sha256: str | None) -> None:
        """Refuse a loaded artifact that differs from the one read when the server started."""
        if self.weights_sha256 not in (None, weights_sha256) or _comparable(config.to_dict()) != _comparable(
            self.config
        ):
            raise ArtifactError(
                f"Task {self.name!r}: {self.source} changed after the server started (its config or weights differ "
                "from those read then), so it is not served. Restart the server to serve what it holds now."
            )


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the fields a load sets itself (the version that wrote it, DecT's run-local cache folder)."""
    return {k: v for k, v in config.items() if k not in ("hf_frozen_version", "query_cache_dir")}


def parse_task_option(value: str) -> tuple[str, str]:
    """`name=folder-or-repo` (the CLI's `--task`) -> (name, source)."""
    name, sep, source = value.partition("=")
    if not sep or not name or not source:
        raise ValueError(f"--task must be NAME=FOLDER_OR_REPO (e.g. --task summarize=./enc-sum), got {value!r}.")
    return name, source


def task_catalog(
    tasks: dict[str, str] | None = None,
    sets: list[str] | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> dict[str, ServedTask]:
    """Read each task's config and record: `tasks` maps a task id to a frozen-decoder artifact or a DecT head (a
    folder or Hub repo); every task of each multi-encoder set in `sets` is added under its own name."""
    from ..dect.config import DecTConfig
    from ..frozen_decoder.config import FrozenDecoderConfig
    from ..frozen_decoder.task_set import load_task_set

    catalog: dict[str, ServedTask] = {}

    def add(task: ServedTask) -> None:
        check_task_name(task.name)
        if task.name in catalog:
            raise ValueError(
                f"Task {task.name!r} is named twice (by {catalog[task.name].source} and by {task.source}): give "
                "each task one name."
            )
        catalog[task.name] = task

    for set_source in sets or []:
        set_config, set_record, folder = load_task_set(set_source, revision, token)
        for name in set_config.tasks:
            task_folder = os.path.join(folder, name)
            config = FrozenDecoderConfig.from_pretrained(task_folder)
            add(ServedTask(name, GENERATION, task_folder, None, config.to_dict(),
                           set_record.task_weights_sha256[name], set_config.base_model_name_or_path))  # fmt: skip

    for name in tasks or {}:  # every name before any file is read
        check_task_name(name)
    for name, source in (tasks or {}).items():
        config_path = resolve_file(source, CONFIG_NAME, revision=revision, token=token)
        adapter_type = read_json_object(config_path).get("adapter_type")
        record_path, record = _read_record(source, revision, token)
        weights_sha256 = _recorded_weights_sha256(record_path, record)
        if adapter_type == "frozen_decoder":
            config = FrozenDecoderConfig.from_pretrained(source, revision=revision, token=token)
            add(ServedTask(name, GENERATION, source, revision, config.to_dict(), weights_sha256,
                           config.base_model_name_or_path))  # fmt: skip
        elif adapter_type == "dect":
            config = DecTConfig.from_pretrained(source, revision=revision, token=token)
            _check_servable_features(name, source, record_path, record)
            add(ServedTask(name, CLASSIFICATION, source, revision, config.to_dict(), weights_sha256,
                           config.backbone_name_or_path, tuple(config.labels or ())))  # fmt: skip
        elif adapter_type == "multi_encoder":
            raise ValueError(
                f"Task {name!r}: {source} is a multi-encoder set, which holds many tasks. Serve it with --set "
                f"{source} (each of its tasks keeps its own name)."
            )
        else:
            raise ValueError(
                f"Task {name!r}: {source} holds a {adapter_type!r} artifact; a server answers for frozen-decoder task "
                "encoders (text generation) and DecT heads (classification)."
            )
    if not catalog:
        raise ValueError("No task to serve: give at least one --task NAME=FOLDER_OR_REPO or --set FOLDER_OR_REPO.")
    return catalog


def _read_record(source: str, revision: str | None, token: str | bool | None) -> tuple[str | None, dict]:
    """(path, contents) of an artifact's record, read once for every check; (None, {}) for an hf-frozen 0.1
    artifact, which has none."""
    try:
        path = resolve_file(source, RECORD_NAME, revision=revision, token=token)
    except FileNotFoundError:
        return None, {}
    return path, read_json_object(path)


def _check_servable_features(name: str, source: str, record_path: str | None, record: dict) -> None:
    """Refuse, at the start rather than at the first request, a DecT head whose features come from an embeddings API
    or a callable: loading takes those only from the caller (a URL or function named in an artifact is never used),
    and a server has none to give. A transformers feature model is loaded from its recorded id, like the backbone."""
    features = record.get("feature_model") or {}
    if not isinstance(features, dict):
        raise ArtifactError(f"{record_path} is damaged: `feature_model` is {features!r:.40}, not an object.")
    if features.get("kind") in ("endpoint", "callable"):
        what = "an embeddings API" if features["kind"] == "endpoint" else "a Python callable"
        raise ValueError(
            f"Task {name!r}: the DecT head in {source} reads its features from {what} "
            f"({features.get('name_or_path')!r:.80}), which only the caller of `from_pretrained` can pass; a server "
            "cannot. Serve a head fitted with a transformers feature model (loaded from its recorded id), or none."
        )


def _recorded_weights_sha256(record_path: str | None, record: dict) -> str | None:
    """The weights checksum an artifact's record holds (`None` for an hf-frozen 0.1 artifact, which has no record:
    its first load then fixes what the task must stay)."""
    sha = record.get("weights_sha256")
    if sha is not None and not isinstance(sha, str):
        raise ArtifactError(f"{record_path} is damaged: `weights_sha256` is {sha!r:.40}, not a string.")
    return sha


def one_base(catalog: dict[str, ServedTask], kind: str, given: str | None, option: str) -> str | None:
    """The base model (or DecT backbone) the tasks of `kind` share: `given`, else the one they all record."""
    tasks = [t for t in catalog.values() if t.kind == kind]
    if not tasks or given:
        return given
    recorded = {t.base for t in tasks}
    if len(recorded) != 1 or None in recorded:
        named = {t.name: t.base for t in tasks}
        raise ValueError(
            f"The {kind} tasks record different base models or none ({dict(list(named.items())[:5])}): pass "
            f"{option} to name the one they share."
        )
    return recorded.pop()
