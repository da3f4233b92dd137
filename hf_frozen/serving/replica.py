"""What every replica of a server does, whatever it serves: tasks multiplexed by Ray Serve, requests batched.

Ray Serve does the scheduling. `serve.multiplexed` keeps at most `max_tasks_per_replica` tasks loaded on a replica,
evicts the least recently used one, and tells the router which replica holds which task, so that a request goes
where its task already is. `serve.batch` gathers the requests that arrive together, of any tasks, into one call of
`run_batch`, which the subclass answers in as few model passes as it can (one per set of generation settings).

The model is held by the replica and changed only under `_lock`: Ray's eviction (which runs in a thread), a load
(run in a thread) and a batch never overlap. A task that is
evicted while a request for it still waits in the queue is read back for that batch, checked again, and dropped
after it unless it is still one Ray holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import threading
import time
from typing import Any

import torch
from ray import serve

from ..errors import ArtifactError
from .catalog import ServedTask


class _LoadedTask:
    """What the multiplexed loader hands Ray for one task; Ray calls `__del__` when it evicts the task."""

    def __init__(self, replica: TaskReplica, name: str) -> None:
        self.replica, self.name, self._released = replica, name, False

    def __del__(self) -> None:
        # Called by Ray on eviction, and by the garbage collector afterwards: release once.
        if not self._released:
            self._released = True
            self.replica.release(self.name)


class TaskReplica:
    """One replica: a model shared by its tasks, a multiplexed task loader and a batched request queue.

    Subclasses implement `load_task`, `unload_task`, `is_loaded` and `answer` (a batch of requests, each a dict with
    a `"task"`, to a list of answers).
    """

    kind = ""

    def __init__(
        self,
        catalog: dict[str, ServedTask],
        max_tasks_per_replica: int,
        max_batch_size: int,
        batch_wait_timeout_s: float,
    ) -> None:
        torch.set_grad_enabled(False)
        self.catalog = {name: task for name, task in catalog.items() if task.kind == self.kind}
        self._lock = threading.Lock()
        self._held: set[str] = set()  # the tasks Ray's multiplexer holds loaded
        self.passes = 0  # model passes run (a batch of one generation setting is one pass)
        self.requests = 0
        self.recent_passes: collections.deque = collections.deque(maxlen=256)  # (tasks, rows) of each pass
        self.task_loads = 0
        self.busy_seconds = 0.0  # time spent answering batches (the model's work, loads of a batch included)

        async def load_task_of_request(name: str) -> _LoadedTask:  # a plain function: Ray keeps its state on it
            return await self._load(name)

        self._multiplexed_load = serve.multiplexed(max_num_models_per_replica=max_tasks_per_replica)(
            load_task_of_request
        )
        self.run_batch.set_max_batch_size(max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    # -- the model's tasks, under the lock -----------------------------------------------------------------

    def load_task(self, task: ServedTask) -> None:
        raise NotImplementedError

    def unload_task(self, name: str) -> None:
        raise NotImplementedError

    def is_loaded(self, name: str) -> bool:
        raise NotImplementedError

    def answer(self, requests: list[dict[str, Any]]) -> list[Any]:
        raise NotImplementedError

    def _ensure_loaded(self, name: str) -> None:
        if not self.is_loaded(name):
            self.load_task(self.catalog[name])
            self.task_loads += 1

    async def _load(self, name: str) -> _LoadedTask:
        def load() -> None:
            with self._lock:
                self._ensure_loaded(name)
                self._held.add(name)

        await asyncio.to_thread(load)
        return _LoadedTask(self, name)

    def release(self, name: str) -> None:
        """Ray evicted `name`: free it (after the batch in flight, if any)."""
        with self._lock:
            self._held.discard(name)
            if self.is_loaded(name):
                self.unload_task(name)

    # -- requests ------------------------------------------------------------------------------------------

    async def handle(self, request: dict[str, Any]) -> Any:
        """One request (one prompt or text of one task): load its task through the multiplexer, then queue it."""
        name = request["task"]
        if name not in self.catalog:
            raise KeyError(f"Task {name!r} is not served by this replica.")
        await self._multiplexed_load(name)
        # Queued from an empty context: Ray Serve splits a batch by the multiplexed model id of each request's
        # context (one model per call), which would undo the mixed-task batching that one decoder makes possible.
        result = await asyncio.create_task(self.run_batch(request), context=contextvars.Context())
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)  # set per replica in __init__
    async def run_batch(self, requests: list[dict[str, Any]]) -> list[Any]:
        # Run in this event loop, blocking it, on purpose: Ray Serve forms the next batch from the requests queued
        # when it looks, without waiting for the batch in flight. Were the loop free while the model works, it would
        # form a batch of whatever arrived in each `batch_wait_timeout_s` and queue them all behind the model: under
        # load, passes of one or two rows (1.7 measured at 32 clients, bench/bench_serving.py). Blocked, the requests
        # that arrive during a pass wait in Ray's queue and become the next batch together.
        return self._run_batch(requests)

    def _run_batch(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Answer a batch under the lock; a task that cannot be loaded fails its own requests only."""
        results: list[Any] = [None] * len(requests)
        with self._lock:
            started = time.perf_counter()
            failed: dict[str, Exception] = {}
            read_back = set()
            for name in dict.fromkeys(r["task"] for r in requests):
                try:
                    if not self.is_loaded(name):
                        read_back.add(name)
                    self._ensure_loaded(name)
                except (ArtifactError, OSError, ValueError) as err:
                    failed[name] = err
            rows = [i for i, r in enumerate(requests) if r["task"] not in failed]
            try:
                answers = self.answer([requests[i] for i in rows]) if rows else []
            finally:
                for name in read_back - self._held:  # evicted by Ray meanwhile: not kept beyond this batch
                    if self.is_loaded(name):
                        self.unload_task(name)
            self.requests += len(requests)
            self.busy_seconds += time.perf_counter() - started
        for i, answer in zip(rows, answers, strict=True):
            results[i] = answer
        for i, request in enumerate(requests):
            if request["task"] in failed:
                results[i] = failed[request["task"]]
        return results

    def count_pass(self, tasks: list[str]) -> None:
        self.passes += 1
        self.recent_passes.append((sorted(set(tasks)), len(tasks)))

    def stats(self) -> dict[str, Any]:
        """Counters of this replica: requests, model passes, task loads, the tasks held, the last passes."""
        with self._lock:
            return {"kind": self.kind, "requests": self.requests, "passes": self.passes,
                    "task_loads": self.task_loads, "busy_seconds": self.busy_seconds, "held": sorted(self._held),
                    "recent_passes": list(self.recent_passes)}  # fmt: skip
