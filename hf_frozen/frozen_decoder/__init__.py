"""The frozen-decoder adapter: fine-tune only the encoder of an encoder-decoder model."""

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "FrozenDecoderCallback": ".callback",
    "FrozenDecoderConfig": ".config",
    "FrozenDecoderModel": ".model",
    "FrozenDecoderRecord": ".record",
    "MultiEncoderModel": ".multi_encoder",
}
__all__ = [
    "FrozenDecoderCallback",
    "FrozenDecoderConfig",
    "FrozenDecoderModel",
    "FrozenDecoderRecord",
    "MultiEncoderModel",
]

if TYPE_CHECKING:
    from .callback import FrozenDecoderCallback
    from .config import FrozenDecoderConfig
    from .model import FrozenDecoderModel
    from .multi_encoder import MultiEncoderModel
    from .record import FrozenDecoderRecord
else:
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
