"""Datasets (D4RL, Minari, shipped), normalisation, trajectory windows, replay buffers and on-policy rollouts."""

from ocrl.data.offline import (
    DatasetError,
    OfflineDataset,
    Transitions,
    load_dataset,
    source_statistics_metadata,
)
from ocrl.data.replay import Batch, ReplayBuffer, mixed_minibatches
from ocrl.data.rollout import (
    EpisodeCurve,
    RolloutBuffer,
    VectorRollout,
    discounted_returns,
    explained_variance,
    gae,
)
from ocrl.data.running import ObservationNormalizer, RunningMeanStd
from ocrl.data.windows import trajectory_windows, window_rows

__all__ = [
    "Batch",
    "DatasetError",
    "EpisodeCurve",
    "ObservationNormalizer",
    "OfflineDataset",
    "ReplayBuffer",
    "RolloutBuffer",
    "RunningMeanStd",
    "Transitions",
    "VectorRollout",
    "discounted_returns",
    "explained_variance",
    "gae",
    "load_dataset",
    "mixed_minibatches",
    "source_statistics_metadata",
    "trajectory_windows",
    "window_rows",
]
