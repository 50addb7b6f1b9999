"""Shared fixtures: small datasets in the exact on-disk formats, made here without any network."""

from __future__ import annotations

import pytest
import torch

from ocrl.data import Batch, OfflineDataset
from ocrl.data.collect import rollout
from ocrl.data.d4rl import D4RL_REF_SCORES, write_d4rl_hdf5
from ocrl.envs import make_env


def random_rollouts(env_id: str, num_steps: int, seed: int = 0) -> OfflineDataset:
    """num_steps rows of uniformly random actions, with D4RL's terminal/timeout flags."""
    env = make_env(env_id, max_episode_steps=200)
    env.action_space.seed(seed)
    rows = rollout(env, lambda obs: env.action_space.sample(), num_steps, seed)
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


@pytest.fixture
def fixed_batch():
    """A function (obs_dim, act_dim, b) -> the same random Batch every time, with ~30% terminals."""

    def make(obs_dim: int = 3, act_dim: int = 2, b: int = 8) -> Batch:
        g = torch.Generator().manual_seed(7)
        return Batch(
            torch.randn(b, obs_dim, generator=g), torch.rand(b, act_dim, generator=g) * 2 - 1,
            torch.randn(b, generator=g), torch.randn(b, obs_dim, generator=g),
            (torch.rand(b, generator=g) < 0.3).float(),
        )  # fmt: skip

    return make
