"""The registry of adapter types: adapter type name -> (config class, model class).

PEFT's own registry only accepts names already in its `PeftType` enum, so hf-frozen keeps this small one.
Each adapter package registers itself on import; `get_frozen_model` and `AutoFrozenModel` dispatch here.
"""

from __future__ import annotations

from typing import NamedTuple


class AdapterType(NamedTuple):
    config_class: type
    model_class: type


_ADAPTERS: dict[str, AdapterType] = {}


def register_adapter(config_class: type, model_class: type) -> None:
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
    if registered is not None and registered != (config_class, model_class):
        raise ValueError(f"Adapter type {name!r} is already registered to {registered.config_class.__name__}.")
    _ADAPTERS[name] = AdapterType(config_class, model_class)


def get_adapter(name: str) -> AdapterType:
    """The config and model classes of a registered adapter type."""
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown adapter type {name!r}. Registered types: {sorted(_ADAPTERS)}. An artifact written by a newer "
            "hf-frozen may need an upgrade: `pip install -U hf-frozen`."
        ) from None


def registered_adapters() -> list[str]:
    return sorted(_ADAPTERS)
