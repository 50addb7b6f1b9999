"""ocrl.data's on-policy rollout (VectorRollout, RolloutBuffer, EpisodeCurve) and ocrl.envs.make_vector_env:
rewards against gymnasium's NormalizeReward and a replay of the same actions, the truncation bootstrap with
the heads' mean value, episode logs, GAE's shapes, a checkpoint that continues mid-episode, and the space
check."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from ocrl.data import (
    EpisodeCurve,
    ObservationNormalizer,
    RolloutBuffer,
    RunningMeanStd,
    VectorRollout,
    gae,
)
from ocrl.envs import EnvError, TimeFeature, make_vector_env

HEAD_SCALES = torch.tensor([1.0, 3.0])  # two value heads: V_e(s) = scale_e * sum(s), mean 2 sum(s)


class StubPolicy:
    """A Normal(0, 1) policy over Pendulum's one action and two value heads that are linear in the observation."""

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        return torch.distributions.Normal(torch.zeros(len(obs), 1), torch.ones(len(obs), 1))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.sum(-1, keepdim=True) * HEAD_SCALES


def collect(normalize_reward: bool, bootstrap_truncation: bool, steps: int = 200):
    torch.manual_seed(0)
    envs = make_vector_env("Pendulum-v1", 1, 0, "test")
    rollout = VectorRollout(
        envs, steps, ObservationNormalizer((3,), enabled=False), RunningMeanStd(), "cpu", seed=0,
        ensemble_size=2, discount=0.9, gae_lambda=0.95, normalize_reward=normalize_reward,
        bootstrap_truncation=bootstrap_truncation,
    )  # fmt: skip
    logs = []
    batch = rollout.collect(StubPolicy(), 1000, lambda step, values: logs.append((step, values)))
    return batch, rollout.buffer.data["rewards"].double().numpy(), logs


def replay(actions: np.ndarray, wrap=None):
    """Rewards and the last observation of Pendulum-v1 (seed 0) under the given actions, clipped as sent."""
    env = gym.make("Pendulum-v1")
    env = wrap(env) if wrap else env
    env.reset(seed=0)
    rewards = []
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(np.clip(a, -2.0, 2.0).astype(np.float32))
        rewards.append(reward)
    assert truncated and not terminated  # Pendulum's time limit: 200 steps
    return np.array(rewards, dtype=np.float64), obs


def test_truncation_adds_gamma_times_the_heads_mean_value_of_the_final_observation():
    batch, rewards, logs = collect(normalize_reward=False, bootstrap_truncation=True)
    assert batch["values"].shape == batch["advantages"].shape == batch["returns"].shape == (200, 2)
    raw, final_obs = replay(batch["actions"].numpy())
    np.testing.assert_allclose(rewards[:-1], raw[:-1], rtol=1e-6)
    want_last = raw[-1] + 0.9 * 2.0 * float(np.sum(final_obs, dtype=np.float32))
    assert rewards[-1] == pytest.approx(want_last, rel=1e-5)
    # One episode ended, logged at its last env step (the collection started at step 1000).
    assert len(logs) == 1 and logs[0][0] == 1200
    assert logs[0][1]["charts/episodic_return"] == pytest.approx(raw.sum(), rel=1e-6)
    assert logs[0][1]["charts/episodic_length"] == 200


def test_without_bootstrap_the_rewards_are_the_environments():
    batch, rewards, _ = collect(normalize_reward=False, bootstrap_truncation=False)
    raw, _ = replay(batch["actions"].numpy())
    np.testing.assert_allclose(rewards, raw, rtol=1e-6)


def test_reward_normalisation_is_gymnasiums_normalize_reward():
    batch, rewards, _ = collect(normalize_reward=True, bootstrap_truncation=False)
    wrap = lambda env: gym.wrappers.NormalizeReward(env, gamma=0.9, epsilon=1e-8)  # noqa: E731
    want, _ = replay(batch["actions"].numpy(), wrap)
    np.testing.assert_allclose(rewards, np.clip(want, -10, 10), rtol=1e-5)


