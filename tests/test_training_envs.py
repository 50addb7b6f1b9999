"""ocrl.envs.TrainingEnvs: a checkpoint of the training envs taken mid-episode continues bit for bit."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from ocrl.envs import TimeFeature, TrainingEnvs, UnitActions, make_env
from ocrl.experiment import CheckpointError


def round_trip(state: dict) -> dict:
    """Through torch.save and torch.load(weights_only=True), as a checkpoint file goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


CASES = {
    "Hopper-v4": lambda: make_env("Hopper-v4", max_episode_steps=60),
    # Ant's reward reads xpos before stepping: the restored MjData buffer, not only the state, matters.
    "Ant-v4": lambda: make_env("Ant-v4", max_episode_steps=60),
    "Hopper-v4+TimeFeature": lambda: TimeFeature(make_env("Hopper-v4", max_episode_steps=60)),
    "Pendulum-v1": lambda: make_env("Pendulum-v1", max_episode_steps=60),
    "CartPole-v1": lambda: make_env("CartPole-v1", max_episode_steps=60),
}


@pytest.mark.parametrize("case", CASES)
def test_a_restored_copy_steps_exactly_like_the_original(case):
    make = CASES[case]
    a = TrainingEnvs(make, 2, seed=5)
    for _ in range(37):  # mid-episode, some copies already past an autoreset
        a.obs, reward, *_ = a.step(a.action_space.sample())
        a.episode_return += reward
        a.episode_length += 1
    b = TrainingEnvs(make, 2, seed=99)  # another seed: everything must come from the checkpoint
    b.load_state_dict(round_trip(a.state_dict()))
    assert np.array_equal(a.obs, b.obs) and a.obs.dtype == b.obs.dtype
    assert np.array_equal(a.episode_return, b.episode_return)
    assert np.array_equal(a.episode_length, b.episode_length)
    ends = 0
    for _ in range(150):  # past the 60-step time limit: the autoreset draws from the restored RNGs
        action = a.action_space.sample()
        assert np.array_equal(action, b.action_space.sample())  # warm-up samples
        out_a, out_b = a.step(action), b.step(action)
        for x, y in zip(out_a[:4], out_b[:4], strict=True):
            assert np.array_equal(x, y)
        done = out_a[2] | out_a[3]
        for i in np.flatnonzero(done):
            assert np.array_equal(out_a[4]["final_obs"][i], out_b[4]["final_obs"][i])
        ends += int(done.sum())
    assert ends >= 2


def test_an_unknown_wrapper_restarts_its_episode_with_a_note(capsys):
    def make():
        return gym.wrappers.RecordEpisodeStatistics(make_env("Pendulum-v1"))

    a = TrainingEnvs(make, 1, seed=5)
    for _ in range(10):
        a.obs = a.step(a.action_space.sample())[0]
    a.episode_length += 10
    state = round_trip(a.state_dict())
    assert "RecordEpisodeStatistics" in state["envs"][0]["restart"]
    b = TrainingEnvs(make, 1, seed=5)
    fresh = b.obs.copy()
    b.load_state_dict(state)
    assert "1 of 1 training envs start a new episode" in capsys.readouterr().out
    assert np.array_equal(b.obs, fresh) and b.episode_length[0] == 0


def test_a_checkpoint_of_another_env_is_refused():
    a = TrainingEnvs(lambda: make_env("Hopper-v4"), 1, seed=0)
    b = TrainingEnvs(lambda: make_env("Walker2d-v4"), 1, seed=0)
    with pytest.raises(CheckpointError, match="Hopper-v4"):
        b.load_state_dict(a.state_dict())
    c = TrainingEnvs(lambda: make_env("Hopper-v4"), 2, seed=0)
    with pytest.raises(CheckpointError, match="1 training envs, this run 2"):
        c.load_state_dict(a.state_dict())


class LogCalls:
    """A stand-in for the run's log: (step, scalars) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict]] = []

    def log(self, step: int, scalars: dict) -> None:
        self.calls.append((step, scalars))


def test_step_into_stores_the_true_last_observation_and_logs_finished_episodes():
    from ocrl.data import ReplayBuffer

    # Two copies whose episodes end (by the time limit) at steps 3 and 3: SAME_STEP autoreset.
    envs = TrainingEnvs(lambda: make_env("Pendulum-v1", max_episode_steps=3), 2, seed=0)
    buffer, run = ReplayBuffer(3, 1, 10, "cpu"), LogCalls()
    returns = np.zeros(2)
    for step in range(4):
        obs = envs.obs.copy()
        action = np.full((2, 1), 0.5, dtype=np.float32)
        envs.step_into(buffer, action, run, step, stored_action=action * 2)
        new = slice(2 * step, 2 * step + 2)
        np.testing.assert_array_equal(buffer.observations[new].numpy(), obs)
        np.testing.assert_array_equal(buffer.actions[new].numpy(), action * 2)
        returns += buffer.rewards[new].numpy().astype(np.float64)
        if step == 2:  # the true last state, not the next episode's first
            assert not np.allclose(buffer.next_observations[new].numpy(), envs.obs)
            assert buffer.timeouts[new].all() and not buffer.terminals[new].any()
            assert [s for s, _ in run.calls] == [2, 2]
            for i, (_, scalars) in enumerate(run.calls):
                assert scalars["charts/episodic_length"] == 3
                assert scalars["charts/episodic_return"] == pytest.approx(returns[i], rel=1e-6)
            np.testing.assert_array_equal(envs.episode_length, [0, 0])
        else:
            np.testing.assert_array_equal(buffer.next_observations[new].numpy(), envs.obs)
    assert len(run.calls) == 2 and list(envs.episode_length) == [1, 1]
    envs.close()


def test_check_flat_box_refuses_a_discrete_action_space():
    from ocrl.experiment import UsageError

    envs = TrainingEnvs(lambda: make_env("Pendulum-v1"), 1, seed=0)
    assert envs.check_flat_box("SAC", "Pendulum-v1") == (3, 1)
    envs = TrainingEnvs(lambda: make_env("CartPole-v1"), 1, seed=0)
    with pytest.raises(UsageError, match="--env-id CartPole-v1: SAC needs flat Box"):
        envs.check_flat_box("SAC", "CartPole-v1")


def test_act_gives_warm_up_samples_or_the_policy_action_and_maps_unit_actions():
    low, high = np.array([-2.0], np.float32), np.array([2.0], np.float32)
    unit = UnitActions(low, high)
    envs, twin = (TrainingEnvs(lambda: make_env("Pendulum-v1"), 1, seed=3) for _ in range(2))
    env_action, stored = envs.act(None, unit=unit)
    want = twin.action_space.sample()  # the same RNG draw
    assert np.array_equal(env_action, want) and np.allclose(stored, want / 2)
    env_action, stored = envs.act(lambda obs: torch.full((obs.shape[0], 1), 1.5))
    assert np.array_equal(env_action, stored) and stored.tolist() == [[1.5]]
    env_action, stored = envs.act(lambda obs: torch.full((obs.shape[0], 1), 1.5), unit=unit)
    assert stored.tolist() == [[1.5]] and env_action.tolist() == [
        [2.0]
    ]  # clipped to [-1, 1], then mapped
    assert unit.acting(lambda obs: obs)(torch.tensor([[-0.5]])).tolist() == [[-1.0]]
