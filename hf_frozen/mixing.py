"""Temperature-based mixing of task datasets: task i is sampled with probability proportional to n_i^(1/T).

T = 1 samples in proportion to dataset size, T = 2 is the square-root rule the frozen-decoder paper used for
mixed-task training, and a large T approaches uniform sampling over tasks. The stream is a `datasets.Dataset`
(or an endless `IterableDataset`) that selects rows of the concatenated tasks, reproducible by seed, for the
ordinary Trainer. Task streams (`IterableDataset`s) mix the same way, with the same task at every position for
the same sizes and seed; each stream's rows come in its own order. `datasets.interleave_datasets` draws each
row's task at random, so its shares drift by a point or more over a few thousand rows and, stopping at the first
exhausted task, it over-weights small tasks; here each task's rows are spread at even intervals, so the shares
hold to a row or two in every stretch.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
from datasets import Dataset, IterableDataset, concatenate_datasets


def task_probabilities(sizes: dict[str, int], temperature: float = 2.0) -> dict[str, float]:
    """p_i = n_i^(1/T) / sum_j n_j^(1/T)."""
    if (
        not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0  # NaN too
    ):
        raise ValueError(
            f"`temperature` must be a positive number (2.0 is the square-root rule), got {temperature!r}."
        )
    empty = sorted(name for name, n in sizes.items() if n <= 0)
    if empty:
        raise ValueError(f"Task dataset(s) {empty} are empty: remove them or give them examples.")
    weights = {name: n ** (1.0 / temperature) for name, n in sizes.items()}
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


# A task stream whose size is neither given nor known from its split info is counted by reading it once; longer
# than this, it may be endless, and `sizes=` must say how large it is.
MAX_COUNTED_ROWS = 10_000_000


def mix_tasks(
    datasets: dict[str, Dataset | IterableDataset],
    temperature: float = 2.0,
    seed: int = 0,
    task_column: str | None = "task",
    num_rows: int | None = None,
    endless: bool = False,
    sizes: dict[str, int] | None = None,
) -> Dataset | IterableDataset:
    """One training stream from several task datasets, sampled by the temperature rule.

    Each task gets its share p_i = n_i^(1/T) / sum_j n_j^(1/T) of the rows, to within a row or two in every stretch
    of the stream, the tasks interleaved evenly. Each task's examples come in a shuffled order and are all used
    before any is repeated (small tasks are repeated, reshuffled, as their share asks).

    Args:
        datasets (`dict[str, Dataset | IterableDataset]`): task name -> dataset or stream; all must share their
            columns. With any stream among them, the result is an `IterableDataset` (finite unless `endless`);
            a stream that runs out before its share is drawn starts again from its beginning.
        temperature (`float`, defaults to `2.0`): T in n_i^(1/T); 2 is the square-root rule.
        seed (`int`, defaults to `0`): the sampling seed (the same seed gives the same stream).
        task_column (`str`, *optional*, defaults to `"task"`): a column naming each example's task (needed to
            route examples to per-task encoders); `None` adds none.
        num_rows (`int`, *optional*): the stream's length. Unset: the shortest length in which every example of
            every task appears at least once (no task is cut short).
        endless (`bool`, defaults to `False`): an endless `IterableDataset` instead (for `max_steps` training),
            with the same shares in every stretch.
        sizes (`dict[str, int]`, *optional*): the number of examples of task streams, which the shares need. Unset:
            a stream's split info when it has one, else the stream is read once to count it.

    Returns:
        `datasets.Dataset` (or `datasets.IterableDataset` when `endless`): the mixed stream.

    Example:
        ```python
        train = mix_tasks({"xsum": xsum, "webnlg": webnlg}, temperature=2.0, seed=42)
        ```
    """
    if not datasets:
        raise ValueError("`datasets` is empty: give at least one task dataset.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    names = list(datasets)
    sizes = {name: _task_size(name, ds, sizes) for name, ds in datasets.items()}
    probabilities = task_probabilities(sizes, temperature)
    if num_rows is not None and (isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 1):
        raise ValueError(f"`num_rows` must be a positive integer (or unset), got {num_rows!r}.")

    def positions() -> Iterator[int]:
        """The stream's rows as indices into the concatenated tasks, afresh on each call."""
        indices = _mixed_indices(sizes, probabilities, seed)
        if endless:
            return indices
        return iter(_until_each_seen(indices, sizes)) if num_rows is None else itertools.islice(indices, num_rows)

    if any(isinstance(ds, IterableDataset) for ds in datasets.values()):
        return _mix_streams(datasets, sizes, positions, task_column)
    pool = concatenate_datasets([_with_task_column(datasets[n], n, task_column) for n in names])
    if endless:

        def rows() -> Iterator[dict]:
            for index in positions():
                yield pool[index]

        return IterableDataset.from_generator(rows, features=pool.features)
    return pool.select(list(positions()))


