"""Features from a second model: the head reads a pooled embedding of the text from another model than the one
the prompt queries.

DecT's scorer (the backbone: an LM, local or behind an API) gives the prompt's label-word scores; its hidden state
at the answer position is only one choice of features. A sentence encoder's embedding of the text often separates
topics better (docs/dect.md measures both), and in the model-as-a-service setting the natural pair is a hosted LLM's
log-probabilities beside a hosted embedding model's vectors. `get_frozen_model(lm, config, tokenizer=tok,
feature_model=emb, feature_tokenizer=emb_tok)` takes any of:

- a transformers model (encoder, decoder or seq2seq, whose encoder is used), pooled as `DecTConfig.feature_pooling`
  says: `"auto"` reads a sentence-transformers folder's `modules.json` and `1_Pooling/config.json` (and its
  `Normalize` module), without the sentence-transformers package;
- an `Endpoint` (its embeddings route);
- a callable `fn(texts) -> (N, d) array`, with `feature_name=` naming the model and version for the cache key.

The head reads the feature model's vectors next to the backbone's own states (`combined_features`), or the vectors
alone with `DecTConfig(combine_features=False)` (the default for an `Endpoint` backbone, whose states would cost an
embeddings request each). The feature model sees the text alone (a text pair joined by a newline), not the prompt.
It is queried once per example and cached under its own fingerprint, beside the scorer's entries and never mixed
with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from ..config import RECORD_NAME
from ..errors import ArtifactError
from ..utils.fingerprint import fingerprint_json
from ..utils.hub import loading_recorded_base
from .backbones.endpoint import Endpoint, embedding, served_model_entry
from .backbones.transformers_model import load_backbone, model_fingerprint, settings_fingerprint
from .config import DecTConfig
from .record import DecTRecord

POOLINGS = ("mean", "cls", "max", "last")
# sentence-transformers' pooling flags (`1_Pooling/config.json`) and its newer one-string form -> ours.
SENTENCE_TRANSFORMERS_POOLING = {
    "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last", "mean": "mean", "cls": "cls", "max": "max", "lasttoken": "last",
}  # fmt: skip


def sentence_transformers_pooling(folder: str | os.PathLike) -> tuple[str, bool] | None:
    """(pooling, normalize) that a sentence-transformers folder declares, or None for another folder.

    Modes hf-frozen does not implement (`mean_sqrt_len_tokens`, `weightedmean_tokens`, several at once) are refused
    by name rather than replaced by another pooling.
    """
    modules_file = os.path.join(folder, "modules.json")
    if not os.path.isfile(modules_file):
        return None
    with open(modules_file, encoding="utf-8") as f:
        modules = json.load(f)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{modules_file} is not a sentence-transformers module list (a JSON list of objects).")
    types = [str(m.get("type", "")) for m in modules]
    pooling_modules = [m for m, t in zip(modules, types, strict=True) if t.endswith(".Pooling")]
    normalize = any(t.endswith(".Normalize") for t in types)
    if not pooling_modules:
        return None
    path = str(pooling_modules[0].get("path", ""))
    # A lexical check (a Hub cache snapshot's files are links into its blobs folder, which is fine): the path
    # must name a file below the folder, never `..` or an absolute path.
    config_file = os.path.normpath(os.path.join(folder, path, "config.json"))
    if not config_file.startswith(os.path.normpath(folder) + os.sep):
        raise ValueError(f"{modules_file} names a pooling folder {path!r} outside {folder}: refused.")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    if isinstance(config.get("pooling_mode"), str):
        chosen = [config["pooling_mode"]]
    else:
        chosen = [k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v]
    known = [SENTENCE_TRANSFORMERS_POOLING.get(m, SENTENCE_TRANSFORMERS_POOLING.get(f"pooling_mode_{m}"))
             for m in chosen]  # fmt: skip
    if len(chosen) != 1 or None in known:
        raise ValueError(
            f"{config_file} declares the pooling mode(s) {chosen}; hf-frozen pools by exactly one of "
            f"{list(POOLINGS)}. "
            "Set `feature_pooling=` to one of them to choose it yourself."
        )
    return known[0], normalize


def sentence_transformers_files(repo_id: str) -> str | None:
    """The local folder (a Hub cache snapshot) holding a Hub model's `modules.json` and its pooling config, fetched
    as transformers fetches the model's own files; None when the repo has no `modules.json` or is out of reach."""
    if not repo_id:
        return None
    from transformers.utils import cached_file

    options = dict(_raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    try:
        modules_file = cached_file(repo_id, "modules.json", **options)
        if modules_file is None:
            return None
        with open(modules_file, encoding="utf-8") as f:
            modules = json.load(f)
        for module in modules if isinstance(modules, list) else []:
            if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
                cached_file(repo_id, f"{module.get('path', '')}/config.json".lstrip("/"), **options)
    except (OSError, ValueError):  # not a Hub id (a name of the user's own), or no such repo
        return None
    return os.path.dirname(modules_file)


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per row of `states` (B, T, d) over its real tokens (`mask` (B, T), right-padded)."""
    mask = mask.unsqueeze(-1).to(states.dtype)
    if pooling == "mean":
        return (states * mask).sum(1) / mask.sum(1).clamp_min(1)
    if pooling == "cls":
        return states[:, 0]
    if pooling == "max":
        return states.masked_fill(mask == 0, torch.finfo(states.dtype).min).amax(1)
    last = mask.squeeze(-1).sum(1).long() - 1
    return states[torch.arange(len(states)), last.clamp_min(0)]


class TransformersFeatures:
    """A transformers model's pooled last hidden states of the text."""

    kind = "transformers"

    def __init__(self, model: PreTrainedModel, tokenizer: Any, config: DecTConfig) -> None:
        if tokenizer is None:
            raise ValueError(
                f"`feature_model` is a transformers model ({type(model).__name__}) but no `feature_tokenizer` was "
                "given: pass `feature_tokenizer=AutoTokenizer.from_pretrained(...)` of the same model."
            )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.body = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model.base_model
        self.device = next(model.parameters()).device
        self.pooling, self.normalize = self._pooling(config.feature_pooling)
        positions = [getattr(model.config, n, None) for n in ("max_position_embeddings", "n_positions")]
        self.max_length = min([config.max_length, *(p for p in positions if isinstance(p, int) and p > 0)])
        self.name_or_path = getattr(model.config, "_name_or_path", None) or None
        # Of the body only, so that the same weights loaded with or without an LM head (`AutoModel` when a saved
        # head reloads its feature model) are the same feature model.
        self.fingerprint = model_fingerprint(self.body, tokenizer)
        self.settings_fingerprint = fingerprint_json(
            [settings_fingerprint(self.body, tokenizer), self.pooling, self.normalize, self.max_length]
        )

    def _pooling(self, setting: str) -> tuple[str, bool]:
        if setting != "auto":
            return setting, False
        name = getattr(self.model.config, "_name_or_path", "")
        folder = name if name and os.path.isdir(name) else sentence_transformers_files(name)
        declared = sentence_transformers_pooling(folder) if folder else None
        if declared is not None:
            return declared
        model_type = self.model.config.model_type
        decoder = (
            model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        )
        return ("last" if decoder else "mean"), False

    @torch.inference_mode()
    def query(self, inputs: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, None]:
        rows = []
        for text, pair in inputs:
            encoded = self.tokenizer(text, pair, truncation=True, max_length=self.max_length)["input_ids"]
            rows.append(encoded)
        width = max(len(r) for r in rows)
        # Padded by hand (right side, id 0 under a zero mask): decoder tokenizers often have no pad token.
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        states = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = pool(states.float(), mask, self.pooling)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy(), None

    def describe(self) -> dict[str, Any]:
        return {"name_or_path": self.name_or_path, "pooling": self.pooling, "normalize": self.normalize}


class EndpointFeatures:
    """The embeddings route of an OpenAI-compatible API (a hosted embedding model beside a hosted LLM)."""

    kind = "endpoint"

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.client = endpoint.client()
        entry = served_model_entry(self.client, endpoint)
        self.name_or_path = endpoint.model
        self.fingerprint = hashlib.sha256(
            fingerprint_json(["endpoint-features", endpoint.base_url, endpoint.model, entry]).encode()
        ).hexdigest()
        self.settings_fingerprint = ""

    def query(self, inputs: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, None]:
        texts = [text if pair is None else f"{text}\n{pair}" for text, pair in inputs]
        # A server that answers one vector per token gives their mean: the text's embedding.
        return np.stack([embedding(self.client, self.endpoint, t, per_token="mean") for t in texts]), None

    def describe(self) -> dict[str, Any]:
        return {"name_or_path": self.endpoint.model, "endpoint": self.endpoint.saved_settings()}


class CallableFeatures:
    """Any embedding API wrapped in a function `fn(texts) -> (N, d) array`."""

    kind = "callable"

    def __init__(self, fn: Callable[[list[str]], Any], name: str | None) -> None:
        if not name:
            raise ValueError("A callable `feature_model` needs `feature_name=` (model and version) to key its cache.")
        self.fn = fn
        self.name_or_path = name
        self.fingerprint = hashlib.sha256(f"callable-features|{name}".encode()).hexdigest()
        self.settings_fingerprint = ""

    def query(self, inputs: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, None]:
        texts = [text if pair is None else f"{text}\n{pair}" for text, pair in inputs]
        hidden = np.asarray(self.fn(texts), dtype=np.float32)
        if hidden.ndim != 2 or hidden.shape[0] != len(texts):
            raise ValueError(
                f"The feature callable returned an array of shape {hidden.shape} for {len(texts)} texts, expected "
                f"({len(texts)}, d)."
            )
        return hidden, None

    def describe(self) -> dict[str, Any]:
        return {"name_or_path": self.name_or_path}


class FeatureModel:
    """A feature source behind one interface (what `CachedQueries` queries), refusing an answer whose width
    differs from the first one's (or from the width a saved head records).

    Args:
        source: a `TransformersFeatures`, `EndpointFeatures` or `CallableFeatures`.
        hidden_size (`int`, *optional*): the width a reloaded head expects.
    """

    def __init__(self, source: Any, hidden_size: int | None = None) -> None:
        self.source = source
        self.kind = f"features:{source.kind}"
        self.fingerprint = source.fingerprint
        self.settings_fingerprint = source.settings_fingerprint
        self.hidden_size = hidden_size

    def query(self, inputs: Sequence[tuple[str, str | None]]) -> tuple[np.ndarray, None]:
        hidden, _ = self.source.query(inputs)
        if self.hidden_size is None:
            self.hidden_size = hidden.shape[1]
        elif hidden.shape[1] != self.hidden_size:
            raise ValueError(
                f"The feature model {self.source.name_or_path!r} returned vectors of size {hidden.shape[1]} after "
                f"ones of size {self.hidden_size}: it changed between calls (another model or version behind the "
                "same name?). A head reads one fixed size: use one feature model throughout, and give a new model "
                "a new `feature_name`."
            )
        return hidden, None

    def record(self) -> dict[str, Any]:
        """What a saved head records of its feature model (`DecTRecord.feature_model`)."""
        return {"kind": self.source.kind, "fingerprint": self.fingerprint,
                "settings_fingerprint": self.settings_fingerprint, "hidden_size": self.hidden_size,
                **self.source.describe()}  # fmt: skip


def build_feature_model(
    feature_model: Any, feature_tokenizer: Any, config: DecTConfig, feature_name: str | None = None,
    hidden_size: int | None = None,
) -> FeatureModel:  # fmt: skip
    """The `FeatureModel` for what the user passed as `feature_model`."""
    if isinstance(feature_model, Endpoint):
        return FeatureModel(EndpointFeatures(feature_model), hidden_size)
    if isinstance(feature_model, PreTrainedModel):
        return FeatureModel(TransformersFeatures(feature_model, feature_tokenizer, config), hidden_size)
    if callable(feature_model):
        return FeatureModel(CallableFeatures(feature_model, feature_name), hidden_size)
    raise TypeError(
        f"`feature_model` must be a transformers model, an `Endpoint` or a callable `fn(texts) -> (N, d) array`, "
        f"got {type(feature_model).__name__}."
    )


def combined_features(states: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The backbone's hidden states next to the feature model's vectors, each row of each scaled to unit length.

    Each model sees the text its own way (SmolLM2 reads the prompt and its answer position, MiniLM the text
    alone), and a head on both beat a head on either at 16 shots: on SMS spam 95.4% against 92.5% (MiniLM's
    vectors) and 92.5% (SmolLM2's states), on election tweets 75.2% against 71.5% and 71.0%
    (bench/bench_dect_peers.py, docs/dect.md). Unit length keeps either from outweighing the other by its scale
    alone (SmolLM2's states are about 60 long, MiniLM's vectors 1) in the prototype head's distances and the
    linear head's global scaling. A backbone without states (an API with log-probabilities only) adds nothing.
    """
    parts = [torch.nn.functional.normalize(part.float(), dim=1) for part in (states, features) if part.shape[1]]
    return torch.cat(parts, dim=1)


def feature_query_settings(config: DecTConfig) -> dict[str, Any]:
    """The feature cache's part of every key: its role (so that it never shares a key with the scorer's entries)
    and what changes its answers besides the model and the text."""
    return {"role": "features", "pooling": config.feature_pooling, "max_length": config.max_length}


def feature_model_to_reload(
    record: DecTRecord, config: DecTConfig, source: Any, feature_model: Any, feature_tokenizer: Any,
    feature_endpoint: Endpoint | None, feature_name: str | None,
) -> tuple[Any, Any, str | None]:  # fmt: skip
    """(feature model, its tokenizer, its name) to reload a saved head with: the caller's, or for a transformers
    feature model the recorded one. A URL or callable named in the artifact is never used on its own."""
    recorded = record.feature_model
    if feature_endpoint is not None:
        if feature_model is not None:
            raise ValueError("Pass the feature model once: `feature_endpoint=` or `feature_model=`, not both.")
        feature_model = feature_endpoint
    if not recorded:
        if feature_model is not None:
            raise ValueError(f"The DecT head in {source} was fitted without a feature model: pass no `feature_model`.")
        return None, None, None
    kind, name = recorded.get("kind"), recorded.get("name_or_path")
    if kind == "endpoint" and not isinstance(feature_model, Endpoint):
        raise ValueError(
            f"The DecT head in {source} reads features from an embeddings API (recorded: {name!r}). Loading never "
            "contacts a URL named in an artifact: pass it yourself, `from_pretrained(path, feature_endpoint="
            "Endpoint(base_url, model))`."
        )
    if kind == "callable" and not callable(feature_model):
        raise ValueError(
            f"The DecT head in {source} reads features from a callable ({name!r}): pass it again as `feature_model=`."
        )
    if kind == "transformers" and (feature_model is None or isinstance(feature_model, str)):
        feature_id = feature_model or config.feature_model_name_or_path
        if not feature_id:
            raise ValueError(f"{source} records no feature model id: pass `feature_model=` and `feature_tokenizer=`.")
        with (
            contextlib.nullcontext()
            if feature_model
            else loading_recorded_base(feature_id, source, "feature model", "feature_model")
        ):
            feature_model, loaded_tokenizer = load_backbone(feature_id, "encoder")
        feature_tokenizer = feature_tokenizer or loaded_tokenizer
    if kind not in ("transformers", "endpoint", "callable"):
        raise ArtifactError(
            f"{source} records a feature model of unknown kind {kind!r}: its {RECORD_NAME} is damaged."
        )
    return feature_model, feature_tokenizer, feature_name or name


def check_recorded_features(features: FeatureModel, record: DecTRecord, source: Any) -> None:
    """Refuse a reloaded feature model other than the one a saved head records (weights, tokenizer or pooling), then
    hold it to the vector size the head was fitted on."""
    recorded = record.feature_model
    if (features.fingerprint, features.settings_fingerprint) != (
        recorded.get("fingerprint"),
        recorded.get("settings_fingerprint"),
    ):
        raise ValueError(
            f"The DecT head in {source} was fitted on features of another model than the feature model given "
            f"(recorded: {recorded.get('name_or_path')!r}, given: {features.source.name_or_path!r}; weights, "
            "tokenizer or pooling differ): the head would read vectors it never saw. Pass the recorded feature "
            "model unchanged."
        )
    features.hidden_size = recorded.get("hidden_size")  # the feature model's own size (the head's may be wider)
