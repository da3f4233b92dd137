"""Which task encoders of a `MultiEncoderModel` stay in memory: at most K, the least recently used leave first.

Only the bookkeeping lives here (the order of use and the choice of what leaves); the model itself frees an
encoder and reads it back from its file (`MultiEncoderModel._drop`, `_make_resident`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable


class LeastRecentlyUsed:
    """The order in which tasks were last used, and which of them to drop beyond `capacity`.

    Args:
        capacity (`int`, *optional*): how many may stay; `None` keeps every one.
    """

    def __init__(self, capacity: int | None) -> None:
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(
                f"`max_resident_encoders` must be a positive integer or None (keep every task), got {capacity!r}."
            )
        self.capacity = capacity
        self._order: collections.OrderedDict[str, None] = collections.OrderedDict()  # oldest first

    def touch(self, names: Iterable[str]) -> None:
        """Mark `names` as just used, in this order (the last one the most recent)."""
        for name in names:
            self._order.pop(name, None)
            self._order[name] = None

    def forget(self, name: str) -> None:
        self._order.pop(name, None)

    def to_evict(self, resident: set[str], keep: set[str] = frozenset()) -> list[str]:
        """Which of the `resident` (evictable) tasks to drop so that at most `capacity` stay, oldest first; never
        one in `keep` (a batch in flight)."""
        if self.capacity is None:
            return []
        oldest_first = [name for name in self._order if name in resident and name not in keep]
        return oldest_first[: max(0, len(resident) - self.capacity)]
