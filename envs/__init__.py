"""Environment construction, dataset/environment checks, batched evaluation, the inventory and lot-sizing problems."""

from ocrl.envs.dynamics import DYNAMICS_ENV_IDS, dynamics_error
from ocrl.envs.evaluation import (
    EnvError,
    Evaluator,
    TimeFeature,
    check_dataset_fits,
    episode_seeds,
    make_env,
    normalized_score,
    reference_scores,
    register_env_family,
    resolve_reference_scores,
)
from ocrl.envs.inventory import InventoryEnv, InventoryProblem, InventorySimulator, make_problem
from ocrl.envs.lot_sizing import (
    LotSizingEnv,
    LotSizingInstance,
    LotSizingSimulator,
    LotSizingVectorEnv,
    generate_instance,
    load_instance,
)
from ocrl.envs.offline_task import OfflineTask, dataset_env_kwargs, load_offline_task
from ocrl.envs.vector import make_vector_env

__all__ = [
    "DYNAMICS_ENV_IDS",
    "EnvError",
    "Evaluator",
    "InventoryEnv",
    "InventoryProblem",
    "InventorySimulator",
    "LotSizingEnv",
    "LotSizingInstance",
    "LotSizingSimulator",
    "LotSizingVectorEnv",
    "OfflineTask",
    "TimeFeature",
    "check_dataset_fits",
    "dataset_env_kwargs",
    "dynamics_error",
    "episode_seeds",
    "generate_instance",
    "load_instance",
    "load_offline_task",
    "make_problem",
    "make_env",
    "make_vector_env",
    "normalized_score",
    "reference_scores",
    "register_env_family",
    "resolve_reference_scores",
]
