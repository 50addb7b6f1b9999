"""Environment construction, dataset/environment checks, batched evaluation, online training envs that checkpoint, the inventory and lot-sizing problems."""

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
from ocrl.envs.ids import register_envs
from ocrl.envs.offline_task import (
    OfflineTask,
    dataset_env_kwargs,
    load_offline_task,
    reward_bias,
)
from ocrl.envs.seed_envs import SeedEnvs
from ocrl.envs.training import TrainingEnvs, UnitActions
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
    "SeedEnvs",
    "TimeFeature",
    "TrainingEnvs",
    "UnitActions",
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
    "reward_bias",
]

# The inventory and lot-sizing simulators (torch, scipy) load on first use: `from ocrl.envs import
# InventoryEnv` imports ocrl.envs.inventory then, and `gym.make` of their ids imports them too.
_LAZY = {
    "InventoryEnv": "inventory",
    "InventoryProblem": "inventory",
    "InventorySimulator": "inventory",
    "make_problem": "inventory",
    "LotSizingEnv": "lot_sizing",
    "LotSizingInstance": "lot_sizing",
    "LotSizingSimulator": "lot_sizing",
    "LotSizingVectorEnv": "lot_sizing",
    "generate_instance": "lot_sizing",
    "load_instance": "lot_sizing",
}

register_envs()


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"ocrl.envs.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
