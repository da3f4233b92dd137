"""The DecT head adapter: Decoder Tuning on a frozen backbone (Cui et al., ACL 2023)."""

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "DecTCallback": ".callback",
    "DecTCollator": ".callback",
    "DecTConfig": ".config",
    "DecTHead": ".heads",
    "DecTModel": ".model",
    "DecTRecord": ".record",
    "Endpoint": ".backbones.endpoint",
    "EndpointError": ".backbones.http_client",
}
__all__ = [
    "DecTCallback",
    "DecTCollator",
    "DecTConfig",
    "DecTHead",
    "DecTModel",
    "DecTRecord",
    "Endpoint",
    "EndpointError",
]

if TYPE_CHECKING:
    from .backbones.endpoint import Endpoint
    from .backbones.http_client import EndpointError
    from .callback import DecTCallback, DecTCollator
    from .config import DecTConfig
    from .heads import DecTHead
    from .model import DecTModel
    from .record import DecTRecord
else:
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
