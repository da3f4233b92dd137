"""Tiny backbones of every kind DecT queries, a word-level tokenizer, and a toy sentiment dataset."""

from __future__ import annotations

import random

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_frozen import DecTConfig, get_frozen_model

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE, NEGATIVE = ["great", "good", "superb"], ["terrible", "bad", "awful"]
NEUTRAL = ["the", "film", "movie", "plot", "acting", "was", "is", "it", "a", "and", "story", "cast", "music", "very"]
VOCABULARY = POSITIVE + NEGATIVE + NEUTRAL + ["review", "sentiment", ":", "."]


def tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(SPECIALS + VOCABULARY)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", eos_token="[SEP]",
    )  # fmt: skip


V = len(SPECIALS) + len(VOCABULARY)
_BERT = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64, pad_token_id=0)  # fmt: skip

_GPT2 = dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, bos_token_id=2,
             eos_token_id=3)  # fmt: skip
_T5 = dict(vocab_size=V, d_model=32, d_ff=37, num_layers=2, num_heads=4, d_kv=8, decoder_start_token_id=0,
           pad_token_id=0, eos_token_id=3)  # fmt: skip

BACKBONES = {
    "masked_lm": lambda: BertForMaskedLM(BertConfig(**_BERT)),
    "causal_lm": lambda: GPT2LMHeadModel(GPT2Config(**_GPT2)),
    "seq2seq_lm": lambda: T5ForConditionalGeneration(T5Config(**_T5)),
    "encoder": lambda: BertModel(BertConfig(**_BERT)),
}


def backbone(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return BACKBONES[kind]().eval()


def sentiment(n: int, seed: int = 0) -> Dataset:
    """Short reviews whose label is the polarity of the one opinion word they contain."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.sample(NEUTRAL, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return Dataset.from_dict({"text": texts, "label": labels})


class ClusterAPI:
    """A model-as-a-service stand-in: hidden states that separate the classes, scores that are noise.

    Counts its calls and remembers the prompts of each call.
    """

    def __init__(self, dim: int = 16, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.centers = self.rng.normal(size=(2, dim)) * 3
        self.calls: list[list[str]] = []

    def __call__(self, prompts, label_words):
        self.calls.append(list(prompts))
        labels = np.array([1 if any(w in p.split() for w in POSITIVE) else 0 for p in prompts])
        hidden = self.centers[labels] + self.rng.normal(size=(len(prompts), self.centers.shape[1]))
        scores = self.rng.normal(size=(len(prompts), len(label_words)))
        return hidden, scores


TEMPLATE = "review : {text} . sentiment : {answer} ."
WORDS = ["terrible|bad", "great|good"]


def make(kind, **overrides):
    """A DecT model on a tiny backbone of `kind` (or the `ClusterAPI` callable), progress bars off."""
    config = DecTConfig(**{"template": TEMPLATE, "label_words": WORDS, "labels": ["neg", "pos"], "batch_size": 4,
                           **overrides})  # fmt: skip
    if kind == "callable":
        dect = get_frozen_model(ClusterAPI(), config, backbone_name="cluster-api-v1")
    else:
        dect = get_frozen_model(backbone(kind), config, tokenizer=tokenizer())
    dect.show_progress = False
    return dect
