"""Kill a process at random points while it writes, again and again; report what is on disk after each kill. Run by
tests/utils/test_io.py as a script: it forks one writing child per kill, so that each kill costs a write, not a
Python start.

    python tests/crash_saver.py WRITER FOLDER KILLS SEED

WRITER is what the child writes in a loop until it is killed:
- `frozen_decoder`: two frozen-decoder artifacts (19 MB of encoder weights each, different configs), in turn;
- `multi_encoder`: a `MultiEncoderModel` of two tasks, saved with one set of weights then the other, in turn (the
  set is one artifact: both tasks must be of one version);
- `dect_cache`: DecT query-cache entries (800 KB each), one after another, each key once.

After each kill the folder is read as a user would (which finishes a committed save and removes dead writers'
temporary files), then checked: every artifact loads, checksum verified, and is one of the versions written,
whole; every cache entry written before the one in flight is there and valid; no temporary file is left.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)  # no thread pool before fork: a forked child must not wait on threads it lacks

from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

from hf_frozen import FrozenDecoderConfig, MultiEncoderModel, get_frozen_model  # noqa: E402
from hf_frozen.dect.cache import QueryCache  # noqa: E402
from hf_frozen.frozen_decoder.artifact import load_encoder_artifact  # noqa: E402
from hf_frozen.frozen_decoder.task_set import check_task_checksums, load_task_set  # noqa: E402
from hf_frozen.utils.io import JOURNAL_NAME  # noqa: E402

# Ours (`.hf_frozen.<name>.<pid>.<random>.tmp`), safetensors' own (`.tmpXXXXXX`) and the journal.
TEMPORARY = re.compile(r"\.hf_frozen\..*\.tmp|\.tmp[A-Za-z0-9]{6}|" + re.escape(JOURNAL_NAME))
CONFIG = T5Config(vocab_size=512, d_model=256, d_ff=1024, num_layers=6, num_heads=4, d_kv=64, decoder_start_token_id=0)


def randomize(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        torch.manual_seed(seed)
        for tensor in tensors.values():
            tensor.normal_()
    return {k: v.detach().clone() for k, v in tensors.items()}


def same(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> bool:
    return expected.keys() == found.keys() and all(torch.equal(expected[k], found[k]) for k in expected)


class FrozenDecoderWriter:
    """Two task encoders on one decoder, configs that differ too (lora_r is unused in full training)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.models, self.expected = [], []
        for seed in (0, 1):
            torch.manual_seed(0)
            model = get_frozen_model(T5ForConditionalGeneration(CONFIG), FrozenDecoderConfig(lora_r=8 + seed))
            self.expected.append(randomize(model.encoder_state_dict(), seed + 1))
            self.models.append(model)

    def write(self, i: int) -> None:
        self.models[i % 2].save_pretrained(self.folder)

    def outcome(self) -> str:
        config, _, tensors = load_encoder_artifact(self.folder)  # finishes a committed save, verifies the checksum
        matches = [same(w, tensors) and config.lora_r == 8 + i for i, w in enumerate(self.expected)]
        return "whole" if any(matches) else "mixed"


class MultiEncoderWriter:
    """Two tasks on one decoder; each save writes both, with the weights of version 0 or version 1."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        torch.manual_seed(0)
        self.model = MultiEncoderModel.for_training(T5ForConditionalGeneration(CONFIG), ["a", "b"])
        self.versions = [
            {task: randomize(self.model._task_tensors(task), 10 * version + t) for t, task in enumerate("ab")}
            for version in (0, 1)
        ]

    def write(self, i: int) -> None:
        with torch.no_grad():
            for task, tensors in self.versions[i % 2].items():
                for name, tensor in self.model._task_tensors(task).items():
                    tensor.copy_(tensors[name])
        self.model.save_pretrained(self.folder)

    def outcome(self) -> str:
        """The set is one artifact: both tasks of the same version, checked against the set's manifest."""
        _, record, folder = load_task_set(self.folder)  # finishes a committed save
        found = []
        for task in "ab":
            _, task_record, tensors = load_encoder_artifact(os.path.join(folder, task))
            check_task_checksums(record, {task: task_record}, folder)
            found.append([v for v, version in enumerate(self.versions) if same(version[task], tensors)])
        return "whole" if found in ([[0], [0]], [[1], [1]]) else f"mixed set: versions {found}"


class CacheWriter:
    """Query-cache entries written one after another; entry i holds values derived from i."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    @staticmethod
    def entry(i: int) -> tuple[str, np.ndarray, np.ndarray]:
        return f"{i:064x}", np.full(200_000, i, dtype=np.float32), np.arange(3, dtype=np.float32) + i

    def write(self, i: int) -> None:
        if i == 0:
            self.cache = QueryCache(self.folder)
        key, hidden, scores = self.entry(self.start + i)
        self.cache.put(key, hidden, scores)

    def outcome(self) -> str:
        cache = QueryCache(self.folder)  # opening removes dead writers' temporary files
        present = [i for i in range(self.start + 10_000) if os.path.isfile(cache._path(self.entry(i)[0]))]
        if present != list(range(len(present))):
            return f"lost entries: {sorted(set(range(len(present))) - set(present))[:5]}"
        for i in present:
            found = cache.get(self.entry(i)[0])
            if found is None or not (
                np.array_equal(found[0], self.entry(i)[1]) and np.array_equal(found[1], self.entry(i)[2])
            ):
                return f"entry {i} unreadable or wrong"
        self.start = len(present)  # the next child goes on from the first entry not yet written
        return "whole"


WRITERS = {"frozen_decoder": FrozenDecoderWriter, "multi_encoder": MultiEncoderWriter, "dect_cache": CacheWriter}


def temporary_files(folder: str) -> list[str]:
    return [name for _, _, files in os.walk(folder) for name in files if TEMPORARY.fullmatch(name)]


def main() -> None:
    kind, folder, kills, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    writer = WRITERS[kind](folder)
    writer.start = 0
    start = time.perf_counter()
    writer.write(0)
    write_seconds = time.perf_counter() - start
    writer.outcome()
    report = {"write_seconds": write_seconds, "outcomes": {}, "killed_with_temporary_files": 0, "left_behind": []}
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:  # the child writes until it is killed
            i = 0
            while True:
                writer.write(i)
                i += 1
        time.sleep(rng.uniform(0, 2.5 * write_seconds))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        report["killed_with_temporary_files"] += bool(temporary_files(folder))
        try:
            outcome = writer.outcome()
        except Exception as err:  # noqa: BLE001 - any refusal to load is a failure to report
            outcome = f"does not load: {type(err).__name__}: {err}"
        report["outcomes"][outcome] = report["outcomes"].get(outcome, 0) + 1
        report["left_behind"] += temporary_files(folder)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
