"""File I/O that never leaves a half-written artifact behind, and safetensors loading with clear errors.

Every write goes to a temporary file in the target folder and is moved into place with `os.replace`, which
is atomic on POSIX and Windows: a crash or a failed save leaves the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and move the result to `path` only if it succeeded."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp_path: str) -> None:
        with open(tmp_path, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Save tensors as safetensors, atomically. Tensors are made contiguous CPU copies first."""
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, tmp, metadata={"format": "pt", **metadata}))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU; a missing or corrupted file raises an error that names it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file {path} does not exist: the artifact is incomplete.")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"Weights file {path} is not a readable safetensors file ({err}). It is corrupted or truncated: "
            "save the artifact again, or download it again."
        ) from err
