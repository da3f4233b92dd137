"""One encoder pass for a batch whose rows belong to different LoRA task encoders.

LoRA task encoders share every base weight: only their low-rank pairs (A, B) differ. So a mixed batch need not
run one encoder pass per task: the base encoder runs once over every row, and each LoRA-targeted linear layer
adds, row group by row group, that group's own `B(A(x)) * scaling` to its output, as peft's mixed-adapter
batches (`adapter_names=`) and S-LoRA do. A served LoRA task is then held as its adapter alone (`LoraAdapters`),
without a copy of the encoder around it: adding one costs its adapter's tensors, and in the pass two batched
matmuls per targeted layer for all the LoRA tasks of one rank together.

Only plain LoRA qualifies (no DoRA or other variant, no LoRA on embeddings, not merged, no other trained
tensors), and only in eval mode (LoRA dropout is off); other encoders keep the pass of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import nn

from .freezing import ADAPTER_NAME

# Per targeted layer name: (lora_A, lora_B, scaling) of one task.
LoraParts = dict[str, tuple[nn.Module, nn.Module, float]]


def lora_parts(encoder: nn.Module, own_tensors: dict[str, torch.Tensor]) -> LoraParts | None:
    """The LoRA pairs of a task encoder, by layer name, or None when the encoder cannot share the mixed pass
    (a DoRA or other variant, LoRA on a non-linear layer, a merged adapter, or trained tensors besides LoRA's)."""
    if not own_tensors or any("lora_" not in name for name in own_tensors):
        return None
    parts: LoraParts = {}
    for name, module in encoder.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        plain = (
            isinstance(module, LoraLinear)
            and ADAPTER_NAME in module.lora_A
            and not getattr(module, "lora_variant", {})
            and not module.merged
            and not getattr(module, "lora_bias", {}).get(ADAPTER_NAME, False)
        )
        if not plain:
            return None
        parts[name] = (module.lora_A[ADAPTER_NAME], module.lora_B[ADAPTER_NAME], module.scaling[ADAPTER_NAME])
    return parts or None


class LoraAdapters(nn.Module):
    """The LoRA pairs of one task encoder without the encoder around them: all a plain LoRA task needs to join the
    shared pass. A module, so that `.to(device)` and `state_dict()` reach its tensors.

    Args:
        parts (`LoraParts`): the task encoder's pairs by layer name (`lora_parts`); the modules are kept, not
            copied.
    """

    def __init__(self, parts: LoraParts) -> None:
        super().__init__()
        self.layer_names = list(parts)
        self.lora_A = nn.ModuleList(lora_a for lora_a, _, _ in parts.values())
        self.lora_B = nn.ModuleList(lora_b for _, lora_b, _ in parts.values())
        self.scalings = [scaling for _, _, scaling in parts.values()]

    def parts(self) -> LoraParts:
        return dict(zip(self.layer_names, zip(self.lora_A, self.lora_B, self.scalings, strict=True), strict=True))

    def artifact_tensors(self, encoder_prefix: str) -> dict[str, torch.Tensor]:
        """The tensors a frozen-decoder artifact stores for this task, under their base-model names."""
        tensors = {}
        for name, lora_a, lora_b in zip(self.layer_names, self.lora_A, self.lora_B, strict=True):
            tensors[f"{encoder_prefix}{name}.lora_A.{ADAPTER_NAME}.weight"] = lora_a.weight
            tensors[f"{encoder_prefix}{name}.lora_B.{ADAPTER_NAME}.weight"] = lora_b.weight
        return tensors


@contextlib.contextmanager
def mixed_lora(base_encoder: nn.Module, groups: list[tuple[torch.Tensor, LoraParts]]) -> Iterator[None]:
    """While active, `base_encoder`'s targeted linear layers add each row group's LoRA update to their output.

    Per layer, the tasks' adapters of one rank are stacked once per call, and every row is multiplied by its own
    task's pair in two batched matmuls (S-LoRA's gather-then-bmm), instead of two small matmuls per task.

    Args:
        base_encoder: the plain (LoRA-free) encoder every task shares.
        groups: (row indices in the batch, that task's `LoraParts`) per task in the batch.
    """
    modules = dict(base_encoder.named_modules())
    by_layer: dict[str, list[tuple[torch.Tensor, nn.Module, nn.Module, float]]] = {}
    for rows, parts in groups:
        for name, (lora_a, lora_b, scaling) in parts.items():
            by_layer.setdefault(name, []).append((rows, lora_a, lora_b, scaling))

    handles = []
    try:
        for name, updates in by_layer.items():
            if name not in modules or not isinstance(modules[name], nn.Linear):
                raise ValueError(f"The base encoder has no linear layer {name!r} for a LoRA task encoder's adapter.")
            handles.append(modules[name].register_forward_hook(_add_updates(_stack_by_rank(updates))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _stack_by_rank(updates: list) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per LoRA rank: (rows, A of each row (n, r, in), B of each row (n, out, r), scaling of each row (n,))."""
    by_rank: dict[int, list] = {}
    for update in updates:
        by_rank.setdefault(update[1].weight.shape[0], []).append(update)
    stacked = []
    for same_rank in by_rank.values():
        rows = torch.cat([rows for rows, *_ in same_rank])
        task = torch.cat([torch.full_like(rows, i) for i, (rows, *_) in enumerate(same_rank)])
        a = torch.stack([lora_a.weight for _, lora_a, _, _ in same_rank])[task]  # (n, r, in)
        b = torch.stack([lora_b.weight for _, _, lora_b, _ in same_rank])[task]  # (n, out, r)
        scaling = torch.tensor([s for *_, s in same_rank], dtype=a.dtype, device=a.device)[task]  # (n,)
        stacked.append((rows, a, b, scaling))
    return stacked


def _add_updates(stacked: list) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]  # (B, T, in)
        if x.dim() != 3:  # rows index the batch: a layer fed flattened tokens cannot be split by row
            raise RuntimeError(
                f"A shared LoRA pass needs (batch, tokens, features) inputs, got shape {tuple(x.shape)}."
            )
        for rows, a, b, scaling in stacked:
            h = torch.bmm(x[rows].to(a.dtype), a.transpose(1, 2))  # (n, T, r)
            delta = torch.bmm(h, b.transpose(1, 2)) * scaling[:, None, None]  # (n, T, out)
            output = output.index_add(0, rows, delta.to(output.dtype))
        return output

    return hook
