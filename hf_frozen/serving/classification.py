"""The classification replica: one frozen DecT backbone, the DecT heads Ray multiplexes onto it.

Each head has its own prompt, so a batch runs one backbone pass per task among its requests (the queries of one
task batched together), then each head on its rows.
"""

from __future__ import annotations

from typing import Any

from ..dect.backbones.transformers_model import load_backbone
from ..dect.model import DecTModel
from .catalog import CLASSIFICATION, ServedTask
from .replica import TaskReplica


class ClassificationReplica(TaskReplica):
    """Holds a DecT backbone once; DecT heads come and go as Ray Serve's multiplexer decides.

    Args:
        catalog: the server's tasks (`task_catalog`); this replica serves the classification ones.
        backbone_name_or_path (`str`): the backbone the heads were fitted on (Hub id, folder or GGUF file).
        backbone_kwargs (`dict`, *optional*): passed to the backbone's `from_pretrained`.
    """

    kind = CLASSIFICATION

    def __init__(
        self,
        catalog: dict[str, ServedTask],
        backbone_name_or_path: str,
        max_tasks_per_replica: int = 16,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(catalog, max_tasks_per_replica, max_batch_size, batch_wait_timeout_s)
        self.backbone, self.tokenizer = load_backbone(backbone_name_or_path, **(backbone_kwargs or {}))
        self.heads: dict[str, DecTModel] = {}

    def load_task(self, task: ServedTask) -> None:
        head = DecTModel.from_pretrained(task.source, base_model=self.backbone, tokenizer=self.tokenizer,
                                         revision=task.revision)  # fmt: skip
        task.check_unchanged(head.config, head.record.weights_sha256)
        head.show_progress = False
        self.heads[task.name] = head

    def unload_task(self, name: str) -> None:
        del self.heads[name]

    def is_loaded(self, name: str) -> bool:
        return name in self.heads

    def answer(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each request `{"task", "text"}` -> `{"label", "scores": {class: probability}}`."""
        answers: list[Any] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request["task"], []).append(i)
        for name, rows in groups.items():
            head = self.heads[name]
            probabilities = head.decision_scores([requests[i]["text"] for i in rows]).float().softmax(-1)
            self.count_pass([name] * len(rows))
            labels = head.config.labels
            for row, i in enumerate(rows):
                p = probabilities[row].tolist()
                answers[i] = {"label": labels[max(range(len(p)), key=p.__getitem__)],
                              "scores": dict(zip(labels, p, strict=True))}  # fmt: skip
        return answers
