"""`get_frozen_model` and `AutoFrozenModel`: one entry point for every registered adapter type."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .config import CONFIG_NAME, FrozenAdapterConfig, read_json_object
from .errors import ArtifactError
from .registry import get_adapter
from .utils.hub import resolve_file


def get_frozen_model(model: Any, config: FrozenAdapterConfig, **kwargs: Any) -> nn.Module:
    """Apply an hf-frozen adapter to `model`, as `peft.get_peft_model` does.

    Args:
        model: the base model (an encoder-decoder `PreTrainedModel` for the frozen decoder; a masked, causal or
            seq2seq LM, or a callable, for DecT).
        config: a `FrozenDecoderConfig` or a `DecTConfig`.
        kwargs: adapter-specific extras (DecT takes `tokenizer=`).

    Returns:
        The wrapped model (`FrozenDecoderModel` or `DecTModel`).

    Example:
        ```python
        model = get_frozen_model(AutoModelForSeq2SeqLM.from_pretrained("t5-small"), FrozenDecoderConfig())
        model.print_trainable_parameters()
        ```
    """
    if not isinstance(config, FrozenAdapterConfig):
        raise TypeError(
            "`config` must be an hf-frozen adapter config (FrozenDecoderConfig, DecTConfig), "
            f"got {type(config).__name__}."
        )
    model_class = get_adapter(config.ADAPTER_TYPE).model_class
    if not hasattr(model_class, "from_base_model"):
        raise TypeError(
            f"{type(config).__name__} describes a saved {model_class.__name__}, not an adapter to apply: build one "
            f"with `{model_class.__name__}`, or load a saved one with `AutoFrozenModel.from_pretrained`."
        )
    return model_class.from_base_model(model, config, **kwargs)


class AutoFrozenModel:
    """Loads any hf-frozen artifact, dispatching on the adapter type recorded in its config."""

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        base_model: Any = None,
        revision: str | None = None,
        token: str | bool | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        """Load an artifact from a local folder or a Hub repo.

        Args:
            path_or_repo_id (`str`): folder or Hub repo id holding `hf_frozen_config.json`.
            base_model (*optional*): the frozen base model or its id; defaults to the one the artifact records.
            revision, token: for the artifact on the Hub.
            kwargs: passed to the adapter's `from_pretrained`.
        """
        path = resolve_file(path_or_repo_id, CONFIG_NAME, revision=revision, token=token)
        adapter_type = read_json_object(path).get("adapter_type")
        if not isinstance(adapter_type, str):
            raise ArtifactError(
                f"{path} has no `adapter_type` string (got {adapter_type!r:.40}): it was not written by hf-frozen."
            )
        try:
            adapter = get_adapter(adapter_type)
        except ValueError as err:
            raise ArtifactError(f"{path}: {err}") from None
        load = adapter.load or adapter.model_class.from_pretrained
        return load(path_or_repo_id, base_model=base_model, revision=revision, token=token, **kwargs)
