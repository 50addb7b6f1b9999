"""Optional parts of a run that the library imports by name when a flag asks for them.

Nothing reaches them statically, so a copy of an algorithm made by scripts/export.py carries only the
ones its --features names (the copy's --help says which are missing). Torch-free, like `ocrl.files`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Feature -> "module:name", imported on first use (an exported copy holds the objects themselves).
FEATURES: dict[str, Any] = {
    "track": "ocrl.experiment.tracking:WandbTracker",
    "video": "ocrl.envs.video:record_episodes",
    "policy": "ocrl.experiment.policy:write_policy",
}


def feature(name: str) -> Any | None:
    """What `FEATURES` names for `name`, imported on first use; None where this copy has it not."""
    value = FEATURES.get(name)
    if isinstance(value, str):
        module, attr = value.split(":")
        value = getattr(importlib.import_module(module), attr)
    return value
