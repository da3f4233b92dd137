"""Building and running the Ray Serve application: an ingress and one replica deployment per kind of task.

app = build_app(task_catalog({"summarize": "./enc-sum"}), base_model_name_or_path="google-t5/t5-base")
serve.run(app, name="hf-frozen", route_prefix="/")
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ray import serve

from ..config import check_positive
from .catalog import CLASSIFICATION, GENERATION, ServedTask, one_base
from .classification import ClassificationReplica
from .generation import GenerationReplica
from .openai_api import OpenAIServer
from .requests import ApiLimits

APP_NAME = "hf-frozen"
INGRESS_MAX_ONGOING_REQUESTS = 1024


@dataclasses.dataclass(frozen=True)
class ReplicaOptions:
    """How each kind of task is spread over replicas.

    Args:
        num_replicas (`int`, defaults to 1): replicas per kind of task; Ray places them over the cluster.
        max_tasks_per_replica (`int`, defaults to 16): tasks a replica holds loaded; the least recently used one
            leaves when another is needed (`serve.multiplexed`).
        max_batch_size (`int`, defaults to 16): requests answered together (`serve.batch`).
        batch_wait_timeout_s (`float`, defaults to 0.01): how long a batch waits to fill.
        num_cpus (`float`, defaults to 1): CPUs Ray reserves for each replica.
        num_gpus (`float`, defaults to 0): GPUs Ray reserves for each replica.
        deployment_per_task (`bool`, defaults to `False`): give each task a deployment of its own, holding a whole
            model (its encoder and its own copy of the decoder): tasks isolated from one another, at the memory
            and throughput cost `bench/bench_serving.py` measures. The default shares one decoder per replica.
    """

    num_replicas: int = 1
    max_tasks_per_replica: int = 16
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    deployment_per_task: bool = False

    def __post_init__(self) -> None:
        for name in ("num_replicas", "max_tasks_per_replica", "max_batch_size"):
            check_positive(self, name, integer=True)
        for name in ("batch_wait_timeout_s", "num_cpus", "num_gpus"):
            check_positive(self, name, allow_zero=True)

    def deployment(self, cls: type, name: str) -> Any:
        # A replica takes up to one batch being answered plus one filling.
        return serve.deployment(cls, name=name).options(
            num_replicas=self.num_replicas, max_ongoing_requests=2 * self.max_batch_size,
            ray_actor_options={"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        )  # fmt: skip

    def replica_args(self) -> dict[str, Any]:
        return {"max_tasks_per_replica": self.max_tasks_per_replica, "max_batch_size": self.max_batch_size,
                "batch_wait_timeout_s": self.batch_wait_timeout_s}  # fmt: skip


def build_app(
    catalog: dict[str, ServedTask],
    base_model_name_or_path: str | None = None,
    dect_backbone_name_or_path: str | None = None,
    replicas: ReplicaOptions | None = None,
    limits: ApiLimits | None = None,
    max_input_tokens: int = 512,
    base_model_kwargs: dict[str, Any] | None = None,
) -> serve.Application:
    """The application for `serve.run`: the OpenAI-compatible ingress, and a replica deployment for the generation
    tasks (on `base_model_name_or_path`, default: the base they record) and one for the DecT heads (on
    `dect_backbone_name_or_path`, default: the backbone they record), each only if the catalog has such tasks."""
    replicas = replicas or ReplicaOptions()
    handles: dict[str, Any] = {}  # task -> the deployment that answers it
    base = one_base(catalog, GENERATION, base_model_name_or_path, "--base_model_name_or_path")
    backbone = one_base(catalog, CLASSIFICATION, dect_backbone_name_or_path, "--dect_backbone_name_or_path")
    kinds = {GENERATION: (GenerationReplica, base, {"max_input_tokens": max_input_tokens,
                                                    "base_model_kwargs": base_model_kwargs}),
             CLASSIFICATION: (ClassificationReplica, backbone, {})}  # fmt: skip
    for kind, (cls, model, kwargs) in kinds.items():
        tasks = {name: task for name, task in catalog.items() if task.kind == kind}
        groups = [{name: task} for name, task in tasks.items()] if replicas.deployment_per_task else [tasks]
        for i, group in enumerate(g for g in groups if g):
            name = f"{kind}-{i}" if replicas.deployment_per_task else kind
            handle = replicas.deployment(cls, name).bind(group, model, **kwargs, **replicas.replica_args())
            handles.update(dict.fromkeys(group, handle))
    # The ingress only checks requests and awaits the replicas: it takes many at once (Ray's default, 5, would cap
    # the requests in flight, hence the batches, whatever the clients send).
    ingress = serve.deployment(OpenAIServer, name="openai_api").options(
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 0}
    )
    return ingress.bind(catalog, handles, limits or ApiLimits())


def run_server(
    app: serve.Application,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    block: bool = True,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> None:
    """Start Ray (in this process, or joined to the cluster at `address`), serve `app` at
    `http://host:port{route_prefix}` as the application `name`, and with `block=True` wait until interrupted (Ctrl-C
    shuts Serve down). Ray Serve has one HTTP address per cluster: the first application started sets it,
    others are told apart by `route_prefix`."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=name, route_prefix=route_prefix)
    if not block:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
