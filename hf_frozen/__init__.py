"""hf-frozen: frozen-decoder and DecT adapters for the Hugging Face Trainer ecosystem."""

from ._version import __version__
from .auto import AutoFrozenModel, get_frozen_model
from .config import FrozenAdapterConfig
from .dect import DecTCallback, DecTCollator, DecTConfig, DecTHead, DecTModel
from .frozen_decoder import FrozenDecoderCallback, FrozenDecoderConfig, FrozenDecoderModel, MultiEncoderModel
from .mixing import mix_tasks, task_probabilities
from .registry import register_adapter, registered_adapters

__all__ = [
    "AutoFrozenModel",
    "DecTCallback",
    "DecTCollator",
    "DecTConfig",
    "DecTHead",
    "DecTModel",
    "FrozenAdapterConfig",
    "FrozenDecoderCallback",
    "FrozenDecoderConfig",
    "FrozenDecoderModel",
    "MultiEncoderModel",
    "__version__",
    "get_frozen_model",
    "mix_tasks",
    "register_adapter",
    "registered_adapters",
    "task_probabilities",
]
