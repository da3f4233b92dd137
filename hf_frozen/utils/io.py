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

An artifact folder may come from a stranger, journal included. A journal is finished only when it is exactly
what `write_files_together` writes: each entry maps a plain file name of the folder to a temporary file of ours
for that very name, a regular file, never a link. Anything else (a path, `..`, an absolute name, a link, a
foreign name) is refused with an `ArtifactError` naming the journal, and nothing is moved.

Safetensors are serialised in memory and written through the same temporary files (`tensor_writer`), never by
`safetensors.torch.save_file`, whose own temporary file (`.tmpXXXXXX`, mode 0600) a kill would leave behind;
such files, left by earlier versions, are removed like ours.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from ..errors import ArtifactError

if TYPE_CHECKING:
    import torch

JOURNAL_NAME = ".hf_frozen_commit.json"
_TMP_PREFIX, _TMP_SUFFIX = ".hf_frozen.", ".tmp"
# The temporary file `safetensors.torch.save_file` writes beside its target (the `tempfile` crate's default name).
_SAFETENSORS_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


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
    # Also set the umask's mode again: a writer may have replaced the file with one of its own (0600).
    os.chmod(path, _default_mode())
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def is_plain_name(name: object) -> bool:
    """Whether `name` can only name an entry of a folder: no separator, not `.` or `..`, no NUL, not too long."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and len(name.encode("utf-8", "surrogatepass")) <= 255
    )


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
    """Replace the files `writers` names in `folder` (name -> `write(tmp_path)`) as one set; see the module doc.

    A name is a file of `folder` or, for a set of artifacts, `<subfolder>/<file>` one level down (a multi-encoder
    set's task folders): the whole set is then committed by one journal in `folder`.
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    finish_interrupted_save(folder)
    for sub in {name.rpartition("/")[0] for name in writers} - {""}:
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        finish_interrupted_save(os.path.join(folder, sub))  # a save of that artifact alone, cut short
    staged: dict[str, str] = {}
    try:
        for name, write in writers.items():
            sub, _, file_name = name.rpartition("/")
            staged[name] = _temporary_file(os.path.join(folder, sub), file_name)
            write(staged[name])
            _flush_to_disk(staged[name])
        journal = {name: os.path.relpath(tmp, folder) for name, tmp in staged.items()}
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
    journal = _read_journal(journal_path)
    for name, tmp_name in journal.items():
        with contextlib.suppress(FileNotFoundError):  # another process may have renamed it already
            os.replace(os.path.join(folder, tmp_name), os.path.join(folder, name))
    if journal:
        _remove_quietly(journal_path)
    for sub in {""} | {name.rpartition("/")[0] for name in journal}:
        remove_dead_temporary_files(os.path.join(folder, sub))


def remove_dead_temporary_files(folder: str | os.PathLike) -> None:
    """Remove the temporary files that killed writers left in `folder`: ours once their writer is gone, and
    safetensors' own (which hf-frozen no longer makes, so none is in progress)."""
    folder = os.fspath(folder)
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        ours = entry.startswith(_TMP_PREFIX) and entry.endswith(_TMP_SUFFIX) and not _writer_alive(entry)
        if ours or _SAFETENSORS_TMP.fullmatch(entry):
            _remove_quietly(os.path.join(folder, entry))


def _read_journal(journal_path: str) -> dict[str, str]:
    """The entries of a journal exactly as `write_files_together` writes it; `{}` when there is none.

    Refused, with an `ArtifactError` that names it: a journal that is not a JSON object of plain file names (or
    `<subfolder>/<file>`, the subfolder a real folder, not a link), each mapped to a temporary file of ours for that
    same name in the same folder which, where it still exists, is a regular file.
    """
    try:
        with open(journal_path, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise _bad_journal(journal_path, f"it cannot be read ({err.strerror or err})") from None
    try:
        journal = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        journal = None
    if not isinstance(journal, dict) or not journal:
        raise _bad_journal(journal_path, "it is not a JSON object of file names")
    folder = os.path.dirname(journal_path)
    for name, tmp_name in journal.items():
        sub, _, file_name = name.rpartition("/")
        parts = [sub, file_name] if sub else [file_name]
        if not all(is_plain_name(p) and p != JOURNAL_NAME and not p.startswith(_TMP_PREFIX) for p in parts) or (
            sub and (os.path.islink(os.path.join(folder, sub)) or not os.path.isdir(os.path.join(folder, sub)))
        ):
            raise _bad_journal(journal_path, f"its entry {name!r} is not a plain file name of the folder")
        ours = re.escape(f"{sub}/" if sub else "") + (
            rf"{re.escape(_TMP_PREFIX + file_name)}\.[0-9]+\.[A-Za-z0-9_]+{re.escape(_TMP_SUFFIX)}"
        )
        if not isinstance(tmp_name, str) or not re.fullmatch(ours, tmp_name):
            raise _bad_journal(journal_path, f"its entry {name!r} names {tmp_name!r}, not a temporary file of ours")
        try:
            mode = os.lstat(os.path.join(folder, tmp_name)).st_mode
        except FileNotFoundError:
            continue  # renamed already, by an earlier reader
        if not stat.S_ISREG(mode):
            raise _bad_journal(journal_path, f"its entry {tmp_name!r} is not a regular file")
    return journal


def _bad_journal(journal_path: str, problem: str) -> ArtifactError:
    return ArtifactError(
        f"{journal_path} is not a journal that hf-frozen writes: {problem}. Nothing was moved. If you trust this "
        "folder, delete that file to read the artifact as it was before the interrupted save; otherwise do not use "
        "the folder."
    )


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
    """A `write(path)` that saves `tensors` as safetensors (contiguous CPU copies) with `metadata`.

    Serialised in memory and written by us into `path`: `safetensors.torch.save_file` would write a temporary file
    of its own (mode 0600, left behind by a kill).
    """
    from safetensors.torch import save  # here, not at the top: configs (and `--help`) load without torch

    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}

    def write(path: str) -> None:
        with open(path, "wb") as f:
            f.write(save(plain, metadata={"format": "pt", **metadata}))

    return write


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors on the CPU, SHA-256 of the file) of a safetensors file, read once: the checksum is of the very
    bytes loaded. A missing or corrupted file raises an error that names it."""
    from safetensors.torch import load  # here, not at the top: configs (and `--help`) load without torch

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"Weights file {path} does not exist: the artifact is incomplete.") from None
    except OSError as err:
        raise ArtifactError(f"Weights file {path} cannot be read ({err.strerror or err}).") from None
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, OverflowError, MemoryError) as err:
        raise ArtifactError(
            f"Weights file {path} is not a readable safetensors file ({err}). It is corrupted or truncated: "
            "save the artifact again, or download it again."
        ) from None
    return tensors, hashlib.sha256(data).hexdigest()
