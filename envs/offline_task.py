"""An offline task: a dataset bound to its evaluation environment, as normalised TD transitions in a device buffer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from ocrl.data import OfflineDataset, ReplayBuffer, load_dataset
from ocrl.data.minari_io import recorded_env_spec
from ocrl.data.offline import (
    DatasetError,
    metadata_obs_stats,
    metadata_return_range,
    reward_range,
)
from ocrl.envs.evaluation import (
    Evaluator,
    check_dataset_fits,
    make_env,
    register_env_family,
    resolve_reference_scores,
)
from ocrl.envs.training import UnitActions


def reward_bias(flag: Literal["auto"] | float, dataset: str, env_id: str) -> float:
    """A --reward-bias flag as a number: 'auto' is -1 when the dataset or env name says AntMaze (RLPD's and
    EXPO's `"antmaze" in env_name`, their r - 1), else 0."""
    if flag != "auto":
        return float(flag)
    return -1.0 if "antmaze" in f"{dataset} {env_id}".lower() else 0.0


@dataclass
class OfflineTask:
    """What an offline algorithm trains on: the dataset, its checked env, normalisation, reference scores and the buffer."""

    dataset: OfflineDataset
    env_id: str
    buffer: ReplayBuffer
    obs_mean: np.ndarray | None
    obs_std: np.ndarray | None
    action_low: np.ndarray
    action_high: np.ndarray
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    reward_scale: float = 1.0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """gym.make kwargs of the env (`dataset_env_kwargs`): train and evaluate in this env."""

    @property
    def obs_dim(self) -> int:
        return self.dataset.obs_dim

    @property
    def act_dim(self) -> int:
        return self.dataset.act_dim

    @property
    def normalizer(self) -> dict[str, np.ndarray | None]:
        """The observation statistics, as a checkpoint part (a resume checks the data still gives them)."""
        return {"obs_mean": self.obs_mean, "obs_std": self.obs_std}

    def unit_actions(self, margin: float = 1e-5) -> UnitActions:
        """Rescale the buffer's actions to [-1, 1]^A, clipped to +-(1 - margin) (RLPD's rescale_actions and
        D4RL loader), for a policy that acts in [-1, 1]^A; return the maps between the two ranges."""
        low, high = self.action_low.astype(np.float32), self.action_high.astype(np.float32)
        unit = UnitActions(low, high, self.buffer.device)
        actions = 2 * (self.buffer.actions - unit.low_t) / (unit.high_t - unit.low_t) - 1
        self.buffer.actions = actions.clamp(-1 + margin, 1 - margin)
        return unit

    def obs_stats(
        self, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The observation mean and std as float32 tensors on `device` (None without normalisation)."""
        return tuple(
            None if x is None else torch.as_tensor(x, dtype=torch.float32, device=device)
            for x in (self.obs_mean, self.obs_std)
        )  # type: ignore[return-value]

    def evaluator(
        self, num_episodes: int, seed: int, device: str | torch.device = "cpu"
    ) -> Evaluator:
        """An Evaluator on this task's env, with its observation normalisation and reference scores."""
        return Evaluator(
            self.env_id, num_episodes, seed, self.obs_mean, self.obs_std,
            self.ref_min_score, self.ref_max_score, device, env_kwargs=self.env_kwargs,
        )  # fmt: skip


def dataset_env_kwargs(dataset: OfflineDataset, env_id: str) -> dict[str, Any]:
    """The gym.make kwargs of the env spec a Minari dataset records (its ``eval_env_spec``, else
    ``env_spec``) where they differ from ``env_id``'s registration, when that spec is of ``env_id``.

    Minari's D4RL AntMaze data record, e.g., the evaluation maze (one reset and one goal cell),
    ``continuing_task`` and ``reset_target``; only the differences are passed, so a dataset recorded
    with an older release's default kwargs still makes the env as registered now.
    """
    spec = recorded_env_spec(dataset.metadata)
    if spec is None or spec["id"] != env_id:
        return {}
    register_env_family(env_id)
    try:
        registered = gym.spec(env_id)
    except gym.error.Error:
        return {}  # make_env reports the unknown id
    missing = object()
    kwargs = {k: v for k, v in spec["kwargs"].items() if registered.kwargs.get(k, missing) != v}
    steps = spec["max_episode_steps"]
    if steps is not None and steps != registered.max_episode_steps:
        kwargs["max_episode_steps"] = steps
    return kwargs


def load_offline_task(
    name: str,
    env_id: str | None = None,
    *,
    device: str | torch.device = "cpu",
    normalize_obs: bool = True,
    normalize_reward: bool = False,
    truncated_last: Literal["drop", "keep"] = "drop",
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> OfflineTask:
    """Load a dataset, check it fits its evaluation env, standardise observations (std + 1e-3), fill a buffer.

    Observation statistics and the return range of ``normalize_reward`` come from the dataset's
    metadata (``ocrl_obs_mean``/``ocrl_obs_std``, ``ocrl_return_range``: the real source
    dataset's, written by `source_statistics_metadata` into synthetic data, as SynthER does)
    when it has them, else from the transitions trained on. The env is made with the kwargs the
    dataset's recorded env spec sets (`dataset_env_kwargs`), for the checks and the evaluator.
    """
    dataset = load_dataset(name)
    env_id = env_id or dataset.env_id
    if env_id is None:
        raise DatasetError(f"dataset '{name}' names no evaluation environment; pass --env-id")
    env_kwargs = dataset_env_kwargs(dataset, env_id)
    if env_kwargs:
        print(f"environment {env_id} with the dataset's recorded settings: {sorted(env_kwargs)}")
    env = make_env(env_id, **env_kwargs)
    check_dataset_fits(dataset, env)
    action_low, action_high = env.action_space.low, env.action_space.high
    max_episode_steps = (env.spec.max_episode_steps if env.spec else None) or 1000
    env.close()
    lo, hi, source = resolve_reference_scores(
        dataset.ref_min_score, dataset.ref_max_score, env_id, ref_min_score, ref_max_score
    )
    print(f"scores of {env_id}: {source}")

    # Synthetic data keep the real data's statistics (SynthER); checked even when unused.
    file_obs_stats = metadata_obs_stats(dataset)
    file_return_range = metadata_return_range(dataset)
    from_file = [
        what
        for what, used in (
            ("observation statistics", normalize_obs and file_obs_stats is not None),
            ("return range", normalize_reward and file_return_range is not None),
        )
        if used
    ]
    if from_file:
        print(f"{' and '.join(from_file)} of '{name}': from its metadata (the source dataset's)")
    data = dataset.transitions(truncated_last=truncated_last)
    obs_mean = obs_std = None
    if normalize_obs and file_obs_stats is not None:
        obs_mean, obs_std = file_obs_stats
    elif normalize_obs:
        # Over the transitions trained on (timeout rows dropped), as the original code and CORL.
        obs_mean, obs_std = data.obs_mean_std()
    if normalize_obs:
        # In place: the transition arrays are already private copies, a second copy would double memory.
        for arr in (data.observations, data.next_observations):
            arr -= obs_mean
            arr /= obs_std
    reward_scale = 1.0
    if normalize_reward:
        # CORL's modify_reward for locomotion: r * max_episode_steps / (max - min episode return).
        if file_return_range is not None:
            low_return, high_return = file_return_range
        elif dataset.is_transitions_layout:
            raise DatasetError(
                f"--normalize-reward: dataset '{name}' has independent synthetic transitions, so "
                "episode returns cannot be measured; write ocrl_return_range into its metadata "
                "(source_statistics_metadata) or drop --normalize-reward"
            )
        else:
            low_return, high_return = reward_range(data, max_episode_steps)
        if high_return - low_return <= 0:
            raise DatasetError(
                f"--normalize-reward: every episode of dataset '{name}' has the same return "
                f"({low_return}); drop the flag"
            )
        reward_scale = max_episode_steps / (high_return - low_return)
        data.rewards *= np.float32(reward_scale)
    buffer = ReplayBuffer.from_arrays(
        data.observations, data.actions, data.rewards, data.next_observations, data.terminals,
        device=device,
    )  # fmt: skip
    return OfflineTask(
        dataset, env_id, buffer, obs_mean, obs_std, action_low, action_high, lo, hi, reward_scale,
        env_kwargs,
    )  # fmt: skip
