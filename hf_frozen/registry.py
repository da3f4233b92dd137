"""The registry of adapter types: adapter type name -> (config class, model class).

PEFT's own registry only accepts names already in its `PeftType` enum, so hf-frozen keeps this small one.
Each adapter's model module registers it on import; the built-in ones are imported here on first lookup (so
`import hf_frozen` stays light). `get_frozen_model` and `AutoFrozenModel` dispatch here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

# Built-in adapter types and the modules that register them.
BUILTIN_ADAPTERS = {
    "frozen_decoder": "hf_frozen.frozen_decoder.model",
    "dect": "hf_frozen.dect.model",
    "multi_encoder": "hf_frozen.frozen_decoder.multi_encoder",
}


class AdapterType(NamedTuple):
    config_class: type
    model_class: type
    # `load(path_or_repo_id, base_model=None, revision=None, token=None, **kwargs)`, what `AutoFrozenModel` calls;
    # unset: `model_class.from_pretrained`.
    load: Callable[..., Any] | None = None


_ADAPTERS: dict[str, AdapterType] = {}


def register_adapter(config_class: type, model_class: type, load: Callable[..., Any] | None = None) -> None:
    """Register an adapter type under `config_class.ADAPTER_TYPE`.

    Example:
        ```python
        register_adapter(MyConfig, MyModel)  # MyConfig.ADAPTER_TYPE == "my_adapter"
        ```
    """
    name = config_class.ADAPTER_TYPE
    if not name:
        raise ValueError(f"{config_class.__name__} must set the class attribute `ADAPTER_TYPE`.")
    registered = _ADAPTERS.get(name)
    if registered is not None and registered != (config_class, model_class, load):
        raise ValueError(f"Adapter type {name!r} is already registered to {registered.config_class.__name__}.")
    _ADAPTERS[name] = AdapterType(config_class, model_class, load)


def get_adapter(name: str) -> AdapterType:
    """The config and model classes of a registered adapter type."""
    if name not in _ADAPTERS and name in BUILTIN_ADAPTERS:
        importlib.import_module(BUILTIN_ADAPTERS[name])
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown adapter type {name!r}. Registered types: {sorted(_ADAPTERS)}. An artifact written by a newer "
            "hf-frozen may need an upgrade: `pip install -U hf-frozen`."
        ) from None


def registered_adapters() -> list[str]:
    for module in BUILTIN_ADAPTERS.values():
        importlib.import_module(module)
    return sorted(_ADAPTERS)


def adapter_of(model: Any) -> AdapterType | None:
    """The registered adapter type whose model class `model` is an instance of (the most derived one), or None."""
    registered_adapters()
    matches = [adapter for adapter in _ADAPTERS.values() if isinstance(model, adapter.model_class)]
    return max(matches, key=lambda adapter: len(adapter.model_class.__mro__), default=None)
