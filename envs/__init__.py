"""Environment construction, dataset/environment checks and batched evaluation with normalised scores."""

from ocrl.envs.evaluation import (
    Evaluator,
    check_dataset_fits,
    episode_seeds,
    make_env,
    normalized_score,
    reference_scores,
)

__all__ = [
    "Evaluator",
    "check_dataset_fits",
    "episode_seeds",
    "make_env",
    "normalized_score",
    "reference_scores",
]
