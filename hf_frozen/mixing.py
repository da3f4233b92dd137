"""Temperature-based mixing of task datasets: task i is sampled with probability proportional to n_i^(1/T).

T = 1 samples in proportion to dataset size, T = 2 is the square-root rule the frozen-decoder paper used for
mixed-task training, and a large T approaches uniform sampling over tasks. Sampling is done by
`datasets.interleave_datasets`, so the stream is reproducible by seed and works with the ordinary Trainer.
"""

from __future__ import annotations

from typing import Literal

from datasets import Dataset, interleave_datasets


def task_probabilities(sizes: dict[str, int], temperature: float = 2.0) -> dict[str, float]:
    """p_i = n_i^(1/T) / sum_j n_j^(1/T)."""
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
        raise ValueError(
            f"`temperature` must be a positive number (2.0 is the square-root rule), got {temperature!r}."
        )
    empty = sorted(name for name, n in sizes.items() if n <= 0)
    if empty:
        raise ValueError(f"Task dataset(s) {empty} are empty: remove them or give them examples.")
    weights = {name: n ** (1.0 / temperature) for name, n in sizes.items()}
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def mix_tasks(
    datasets: dict[str, Dataset],
    temperature: float = 2.0,
    seed: int = 0,
    task_column: str | None = "task",
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted",
) -> Dataset:
    """One training stream from several task datasets, sampled by the temperature rule.

    Args:
        datasets (`dict[str, Dataset]`): task name -> dataset; all must share their columns.
        temperature (`float`, defaults to `2.0`): T in n_i^(1/T); 2 is the square-root rule.
        seed (`int`, defaults to `0`): the sampling seed (the same seed gives the same stream).
        task_column (`str`, *optional*, defaults to `"task"`): a column naming each example's task (needed to
            route examples to per-task encoders); `None` adds none.
        stopping_strategy: as in `datasets.interleave_datasets`; `"first_exhausted"` stops when one task runs
            out, so the realised proportions follow the probabilities.

    Returns:
        `datasets.Dataset`: the mixed stream.

    Example:
        ```python
        train = mix_tasks({"xsum": xsum, "webnlg": webnlg}, temperature=2.0, seed=42)
        ```
    """
    if not datasets:
        raise ValueError("`datasets` is empty: give at least one task dataset.")
    probabilities = task_probabilities({name: len(ds) for name, ds in datasets.items()}, temperature)
    names = list(datasets)
    parts = []
    for name in names:
        part = datasets[name]
        if task_column is not None:
            if task_column in part.column_names:
                raise ValueError(f"Task {name!r} already has a {task_column!r} column: pass another `task_column`.")
            part = part.add_column(task_column, [name] * len(part))
        parts.append(part)
    return interleave_datasets(
        parts, probabilities=[probabilities[n] for n in names], seed=seed, stopping_strategy=stopping_strategy
    )
