"""`MultiEncoderModel`: one frozen decoder held once in memory, any number of named task encoders.

Each task encoder is built from a frozen-decoder artifact. It is a copy of the base model's encoder in which
only the artifact's tensors are new; every frozen tensor (LoRA's base weights, a tied embedding) is the
base model's own object, shared. A mixed batch is encoded group by group, each group through its task's
encoder and trimmed to its own padding so that it sees exactly what it would see alone. The decoder then runs
once over the whole batch.
"""

from __future__ import annotations

import copy
import os
from itertools import chain
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from ..fingerprint import fingerprint_tensors
from ..hub import resolve_file
from ..io import load_tensors, save_tensors
from .config import FrozenDecoderConfig
from .freezing import check_encoder_decoder
from .model import WEIGHTS_NAME, copy_artifact_tensors
from .sides import module_prefix, split_sides


class MultiEncoderModel(nn.Module):
    """Serve many task encoders on one frozen decoder.

    Args:
        base_model ([`~transformers.PreTrainedModel`]): the encoder-decoder base every task was trained on.

    Example:
        ```python
        server = MultiEncoderModel.from_pretrained("google-t5/t5-base", {"summarize": "me/t5-sum", "qa": "me/t5-qa"})
        server.generate(input_ids=ids, attention_mask=mask, tasks=["qa", "summarize", "qa"], num_beams=3)
        ```
    """

    def __init__(self, base_model: PreTrainedModel) -> None:
        super().__init__()
        check_encoder_decoder(base_model)
        self.base_model = base_model.eval().requires_grad_(False)
        self.encoder_prefix = module_prefix(base_model, base_model.get_encoder())
        sides = split_sides(base_model, self.encoder_prefix)
        self.decoder_fingerprint = fingerprint_tensors(sides.decoder)
        self._decoder_ids = {id(t) for t in sides.decoder.values()}
        self.encoders = nn.ModuleDict()
        self.task_configs: dict[str, FrozenDecoderConfig] = {}

    @classmethod
    def from_pretrained(
        cls, base_model: PreTrainedModel | str, tasks: dict[str, Any] | None = None, **base_model_kwargs: Any
    ) -> MultiEncoderModel:
        """A base model (or its id) plus task encoders: `{name: artifact folder, Hub repo id or model}`."""
        if isinstance(base_model, str):
            base_model = AutoModelForSeq2SeqLM.from_pretrained(base_model, **base_model_kwargs)
        model = cls(base_model)
        for name, artifact in (tasks or {}).items():
            model.add_task(name, artifact)
        return model

    # -- tasks ------------------------------------------------------------------------------------------------

    def add_task(
        self,
        name: str,
        artifact: Any,
        replace: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> None:
        """Add (or with `replace=True`, swap in) the encoder of `artifact` under `name`.

        Args:
            name (`str`): the task name used in `generate(tasks=...)`.
            artifact: a local folder or Hub repo id holding a frozen-decoder artifact, or a `FrozenDecoderModel`.
            replace (`bool`, defaults to `False`): allow overwriting an existing task.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"A task name must be a non-empty string, got {name!r}.")
        if name in self.encoders and not replace:
            raise ValueError(f"Task {name!r} already exists: pass `replace=True` to swap its encoder.")
        if isinstance(artifact, nn.Module) and hasattr(artifact, "encoder_state_dict"):
            config, tensors, source = artifact.frozen_config, artifact.encoder_state_dict(), f"the model for {name!r}"
        else:
            source = str(artifact)
            config = FrozenDecoderConfig.from_pretrained(artifact, revision=revision, token=token)
            tensors = load_tensors(resolve_file(artifact, WEIGHTS_NAME, revision=revision, token=token))
        if config.decoder_fingerprint != self.decoder_fingerprint:
            raise ValueError(
                f"Task {name!r}: the encoder in {source} was trained against another decoder (fingerprint "
                f"{str(config.decoder_fingerprint)[:16]}..., this base has {self.decoder_fingerprint[:16]}...; its "
                f"recorded base is {config.base_model_name_or_path!r}). Serve it with that base model."
            )
        encoder = self._build_encoder(name, config, tensors, source)
        # Built completely before it replaces anything: a failure leaves the served tasks as they were.
        self.encoders[name] = encoder
        self.task_configs[name] = copy.deepcopy(config)

    def remove_task(self, name: str) -> None:
        self._check_tasks([name])
        del self.encoders[name]
        del self.task_configs[name]

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Each task with the size of what it adds: parameters and bytes private to its encoder."""
        shared = {id(t) for t in chain(self.base_model.parameters(), self.base_model.buffers())}
        listing = {}
        for name, encoder in self.encoders.items():
            private = {id(t): t for t in chain(encoder.parameters(), encoder.buffers()) if id(t) not in shared}
            listing[name] = {
                "encoder_training": self.task_configs[name].encoder_training,
                "parameters": sum(t.numel() for t in private.values()),
                "bytes": sum(t.numel() * t.element_size() for t in private.values()),
            }
        return listing

    def _copy_encoder(self, config: FrozenDecoderConfig, private: set[str]) -> nn.Module:
        """A copy of the base encoder in which only the `private` tensors (names inside the encoder) are new.

        `copy.deepcopy` with a memo: every other tensor (frozen weights, LoRA's base weights, a tied embedding)
        stays the base model's own object, so it is held once however many tasks there are.
        """
        base_encoder = self.base_model.get_encoder()
        named = chain(base_encoder.named_parameters(remove_duplicate=False), base_encoder.named_buffers())
        memo = {id(t): t for n, t in named if n not in private}
        encoder = copy.deepcopy(base_encoder, memo)
        if config.encoder_training == "lora":
            lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              target_modules=config.lora_target_modules)  # fmt: skip
            inject_adapter_in_model(lora, encoder)
        encoder._hf_frozen_shared = memo  # remembered to tell private tensors from shared ones
        return encoder

    def _private_tensors(self, encoder: nn.Module) -> dict[str, torch.Tensor]:
        """The encoder's own tensors (not shared with the base model), by name inside the encoder."""
        shared = encoder._hf_frozen_shared
        return {n: t for n, t in encoder.named_parameters() if id(t) not in shared}

    def _frozen_encoder_fingerprint(self, encoder: nn.Module, private: set[str]) -> str | None:
        """As `FrozenDecoderModel` records it: the encoder-side tensors the artifact does not store."""
        groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
        for n, t in chain(encoder.named_parameters(remove_duplicate=False), encoder.named_buffers()):
            groups.setdefault(id(t), (t, []))[1].append(n)
        frozen = {
            self.encoder_prefix + sorted(names)[0]: t
            for t, names in groups.values()
            if id(t) not in self._decoder_ids and not private.intersection(names)
        }
        return fingerprint_tensors(frozen) if frozen else None

    def _build_encoder(self, name: str, config: FrozenDecoderConfig, tensors: dict, source: str) -> nn.Module:
        prefix = self.encoder_prefix
        outside = sorted(k for k in tensors if not k.startswith(prefix))
        if outside:
            raise ValueError(f"Task {name!r}: {source} holds tensors outside the encoder: {outside[:5]}.")
        replaced = {k[len(prefix) :] for k in tensors}
        encoder = self._copy_encoder(config, replaced).requires_grad_(False).eval()
        own = {prefix + n: t for n, t in self._private_tensors(encoder).items()}
        copy_artifact_tensors(own, tensors, f"{source} (task {name!r})")  # key set and shapes checked first
        if self._frozen_encoder_fingerprint(encoder, replaced) != config.frozen_encoder_fingerprint:
            raise ValueError(
                f"Task {name!r}: {source} relies on frozen encoder weights (LoRA base weights) that differ in this "
                f"base model. Serve it with its recorded base {config.base_model_name_or_path!r}."
            )
        return encoder

    # -- joint training of one encoder per task ---------------------------------------------------------------

    @classmethod
    def for_training(
        cls, base_model: PreTrainedModel, tasks: list[str], config: FrozenDecoderConfig | None = None
    ) -> MultiEncoderModel:
        """One trainable encoder per task, all starting from the base encoder, on one frozen decoder.

        Train it with the ordinary `Trainer` on a `mix_tasks` stream whose rows carry `task_ids`
        (`model.add_task_ids(stream)`); each batch is routed example by example to its task's encoder.
        `save_pretrained` then writes one frozen-decoder artifact per task.
        """
        config = copy.deepcopy(config or FrozenDecoderConfig())
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(base_model.config, "_name_or_path", None) or None
        # Respect weights that were frozen before (fixed sinusoidal positions), as `FrozenDecoderModel` does.
        originally_trainable = {n for n, p in base_model.get_encoder().named_parameters() if p.requires_grad}
        model = cls(base_model)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"`tasks` must be a non-empty list of distinct names, got {tasks!r}.")
        base_encoder = base_model.get_encoder()
        if config.encoder_training == "lora":
            from .freezing import default_lora_targets

            config.lora_target_modules = config.lora_target_modules or default_lora_targets(base_encoder)
        embedding = base_encoder.get_input_embeddings()
        # The same trainable set as `FrozenDecoderModel`: encoder-side weights (never a tensor tied to the
        # decoder), the input embedding only when asked for, or LoRA weights only.
        encoder_side = {n[len(model.encoder_prefix) :] for n in split_sides(base_model, model.encoder_prefix).encoder}
        private: set[str] = set()
        if config.encoder_training == "full":
            private = {n for n, p in base_encoder.named_parameters() if n in encoder_side}
            private -= {n for n, p in base_encoder.named_parameters() if p is embedding.weight}
        if config.train_encoder_embeddings:
            private |= {n for n, p in base_encoder.named_parameters(remove_duplicate=False) if p is embedding.weight}
        for name in tasks:
            encoder = model._copy_encoder(config, private).train()
            for n, t in encoder.named_parameters():
                t.requires_grad_((n in private and n in originally_trainable) or "lora_" in n)
            model.encoders[name] = encoder
            model.task_configs[name] = copy.deepcopy(config)
            model.task_configs[name].decoder_fingerprint = model.decoder_fingerprint
            trainable = {n for n, t in encoder.named_parameters() if t.requires_grad}
            model.task_configs[name].frozen_encoder_fingerprint = model._frozen_encoder_fingerprint(encoder, trainable)
        return model

    def add_task_ids(self, dataset: Any, task_column: str = "task") -> Any:
        """Add the integer column `task_ids` (the Trainer batches tensors, not task names) from `task_column`."""
        index = {name: i for i, name in enumerate(self.encoders)}
        unknown = sorted(set(dataset[task_column]) - set(index))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown} in column {task_column!r}; the model has {list(index)}.")
        return dataset.map(lambda row: {"task_ids": index[row[task_column]]})

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, **kwargs: Any) -> None:
        """Write one frozen-decoder artifact per task, in `save_directory/<task>/`, each loadable on its own."""
        if not is_main_process:
            return
        current = fingerprint_tensors(split_sides(self.base_model, self.encoder_prefix).decoder)
        if current != self.decoder_fingerprint:
            raise RuntimeError("The shared decoder changed during training: refusing to save task encoders.")
        for name, encoder in self.encoders.items():
            config = self.task_configs[name]
            tensors = {self.encoder_prefix + n: t for n, t in self._private_tensors(encoder).items()}
            folder = os.path.join(save_directory, name)
            save_tensors(tensors, os.path.join(folder, WEIGHTS_NAME), {"adapter_type": config.ADAPTER_TYPE})
            config.save_pretrained(folder)

    def _check_tasks(self, tasks: list[str]) -> None:
        unknown = sorted(set(tasks) - set(self.encoders))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; this model serves {sorted(self.encoders)}.")

    # -- inference --------------------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tasks: list[str]) -> tuple:
        """Run each example through its task's encoder; returns (encoder hidden states (B, T, d), attention mask)."""
        tasks = list(tasks)
        if len(tasks) != input_ids.shape[0]:
            raise ValueError(
                f"`tasks` names {len(tasks)} task(s) but the batch holds {input_ids.shape[0]} examples: give one "
                "task per example."
            )
        self._check_tasks(tasks)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = None
        for task in dict.fromkeys(tasks):
            rows = torch.tensor([i for i, t in enumerate(tasks) if t == task], device=input_ids.device)
            mask = attention_mask[rows]
            # Trim the group to its own padding, so each example is encoded exactly as it would be alone.
            used = mask.any(0).nonzero().flatten()
            cols = torch.arange(int(used.min()), int(used.max()) + 1, device=input_ids.device)
            out = self.encoders[task](input_ids=input_ids[rows][:, cols], attention_mask=mask[:, cols])
            states = out.last_hidden_state  # (b, t, d)
            if hidden is None:
                hidden = states.new_zeros(*input_ids.shape, states.shape[-1])
            hidden[rows.unsqueeze(1), cols.unsqueeze(0)] = states
        return hidden, attention_mask

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
        return self.base_model.generate(
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
            names = list(self.encoders)
            tasks = [names[i] for i in task_ids.tolist()]
        if tasks is None:
            raise ValueError("Pass `tasks=[...]` (one task name per example) or `task_ids`.")
        hidden, attention_mask = self.encode(input_ids, attention_mask, tasks)
        return self.base_model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=attention_mask, labels=labels,
            **kwargs,
        )  # fmt: skip