def _task_size(name: str, dataset: Any, given: dict[str, int] | None) -> int:
    """A task's number of examples: a `Dataset`'s length; for a stream, `sizes`, its split info, or a count."""
    if not isinstance(dataset, IterableDataset):
        return len(dataset)
    if given and name in given:
        return given[name]
    split = dataset.info.splits.get(str(dataset.split)) if dataset.info.splits and dataset.split else None
    if split is not None and split.num_examples:
        return split.num_examples
    counted = sum(1 for _ in itertools.islice(dataset, MAX_COUNTED_ROWS + 1))
    if counted > MAX_COUNTED_ROWS:
        raise ValueError(
            f"Task {name!r} is a stream of more than {MAX_COUNTED_ROWS:,d} rows (it may be endless): the shares need "
            f"its size. Pass `sizes={{{name!r}: n}}`."
        )
    return counted


def _until_each_seen(indices: Iterator[int], sizes: dict[str, int]) -> list[int]:
    """The shortest prefix of `indices` in which every example of every task has appeared."""
    names = list(sizes)
    seen = dict.fromkeys(names, 0)
    bounds = np.cumsum([sizes[n] for n in names])
    chosen = []
    while any(seen[n] < sizes[n] for n in names):
        chosen.append(next(indices))
        seen[names[int(np.searchsorted(bounds, chosen[-1], side="right"))]] += 1
    return chosen


def _mix_streams(datasets: dict[str, Any], sizes: dict[str, int], positions: Any,
                 task_column: str | None) -> IterableDataset:  # fmt: skip
    """The mixed stream of task streams (and datasets): at each position, the task the same seed gives `Dataset`s
    (the index into the concatenated tasks names it), and that task's next row in its own order."""
    names = list(sizes)
    bounds = np.cumsum([sizes[n] for n in names])

    def rows() -> Iterator[dict]:
        readers: dict[str, Iterator[dict]] = {}
        for index in positions():
            name = names[int(np.searchsorted(bounds, index, side="right"))]
            row = next(readers.setdefault(name, iter(datasets[name])), None)
            if row is None:  # the stream ran out before its share: it starts again
                readers[name] = iter(datasets[name])
                row = next(readers[name])
            if task_column is None:
                yield row
                continue
            if task_column in row:
                raise ValueError(f"Task {name!r} already has a {task_column!r} column: pass another `task_column`.")
            yield {**row, task_column: name}

    return IterableDataset.from_generator(rows)


def _with_task_column(dataset: Dataset, name: str, task_column: str | None) -> Dataset:
    if task_column is None:
        return dataset
    if task_column in dataset.column_names:
        raise ValueError(f"Task {name!r} already has a {task_column!r} column: pass another `task_column`.")
    return dataset.add_column(task_column, [name] * len(dataset))


def _mixed_indices(sizes: dict[str, int], probabilities: dict[str, float], seed: int) -> Iterator[int]:
    """Endless row indices into the concatenated tasks.

    Task i's k-th row sits at the ideal position (k + u_i) / p_i (u_i a random phase), and rows come in the order
    of their positions: in every prefix of the stream, each task's count is within a row or two of its share.
    Each task's examples come in a fresh shuffled order per pass.
    """
    rng = np.random.default_rng(seed)
    names = list(sizes)
    offsets = np.cumsum([0] + [sizes[n] for n in names[:-1]])

    def examples(t: int) -> Iterator[int]:
        while True:
            yield from (int(i) + int(offsets[t]) for i in rng.permutation(sizes[names[t]]))

    streams = [examples(t) for t in range(len(names))]
    phase = rng.random(len(names))
    rate = [probabilities[n] for n in names]
    heap = [(phase[t] / rate[t], t, 0) for t in range(len(names))]
    heapq.heapify(heap)
    while True:
        _, t, k = heapq.heappop(heap)
        yield next(streams[t])
        heapq.heappush(heap, ((k + 1 + phase[t]) / rate[t], t, k + 1))
