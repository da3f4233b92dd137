"""The query cache: one backbone query per example, ever, and never a stale or foreign answer.

Each entry is keyed by a SHA-256 of everything that determines the answer: the backbone's fingerprint, the
prompt settings (template, chat template, label-word tokens, pooling, length limit) and the example's text.
The reference implementation keyed its cache by model and dataset name and re-aligned it by batch order, so a
reshuffled loader silently mislabelled examples; here a changed text, template or model is simply a miss.

On disk an entry is one safetensors file `<key[:2]>/<key>.safetensors`, written atomically, whose metadata
repeats its key and a checksum of its tensors. A file that fails to parse, names another key or fails its
checksum is reported, deleted and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_write

logger = logging.getLogger(__name__)

Entry = tuple[np.ndarray, np.ndarray | None]


def entry_key(backbone_fingerprint: str, settings: dict[str, Any], text: str, text_pair: str | None) -> str:
    payload = json.dumps([backbone_fingerprint, settings, text, text_pair], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _checksum(hidden: np.ndarray, scores: np.ndarray | None) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(hidden, dtype=np.float32).tobytes())
    if scores is not None:
        digest.update(np.ascontiguousarray(scores, dtype=np.float32).tobytes())
    return digest.hexdigest()


class QueryCache:
    """Query results by key, in memory and (with `folder`) on disk.

    Args:
        folder (`str`, *optional*): cache folder; `None` keeps entries in memory only.
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = os.fspath(folder) if folder is not None else None
        self.memory: dict[str, Entry] = {}
        self.rejected = 0  # corrupted or foreign files found (and recomputed)

    def _path(self, key: str) -> str:
        assert self.folder is not None
        return os.path.join(self.folder, key[:2], f"{key}.safetensors")

    def get(self, key: str) -> Entry | None:
        if key in self.memory:
            return self.memory[key]
        if self.folder is None or not os.path.isfile(self._path(key)):
            return None
        entry = self._read(key)
        if entry is not None:
            self.memory[key] = entry
        return entry

    def _read(self, key: str) -> Entry | None:
        path = self._path(key)
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                hidden = f.get_tensor("hidden").numpy()
                scores = f.get_tensor("scores").numpy() if "scores" in f.keys() else None
            problem = None
            if metadata.get("key") != key:
                problem = f"it holds the entry {metadata.get('key')!r}"
            elif metadata.get("checksum") != _checksum(hidden, scores):
                problem = "its checksum does not match its contents"
        except Exception as err:  # noqa: BLE001 - any unreadable file is a corrupted entry
            problem = f"it cannot be read ({type(err).__name__}: {err})"
        if problem is None:
            return hidden, scores
        logger.warning("Discarding DecT cache file %s: %s. The example will be queried again.", path, problem)
        self.rejected += 1
        os.remove(path)
        return None

    def put(self, key: str, hidden: np.ndarray, scores: np.ndarray | None, persist: bool = True) -> None:
        """Store an entry in memory and, with a folder and `persist`, on disk."""
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        scores = None if scores is None else np.ascontiguousarray(scores, dtype=np.float32)
        self.memory[key] = (hidden, scores)
        if self.folder is None or not persist:
            return
        tensors = {"hidden": torch.from_numpy(hidden)}
        if scores is not None:
            tensors["scores"] = torch.from_numpy(scores)
        metadata = {"key": key, "checksum": _checksum(hidden, scores)}
        atomic_write(self._path(key), lambda tmp: save_file(tensors, tmp, metadata=metadata))
