"""Evaluation, normalised scores, the CLI with presets, checkpoints, RNG state and the replay buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ocrl.algos import td3_bc
from ocrl.data import ReplayBuffer
from ocrl.data.d4rl import D4RL_REF_SCORES
from ocrl.data.offline import DatasetError
from ocrl.envs import (
    Evaluator,
    check_dataset_fits,
    episode_seeds,
    make_env,
    normalized_score,
    reference_scores,
)
from ocrl.experiment import (
    check_finite,
    cli,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def linear_policy(obs: torch.Tensor) -> torch.Tensor:
    return torch.tanh(obs[:, :1] * 0.7 - obs[:, 1:2]) * 2.0  # Pendulum's action is in [-2, 2]


def test_evaluator_matches_sequential_rollouts():
    evaluator = Evaluator("Pendulum-v1", num_episodes=3, seed=5)
    first = evaluator(linear_policy)
    assert evaluator(linear_policy) == first  # the same seeds at every evaluation
    returns = []
    for seed in episode_seeds(5, 3):
        env = make_env("Pendulum-v1")
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            action = linear_policy(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward
            done = terminated or truncated
        returns.append(total)
    assert first["return"] == pytest.approx(np.mean(returns), rel=1e-5)
    assert first["return_std"] == pytest.approx(np.std(returns), rel=1e-4)
    assert first["episode_length"] == 200 and first["normalized_score"] is None


def test_evaluator_normalises_observations_and_scores():
    seen = []

    def policy(obs):
        seen.append(obs.clone())
        return torch.zeros(obs.shape[0], 1)

    ev = Evaluator(
        "Pendulum-v1",
        2,
        seed=0,
        obs_mean=np.ones(3),
        obs_std=np.full(3, 2.0),
        ref_min_score=-2000.0,
        ref_max_score=0.0,
    )
    result = ev(policy)
    assert seen[0].dtype == torch.float32 and seen[0].abs().max() <= (1 + 8) / 2 + 1e-6
    assert result["normalized_score"] == pytest.approx(100 * (result["return"] + 2000) / 2000)


def test_normalized_score_and_reference_scores():
    lo, hi = D4RL_REF_SCORES["hopper"]
    assert normalized_score(lo, lo, hi) == pytest.approx(0.0)
    assert normalized_score(hi, lo, hi) == pytest.approx(100.0)
    assert reference_scores("Hopper-v4") == (lo, hi)
    assert reference_scores("Walker2d-v4") == D4RL_REF_SCORES["walker2d"]
    assert reference_scores("Hopper-v5") == (
        None,
        None,
    )  # D4RL scores belong to the v4 evaluation only
    assert reference_scores("Pendulum-v1") == (None, None)


def test_make_env_unknown_id():
    with pytest.raises(ValueError, match="cannot make environment 'NoSuchEnv-v0'"):
        make_env("NoSuchEnv-v0")


def test_check_dataset_fits(hopper_random_file):
    from ocrl.data import load_dataset

    ds = load_dataset(hopper_random_file)
    check_dataset_fits(ds, make_env("Hopper-v4"))
    with pytest.raises(
        DatasetError, match="observations have 11 dims but the environment's have 17"
    ):
        check_dataset_fits(ds, make_env("Walker2d-v4"))


def test_cli_presets_and_explicit_flags():
    assert cli(td3_bc.Args, td3_bc.PRESETS, []).alpha == 2.5
    assert cli(td3_bc.Args, td3_bc.PRESETS, ["--preset", "halfcheetah-alpha40"]).alpha == 40.0
    args = cli(td3_bc.Args, td3_bc.PRESETS, ["--preset=halfcheetah-alpha40", "--alpha", "3"])
    assert args.alpha == 3.0 and args.preset == "halfcheetah-alpha40"
    # --dataset alone never changes hyperparameters
    assert cli(td3_bc.Args, td3_bc.PRESETS, ["--dataset", "halfcheetah-medium-v2"]).alpha == 2.5


def test_cli_unknown_preset_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(td3_bc.Args, td3_bc.PRESETS, ["--preset", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --preset nope: expected one of ") and "\n" not in err


def test_checkpoint_round_trip_and_errors(tmp_path):
    state = {"step": 7, "w": torch.arange(3.0), "nested": {"x": torch.ones(2)}}
    save_checkpoint(tmp_path / "ckpt.pt", state)
    loaded = load_checkpoint(tmp_path / "ckpt.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["nested"]["x"], torch.ones(2))
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="--resume needs a run folder"):
        load_checkpoint(tmp_path / "missing")


def test_rng_state_round_trip(tmp_path):
    np_rng = seed_everything(11)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state(np_rng)})
    expected = (torch.rand(3), np.random.rand(2), np_rng.random(2))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], np_rng)
    again = (torch.rand(3), np.random.rand(2), np_rng.random(2))
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    np.testing.assert_array_equal(expected[2], again[2])


def test_check_finite_stops_divergence():
    check_finite(3, {"loss": 1.0})
    with pytest.raises(
        FloatingPointError, match="diverged at step 9: non-finite losses/critic_loss=nan"
    ):
        check_finite(9, {"losses/critic_loss": float("nan"), "losses/actor_loss": 0.5})


def test_replay_buffer_ring_and_state():
    buf = ReplayBuffer(2, 1, capacity=5)
    for start in (0, 3):
        obs = np.arange(start, start + 3, dtype=np.float32)[:, None].repeat(2, 1)
        buf.add(obs, obs[:, :1], obs[:, 0], obs + 1, np.zeros(3), np.array([False, False, True]))
    assert len(buf) == 5 and buf.ptr == 1
    assert buf.observations[:, 0].tolist() == [
        5.0,
        1.0,
        2.0,
        3.0,
        4.0,
    ]  # row 0 overwritten by the 6th add
    batch = buf.sample(64)
    assert batch.observations.shape == (64, 2) and batch.terminals.shape == (64,)
    torch.testing.assert_close(batch.next_observations, batch.observations + 1)
    other = ReplayBuffer(2, 1, capacity=8)
    other.load_state_dict(buf.state_dict())
    assert len(other) == 5 and torch.equal(other.observations[:5], buf.observations)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(2, 1, capacity=3).load_state_dict(buf.state_dict())
