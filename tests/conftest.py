"""Shared fixtures: small datasets in the exact on-disk formats, made here without any network."""

from __future__ import annotations

import numpy as np
import pytest

from ocrl.data import OfflineDataset
from ocrl.data.d4rl import D4RL_REF_SCORES, write_d4rl_hdf5
from ocrl.envs import make_env


def random_rollouts(env_id: str, num_steps: int, seed: int = 0) -> OfflineDataset:
    """num_steps rows of uniformly random actions, with D4RL's terminal/timeout flags."""
    env = make_env(env_id, max_episode_steps=200)
    env.action_space.seed(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    rows = {
        "observations": np.zeros((num_steps, obs_dim), np.float32),
        "actions": np.zeros((num_steps, act_dim), np.float32),
        "rewards": np.zeros(num_steps, np.float32),
        "next_observations": np.zeros((num_steps, obs_dim), np.float32),
        "terminals": np.zeros(num_steps, bool),
        "timeouts": np.zeros(num_steps, bool),
    }
    obs, _ = env.reset(seed=seed)
    for t in range(num_steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows["observations"][t], rows["actions"][t], rows["rewards"][t] = obs, action, reward
        rows["next_observations"][t], rows["terminals"][t] = next_obs, terminated
        rows["timeouts"][t] = (truncated and not terminated) or t == num_steps - 1
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset(seed=seed + t + 1)
    env.close()
    lo, hi = D4RL_REF_SCORES["hopper"] if env_id == "Hopper-v4" else (None, None)
    return OfflineDataset(
        **rows, name=f"random-{env_id}", env_id=env_id, ref_min_score=lo, ref_max_score=hi
    )


@pytest.fixture(scope="session")
def hopper_random_file(tmp_path_factory) -> str:
    """A 2,000-row random-policy Hopper-v4 dataset as a D4RL HDF5 file."""
    path = tmp_path_factory.mktemp("d4rl") / "hopper_random_small.hdf5"
    write_d4rl_hdf5(random_rollouts("Hopper-v4", 2000), path)
    return str(path)
