"""hf-frozen: frozen-decoder and DecT adapters for the Hugging Face Trainer ecosystem."""

__version__ = "0.1.0"

from .auto import AutoFrozenModel, get_frozen_model  # noqa: E402
from .config import FrozenAdapterConfig  # noqa: E402
from .data import mix_tasks, task_probabilities  # noqa: E402
from .dect import DecTCallback, DecTCollator, DecTConfig, DecTHead, DecTModel  # noqa: E402
from .frozen_decoder import FrozenDecoderCallback, FrozenDecoderConfig, FrozenDecoderModel, MultiEncoderModel  # noqa: E402
from .registry import register_adapter, registered_adapters  # noqa: E402

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
