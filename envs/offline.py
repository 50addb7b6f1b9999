"""An offline dataset brought together with its evaluation environment, as TD transitions in a device buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ocrl.data import OfflineDataset, ReplayBuffer, load_dataset
from ocrl.data.offline import DatasetError
from ocrl.envs.evaluation import Evaluator, check_dataset_fits, make_env


@dataclass
class OfflineData:
    """What an offline algorithm trains on: the dataset, its checked env, normalisation and the buffer."""

    dataset: OfflineDataset
    env_id: str
    buffer: ReplayBuffer
    obs_mean: np.ndarray | None
    obs_std: np.ndarray | None
    action_low: np.ndarray
    action_high: np.ndarray

    def evaluator(
        self, num_episodes: int, seed: int, device: str | torch.device = "cpu"
    ) -> Evaluator:
        """An Evaluator on this data's env, with its observation normalisation and reference scores."""
        return Evaluator(
            self.env_id, num_episodes, seed, self.obs_mean, self.obs_std,
            self.dataset.ref_min_score, self.dataset.ref_max_score, device,
        )  # fmt: skip


def load_offline(
    name: str,
    env_id: str | None = None,
    *,
    device: str | torch.device = "cpu",
    normalize_obs: bool = True,
    truncated_last: Literal["drop", "keep"] = "drop",
) -> OfflineData:
    """Load a dataset, check it fits its evaluation env, standardise observations (std + 1e-3), fill a buffer."""
    dataset = load_dataset(name)
    env_id = env_id or dataset.env_id
    if env_id is None:
        raise DatasetError(f"dataset '{name}' names no evaluation environment; pass --env-id")
    env = make_env(env_id)
    check_dataset_fits(dataset, env)
    action_low, action_high = env.action_space.low, env.action_space.high
    env.close()

    data = dataset.transitions(truncated_last=truncated_last)
    # Over the transitions trained on (timeout rows dropped), as the original code and CORL.
    obs_mean, obs_std = data.obs_mean_std() if normalize_obs else (None, None)
    if normalize_obs:
        # In place: the transition arrays are already private copies, a second copy would double memory.
        for arr in (data.observations, data.next_observations):
            arr -= obs_mean
            arr /= obs_std
    buffer = ReplayBuffer.from_arrays(
        data.observations,
        data.actions,
        data.rewards,
        data.next_observations,
        data.terminals,
        device=device,
    )
    return OfflineData(dataset, env_id, buffer, obs_mean, obs_std, action_low, action_high)
