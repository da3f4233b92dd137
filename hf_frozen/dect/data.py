"""Reading DecT's data: a `datasets.Dataset`, a dict of columns, a list of row dicts or a DataFrame, into texts,
optional text pairs and class indices; and drawing a few-shot training set."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .config import DecTConfig

Examples = tuple[list[str], list[str | None] | None, torch.Tensor | None]


def as_columns(dataset: Any) -> Any:
    """A `datasets.Dataset` or dict of columns as it is; a list of row dicts or a DataFrame as a dict of columns."""
    if hasattr(dataset, "column_names") or isinstance(dataset, dict):
        return dataset
    if hasattr(dataset, "to_dict") and hasattr(dataset, "columns"):  # pandas
        return {name: list(dataset[name]) for name in dataset.columns}
    if isinstance(dataset, list) and all(isinstance(row, dict) for row in dataset):
        return {name: [row.get(name) for row in dataset] for name in dict.fromkeys(k for row in dataset for k in row)}
    raise TypeError(
        f"DecT reads a `datasets.Dataset`, a dict of columns, a list of row dicts or a DataFrame; got "
        f"{type(dataset).__name__}."
    )


def _columns(dataset: Any) -> set[str]:
    names = dataset.column_names if hasattr(dataset, "column_names") else list(dataset)
    return set(names if isinstance(names, list) else [])


def read_examples(dataset: Any, config: DecTConfig, need_labels: bool) -> Examples:
    """(texts, text pairs or None, class indices or None) from `dataset`'s configured columns.

    Args:
        need_labels (`bool`): refuse a dataset without the label column (fitting and evaluation need one).
    """
    dataset = as_columns(dataset)
    columns = _columns(dataset)
    if need_labels and config.label_column not in columns:
        raise ValueError(
            f"The dataset has no label column {config.label_column!r} (columns: {sorted(columns)}): "
            "set `label_column`."
        )
    if config.text_column not in columns:
        raise ValueError(f"The dataset has no text column {config.text_column!r} (columns: {sorted(columns)}).")
    if len(dataset[config.text_column]) == 0:
        raise ValueError("The dataset is empty: DecT needs at least one example per class to fit.")
    texts = [str(t) for t in dataset[config.text_column]]
    pairs = None
    if config.text_pair_column is not None:
        if config.text_pair_column not in columns:
            raise ValueError(f"The dataset has no text-pair column {config.text_pair_column!r}.")
        pairs = [str(t) for t in dataset[config.text_pair_column]]
    labels = None
    if config.label_column in columns:
        labels = torch.tensor(label_indices(dataset[config.label_column], config.labels))
    return texts, pairs, labels


def label_indices(values: Iterable[Any], names: list[str]) -> list[int]:
    """Class indices of data labels given as indices or as class names."""
    index = {name: i for i, name in enumerate(names)}
    indices, unknown = [], set()
    for value in values:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(index):
            indices.append(int(value))
        elif isinstance(value, str) and value in index:
            indices.append(index[value])
        else:
            unknown.add(value)
    if unknown:
        raise ValueError(
            f"Labels {sorted(map(repr, unknown))[:10]} in the data are not known to the config: use class indices "
            f"0..{len(index) - 1} or the names in `labels` ({names})."
        )
    return indices


def few_shot(dataset: Any, label_column: str, shots: int, seed: int) -> Any:
    """`shots` examples per class of a `datasets.Dataset`, drawn by `seed`, in their original order."""
    by_label: dict = {}
    for i, label in enumerate(dataset[label_column]):
        by_label.setdefault(label, []).append(i)
    short = {label: len(idx) for label, idx in by_label.items() if len(idx) < shots}
    if short:
        raise ValueError(f"`shots={shots}` but some classes have fewer training examples: {short}.")
    rng = random.Random(seed)
    return dataset.select(sorted(i for label in sorted(by_label, key=str) for i in rng.sample(by_label[label], shots)))
