"""Content fingerprints of tensors: a SHA-256 over names, dtypes, shapes and raw bytes.

A task encoder records the fingerprint of the frozen decoder it was trained against; loading it onto any
other decoder (other weights, other dtype, other architecture) is refused instead of silently producing
garbage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

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
