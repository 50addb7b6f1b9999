"""Datasets (D4RL, Minari, shipped), normalisation and replay buffers."""

from ocrl.data.offline import (
    DatasetError,
    OfflineDataset,
    Transitions,
    load_dataset,
    source_statistics_metadata,
)
from ocrl.data.replay import Batch, ReplayBuffer

__all__ = [
    "Batch",
    "DatasetError",
    "OfflineDataset",
    "ReplayBuffer",
    "Transitions",
    "load_dataset",
    "source_statistics_metadata",
]
