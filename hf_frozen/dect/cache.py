"""The query cache: one backbone query per example, ever, and never a stale or foreign answer.

`CachedQueries` answers (text, text pair) inputs from the cache and queries the backbone for the rest, in
length-sorted batches; in a distributed run (torchrun, accelerate, DeepSpeed) the processes share those
queries out and gather every answer to every process, so each example is still queried once overall.

Each entry is keyed by a SHA-256 of everything that determines the answer: the backbone's fingerprint, the
prompt settings (template, chat template, label-word tokens, pooling, length limit) and the example's text.
The reference implementation keyed its cache by model and dataset name and re-aligned it by batch order, so a
reshuffled loader silently mislabelled examples; here a changed text, template or model is simply a miss.

On disk an entry is one safetensors file `<key[:2]>/<key>.safetensors`, written atomically, whose metadata
repeats its key and a checksum of its tensors. A file that fails to parse, names another key or fails its
checksum is reported, deleted and recomputed, never used. Temporary files of writers that were killed are removed
when a cache is opened on the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open

from ..utils.io import atomic_write, remove_dead_temporary_files, tensor_writer
from ..utils.logging import get_logger, tqdm
from .backbones import Backbone
from .config import DecTConfig
from .data import check_texts

logger = get_logger(__name__)

Entry = tuple[np.ndarray, np.ndarray | None]
Inputs = dict[str, tuple[str, str | None]]  # cache key -> (text, text pair)
T = TypeVar("T")


def query_settings(config: DecTConfig) -> dict[str, Any]:
    """Everything besides backbone and text that changes a query's answer: part of every cache key.

    (Head settings such as `standardize_hidden` do not change a query's answer.)
    """
    return {
        "template": config.template,
        "label_words": config.label_words,
        "chat_template": config.chat_template,
        "response_prefix": config.response_prefix,
        "hidden_pooling": config.hidden_pooling,
        "max_length": config.max_length,
    }


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
        if self.folder is not None and os.path.isdir(self.folder):
            for shard in os.listdir(self.folder):  # at most 256 folders: `<key[:2]>`
                if len(shard) == 2:
                    remove_dead_temporary_files(os.path.join(self.folder, shard))

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
        with contextlib.suppress(FileNotFoundError):  # another process met the same entry and removed it first
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
        atomic_write(self._path(key), tensor_writer(tensors, metadata))


class CachedQueries:
    """A backbone behind a `QueryCache`: hidden states and label-word scores, each example queried once.

    Args:
        backbone: what answers the queries.
        config ([`DecTConfig`]): the prompt settings (part of every key), `batch_size` and `query_cache_dir`.
        settings (`dict`, *optional*): the settings part of every key, when not the prompt's (a feature model's).
    """

    def __init__(self, backbone: Backbone, config: DecTConfig, settings: dict[str, Any] | None = None) -> None:
        self.backbone = backbone
        self.settings = query_settings(config) if settings is None else settings
        self.batch_size = config.batch_size
        self.cache = QueryCache(config.query_cache_dir)
        self.num_queries = 0  # backbone queries made: one per uncached example
        self.show_progress = True

    def extract(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str | None] | None = None,
        split_across_processes: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states (N, d) and raw label-word scores (N, C) or None, querying only uncached examples.

        Args:
            split_across_processes (`bool`, defaults to `False`): in a distributed run, share the uncached examples
                among the processes and gather every answer to every process, so that each example is queried
                once overall. Every process must then call this together.
        """
        if isinstance(texts, str):
            raise TypeError(f"`texts` must be a list of texts, got one string {texts[:40]!r}: wrap it in a list.")
        texts = check_texts(texts)
        if not texts:
            raise ValueError("`texts` is empty: give at least one text.")
        pairs = check_texts(text_pairs, "text_pairs") if text_pairs is not None else [None] * len(texts)
        if len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs: give one pair per text.")
        backbone = f"{self.backbone.fingerprint}|{self.backbone.settings_fingerprint}"
        keys = [entry_key(backbone, self.settings, t, p) for t, p in zip(texts, pairs, strict=True)]
        entries: dict[str, Entry] = {}
        missing: Inputs = {}
        for key, text, pair in zip(keys, texts, pairs, strict=True):
            if key in entries or key in missing:
                continue
            found = self.cache.get(key)
            if found is None:
                missing[key] = (text, pair)
            else:
                entries[key] = found
        rank, world_size = rank_and_world_size()
        if split_across_processes and world_size > 1:
            entries.update(self._query_shared(missing, rank, world_size))
        elif missing:
            entries.update(self._query(missing))
        hidden = torch.from_numpy(np.stack([entries[k][0] for k in keys]))
        has_scores = entries[keys[0]][1] is not None
        scores = torch.from_numpy(np.stack([entries[k][1] for k in keys])) if has_scores else None
        return hidden, scores

    def _query_shared(self, missing: Inputs, rank: int, world_size: int) -> dict[str, Entry]:
        """Decided together, so that each example is queried once, by one process, and all get the answers."""
        missing = union_across_processes(missing)
        order = sorted(missing, key=lambda k: (len(missing[k][0]) + len(missing[k][1] or ""), k))
        share = order[rank::world_size]  # sorted by length, so each share gets long and short inputs alike
        answers = {k: entry for k in share if (entry := self.cache.get(k)) is not None}  # cached here only
        answers.update(self._query({k: missing[k] for k in share if k not in answers}))
        gathered = union_across_processes(answers)
        for key, entry in gathered.items():
            if key not in answers:
                self.cache.put(key, *entry, persist=False)  # the process that queried it stored it
        return gathered

    def _query(self, inputs: Inputs) -> dict[str, Entry]:
        """Query the backbone for `inputs`, caching each answer as soon as it returns.

        A backbone with `query_each` (an endpoint) answers example by example, so a run stopped by an error or a
        kill keeps every answer received; others answer a batch at a time.
        """
        answers = {}
        # Input length in characters orders prompts well enough to keep padding small, without tokenizing every
        # prompt an extra time just to sort.
        todo = sorted(inputs, key=lambda k: len(inputs[k][0]) + len(inputs[k][1] or ""))
        if hasattr(self.backbone, "query_each"):
            bar = tqdm(total=len(todo), desc="DecT: querying the endpoint", unit="example",
                       disable=not self.show_progress)  # fmt: skip
            with bar:
                for row, hidden, scores in self.backbone.query_each([inputs[k] for k in todo]):
                    answers[todo[row]] = self._store(todo[row], hidden[None], scores[None], [inputs[todo[row]][0]])[0]
                    bar.update(1)
            return answers
        batches = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        bar = tqdm(batches, desc="DecT: querying the backbone", unit="batch", disable=not self.show_progress)
        for batch in bar:
            hidden, scores = self.backbone.query([inputs[k] for k in batch])
            answers.update(zip(batch, self._store(batch, hidden, scores, [inputs[k][0] for k in batch]), strict=True))
        return answers

    def _store(self, keys: list[str] | str, hidden: np.ndarray, scores: np.ndarray | None, texts: list[str]) -> list:
        """Check and cache the answers to `keys` (rows of `hidden` and `scores`); returns them as entries."""
        keys = [keys] if isinstance(keys, str) else keys
        self.num_queries += len(keys)
        _check_finite(hidden, scores, texts)
        entries = []
        for row, key in enumerate(keys):
            entry = (hidden[row], None if scores is None else scores[row])
            self.cache.put(key, *entry)
            entries.append(entry)
        return entries


def _check_finite(hidden: np.ndarray, scores: np.ndarray | None, texts: list[str]) -> None:
    """Refuse NaN or infinite answers before they are cached or used."""
    bad = ~np.isfinite(hidden).all(axis=1)
    if scores is not None:
        bad |= ~np.isfinite(scores).all(axis=1)
    if bad.any():
        examples = ", ".join(repr(t[:40]) for t, b in zip(texts, bad, strict=True) if b)
        raise ValueError(
            f"The backbone returned NaN or infinite hidden states or label-word scores for {int(bad.sum())} of "
            f"{len(texts)} inputs ({examples}); nothing was cached. Check the backbone (for an API: its response "
            "parsing; for a model: its dtype, fp16 overflows)."
        )


def rank_and_world_size() -> tuple[int, int]:
    """(this process's rank, number of processes), or (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def union_across_processes(items: dict[str, T]) -> dict[str, T]:
    """The union of every process's `items`. A collective: all processes must call it."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    union: dict[str, T] = {}
    for part in gathered:
        union.update(part)
    return union
