"""Applying the freeze, for both frozen-decoder models: which encoder weights train, a private encoder
embedding, LoRA on the encoder only."""

from __future__ import annotations

import copy

from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers import PreTrainedModel

from ..utils.zero3 import gathered
from .config import FrozenDecoderConfig
from .sides import split_sides

ADAPTER_NAME = "default"  # the one LoRA adapter of an encoder, under PEFT's default name

# Attention query/value projection names, tried in order, when `lora_target_modules` is unset.
_DEFAULT_LORA_TARGETS = (["q", "v"], ["q_proj", "v_proj"])


def check_encoder_decoder(model: nn.Module) -> None:
    """Refuse models that have no separate encoder and decoder, naming what was received."""
    config = getattr(model, "config", None)
    if not isinstance(model, PreTrainedModel) or config is None:
        raise TypeError(
            f"The frozen-decoder adapter needs a transformers encoder-decoder model (T5, BART, Marian, ...), "
            f"got a {type(model).__name__}. Load one with `AutoModelForSeq2SeqLM.from_pretrained(...)`."
        )
    if not getattr(config, "is_encoder_decoder", False) or not hasattr(model, "get_encoder"):
        kind = "decoder-only" if getattr(config, "is_decoder", False) or hasattr(model, "generate") else "encoder-only"
        raise ValueError(
            f"The frozen-decoder adapter needs an encoder-decoder model (T5, mT5, UMT5, LongT5, BART, mBART, Marian, "
            f"Pegasus, ...), got {type(model).__name__} (model_type {config.model_type!r}), which is {kind} "
            "(its config has `is_encoder_decoder=False`). To adapt a frozen decoder-only or encoder-only model, "
            "use the DecT head (`hf_frozen.DecTConfig`)."
        )


def trainable_encoder_names(model: PreTrainedModel, encoder_prefix: str, config: FrozenDecoderConfig) -> set[str]:
    """The one rule for what trains: names, inside the encoder, of the existing tensors that `config` trains.

    Full training trains every encoder-side weight that was trainable when we got the model (a tensor tied to the
    decoder, such as the shared embedding, is decoder side and never trains; fixed sinusoidal positions stay
    fixed). The input embedding trains only with `train_encoder_embeddings`, as a private copy (the caller makes
    it). With LoRA, no existing tensor trains but that embedding: `apply_encoder_training` adds the LoRA weights.
    Call it before anything is frozen.
    """
    encoder = model.get_encoder()
    embedding = encoder.get_input_embeddings()
    named = list(encoder.named_parameters(remove_duplicate=False))
    embedding_names = {n for n, p in named if embedding is not None and p is embedding.weight}
    names: set[str] = set()
    if config.encoder_training == "full":
        encoder_side = {id(t) for t in split_sides(model, encoder_prefix).encoder.values()}
        names = {n for n, p in named if id(p) in encoder_side and p.requires_grad} - embedding_names
    if config.train_encoder_embeddings:
        names |= embedding_names
    return names


def apply_encoder_training(encoder: nn.Module, trainable: set[str], config: FrozenDecoderConfig) -> None:
    """Inject LoRA when `config` asks for it, then make exactly `trainable` (and LoRA's weights) trainable.

    `config.lora_target_modules` must be resolved already (`resolve_lora_targets`).
    """
    if config.encoder_training == "lora":
        inject_adapter_in_model(lora_config(config), encoder, adapter_name=ADAPTER_NAME)
    for name, param in encoder.named_parameters():
        param.requires_grad_(name in trainable or "lora_" in name)


def resolve_lora_targets(encoder: nn.Module, config: FrozenDecoderConfig) -> None:
    """Record the LoRA target modules in `config` (the default ones if unset), so that loading rebuilds them."""
    if config.encoder_training == "lora":
        config.lora_target_modules = config.lora_target_modules or default_lora_targets(encoder)


def lora_config(config: FrozenDecoderConfig) -> LoraConfig:
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )


def give_encoder_own_embeddings(model: PreTrainedModel, encoder_prefix: str) -> None:
    """Give the encoder a private, trainable copy of its input embeddings if it shares them with the decoder.

    The copy also leaves transformers' tying tables, so `model.tie_weights()` cannot tie it back.
    """
    encoder = model.get_encoder()
    embedding = encoder.get_input_embeddings()
    if embedding is None:
        raise ValueError(
            f"`train_encoder_embeddings=True`, but the encoder of {type(model).__name__} exposes no input embeddings."
        )
    sides = split_sides(model, encoder_prefix)
    if not any(t is embedding.weight for t in sides.decoder.values()):
        return  # Already private to the encoder (e.g. Marian with separate vocabularies).
    encoder.set_input_embeddings(private_copy(embedding))
    for prefix, module in model.named_modules():
        if not isinstance(module, PreTrainedModel):
            continue
        full = f"{prefix}." if prefix else ""

        def keep(target: str, source: str, full: str = full) -> bool:
            return not (full + target).startswith(encoder_prefix) and not (full + source).startswith(encoder_prefix)

        # Instance attributes shadow the class tables that `tie_weights()` reads.
        if module._tied_weights_keys:
            module._tied_weights_keys = {t: s for t, s in module._tied_weights_keys.items() if keep(t, s)}
        if getattr(module, "all_tied_weights_keys", None):
            module.all_tied_weights_keys = {t: s for t, s in module.all_tied_weights_keys.items() if keep(t, s)}


def private_copy(embedding: nn.Module) -> nn.Module:
    """A deep copy of an embedding module with its own full weight, also when ZeRO-3 holds the weight partitioned.

    The weight is left out of the deep copy (a partitioned parameter carries DeepSpeed bookkeeping that must not
    be duplicated) and set afterwards from its gathered values; DeepSpeed partitions the new one when it starts.
    """
    shared = embedding.weight
    with gathered([shared]):
        full = shared.detach().clone()
    embedding._parameters["weight"] = None
    try:
        private = copy.deepcopy(embedding)
    finally:
        embedding._parameters["weight"] = shared
    private.weight = nn.Parameter(full, requires_grad=shared.requires_grad)
    return private


def default_lora_targets(encoder: nn.Module) -> list[str]:
    """The encoder's attention query and value projections, under the names its family uses."""
    linear_names = {name.rsplit(".", 1)[-1] for name, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    for targets in _DEFAULT_LORA_TARGETS:
        if set(targets) <= linear_names:
            return targets
    raise ValueError(
        f"Could not pick LoRA target modules for {type(encoder).__name__}: it has no {_DEFAULT_LORA_TARGETS} "
        f"linear layers. Set `lora_target_modules` to some of {sorted(linear_names)}."
    )
