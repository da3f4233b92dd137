"""The DecT head adapter: Decoder Tuning on a frozen backbone (Cui et al., ACL 2023)."""

from ..registry import register_adapter
from .callback import DecTCallback, DecTCollator
from .config import DecTConfig
from .head import DecTHead
from .model import DecTModel
from .record import DecTRecord

register_adapter(DecTConfig, DecTModel)

__all__ = ["DecTCallback", "DecTCollator", "DecTConfig", "DecTHead", "DecTModel", "DecTRecord"]
