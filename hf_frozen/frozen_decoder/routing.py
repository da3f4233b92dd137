"""Routing a mixed-task batch: each example through its task's encoder (or the shared LoRA pass), then the one
frozen decoder over the whole batch. A mixin of `MultiEncoderModel`, which holds the task encoders."""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutput

from .mixed_lora import mixed_lora


class MixedTaskRouting:
    """`encode`, `generate` and `forward` for batches whose examples belong to different tasks."""

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tasks: list[str]) -> tuple:
        """Run each example through its task's encoder; returns (encoder hidden states (B, T, d), attention mask)."""
        if isinstance(tasks, str):
            raise TypeError(f"`tasks` must be a list with one task name per example, got the string {tasks!r}.")
        tasks = list(tasks)
        if len(tasks) != input_ids.shape[0]:
            raise ValueError(
                f"`tasks` names {len(tasks)} task(s) but the batch holds {input_ids.shape[0]} examples: give one "
                "task per example."
            )
        self._check_tasks(tasks)
        self._make_resident(list(dict.fromkeys(tasks)))
        try:
            return self._encode(input_ids, attention_mask, tasks)
        finally:
            self._evict()

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tasks: list[str]) -> tuple:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        empty = (~attention_mask.bool().any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"Rows {empty[:10]} of `attention_mask` are all zeros: those examples have no token to encode. Drop "
                "them from the batch, or give each at least one token (an empty text still has its end token)."
            )
        # Plain LoRA tasks share one pass of the base encoder: a served one always (it holds no encoder of its own),
        # one being trained (`for_training`) in eval mode and with another beside it (alone it gains nothing).
        shared = {t for t in dict.fromkeys(tasks) if self.lora_parts.get(t)
                  and (t in self.lora_adapters or not self.encoders[t].training)}  # fmt: skip
        if len(shared) == 1 and next(iter(shared)) in self.encoders:
            shared = set()
        passes: dict[str | None, list[int]] = {}  # task (None: the shared pass) -> its rows
        for i, task in enumerate(tasks):
            passes.setdefault(None if task in shared else task, []).append(i)
        hidden = None
        for task, row_list in passes.items():
            rows = torch.tensor(row_list, device=input_ids.device)
            mask = attention_mask[rows]
            # Trim the group to its own padding, so each example is encoded as it would be alone.
            used = mask.any(0).nonzero().flatten()
            cols = torch.arange(int(used.min()), int(used.max()) + 1, device=input_ids.device)
            inputs = {"input_ids": input_ids[rows][:, cols], "attention_mask": mask[:, cols]}
            if task is not None:
                states = self.encoders[task](**inputs).last_hidden_state  # (b, t, d)
            else:
                states = self._shared_lora_pass(inputs, [tasks[i] for i in row_list])
            if hidden is None:
                hidden = states.new_zeros(*input_ids.shape, states.shape[-1])
            hidden[rows.unsqueeze(1), cols.unsqueeze(0)] = states
        return hidden, attention_mask

    def _shared_lora_pass(self, inputs: dict[str, torch.Tensor], tasks: list[str]) -> torch.Tensor:
        """One base-encoder pass over rows of several plain LoRA tasks, each row group adding its own adapter."""
        device = inputs["input_ids"].device
        groups = [
            (torch.tensor([i for i, t in enumerate(tasks) if t == task], device=device), self.lora_parts[task])
            for task in dict.fromkeys(tasks)
        ]
        encoder = self.get_base_model().get_encoder()
        with mixed_lora(encoder, groups):
            return encoder(**inputs).last_hidden_state

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        tasks: list[str] | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generate for a batch whose examples belong to different tasks, decoding them all in one batch.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, length)`), attention_mask: the inputs.
            tasks (`list[str]`): the task of each example.
            generate_kwargs: passed to `generate` (`num_beams=3`, `max_new_tokens`, ...).
        """
        if tasks is None:
            raise ValueError("Pass `tasks=[...]`, one task name per example.")
        hidden, attention_mask = self.encode(input_ids, attention_mask, tasks)
        return self.get_base_model().generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=attention_mask, **generate_kwargs
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        tasks: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Scores (and the loss, given `labels`) for a mixed-task batch; tasks by name or by `task_ids`."""
        if tasks is None and task_ids is not None:
            names = list(self.task_configs)
            ids = task_ids.tolist() if isinstance(task_ids, torch.Tensor) else list(task_ids)
            bad = sorted({i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(names)})
            if bad:
                raise ValueError(
                    f"`task_ids` must be integers in 0..{len(names) - 1} (this model's tasks: {names}), got {bad}."
                )
            tasks = [names[i] for i in ids]
        if tasks is None:
            raise ValueError("Pass `tasks=[...]` (one task name per example) or `task_ids`.")
        hidden, attention_mask = self.encode(input_ids, attention_mask, tasks)
        return self.get_base_model()(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=attention_mask, labels=labels,
            **kwargs,
        )  # fmt: skip
