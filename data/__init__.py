"""Datasets (D4RL, Minari, shipped), normalisation, trajectory windows and replay buffers."""

from ocrl.data.offline import (
    DatasetError,
    OfflineDataset,
    Transitions,
    load_dataset,
    source_statistics_metadata,
)
from ocrl.data.replay import Batch, ReplayBuffer, mixed_minibatches
from ocrl.data.running import RunningMeanStd
from ocrl.data.windows import trajectory_windows, window_rows

__all__ = [
    "Batch",
    "DatasetError",
    "OfflineDataset",
    "ReplayBuffer",
    "RunningMeanStd",
    "Transitions",
    "load_dataset",
    "mixed_minibatches",
    "source_statistics_metadata",
    "trajectory_windows",
    "window_rows",
]
