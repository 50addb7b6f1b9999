"""Datasets (D4RL, Minari, shipped), normalisation, replay buffers and run folders."""

from ocrl.data.replay import ReplayBuffer
from ocrl.data.runs import (
    Run,
    cli,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
)

# --- dataset layer (ocrl.data.offline / d4rl / minari_io) ---
from ocrl.data.offline import (  # noqa: E402
    DatasetError,
    OfflineDataset,
    Transitions,
    load_dataset,
)

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "ReplayBuffer",
    "Run",
    "Transitions",
    "cli",
    "load_checkpoint",
    "load_dataset",
    "pick_device",
    "save_checkpoint",
    "seed_everything",
]
