"""AntMaze and Adroit for real users: Minari datasets with Dict observations (flattened as gymnasium's
FlattenObservation), the env made from the dataset's recorded spec, AntMaze's reward - 1 in EXPO, and
the `robotics` extra (gymnasium-robotics) imported only when an id needs it.

The datasets are written here by minari's own `create_dataset_from_buffers` into a temporary
MINARI_DATASETS_PATH, so they are in Minari's exact on-disk format and nothing is downloaded.
"""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from ocrl.algos import expo
from ocrl.data import ReplayBuffer, load_dataset
from ocrl.data.minari_io import read_minari
from ocrl.data.offline import DatasetError
from ocrl.envs import (
    EnvError,
    check_dataset_fits,
    dataset_env_kwargs,
    load_offline_task,
    make_env,
)
from ocrl.experiment import UsageError, cli

DICT_ENV = "OcrlTestDictGoal-v0"
NESTED_ENV = "OcrlTestNestedDict-v0"


class DictGoalEnv(gym.Env):
    """A point that moves toward a goal, with AntMaze's three observation keys (declared out of order:
    gymnasium's Dict sorts them, and so must the flattening) and a sparse reward."""

    def __init__(self, nested: bool = False) -> None:
        box = lambda n: gym.spaces.Box(-np.inf, np.inf, (n,), np.float64)  # noqa: E731
        spaces = {"observation": box(3), "desired_goal": box(2), "achieved_goal": box(2)}
        if nested:
            spaces["extra"] = gym.spaces.Dict({"inner": box(1)})
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.nested = nested

    def _obs(self) -> dict:
        obs = {
            "observation": np.array([*self.pos, self.t], dtype=np.float64),
            "desired_goal": self.goal.copy(),
            "achieved_goal": self.pos.copy(),
        }
        if self.nested:
            obs["extra"] = {"inner": np.array([0.0])}
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.t = 0.0
        return self._obs(), {}

    def step(self, action):
        self.pos = self.pos + 0.1 * np.asarray(action, dtype=np.float64)
        self.t += 1.0
        reward = float(np.linalg.norm(self.pos - self.goal) < 0.5)
        return self._obs(), reward, False, False, {}


if DICT_ENV not in gym.registry:
    gym.register(DICT_ENV, entry_point=f"{__name__}:DictGoalEnv", max_episode_steps=6)
    gym.register(
        NESTED_ENV,
        entry_point=f"{__name__}:DictGoalEnv",
        max_episode_steps=6,
        kwargs={"nested": True},
    )


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def stack(values: list):
    """Per-step observations as Minari stores an episode: one array per (nested) Dict key."""
    if isinstance(values[0], dict):
        return {key: stack([v[key] for v in values]) for key in values[0]}
    return np.stack(values)


def collect(env: gym.Env, dataset_id: str, episodes: int, seed: int = 0, **kwargs) -> list[list]:
    """Write `episodes` random episodes of `env` as Minari dataset `dataset_id` with
    minari.create_dataset_from_buffers (DataCollector would need jax); return each episode's raw
    observations (T + 1), as the env gave them."""
    import minari
    from minari.data_collector import EpisodeBuffer

    env.action_space.seed(seed)
    raw, buffers = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        seen, actions, rewards, terms, truncs = [obs], [], [], [], []
        while not (terms and (terms[-1] or truncs[-1])):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            seen.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terms.append(bool(terminated))
            truncs.append(bool(truncated))
        raw.append(seen)
        buffers.append(
            EpisodeBuffer(
                id=i,
                seed=seed + i,
                observations=stack(seen),
                actions=np.stack(actions),
                rewards=rewards,
                terminations=terms,
                truncations=truncs,
            )  # fmt: skip
        )
    minari.create_dataset_from_buffers(
        dataset_id, buffers, env=env, algorithm_name="random", ref_min_score=0.0,
        ref_max_score=1.0, author="ocrl tests", author_email="tests@ocrl.invalid",
        description="random episodes", code_permalink="https://example.invalid", **{"eval_env": env, **kwargs},
    )  # fmt: skip
    return raw


