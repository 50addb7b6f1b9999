"""Episode collection in D4RL's row layout (terminals for terminations, timeouts for time limits)."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
from tqdm import tqdm


def rollout(
    env: gym.Env,
    policy: Callable[[np.ndarray], np.ndarray],
    num_steps: int,
    seed: int,
    desc: str | None = None,
) -> dict[str, np.ndarray]:
    """num_steps rows from `policy` in `env`; the last row is marked a timeout when it ends no episode."""
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
    episode = 0
    for t in tqdm(range(num_steps), desc=desc, leave=False, disable=desc is None):
        action = np.asarray(policy(obs), dtype=np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows["observations"][t], rows["actions"][t], rows["rewards"][t] = obs, action, reward
        rows["next_observations"][t], rows["terminals"][t] = next_obs, terminated
        # A D4RL timeout is a time-limit end that is not a termination; the data's end cuts an episode too.
        rows["timeouts"][t] = not terminated and (truncated or t == num_steps - 1)
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    return rows
