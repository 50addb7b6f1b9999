"""Environment construction, dataset/environment checks and batched evaluation with normalised scores."""

from ocrl.envs.evaluation import (
    Evaluator,
    check_dataset_fits,
    episode_seeds,
    make_env,
    normalized_score,
    reference_scores,
)
from ocrl.envs.offline import OfflineData, load_offline

__all__ = [
    "Evaluator",
    "OfflineData",
    "check_dataset_fits",
    "episode_seeds",
    "load_offline",
    "make_env",
    "normalized_score",
    "reference_scores",
]