def test_gae_has_one_advantage_per_head_and_the_returns_add_the_values():
    batch, _, _ = collect(normalize_reward=False, bootstrap_truncation=True, steps=16)
    torch.testing.assert_close(batch["returns"], batch["advantages"] + batch["values"])
    rewards, values = torch.randn(5, 2), torch.randn(5, 2, 3)
    adv, _ = gae(rewards, values, torch.zeros(5, 2), torch.randn(2, 3), torch.zeros(2), 0.9, 0.95)
    assert adv.shape == (5, 2, 3)


def test_rollout_buffer_appends_drops_the_oldest_and_round_trips():
    buf = RolloutBuffer(6, {"x": (2,), "a": ()}, "cpu", {"a": torch.long})
    view = buf.append({"x": torch.arange(8.0).view(4, 2), "a": torch.arange(4)})
    assert view["a"].dtype == torch.long and view["x"].shape == (4, 2)
    buf.drop_oldest(3)
    assert buf.n == 1 and buf.data["a"][0] == 3
    other = RolloutBuffer(6, {"x": (2,), "a": ()}, "cpu", {"a": torch.long})
    other.load_state_dict(buf.state_dict())
    assert other.n == 1 and torch.equal(other.data["x"][:1], buf.data["x"][:1])


def pendulum_rollout(seed: int, wrapper=None) -> VectorRollout:
    """Two Pendulum-v1 copies, 120 steps a rollout, both normalisers on, the truncation bootstrap."""
    envs = make_vector_env("Pendulum-v1", 2, seed, "test", wrapper=wrapper)
    return VectorRollout(
        envs, 120, ObservationNormalizer((envs.single_observation_space.shape[0],)),
        RunningMeanStd(), "cpu", seed=seed, ensemble_size=2, discount=0.9, gae_lambda=0.95,
        normalize_reward=True, bootstrap_truncation=True,
    )  # fmt: skip


@pytest.mark.parametrize("wrapper", [None, TimeFeature], ids=["plain", "time-feature"])
def test_a_restored_rollout_collects_the_same_next_rollout(wrapper):
    torch.manual_seed(0)
    first = pendulum_rollout(0, wrapper)
    first.collect(
        StubPolicy(), 0, lambda step, values: None
    )  # stops at step 120 of 200: mid-episode
    buffer = io.BytesIO()
    torch.save(
        [first.state_dict(), first.obs_norm.state_dict(), first.return_rms.state_dict()], buffer
    )
    buffer.seek(0)
    rollout, obs_norm, return_rms = torch.load(buffer, weights_only=True)
    second = pendulum_rollout(
        1, wrapper
    )  # other seeds: everything it continues with comes from the state
    second.load_state_dict(rollout)
    second.obs_norm.load_state_dict(obs_norm)
    second.return_rms.load_state_dict(return_rms)

    rng = torch.get_rng_state()
    logs_a, logs_b = [], []
    a = first.collect(StubPolicy(), 240, lambda step, values: logs_a.append((step, values)))
    torch.set_rng_state(rng)
    b = second.collect(StubPolicy(), 240, lambda step, values: logs_b.append((step, values)))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Both copies end their first episode at step 200 of 240: the restored time limits and counters.
    assert [step for step, _ in logs_a] == [240 + 80 * 2] * 2 and logs_a == logs_b
    assert np.array_equal(first.next_obs, second.next_obs)
    assert np.array_equal(first.discounted_return, second.discounted_return)


def test_episode_curve_closes_a_window_at_its_end_and_summarises():
    curve = EpisodeCurve(window=10)
    assert curve.summary("r") == {"r_last": None, "r_max": None, "r_sum": None}
    curve.add(np.array([1.0, 3.0]), 5)
    curve.add(np.array([5.0]), 10)  # closes the first window: mean 3
    curve.add(np.array([7.0]), 20)
    assert curve.window_means == [3.0, 7.0]
    assert curve.summary("r") == {"r_last": 7.0, "r_max": 7.0, "r_sum": 10.0}


def test_make_vector_env_names_the_spaces_it_needs():
    with pytest.raises(EnvError, match="SAC needs a flat Box observation and Box actions"):
        make_vector_env("CartPole-v1", 1, 0, "SAC")
    kinds = (gym.spaces.Box, gym.spaces.Discrete)
    envs = make_vector_env("CartPole-v1", 2, 0, "PPO", kinds)
    assert envs.num_envs == 2
    envs.close()
