"""Reading whole tensors while DeepSpeed ZeRO-3 holds them partitioned across processes.

Under ZeRO-3 each process keeps only a slice of every parameter; the module's tensors are empty
placeholders (`shape == (0,)`) that carry a `ds_id`. Fingerprints and encoder artifacts need the real
values, so they gather first. Gathering is a collective: every process must take part, not only the one
that writes files. Without DeepSpeed, or without ZeRO-3, these helpers are no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


def is_partitioned(tensor: torch.Tensor) -> bool:
    """Whether DeepSpeed ZeRO-3 manages this parameter (its data may live on other processes)."""
    return hasattr(tensor, "ds_id")


def full_numel(tensor: torch.Tensor) -> int:
    """The element count of the whole tensor, not of this process's ZeRO-3 slice."""
    return getattr(tensor, "ds_numel", tensor.numel())


def any_partitioned(tensors: Iterable[torch.Tensor]) -> bool:
    return any(is_partitioned(t) for t in tensors)


@contextlib.contextmanager
def gathered(tensors: Iterable[torch.Tensor], modify: bool = False) -> Iterator[None]:
    """Inside this block the ZeRO-3 parameters among `tensors` hold their full values.

    Call it on every process at once (it all-gathers). Changes made inside the block are discarded, unless
    `modify=True`: then the main process's values are partitioned back out to all processes on exit.
    """
    partitioned = [t for t in tensors if is_partitioned(t)]
    if not partitioned:
        yield
        return
    import deepspeed  # Only reachable when DeepSpeed created the partitioned parameters.

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None):
        yield


def full_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of `tensors` with their full values, gathered from all processes if partitioned."""
    with gathered(tensors.values()):
        return {name: t.detach().to("cpu", copy=True) for name, t in tensors.items()}
