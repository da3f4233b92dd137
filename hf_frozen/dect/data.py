"""Reading DecT's data: a `datasets.Dataset`, a dict of columns, a list of row dicts or a DataFrame, into texts,
optional text pairs and class indices; and drawing a few-shot training set."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict, IterableDataset, IterableDatasetDict

from .config import DecTConfig

Examples = tuple[list[str], list[str | None] | None, torch.Tensor | None]


# DecT reads its data whole (one query per example, then full-batch training): a stream longer than this is
# refused rather than read forever.
MAX_STREAMED_ROWS = 1_000_000


def as_columns(dataset: Any) -> Any:
    """A `datasets.Dataset` or dict of columns as it is; a list of row dicts, a DataFrame or a (finite)
    `IterableDataset` as a dict of columns. A `DatasetDict` is refused, naming its splits."""
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        raise ValueError(
            f"Got a {type(dataset).__name__} with the splits {sorted(dataset)}: DecT reads one split at a time. "
            f"Pass one, e.g. `dataset[{sorted(dataset)[0]!r}]`."
        )
    if isinstance(dataset, IterableDataset):
        rows = list(itertools.islice(dataset, MAX_STREAMED_ROWS + 1))
        if len(rows) > MAX_STREAMED_ROWS:
            raise ValueError(
                f"The IterableDataset yields more than {MAX_STREAMED_ROWS:,d} rows (it may be endless): DecT reads "
                "its data whole. Pass a finite part, e.g. `dataset.take(10_000)`."
            )
        dataset = rows if rows else {}
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


def is_table(data: Any) -> bool:
    """Whether `data` is a table of columns (a `Dataset`, `IterableDataset`, DataFrame, dict of columns or list of row
    dicts) rather than a sequence of texts (a list, a tuple, a pandas Series, a numpy array)."""
    if isinstance(data, (dict, IterableDataset, DatasetDict, IterableDatasetDict)) or hasattr(data, "column_names"):
        return True
    if hasattr(data, "columns") and hasattr(data, "to_dict"):  # a DataFrame (a Series has no `columns`)
        return True
    return isinstance(data, list) and bool(data) and all(isinstance(row, dict) for row in data)


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
    texts = check_texts(dataset[config.text_column], config.text_column)
    pairs = None
    if config.text_pair_column is not None:
        if config.text_pair_column not in columns:
            raise ValueError(f"The dataset has no text-pair column {config.text_pair_column!r}.")
        pairs = check_texts(dataset[config.text_pair_column], config.text_pair_column)
    labels = None
    if config.label_column in columns:
        values = list(dataset[config.label_column])
        # An unlabelled split loaded beside labelled ones (`load_dataset` with a test file that has no labels)
        # gets a label column of None: that is no labels, not a label named "None".
        if need_labels or any(value is not None for value in values):
            labels = torch.tensor(label_indices(values, config.labels))
    return texts, pairs, labels


def check_texts(values: Iterable[Any], column: str = "texts") -> list[str]:
    """The texts of a column; a missing (`None`) or non-text value is an error, never the text "None"."""
    texts = list(values)
    bad = [(i, v) for i, v in enumerate(texts) if not isinstance(v, str)]
    if bad:
        rows = ", ".join(f"row {i}: {v!r}" for i, v in bad[:5])
        raise ValueError(
            f"Column {column!r} must hold texts, but {len(bad)} value(s) are not strings ({rows}). Drop or fill "
            "those rows (`dataset.filter(lambda r: r[...] is not None)`)."
        )
    return texts


def label_indices(values: Iterable[Any], names: list[str]) -> list[int]:
    """Class indices of data labels, given as class names or as indices.

    A label that is a class name (compared as text, so `1` names the class "1") is that class, whatever its
    position; an integer that names no class is an index. So `labels=["1", "0"]` reads a data label 1 as class 0.
    """
    index = {name: i for i, name in enumerate(names)}
    indices, unknown = [], set()
    for value in values:
        is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        name = str(int(value)) if is_integer else value
        if isinstance(name, str) and name in index:
            indices.append(index[name])
        elif is_integer and 0 <= value < len(index):
            indices.append(int(value))
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
