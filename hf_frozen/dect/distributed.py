"""Sharing DecT's backbone queries among the processes of a distributed run (torchrun, accelerate, DeepSpeed).

Each process queries a share of the examples that no process has cached, then all answers are gathered to all
processes: every example is still queried once overall, and every process ends with the full feature cache.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


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


def my_share(keys: list[str], rank: int, world_size: int) -> list[str]:
    """Every `world_size`-th key from `rank` on: with keys sorted by input length, each share gets long and short
    inputs alike, so the processes finish together."""
    return keys[rank::world_size]
