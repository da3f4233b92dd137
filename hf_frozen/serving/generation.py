"""The generation replica: one frozen decoder, the task encoders Ray multiplexes onto it, mixed-task batches.

A batch holds requests of any tasks. Requests with the same generation settings (`max_tokens`, `num_beams`) run as
one pass of `MultiEncoderModel.generate`: each row through its task's encoder (plain LoRA tasks sharing one base
pass), then the decoder once over all of them.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from ..errors import ArtifactError
from ..frozen_decoder.multi_encoder import MultiEncoderModel
from .catalog import GENERATION, ServedTask
from .replica import TaskReplica


class GenerationReplica(TaskReplica):
    """Holds the base model once; task encoders come and go as Ray Serve's multiplexer decides.

    Args:
        catalog: the server's tasks (`task_catalog`); this replica serves the generation ones.
        base_model_name_or_path (`str`): the encoder-decoder base every task was trained on (Hub id or folder).
        max_input_tokens (`int`): prompts are cut to this many tokens.
        base_model_kwargs (`dict`, *optional*): passed to `AutoModelForSeq2SeqLM.from_pretrained`.
    """

    kind = GENERATION

    def __init__(
        self,
        catalog: dict[str, ServedTask],
        base_model_name_or_path: str,
        max_tasks_per_replica: int = 16,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        max_input_tokens: int = 512,
        base_model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(catalog, max_tasks_per_replica, max_batch_size, batch_wait_timeout_s)
        dtypes = {task.config.get("decoder_dtype") for task in self.catalog.values()}
        if len(dtypes) > 1:
            raise ValueError(
                f"The tasks were trained against decoders held in different dtypes ({sorted(map(str, dtypes))}); a "
                "replica shares one decoder. Serve each `decoder_dtype` with a server of its own."
            )
        base = AutoModelForSeq2SeqLM.from_pretrained(base_model_name_or_path, **(base_model_kwargs or {}))
        self.tokenizer = AutoTokenizer.from_pretrained(base_model_name_or_path)
        self.model = MultiEncoderModel(base, decoder_dtype=dtypes.pop() if dtypes else None)
        self.max_input_tokens = max_input_tokens

    def load_task(self, task: ServedTask) -> None:
        self.model.add_task(task.name, task.source, replace=True, revision=task.revision)
        try:
            task.check_unchanged(self.model.task_configs[task.name], self.model.task_records[task.name].weights_sha256)
        except ArtifactError:
            self.model.remove_task(task.name)
            raise

    def unload_task(self, name: str) -> None:
        self.model.remove_task(name)

    def is_loaded(self, name: str) -> bool:
        return name in self.model.task_configs

    def answer(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One `generate` pass per generation setting among `requests` (each `{"task", "prompt", "max_tokens",
        "num_beams"}`); each answer is `{"text", "finish_reason", "prompt_tokens", "completion_tokens"}`."""
        answers: list[Any] = [None] * len(requests)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request["max_tokens"], request["num_beams"]), []).append(i)
        for (max_tokens, num_beams), rows in groups.items():
            tasks = [requests[i]["task"] for i in rows]
            inputs = self.tokenizer([requests[i]["prompt"] for i in rows], return_tensors="pt", padding=True,
                                    truncation=True, max_length=self.max_input_tokens)  # fmt: skip
            output = self.model.generate(**inputs, tasks=tasks, max_new_tokens=max_tokens, num_beams=num_beams,
                                         do_sample=False)  # fmt: skip
            self.count_pass(tasks)
            texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
            generated = output[:, 1:]  # after the decoder start token
            for row, i in enumerate(rows):
                tokens = generated[row][generated[row] != self.tokenizer.pad_token_id]
                stopped = self.tokenizer.eos_token_id is not None and bool(
                    (tokens == self.tokenizer.eos_token_id).any()
                )
                answers[i] = {"text": texts[row], "finish_reason": "stop" if stopped else "length",
                              "prompt_tokens": int(inputs["attention_mask"][row].sum()),
                              "completion_tokens": int(tokens.numel())}  # fmt: skip
        return answers
