"""Datasets (D4RL, Minari, shipped), normalisation, replay buffers and run folders."""

# --- dataset layer (ocrl.data.offline / d4rl / minari_io) ---
from ocrl.data.offline import (
    DatasetError,
    OfflineDataset,
    Transitions,
    load_dataset,
)
from ocrl.data.replay import Batch, ReplayBuffer
from ocrl.data.runs import (
    Run,
    atomic_write_text,
    check_finite,
    cli,
    friendly_errors,
    load_checkpoint,
    pick_device,
    restore_training_state,
    resume_args,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    training_state,
)

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "ReplayBuffer",
    "Batch",
    "Run",
    "Transitions",
    "atomic_write_text",
    "check_finite",
    "cli",
    "friendly_errors",
    "load_checkpoint",
    "load_dataset",
    "pick_device",
    "restore_training_state",
    "resume_args",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "training_state",
]
