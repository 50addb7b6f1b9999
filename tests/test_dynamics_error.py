"""dynamics_error: the noise floor on real Hopper transitions, its response to noise and shuffling, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ocrl.data.offline import DatasetError
from ocrl.envs import EnvError, make_env
from ocrl.envs.dynamics import dynamics_error


@pytest.fixture(scope="module")
def hopper_real():
    """2,000 seeded random-action Hopper-v4 transitions (obs, act, rew, next_obs, terminated)."""
    env = make_env("Hopper-v4")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    rows = []
    while len(rows) < 2000:
        act = env.action_space.sample()
        nxt, rew, terminated, truncated, _ = env.step(act)
        rows.append((obs, act, rew, nxt, terminated))
        obs = env.reset()[0] if terminated or truncated else nxt
    env.close()
    o, a, r, n, t = (np.array(c) for c in zip(*rows, strict=True))
    assert t.sum() > 20  # episodes end: the terminal check below compares both outcomes
    return o, a, r, n, t


def test_real_transitions_are_the_floor(hopper_real):
    o, a, r, n, t = hopper_real
    out = dynamics_error("Hopper-v4", o, a, n, r, t)
    # Measured: mse 2.2e-32, normalized 2.0e-32, reward_mse 5e-21 (the same simulator replayed; no
    # start velocity of these rollouts reaches the +-10 clip). 1e-10 leaves room for other MuJoCo
    # builds while the noise test below sits eight orders of magnitude higher.
    assert out["n"] == 2000
    assert out["clipped_start_fraction"] == 0.0
    assert out["normalized_mse"] < 1e-10
    assert out["mse"] < 1e-10
    assert out["reward_mse"] < 1e-10
    assert out["terminal_agreement"] == 1.0
    assert out["unstable"] == 0
    assert out["normalized_mse_unclipped"] == out["normalized_mse"]
    assert out["per_dim_mse"].shape == (11,) and out["per_transition_mse"].shape == (2000,)


def test_noise_of_a_tenth_std_gives_one_hundredth(hopper_real):
    o, a, r, n, t = hopper_real
    std = n.std(axis=0)
    noisy = n + np.random.default_rng(1).normal(size=n.shape) * 0.1 * std
    out = dynamics_error("Hopper-v4", o, a, noisy, scale=std)
    # Expected 0.1**2 = 0.01; measured 0.00989 (22,000 squared normals: ~1% sampling error).
    assert 0.009 < out["normalized_mse"] < 0.011
    # The raw mse is the same squares without the per-dimension division.
    assert out["mse"] == pytest.approx(((noisy - n) ** 2).mean(), rel=1e-6)


def test_shuffled_next_observations_are_far_off(hopper_real):
    o, a, r, n, t = hopper_real
    shuffled = n[np.random.default_rng(2).permutation(len(n))]
    out = dynamics_error("Hopper-v4", o, a, shuffled, r, 1 - t, scale=n.std(axis=0))
    # Independent pairs: E[(x - y)^2] / var = 2 per dimension; measured 1.99.
    assert 1.5 < out["normalized_mse"] < 2.5
    assert out["terminal_agreement"] == 0.0  # every terminal flipped


def test_subset_is_seeded_and_each_transition_independent(hopper_real):
    o, a, r, n, t = hopper_real
    noisy = n + np.random.default_rng(3).normal(size=n.shape) * 0.05
    full = dynamics_error("Hopper-v4", o, a, noisy)
    sub = dynamics_error("Hopper-v4", o, a, noisy, max_transitions=300, seed=4)
    again = dynamics_error("Hopper-v4", o, a, noisy, max_transitions=300, seed=4)
    assert sub["n"] == 300
    np.testing.assert_array_equal(sub["per_transition_mse"], again["per_transition_mse"])
    idx = np.sort(np.random.default_rng(4).choice(len(o), 300, replace=False))
    # The same transition gives the same error, bit for bit, whichever transitions were simulated
    # before it (without zeroing MuJoCo's warm start they differ by ~1e-16).
    np.testing.assert_array_equal(sub["per_transition_mse"], full["per_transition_mse"][idx])


def test_unhealthy_and_diverging_states_do_not_crash(hopper_real):
    o, a, r, n, t = hopper_real
    o, a, n = o[:20].copy(), a[:20].copy(), n[:20].copy()
    o[:5, 0] = 0.3  # torso height below Hopper's healthy 0.7: the env must say terminated
    o[5:8, 5:] = 1e12  # absurd velocities: MuJoCo resets the data instead of stepping
    out = dynamics_error("Hopper-v4", o, a, n, np.zeros(20), t[:20], scale=np.ones(11))
    assert not t[:20].any()
    assert out["n"] == 20
    assert out["unstable"] == 3
    # The 5 low torsos terminate; the diverged rows restart from MuJoCo's healthy initial state.
    assert out["terminal_agreement"] == 15 / 20
    assert np.isfinite(out["per_transition_mse"]).all()
    assert out["clipped_start_fraction"] == pytest.approx(3 / 20)


def test_a_clipped_start_velocity_is_the_floor(hopper_real):
    o, a, r, n, t = hopper_real
    env = make_env("Hopper-v4")
    env.reset(seed=0)
    sim = env.unwrapped
    qpos, qvel = np.r_[0.0, o[0, :5]], o[0, 5:].copy()
    qvel[5] = 25.0  # a real foot speed beyond the observation's +-10 clip
    sim.set_state(qpos, qvel)
    start = sim._get_obs()
    nxt, rew, terminated, _, _ = sim.step(a[0])
    env.close()
    assert start[10] == 10.0
    obs, act, nobs = np.r_[o[:9], start[None]], a[:10], np.r_[n[:9], nxt[None]]
    out = dynamics_error("Hopper-v4", obs, act, nobs, scale=n.std(axis=0))
    assert out["clipped_start_fraction"] == pytest.approx(0.1)
    # Real, yet replayed from velocity 10 instead of 25: only that transition is off.
    assert out["per_transition_mse"][9] > 1e-3 and out["per_transition_mse"][:9].max() < 1e-20
    assert out["normalized_mse_unclipped"] < 1e-20 < 1e-4 < out["normalized_mse"]


def test_halfcheetah_velocities_are_not_clipped():
    env = make_env("HalfCheetah-v4")
    obs, _ = env.reset(seed=0)
    act = np.full(6, 0.5)
    nxt, rew, terminated, _, _ = env.step(act)
    env.close()
    out = dynamics_error(
        "HalfCheetah-v4", obs[None], act[None], nxt[None], [rew], [terminated], scale=np.ones(17)
    )
    assert out["mse"] < 1e-20 and out["reward_mse"] < 1e-20
    assert "clipped_start_fraction" not in out


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Ant-v4", "hopper-medium-v2", "Hopper-v3"])
def test_unsupported_env_is_named_with_the_supported_ones(env_id, hopper_real):
    o, a, r, n, t = hopper_real
    with pytest.raises(EnvError, match=rf"'{env_id}'.*Hopper-v4, Hopper-v5, Walker2d-v4"):
        dynamics_error(env_id, o, a, n)


def test_bad_arrays_are_named(hopper_real):
    o, a, r, n, t = hopper_real
    with pytest.raises(DatasetError, match=r"observations has shape \(2000, 10\).*needs \(N, 11\)"):
        dynamics_error("Hopper-v4", o[:, :10], a, n)
    with pytest.raises(
        DatasetError, match=r"next_observations has shape \(1999, 11\).*\(2000, 11\)"
    ):
        dynamics_error("Hopper-v4", o, a, n[:-1])
    with pytest.raises(DatasetError, match=r"actions has shape \(2000, 6\).*\(2000, 3\)"):
        dynamics_error("Hopper-v4", o, np.zeros((2000, 6)), n)
    bad = n.copy()
    bad[7, 2] = np.nan
    with pytest.raises(
        DatasetError, match=r"next_observations has 1 NaN/inf values \(first in row 7\)"
    ):
        dynamics_error("Hopper-v4", o, a, bad)
    with pytest.raises(DatasetError, match=r"rewards has 1 NaN"):
        dynamics_error("Hopper-v4", o, a, n, np.where(np.arange(2000) == 3, np.inf, r))
    with pytest.raises(DatasetError, match=r"scale .*must be \(11,\)"):
        dynamics_error("Hopper-v4", o, a, n, scale=np.ones(10))
    with pytest.raises(DatasetError, match=r"scale .*positive and finite"):
        dynamics_error("Hopper-v4", o, a, n, scale=np.zeros(11))
    with pytest.raises(DatasetError, match=r"max_transitions=0"):
        dynamics_error("Hopper-v4", o, a, n, max_transitions=0)
    with pytest.raises(DatasetError, match=r"observations is empty"):
        dynamics_error("Hopper-v4", o[:0], a[:0], n[:0])
