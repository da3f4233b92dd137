"""Which tensors of an encoder-decoder model belong to the encoder side, and which to the decoder side.

A tensor is on the encoder side only if every name it is reachable under lies inside the encoder module.
Tied tensors (T5's and BART's `shared` embedding, reachable as the encoder's and the decoder's input
embeddings and as the LM head) are therefore decoder side: training them through the encoder would change
the decoder, which is exactly what this adapter promises never happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn


@dataclass
class TensorSides:
    """The tensors of a model split by side, each under one canonical name, plus the names of tied copies."""

    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor]
    # alias name -> canonical name, for every extra name a tied tensor is reachable under.
    aliases: dict[str, str]


def module_prefix(model: nn.Module, submodule: nn.Module) -> str:
    """The qualified name of `submodule` inside `model`, with a trailing dot (`"model.encoder."`)."""
    for name, module in model.named_modules():
        if module is submodule:
            return f"{name}." if name else ""
    raise ValueError(f"{type(submodule).__name__} is not a submodule of {type(model).__name__}.")


def split_sides(model: nn.Module, encoder_prefix: str) -> TensorSides:
    """Split every parameter and buffer of `model` into encoder side and decoder side."""
    groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
    named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        groups.setdefault(id(tensor), (tensor, []))[1].append(name)

    encoder: dict[str, torch.Tensor] = {}
    decoder: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for tensor, names in groups.values():
        outside = sorted(n for n in names if not n.startswith(encoder_prefix))
        # The canonical name of a decoder-side tensor ignores its encoder names, so that it stays the same
        # whether or not the encoder still shares it: fingerprints then compare across both set-ups.
        canonical = outside[0] if outside else sorted(names)[0]
        (decoder if outside else encoder)[canonical] = tensor
        aliases.update({n: canonical for n in names if n != canonical})
    return TensorSides(encoder=encoder, decoder=decoder, aliases=aliases)
