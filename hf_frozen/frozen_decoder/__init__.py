"""The frozen-decoder adapter: fine-tune only the encoder of an encoder-decoder model."""

from ..registry import register_adapter
from .callback import FrozenDecoderCallback
from .config import FrozenDecoderConfig
from .model import FrozenDecoderModel
from .multi_encoder import MultiEncoderModel
from .record import FrozenDecoderRecord

register_adapter(FrozenDecoderConfig, FrozenDecoderModel)

__all__ = ["FrozenDecoderCallback", "FrozenDecoderConfig", "FrozenDecoderModel", "FrozenDecoderRecord",
           "MultiEncoderModel"]  # fmt: skip
