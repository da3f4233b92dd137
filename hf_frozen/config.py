"""The base class of every hf-frozen adapter config: dict/JSON round trips, save/load, unknown-key policy.

Follows PEFT's `PeftConfig` conventions (dataclass fields with `help` metadata, sorted JSON on disk), with
its own file name so that hf-frozen artifacts are never mistaken for PEFT adapters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, ClassVar, TypeVar

from packaging.version import Version

from . import __version__
from .hub import resolve_file
from .io import atomic_write_text

logger = logging.getLogger(__name__)

CONFIG_NAME = "hf_frozen_config.json"

ConfigT = TypeVar("ConfigT", bound="FrozenAdapterConfig")


@dataclasses.dataclass
class FrozenAdapterConfig:
    """Fields and file handling shared by all hf-frozen adapter configs.

    Args:
        base_model_name_or_path (`str`, *optional*, defaults to `None`):
            Hub id or local path of the frozen base model. Filled in from the model when the adapter is applied.
        revision (`str`, *optional*, defaults to `None`):
            Revision (branch, tag or commit) of the base model on the Hub.
    """

    # Each subclass names its adapter type; it is written to disk so that `AutoFrozenModel` can dispatch.
    ADAPTER_TYPE: ClassVar[str] = ""

    base_model_name_or_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Hub id or local path of the frozen base model (filled in from the model if unset)."},
    )
    revision: str | None = dataclasses.field(
        default=None, metadata={"help": "Revision (branch, tag or commit) of the base model on the Hub."}
    )

    def to_dict(self) -> dict[str, Any]:
        """All fields, plus the adapter type and the hf-frozen version that wrote them."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["adapter_type"] = self.ADAPTER_TYPE
        data["hf_frozen_version"] = __version__
        return data

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `hf_frozen_config.json` (sorted keys) into `save_directory`, atomically."""
        os.makedirs(save_directory, exist_ok=True)
        atomic_write_text(os.path.join(save_directory, CONFIG_NAME), self.to_json_string())

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any], source: str = "the given dict") -> ConfigT:
        """Build a config from a dict as written by `to_dict`.

        Keys this version does not know are dropped with a warning when the file was written by a newer
        hf-frozen (forward compatibility, as in PEFT); in a file from this or an older version they are a typo
        and raise `ValueError`.
        """
        data = dict(data)
        adapter_type = data.pop("adapter_type", cls.ADAPTER_TYPE)
        if adapter_type != cls.ADAPTER_TYPE:
            raise ValueError(
                f"{source} describes a `{adapter_type}` adapter, not a `{cls.ADAPTER_TYPE}` one: load it with "
                "`hf_frozen.AutoFrozenModel.from_pretrained`, or with the config class of that adapter type."
            )
        written_by = data.pop("hf_frozen_version", None)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            if written_by is not None and Version(written_by) > Version(__version__):
                logger.warning(
                    "Ignoring keys %s in %s: it was written by hf-frozen %s and this is %s, which does not know them.",
                    unknown,
                    source,
                    written_by,
                    __version__,
                )
            else:
                raise ValueError(
                    f"Unknown field(s) {unknown} in {source} for `{cls.__name__}`. Known fields: {sorted(known)}. "
                    "Fix the spelling or remove the field."
                )
        init_kwargs = {k: v for k, v in data.items() if k in known and known[k].init}
        config = cls(**init_kwargs)
        # Fields set by hf-frozen itself (fingerprints, counts) are not constructor arguments.
        for name, value in data.items():
            if name in known and not known[name].init:
                setattr(config, name, value)
        return config

    @classmethod
    def from_pretrained(
        cls: type[ConfigT],
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> ConfigT:
        """Load `hf_frozen_config.json` from a local folder or a Hub repository."""
        path = resolve_file(path_or_repo_id, CONFIG_NAME, revision=revision, token=token)
        return cls.from_dict(read_config_dict(path), source=str(path))


def read_config_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a config file, turning JSON errors into a message that names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it is not a usable hf-frozen config.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object: not an hf-frozen config.")
    return data


def check_positive(config: Any, name: str, allow_zero: bool = False) -> None:
    """Raise a `ValueError` naming `name` unless the field is a positive number (or zero when allowed)."""
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = "a number >= 0" if allow_zero else "a positive number"
        raise ValueError(f"`{name}` must be {bound}, got {value!r}.")


def check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming `name` unless the field is one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")
