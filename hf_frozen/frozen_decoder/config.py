"""`FrozenDecoderConfig`: what to train on the encoder side of an encoder-decoder model."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..config import FrozenAdapterConfig, check_choice, check_positive
from .record import FrozenDecoderRecord

ENCODER_TRAINING_MODES = ("full", "lora")
DECODER_DTYPE_NAMES = ("bfloat16", "float16")  # the keys of `precision.DECODER_DTYPES`


@dataclasses.dataclass
class FrozenDecoderConfig(FrozenAdapterConfig):
    """Config of the frozen-decoder adapter: the decoder, its embeddings and the LM head never change.

    Args:
        base_model_name_or_path (`str`, *optional*, defaults to `None`):
            Hub id or local path of the frozen base model (PEFT's name). Filled in from the model when the
            adapter is applied.
        revision (`str`, *optional*, defaults to `None`):
            Revision (branch, tag or commit) of the base model on the Hub.
        encoder_training (`Literal["full", "lora"]`, *optional*, defaults to `"full"`):
            Train every encoder weight (`"full"`), or LoRA adapters injected into the encoder only (`"lora"`).
        train_encoder_embeddings (`bool`, *optional*, defaults to `False`):
            Also train the encoder's input embeddings. The encoder then gets its own copy of the embedding
            matrix, so the embedding shared with the decoder and the LM head stays untouched.
        lora_r (`int`, *optional*, defaults to `8`):
            LoRA rank (with `encoder_training="lora"`).
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling numerator (with `encoder_training="lora"`).
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout on the LoRA input (with `encoder_training="lora"`).
        lora_target_modules (`list[str]`, *optional*, defaults to `None`):
            Names of the encoder's linear layers to adapt; `None` picks the attention query and value
            projections (`q`/`v` in T5-style models, `q_proj`/`v_proj` in BART-style ones).
        decoder_dtype (`Literal["bfloat16", "float16"]`, *optional*, defaults to `None`):
            Hold the frozen decoder side (decoder, its embeddings, the LM head and any tied embedding) in this
            dtype, while the encoder and its optimizer keep theirs: the decoder never gets an optimizer step, so it
            needs no fp32 copy. `None` keeps the base model's dtype. The artifact records it, and loading casts
            the base model's decoder the same way (on an fp32 or a bf16 base alike).
    """

    ADAPTER_TYPE = "frozen_decoder"
    # `HfArgumentParser` lists these fields under this heading in `--help`.
    _argument_group_name = "Frozen decoder (FrozenDecoderConfig)"
    RECORD_CLASS = FrozenDecoderRecord

    base_model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Hub id or local path of the frozen base model (filled in from the model if unset)."},
    )
    revision: str | None = dataclasses.field(
        default=None, metadata={"help": "Revision (branch, tag or commit) of the base model on the Hub."}
    )

    encoder_training: Literal["full", "lora"] = dataclasses.field(
        default="full",
        metadata={"help": "Train the whole encoder ('full') or LoRA adapters on the encoder only ('lora')."},
    )
    train_encoder_embeddings: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Also train the encoder's input embeddings, as a private copy: the decoder's embeddings and "
            "LM head stay untouched."
        },
    )
    lora_r: int = dataclasses.field(default=8, metadata={"help": "LoRA rank (with encoder_training='lora')."})
    lora_alpha: int = dataclasses.field(
        default=16, metadata={"help": "LoRA scaling numerator (with encoder_training='lora')."}
    )
    lora_dropout: float = dataclasses.field(
        default=0.05, metadata={"help": "Dropout on the LoRA input (with encoder_training='lora')."}
    )
    lora_target_modules: list[str] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Encoder linear layers to adapt with LoRA; unset picks the attention query and value "
            "projections (q/v for T5-style models, q_proj/v_proj for BART-style ones)."
        },
    )

    decoder_dtype: Literal["bfloat16", "float16"] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Hold the frozen decoder side in this dtype (bfloat16 or float16) while the encoder and its "
            "optimizer stay in theirs; unset keeps the base model's dtype."
        },
    )

    def __post_init__(self) -> None:
        check_choice(self, "encoder_training", ENCODER_TRAINING_MODES)
        if str(self.decoder_dtype).startswith("torch."):  # a torch.dtype given for its name
            self.decoder_dtype = str(self.decoder_dtype).removeprefix("torch.")
        if self.decoder_dtype is not None:
            check_choice(self, "decoder_dtype", DECODER_DTYPE_NAMES)
        if not isinstance(self.train_encoder_embeddings, bool):
            raise ValueError(
                f"`train_encoder_embeddings` must be True or False, got {self.train_encoder_embeddings!r}."
            )
        check_positive(self, "lora_r", integer=True)
        check_positive(self, "lora_alpha")
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout!r}.")
        if self.lora_target_modules is not None:
            if isinstance(self.lora_target_modules, str):
                self.lora_target_modules = [self.lora_target_modules]
            if not self.lora_target_modules or not all(isinstance(m, str) and m for m in self.lora_target_modules):
                raise ValueError(
                    "`lora_target_modules` must be a non-empty list of module names, "
                    f"got {self.lora_target_modules!r}."
                )
