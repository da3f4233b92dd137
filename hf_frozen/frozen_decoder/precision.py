"""Holding the frozen decoder side in low precision while the encoder trains in its own dtype.

The decoder never receives an optimizer step, so it needs neither fp32 master weights nor gradients: every
decoder-side tensor (the decoder, its embeddings, the LM head and any embedding tied to them) can be held in
bfloat16 or float16 once, when the adapter is applied. The encoder and its optimizer keep their dtype (fp32).

Activations then cross the boundary between the two halves in three places, each cast by a hook on the module
where it happens, reading the receiving side's dtype when the call is made (so that a DeepSpeed engine that
later casts the encoder to bf16 itself is followed):

- the encoder's input embeddings, when they are a decoder-side (tied) tensor: their output is cast to the
  encoder's dtype, inside an encoder call only (the same module may also serve the decoder);
- the decoder's floating inputs (`encoder_hidden_states`, `inputs_embeds`): cast to the decoder's dtype; in
  backward, the gradient flows back to the encoder in its own dtype;
- the LM head's logits: cast to the encoder's dtype, so that the loss is computed as in full precision.

The cast is round-to-nearest, the same one `from_pretrained(..., dtype=torch.bfloat16)` applies: a decoder cast
here and a base model loaded in bf16 from the same checkpoint hold the same bits, and share one fingerprint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..utils.zero3 import any_partitioned
from .sides import split_sides

DECODER_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def cast_decoder_side(model: PreTrainedModel, encoder_prefix: str, dtype_name: str) -> None:
    """Cast every floating decoder-side tensor of `model` to `dtype_name` in place (tied tensors stay tied).

    Raises:
        ValueError: when the parameters are partitioned by DeepSpeed ZeRO-3 already (`zero.Init`).
    """
    dtype = DECODER_DTYPES[dtype_name]
    decoder = [t for t in split_sides(model, encoder_prefix).decoder.values() if t.is_floating_point()]
    if any_partitioned(decoder):
        raise ValueError(
            f"`decoder_dtype={dtype_name!r}` cannot cast a decoder that DeepSpeed ZeRO-3 has already partitioned "
            "(the model was loaded under `zero.Init`, as a script that builds its TrainingArguments first does). "
            "Use ZeRO-2 or DDP, or set `decoder_dtype` to None."
        )
    _cast_in_place(decoder, dtype)


def back_to_one_dtype(model: PreTrainedModel, encoder_prefix: str, handles: list[Any]) -> None:
    """Undo the split for a plain export: remove the boundary hooks and cast the decoder side to the encoder's
    dtype (exact: every bf16/fp16 value is an fp32 one), since a plain model runs in one dtype."""
    for handle in handles:
        handle.remove()
    sides = split_sides(model, encoder_prefix)
    dtype = _first_floating(sides.encoder.values(), "encoder").dtype
    _cast_in_place([t for t in sides.decoder.values() if t.is_floating_point()], dtype)


def _cast_in_place(tensors: list[torch.Tensor], dtype: torch.dtype) -> None:
    with torch.no_grad():
        for tensor in tensors:
            if tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)  # `.data`: the Parameter object, and so every tie, is kept


def install_boundary_casts(model: PreTrainedModel, encoder_prefix: str) -> list[Any]:
    """Hook the three places where activations cross between encoder and decoder dtypes (see the module doc).

    Returns the hook handles. Idempotent in effect: a cast to the dtype a tensor already has is free.
    """
    sides = split_sides(model, encoder_prefix)
    encoder_param = _first_floating(sides.encoder.values(), "encoder")
    decoder_param = _first_floating(sides.decoder.values(), "decoder")
    handles = cast_encoder_embeddings(model.get_encoder(), encoder_param, {id(t) for t in sides.decoder.values()})

    def inputs_to_decoder(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        dtype = decoder_param.dtype
        return tuple(_cast(a, dtype) for a in args), {k: _cast(v, dtype) for k, v in kwargs.items()}

    handles.append(model.get_decoder().register_forward_pre_hook(inputs_to_decoder, with_kwargs=True))

    head = model.get_output_embeddings()
    if head is not None:
        handles.append(head.register_forward_hook(lambda m, a, output: output.to(encoder_param.dtype)))
    return handles


def cast_encoder_embeddings(encoder: nn.Module, encoder_param: torch.Tensor, decoder_ids: set[int]) -> list[Any]:
    """Cast the output of `encoder`'s input embeddings to `encoder_param`'s dtype, when their weight is a
    decoder-side tensor (`decoder_ids`: ids of the decoder-side tensors). A task encoder of a `MultiEncoderModel`
    (a copy of the base encoder) gets this hook of its own. Returns the hook handles (none if not needed).
    """
    embedding = encoder.get_input_embeddings()
    if embedding is None or id(embedding.weight) not in decoder_ids:
        return []
    # How many encoder calls are running: a tied embedding module may serve the decoder too.
    inside_encoder = [0]

    def enter_encoder(*_: Any) -> None:
        inside_encoder[0] += 1

    def leave_encoder(*_: Any) -> None:
        inside_encoder[0] -= 1

    def embeddings_to_encoder(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.to(encoder_param.dtype) if inside_encoder[0] else output

    return [
        encoder.register_forward_pre_hook(enter_encoder),
        encoder.register_forward_hook(leave_encoder, always_call=True),
        embedding.register_forward_hook(embeddings_to_encoder),
    ]


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value


def _first_floating(tensors: Any, side: str) -> torch.Tensor:
    for tensor in tensors:
        if tensor.is_floating_point():
            return tensor
    raise ValueError(f"The model has no floating-point tensor on its {side} side to take the dtype from.")
