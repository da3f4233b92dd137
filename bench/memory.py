"""Process memory for the benches: RSS now and its peak since a reset (Linux `/proc/self`)."""

from __future__ import annotations

import ctypes


def reset_peak_rss(trim: bool = False) -> int:
    """Reset this process's peak RSS (`clear_refs`), so that a later `peak_rss()` sees only what follows (imports
    and model construction can leave a higher peak than the work measured after them); returns the RSS now.

    With `trim`, first hand the heap's free memory back to the system (`malloc_trim`), so that memory freed by the
    set-up (a model cast to another dtype, initialisation temporaries) is not counted as in use.
    """
    if trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss()


def peak_rss() -> int:
    return _status_bytes("VmHWM")


def rss() -> int:
    return _status_bytes("VmRSS")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024
