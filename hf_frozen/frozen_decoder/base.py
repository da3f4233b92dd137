"""What both frozen-decoder models share: the frozen decoder, its fingerprint and the guard around it.

`FrozenDecoderModel` (one encoder, trained in place) and `MultiEncoderModel` (many task encoders) both hold a
transformers encoder-decoder as `base_model` whose decoder side must never change. This base class gives them
one definition of that side, of its fingerprint and check, of the trainable-parameter count, and of a
`state_dict` in which each tied tensor appears once.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..utils.fingerprint import fingerprint_tensors, numeric_config
from ..utils.hub import HubMixin
from ..utils.zero3 import any_partitioned, full_numel
from .freezing import check_encoder_decoder
from .record import FrozenDecoderRecord
from .sides import module_prefix, split_sides

BASE_PREFIX = "base_model.model."  # where the transformers model's tensors sit in the wrapper's state_dict


class BaseModelLayout(nn.Module):
    """Holds the transformers model as `.model`: PEFT's layout (`peft_model.base_model.model`).

    Code written for PEFT models, transformers' `Trainer` among it, looks for the transformers model there, and
    the wrapper's tensor names (`base_model.model.encoder...`) are then PEFT's own.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


class FrozenDecoderBase(HubMixin, nn.Module):
    """An encoder-decoder `base_model` whose decoder side is fingerprinted when wrapped and checked afterwards."""

    # The `hf_frozen.pipeline` tasks a frozen-decoder model runs.
    PIPELINE_TASKS = ("text2text-generation", "summarization", "translation")

    def __init__(self, base_model: PreTrainedModel) -> None:
        # `nn.Module.__init__` by name: a subclass may also derive from `peft.PeftModel`, whose own __init__
        # would inject adapters.
        nn.Module.__init__(self)
        check_encoder_decoder(base_model)
        self.base_model = BaseModelLayout(base_model)
        # A resize changes the decoder's embeddings and LM head (and re-ties a private encoder embedding): refused
        # now, naming the fix, rather than found at save time. `merge_and_unload` gives the method back.
        base_model.resize_token_embeddings = _refuse_resize
        self.encoder_prefix = module_prefix(base_model, base_model.get_encoder())
        self._expected_decoder_fingerprint = self.decoder_fingerprint()
        # Tied tensors would be saved once per name, which safetensors refuses (Trainer checkpoints of a
        # non-PreTrainedModel are plain `save_file(model.state_dict())`): keep each once, restore on load.
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_restore_aliases)

    def get_base_model(self) -> PreTrainedModel:
        """The transformers model (with the adapter applied in place)."""
        return self.base_model.model

    @property
    def device(self) -> torch.device:
        return self.get_base_model().device

    def base_name(self) -> str:
        """The base model's Hub id or path, else its class name: how error messages name it."""
        base = self.get_base_model()
        return getattr(base.config, "_name_or_path", "") or type(base).__name__

    def decoder_tensors(self) -> dict[str, torch.Tensor]:
        """Every decoder-side tensor (decoder, its embeddings, the LM head, tied tensors), by base-model name."""
        return split_sides(self.get_base_model(), self.encoder_prefix).decoder

    @property
    def expected_decoder_fingerprint(self) -> str:
        """The fingerprint of the decoder side when the model was wrapped: what it must stay."""
        return self._expected_decoder_fingerprint

    def decoder_fingerprint(self) -> str:
        """The fingerprint of the decoder side as it is now."""
        return fingerprint_tensors(self.decoder_tensors())

    def verify_frozen(self) -> None:
        """Raise if any decoder-side tensor differs from when the model was wrapped."""
        current = self.decoder_fingerprint()
        if current != self._expected_decoder_fingerprint:
            raise RuntimeError(
                f"The decoder changed since the frozen-decoder adapter was applied (fingerprint "
                f"{self._expected_decoder_fingerprint[:12]}... is now {current[:12]}...). Something trained or edited "
                "decoder-side weights (an optimizer built before `get_frozen_model`, `tie_weights()` after a "
                "resize, manual edits): the encoder would no longer match the shared decoder."
            )

    def record_for(self, encoder: nn.Module, stored: set[str]) -> FrozenDecoderRecord:
        """The record of a task encoder: what it needs of the base model (the decoder's fingerprint, that of the
        frozen encoder tensors it relies on, the decoder's config). `stored`: the names, inside the encoder, of the
        tensors its artifact holds."""
        return FrozenDecoderRecord(
            decoder_fingerprint=self.expected_decoder_fingerprint,
            frozen_encoder_fingerprint=frozen_encoder_fingerprint(encoder, self.encoder_prefix,
                                                                  self.decoder_tensors(), stored),
            base_config=numeric_config(self.get_base_model().config),
        )  # fmt: skip

    def takes_part_in_save(self, is_main_process: bool) -> bool:
        """Whether this process joins a save: the main one writes; under ZeRO-3 all of them gather the weights."""
        return is_main_process or any_partitioned(self.parameters())

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters), each tied or shared tensor counted once."""
        params = {id(p): p for p in self.parameters()}.values()
        return sum(full_numel(p) for p in params if p.requires_grad), sum(full_numel(p) for p in params)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def tensor_aliases(self) -> dict[str, str]:
        """Every extra name under which a tensor of `state_dict()` is reachable -> the one name it is saved under.

        Tied base-model tensors keep the canonical name `split_sides` gives them; a tensor a task encoder shares
        with the base model is saved under its base-model name.
        """
        sides = split_sides(self.get_base_model(), self.encoder_prefix)
        aliases = {BASE_PREFIX + a: BASE_PREFIX + c for a, c in sides.aliases.items()}
        canonical = {id(t): BASE_PREFIX + n for n, t in chain(sides.encoder.items(), sides.decoder.items())}
        named = chain(self.named_parameters(remove_duplicate=False), self.named_buffers(remove_duplicate=False))
        for name, tensor in named:
            if not name.startswith(BASE_PREFIX) and id(tensor) in canonical:
                aliases[name] = canonical[id(tensor)]
        return aliases


def frozen_encoder_fingerprint(
    encoder: nn.Module, encoder_prefix: str, decoder_tensors: dict[str, torch.Tensor], stored: set[str]
) -> str | None:
    """The fingerprint of `encoder`'s tensors that are neither decoder side nor `stored` in the artifact.

    Each tensor is named by its first name inside the encoder, prefixed with `encoder_prefix`: for the encoder
    inside the base model and for a task encoder built from it alike. `stored` holds names inside the encoder.
    """
    decoder_ids = {id(t) for t in decoder_tensors.values()}
    groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
    named = chain(encoder.named_parameters(remove_duplicate=False), encoder.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        groups.setdefault(id(tensor), (tensor, []))[1].append(name)
    frozen = {
        encoder_prefix + sorted(names)[0]: tensor
        for tensor, names in groups.values()
        if id(tensor) not in decoder_ids and not stored.intersection(names)
    }
    return fingerprint_tensors(frozen) if frozen else None


def _refuse_resize(*args: Any, **kwargs: Any) -> None:
    raise ValueError(
        "`resize_token_embeddings` is refused once a frozen-decoder adapter is applied: it would change the decoder's "
        "embeddings and LM head, which must stay those of the base model. Resize the base model first (e.g. after "
        "adding tokens to the tokenizer), then call `get_frozen_model`."
    )


def release_resize(base_model: PreTrainedModel) -> None:
    """Give a base model leaving hf-frozen its own `resize_token_embeddings` back."""
    vars(base_model).pop("resize_token_embeddings", None)


def _drop_aliases(module: FrozenDecoderBase, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    for alias in module.tensor_aliases():
        state_dict.pop(prefix + alias, None)


def _restore_aliases(module: FrozenDecoderBase, state_dict: dict, prefix: str, *args: Any) -> None:
    for alias, canonical in module.tensor_aliases().items():
        if prefix + alias not in state_dict and prefix + canonical in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + canonical]
