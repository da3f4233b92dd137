"""One encoder pass for a batch whose rows belong to different LoRA task encoders.

LoRA task encoders share every base weight: only their low-rank pairs (A, B) differ. So a mixed batch need not
run one encoder pass per task: the base encoder runs once over every row, and each LoRA-targeted linear layer
adds, row group by row group, that group's own `B(A(x)) * scaling` to its output, as peft's mixed-adapter
batches (`adapter_names=`) and S-LoRA do. Adding a LoRA task then costs its adapter's tensors and nothing in the
pass but two small matmuls per targeted layer.

Only plain LoRA qualifies (no DoRA or other variant, no LoRA on embeddings, not merged, no other trained
tensors), and only in eval mode (LoRA dropout is off); other encoders keep the pass of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


@contextlib.contextmanager
def mixed_lora(base_encoder: nn.Module, groups: list[tuple[torch.Tensor, LoraParts]]) -> Iterator[None]:
    """While active, `base_encoder`'s targeted linear layers add each row group's LoRA update to their output.

    Args:
        base_encoder: the plain (LoRA-free) encoder every task shares.
        groups: (row indices in the batch, that task's `LoraParts`) per task in the batch.
    """
    modules = dict(base_encoder.named_modules())
    by_layer: dict[str, list[tuple[torch.Tensor, nn.Module, nn.Module, float]]] = {}
    for rows, parts in groups:
        for name, (lora_a, lora_b, scaling) in parts.items():
            by_layer.setdefault(name, []).append((rows, lora_a, lora_b, scaling))

    def add_updates(updates):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            for rows, lora_a, lora_b, scaling in updates:
                delta = lora_b(lora_a(x[rows].to(lora_a.weight.dtype))) * scaling
                output = output.index_add(0, rows, delta.to(output.dtype))
            return output

        return hook

    handles = []
    try:
        for name, updates in by_layer.items():
            if name not in modules or not isinstance(modules[name], nn.Linear):
                raise ValueError(f"The base encoder has no linear layer {name!r} for a LoRA task encoder's adapter.")
            handles.append(modules[name].register_forward_hook(add_updates(updates)))
        yield
    finally:
        for handle in handles:
            handle.remove()