# ------------------------------------------------------------------ data: Dict observations
def test_dict_observations_are_flattened_as_flatten_observation(minari_root):
    env = gym.make(DICT_ENV)
    raw = collect(env, "ocrltest/antmaze/dict-v0", episodes=3)
    ds = read_minari("ocrltest/antmaze/dict-v0")
    space = env.observation_space
    assert list(space.keys()) == [
        "achieved_goal",
        "desired_goal",
        "observation",
    ]  # sorted by gymnasium
    want = np.concatenate([[gym.spaces.flatten(space, o) for o in ep[:-1]] for ep in raw])
    want_next = np.concatenate([[gym.spaces.flatten(space, o) for o in ep[1:]] for ep in raw])
    assert ds.obs_dim == 7 and len(ds) == 18
    np.testing.assert_array_equal(ds.observations, want.astype(np.float32))
    np.testing.assert_array_equal(ds.next_observations, want_next.astype(np.float32))
    # The env side: the same episode through make_env (FlattenObservation) gives the same rows.
    flat = make_env(DICT_ENV)
    assert isinstance(flat, gym.wrappers.FlattenObservation) and flat.observation_space.shape == (
        7,
    )
    obs, _ = flat.reset(seed=0)
    np.testing.assert_array_equal(obs.astype(np.float32), ds.observations[0])
    info = json.loads(ds.metadata["ocrl_flattened_observation"])
    assert info == {"space": "Dict", "keys": ["achieved_goal", "desired_goal", "observation"],
                    "sizes": [2, 2, 3]}  # fmt: skip
    assert ds.env_id == DICT_ENV


def test_nested_dict_observations_are_a_one_line_error(minari_root):
    collect(gym.make(NESTED_ENV), "ocrltest/nested/dict-v0", episodes=1)
    with pytest.raises(DatasetError) as err:
        load_dataset("ocrltest/nested/dict-v0")
    msg = str(err.value)
    assert "key 'extra' is Dict" in msg and "into a Box first" in msg and "\n" not in msg


def test_flattened_dataset_refuses_an_env_with_other_keys(minari_root):
    collect(gym.make(DICT_ENV), "ocrltest/antmaze/dict-v0", episodes=1)
    ds = load_dataset("ocrltest/antmaze/dict-v0")
    # The same keys and width in another order: the columns would be read as the wrong features.
    meta = json.loads(ds.metadata["ocrl_flattened_observation"])
    meta["keys"] = ["desired_goal", "achieved_goal", "observation"]
    ds.metadata["ocrl_flattened_observation"] = json.dumps(meta)
    with pytest.raises(DatasetError, match="flattened Dict desired_goal"):
        check_dataset_fits(ds, make_env(DICT_ENV))


def test_recorded_env_kwargs_make_the_training_and_evaluation_env(minari_root):
    # The eval spec differs from the registration: 4-step episodes; only the difference is passed.
    env = gym.make(DICT_ENV)
    collect(
        env,
        "ocrltest/antmaze/dict-v0",
        episodes=2,
        eval_env=gym.make(DICT_ENV, max_episode_steps=4),
    )
    task = load_offline_task("ocrltest/antmaze/dict-v0", normalize_obs=False)
    assert task.env_kwargs == {"max_episode_steps": 4}
    result = task.evaluator(num_episodes=2, seed=0)(lambda o: torch.zeros(o.shape[0], 2))
    assert result["episode_length"] == 4.0
    assert dataset_env_kwargs(task.dataset, "Pendulum-v1") == {}  # another env: nothing recorded


# ------------------------------------------------------------------ EXPO: reward - 1, preset
@pytest.mark.parametrize(
    "flag, dataset, env_id, expected",
    [
        ("auto", "D4RL/antmaze/large-diverse-v1", "AntMaze_Large_Diverse_GR-v4", -1.0),
        ("auto", "/data/minari/D4RL/antmaze/umaze-v1", "AntMaze_UMaze-v4", -1.0),
        ("auto", "my-run", "AntMaze_Medium-v4", -1.0),
        ("auto", "D4RL/pen/human-v2", "AdroitHandPen-v1", 0.0),
        ("auto", "ocrl/hopper/medium-v0", "Hopper-v4", 0.0),
        (0.0, "D4RL/antmaze/large-diverse-v1", "AntMaze_Large_Diverse_GR-v4", 0.0),
        (-2.5, "ocrl/hopper/medium-v0", "Hopper-v4", -2.5),
    ],
)
def test_reward_bias_auto_is_minus_one_on_antmaze_only(flag, dataset, env_id, expected):
    assert expo.reward_bias(flag, dataset, env_id) == expected


def test_reward_bias_shifts_every_minibatch_offline_and_online_rows():
    offline, online = ReplayBuffer(3, 2, 20), ReplayBuffer(3, 2, 20)
    for buf, r in ((offline, 0.0), (online, 1.0)):
        buf.add(torch.zeros(20, 3), torch.zeros(20, 2), torch.full((20,), r), torch.zeros(20, 3),
                torch.zeros(20), torch.zeros(20))  # fmt: skip
    for batch in expo.mixed_minibatches(offline, online, batch_size=8, utd=3, bias=-1.0):
        assert torch.equal(batch.rewards, torch.tensor([-1.0, 0.0] * 4))
    for batch in expo.mixed_minibatches(offline, online, batch_size=8, utd=2):
        assert torch.equal(batch.rewards, torch.tensor([0.0, 1.0] * 4))
    assert torch.equal(offline.rewards[:20], torch.zeros(20))  # the buffers keep the env's rewards


