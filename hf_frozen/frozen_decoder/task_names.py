"""The one rule for task names: they name a task's folder in a saved set and its module in `MultiEncoderModel`."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

_TASK_NAME = re.compile(r"[\w+=@][\w+=@-]*")
# A task name names a folder: well under the 255 bytes a file name may have on common file systems.
MAX_TASK_NAME_BYTES = 128
# Names a `torch.nn.ModuleDict` already uses for itself (`parameters`, `training`, ...) cannot name a task.
_TAKEN = frozenset(dir(nn.ModuleDict()))


def check_task_name(name: Any) -> None:
    """Task names name folders and modules: word characters and `+ = @ -`, never a path or a dotted name."""
    if isinstance(name, str) and _TASK_NAME.fullmatch(name) and name in _TAKEN:
        raise ValueError(
            f"The task name {name!r} is taken by the module that holds the task encoders "
            "(`torch.nn.ModuleDict`): choose another, e.g. 'task_" + name + "'."
        )
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise ValueError(
            f"A task name must be letters, digits and '_', '+', '=', '@' or '-' (not first), got {name!r}: it names "
            "the task's folder when saving and its module, so '/', '.' and spaces are refused. Example: "
            "'summarize_cnn'."
        )
    if len(name.encode("utf-8")) > MAX_TASK_NAME_BYTES:
        raise ValueError(
            f"A task name names the task's folder, so it must be at most {MAX_TASK_NAME_BYTES} bytes; got one of "
            f"{len(name.encode('utf-8'))} ({name[:40]!r}...). Choose a shorter name."
        )
