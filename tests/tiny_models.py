"""Tiny encoder-decoder models built from configs, one per family: no download, milliseconds to build."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    LongT5Config,
    LongT5ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    MT5Config,
    MT5ForConditionalGeneration,
    PegasusConfig,
    PegasusForConditionalGeneration,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
    UMT5Config,
    UMT5ForConditionalGeneration,
)

VOCAB = 99
# Dropout off, so that a run resumed from a checkpoint can be compared with an uninterrupted one.
_T5 = dict(
    vocab_size=VOCAB, d_model=32, d_ff=37, num_layers=2, num_heads=4, d_kv=8,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
)  # fmt: skip
_BART = dict(
    vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
    pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
)  # fmt: skip

FAMILIES = {
    "t5": lambda: T5ForConditionalGeneration(T5Config(**_T5)),
    "mt5": lambda: MT5ForConditionalGeneration(MT5Config(**_T5)),
    "umt5": lambda: UMT5ForConditionalGeneration(UMT5Config(**_T5)),
    "longt5": lambda: LongT5ForConditionalGeneration(LongT5Config(**_T5, local_radius=4)),
    "bart": lambda: BartForConditionalGeneration(BartConfig(**_BART)),
    "mbart": lambda: MBartForConditionalGeneration(MBartConfig(**_BART)),
    "marian": lambda: MarianMTModel(MarianConfig(**{**_BART, "decoder_start_token_id": 1})),
    "pegasus": lambda: PegasusForConditionalGeneration(PegasusConfig(**{**_BART, "decoder_start_token_id": 1})),
}


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """The same random weights for the same (family, seed), in any process."""
    torch.manual_seed(seed)
    return FAMILIES[family]().eval()


def copy_task_dataset(n: int = 32, length: int = 8, seed: int = 0) -> Dataset:
    """A toy task (reverse the input tokens), as fixed-length token ids that need no tokenizer."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": ids.flip(1).tolist()}
    )


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}


def tiny_tokenizer():
    """A word-level tokenizer over the tiny vocabulary: `<pad>`=0, `</s>`=1, `<unk>`=2, then `w3` ... `w98`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def save_tiny_t5_with_tokenizer(folder) -> None:
    tiny_model("t5").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
