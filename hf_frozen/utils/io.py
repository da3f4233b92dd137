"""File I/O that never leaves a half-written or mixed artifact behind, and safetensors loading with clear errors.

One file (`atomic_write`): written to a temporary file in the target folder, flushed to disk, then moved into
place with `os.replace`, which is atomic on POSIX and Windows. A crash or a failed write leaves the previous file.

Several files that belong together (`write_files_together`, an artifact's weights, record and config) are
committed through a small journal, so that a reader sees the old set or the new set, whole, never a mix:

1. every new file is written to a temporary file beside its target and flushed to disk;
2. the journal `.hf_frozen_commit.json`, naming each temporary file and its target, is written atomically:
   from here on the new set is complete on disk, and this is the commit point;
3. each temporary file is renamed onto its target;
4. the journal is removed.

A process killed before step 2 leaves the old set untouched (its temporary files, named with its process id, are
removed by the next save or load once it is gone); killed after it, the next reader finishes step 3
(`finish_interrupted_save`) before reading, and so sees the new set. One writer at a time per folder: two
processes saving into the same folder at once are not made safe. Every file is created with the permissions the
umask gives (not `mkstemp`'s 0600).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from safetensors import SafetensorError

if TYPE_CHECKING:
    import torch

JOURNAL_NAME = ".hf_frozen_commit.json"
_TMP_PREFIX, _TMP_SUFFIX = ".hf_frozen.", ".tmp"


def _default_mode() -> int:
    """The mode `open()` would give a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temporary_file(folder: str, name: str) -> str:
    # The writer's process id is part of the name: only files of writers no longer alive are cleaned up.
    fd, tmp_path = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=folder)
    os.close(fd)
    os.chmod(tmp_path, _default_mode())
    return tmp_path


def _flush_to_disk(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and move the result to `path` only if it succeeded."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp_path = _temporary_file(folder, os.path.basename(path))
    try:
        write(tmp_path)
        _flush_to_disk(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        _remove_quietly(tmp_path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp_path: str) -> None:
        with open(tmp_path, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def write_files_together(folder: str | os.PathLike, writers: dict[str, Callable[[str], None]]) -> None:
    """Replace the files `writers` names in `folder` (name -> `write(tmp_path)`) as one set; see the module doc."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    finish_interrupted_save(folder)
    staged: dict[str, str] = {}
    try:
        for name, write in writers.items():
            staged[name] = _temporary_file(folder, name)
            write(staged[name])
            _flush_to_disk(staged[name])
        journal = {name: os.path.basename(tmp) for name, tmp in staged.items()}
        atomic_write_text(os.path.join(folder, JOURNAL_NAME), json.dumps(journal))  # the commit point
    except BaseException:
        for tmp in staged.values():
            _remove_quietly(tmp)
        raise
    finish_interrupted_save(folder)


def finish_interrupted_save(folder: str | os.PathLike) -> None:
    """Complete a committed save that was interrupted, and remove temporary files of uncommitted ones.

    Safe to call from several processes at once, and on a folder no save ever touched (it then does nothing).
    """
    folder = os.fspath(folder)
    journal_path = os.path.join(folder, JOURNAL_NAME)
    try:
        with open(journal_path, encoding="utf-8") as f:
            journal = json.load(f)
    except FileNotFoundError:
        journal = {}
    except (OSError, ValueError):
        journal = {}  # unreadable: it never became the commit point, since it is written atomically
    for name, tmp_name in journal.items():
        with contextlib.suppress(FileNotFoundError):  # another process may have renamed it already
            os.replace(os.path.join(folder, tmp_name), os.path.join(folder, name))
    _remove_quietly(journal_path)
    if not os.path.isdir(folder):
        return
    for entry in os.listdir(folder):
        if entry.startswith(_TMP_PREFIX) and entry.endswith(_TMP_SUFFIX) and not _writer_alive(entry):
            _remove_quietly(os.path.join(folder, entry))


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that created a temporary file (its id is in the name) still runs on this machine."""
    try:
        pid = int(tmp_name[: -len(_TMP_SUFFIX)].rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False  # this process has no save in progress while it cleans up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_writer(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Callable[[str], None]:
    """A `write(path)` that saves `tensors` as safetensors (contiguous CPU copies) with `metadata`."""
    from safetensors.torch import save_file  # here, not at the top: configs (and `--help`) load without torch

    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return lambda path: save_file(plain, path, metadata={"format": "pt", **metadata})


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU; a missing or corrupted file raises an error that names it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file {path} does not exist: the artifact is incomplete.")
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"Weights file {path} is not a readable safetensors file ({err}). It is corrupted or truncated: "
            "save the artifact again, or download it again."
        ) from err
