"""Content fingerprints: tensors (a SHA-256 over names, dtypes, shapes and raw bytes), and the config fields that
change what a model computes.

A task encoder records the fingerprint of the frozen decoder it was trained against; loading it onto any
other decoder (other weights, other dtype, other architecture) is refused instead of silently producing
garbage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from .zero3 import gathered


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of the named tensors, independent of device, of the mapping's order and of ZeRO-3 partitioning.

    Under DeepSpeed ZeRO-3 every process must call this at the same time: each tensor is gathered in turn
    (one at a time, so that a large decoder never has to fit in memory whole).
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        with gathered([tensors[name]]):
            tensor = tensors[name].detach()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            # A byte view works for every dtype, bfloat16 included, which numpy cannot represent.
            digest.update(tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Config keys that never change what a frozen model computes for given inputs at inference: names and bookkeeping,
# output switches, label names, the dtype (in the tensors' fingerprint already), and training-only settings
# (dropout, initialisation).
_NOT_NUMERIC = {
    "_name_or_path", "name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type",
    "task_specific_params", "finetuning_task", "tokenizer_class", "prefix", "chunk_size_feed_forward",
}  # fmt: skip


def numeric_config(config: Any) -> dict[str, Any]:
    """The fields of a transformers config that change a frozen model's outputs, as JSON-ready values.

    Everything but names, bookkeeping, output switches and training-only settings: a layer-norm epsilon, a RoPE
    base, an activation, a start token. Unknown fields count, so that a new one errs on the side of a refusal.
    """
    data = config.to_dict()
    fields = {
        key: value
        for key, value in sorted(data.items())
        if key not in _NOT_NUMERIC and not key.startswith("_") and "dropout" not in key and "initializer" not in key
    }
    return json.loads(json.dumps(fields, default=str))  # as it reads back from a saved record (tuples as lists)


def fingerprint_json(value: Any) -> str:
    """Hex SHA-256 of a JSON-ready value, independent of dict order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
