"""hf-frozen: frozen-decoder and DecT adapters for the Hugging Face Trainer ecosystem."""

from typing import TYPE_CHECKING

from ._version import __version__
from .utils.lazy import lazy_exports

_EXPORTS = {
    "AutoFrozenModel": ".auto",
    "get_frozen_model": ".auto",
    "FrozenAdapterConfig": ".config",
    "ArtifactError": ".errors",
    "DecTCallback": ".dect",
    "DecTCollator": ".dect",
    "DecTConfig": ".dect",
    "DecTHead": ".dect",
    "DecTModel": ".dect",
    "Endpoint": ".dect",
    "FrozenDecoderCallback": ".frozen_decoder",
    "FrozenDecoderConfig": ".frozen_decoder",
    "FrozenDecoderModel": ".frozen_decoder",
    "MultiEncoderModel": ".frozen_decoder",
    "mix_tasks": ".mixing",
    "task_probabilities": ".mixing",
    "pipeline": ".pipelines",
    "DecTClassificationPipeline": ".pipelines",
    "FrozenDecoderGenerationPipeline": ".pipelines",
    "register_adapter": ".registry",
    "registered_adapters": ".registry",
}
__all__ = [
    "__version__",
    "ArtifactError",
    "AutoFrozenModel",
    "DecTCallback",
    "DecTClassificationPipeline",
    "DecTCollator",
    "DecTConfig",
    "DecTHead",
    "DecTModel",
    "Endpoint",
    "FrozenAdapterConfig",
    "FrozenDecoderCallback",
    "FrozenDecoderConfig",
    "FrozenDecoderGenerationPipeline",
    "FrozenDecoderModel",
    "MultiEncoderModel",
    "get_frozen_model",
    "mix_tasks",
    "pipeline",
    "register_adapter",
    "registered_adapters",
    "task_probabilities",
]

if TYPE_CHECKING:
    from .auto import AutoFrozenModel, get_frozen_model
    from .config import FrozenAdapterConfig
    from .dect import DecTCallback, DecTCollator, DecTConfig, DecTHead, DecTModel, Endpoint
    from .errors import ArtifactError
    from .frozen_decoder import FrozenDecoderCallback, FrozenDecoderConfig, FrozenDecoderModel, MultiEncoderModel
    from .mixing import mix_tasks, task_probabilities
    from .pipelines import DecTClassificationPipeline, FrozenDecoderGenerationPipeline, pipeline
    from .registry import register_adapter, registered_adapters
else:
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
