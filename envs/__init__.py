"""Environment construction, dataset/environment checks, batched evaluation, and the inventory problems."""

from ocrl.envs.evaluation import (
    Evaluator,
    check_dataset_fits,
    episode_seeds,
    make_env,
    normalized_score,
    reference_scores,
)
from ocrl.envs.inventory import InventoryEnv, InventoryProblem, InventorySimulator, make_problem
from ocrl.envs.offline import OfflineData, load_offline

__all__ = [
    "Evaluator",
    "InventoryEnv",
    "InventoryProblem",
    "InventorySimulator",
    "OfflineData",
    "check_dataset_fits",
    "episode_seeds",
    "load_offline",
    "make_problem",
    "make_env",
    "normalized_score",
    "reference_scores",
]
