"""The backbones DecT can query, one module each: a local transformers model, a model behind an OpenAI-compatible
endpoint, or any API the user wraps in a Python function. `build_backbone` picks one for the model it is given."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from ..config import DecTConfig
from .base import Backbone, check_answer_comes_last
from .endpoint import Endpoint, EndpointBackbone
from .function import CallableBackbone
from .http_client import EndpointError
from .transformers_model import AUTO_CLASSES, HFBackbone, kind_from_config, label_token_ids, load_backbone

__all__ = [
    "AUTO_CLASSES",
    "Backbone",
    "CallableBackbone",
    "Endpoint",
    "EndpointBackbone",
    "EndpointError",
    "HFBackbone",
    "build_backbone",
    "check_answer_comes_last",
    "detect_kind",
    "kind_from_config",
    "label_token_ids",
    "load_backbone",
]


def detect_kind(model: Any) -> str:
    """`"endpoint"`, `"callable"`, or the kind of transformers model; a clear error for anything else."""
    if isinstance(model, Endpoint):
        return "endpoint"
    if isinstance(model, PreTrainedModel):
        from .transformers_model import transformers_kind

        return transformers_kind(model)
    if callable(model):
        return "callable"
    raise TypeError(
        f"DecT needs a transformers model, an `Endpoint` or a callable, got {type(model).__name__}. For a model "
        "behind an OpenAI-compatible API, pass `Endpoint(base_url, model)`; for any other API, a function "
        "`fn(prompts, label_words) -> (hidden_states, label_word_scores)`."
    )


def build_backbone(
    model: Any,
    config: DecTConfig,
    tokenizer: Any = None,
    backbone_name: str | None = None,
    answer_placeholder: str | None = None,
    want_hidden: bool = True,
) -> Backbone:
    """The backbone that queries `model` with `config`'s prompt (`want_hidden=False`: a feature model gives the
    features, so an endpoint is not asked for embeddings)."""
    kind = detect_kind(model)
    if kind == "endpoint":
        return EndpointBackbone(model, config, want_hidden)
    if kind == "callable":
        return CallableBackbone(model, config, backbone_name or "", answer_placeholder)
    return HFBackbone(model, tokenizer, config)