def test_antmaze_preset_is_the_scripts_values_and_flags_win():
    args = cli(expo.Args, expo.PRESETS, ["--preset", "antmaze"])
    assert (args.num_min_qs, args.backup_entropy, args.hidden) == (1, False, (256, 256, 256))
    assert (args.edit_action_scale, args.total_steps, args.reward_bias) == (0.05, 300_000, -1.0)
    assert (args.n_samples, args.n_edit_samples, args.utd_ratio) == (8, 8, 20)
    assert expo.Args().num_min_qs == 2 and expo.Args().reward_bias == "auto"  # defaults untouched
    args = cli(expo.Args, expo.PRESETS, ["--preset", "antmaze", "--num-min-qs", "2"])
    assert args.num_min_qs == 2 and args.reward_bias == -1.0
    with pytest.raises(UsageError, match="--reward-bias nan"):
        expo.check_expo_args(expo.Args(reward_bias=float("nan")))


# ------------------------------------------------------------------ the robotics extra
def test_missing_gymnasium_robotics_is_a_one_line_install_hint(monkeypatch, run_algorithm):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # import now fails
    with pytest.raises(EnvError) as err:
        make_env("AntMaze_UMaze-v4")
    msg = str(err.value)
    assert "pip install -e '.[robotics]'" in msg and "\n" not in msg
    make_env("Pendulum-v1").close()  # other ids never import it
    code, stderr = run_algorithm(expo, ["--env-id", "AdroitHandPen-v1", "--no-progress"])
    assert code == 2 and stderr.startswith("error: ") and "\n" not in stderr
    assert "pip install -e '.[robotics]'" in stderr


def test_antmaze_env_is_flat_and_matches_a_dataset_collected_from_it(minari_root):
    pytest.importorskip("gymnasium_robotics")
    # The kwargs Minari's D4RL AntMaze eval specs set, and short episodes.
    env = make_env(
        "AntMaze_UMaze-v4", continuing_task=True, reset_target=False, max_episode_steps=5
    )
    collect(env.env, "ocrltest/antmaze/umaze-v0", episodes=2)  # the Dict env, as Minari records it
    ds = load_dataset("ocrltest/antmaze/umaze-v0")
    assert ds.env_id == "AntMaze_UMaze-v4" and env.observation_space.shape == (ds.obs_dim,) == (31,)
    assert json.loads(ds.metadata["ocrl_flattened_observation"])["sizes"] == [2, 2, 27]
    task = load_offline_task("ocrltest/antmaze/umaze-v0", normalize_obs=False)
    assert task.env_kwargs == {
        "continuing_task": True,
        "reset_target": False,
        "max_episode_steps": 5,
    }
    flat = make_env(task.env_id, **task.env_kwargs)
    obs, _ = flat.reset(seed=0)  # the dataset's first episode was reset with seed 0
    np.testing.assert_allclose(obs.astype(np.float32), ds.observations[0], rtol=0, atol=0)
    assert obs.shape == (31,)


def test_adroit_pen_makes_and_steps_through_make_env():
    pytest.importorskip("gymnasium_robotics")
    env = make_env("AdroitHandPen-v1")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == obs.shape == (45,) and env.action_space.shape == (24,)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert obs.shape == (45,) and np.isfinite(reward)
    env.close()


def test_expo_runs_on_a_tiny_antmaze_minari_dataset(minari_root, tmp_path, capsys):
    pytest.importorskip("gymnasium_robotics")
    env = make_env(
        "AntMaze_UMaze-v4", continuing_task=True, reset_target=False, max_episode_steps=10
    )
    collect(env.env, "ocrltest/antmaze/umaze-v0", episodes=3)  # the Dict env, as Minari records it
    argv = [
        "--preset", "antmaze", "--dataset", "ocrltest/antmaze/umaze-v0", "--total-steps", "12",
        "--learning-starts", "6", "--batch-size", "8", "--utd-ratio", "2", "--num-qs", "2",
        "--hidden", "8", "8", "--diffusion-width", "8", "--diffusion-blocks", "1", "--time-dim", "4",
        "--n-samples", "2", "--n-edit-samples", "1", "--diffusion-steps", "2", "--eval-every", "12",
        "--eval-episodes", "1", "--log-every", "6", "--device", "cpu", "--no-progress",
        "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    metrics = expo.main(cli(expo.Args, expo.PRESETS, argv))
    out = capsys.readouterr().out
    assert "reward bias: -1 on every minibatch" in out
    assert metrics["steps"] == 12 and np.isfinite(metrics["return"])
    assert metrics["env_id"] == "AntMaze_UMaze-v4"
    assert "max_episode_steps" in out  # the recorded 10-step episodes, not the registered 700
    assert json.loads((tmp_path / "run" / "config.json").read_text())["num_min_qs"] == 1
