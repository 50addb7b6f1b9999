"""make_env, the dataset/environment fit check, and an evaluator that runs N episodes in a vector env."""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ocrl.data.d4rl import D4RL_ENV_IDS, D4RL_REF_SCORES
from ocrl.data.minari_io import flattened_observation_keys
from ocrl.data.offline import DatasetError, OfflineDataset
from ocrl.plugins import feature

Policy = Callable[[torch.Tensor], torch.Tensor]

# Gymnasium ids of the D4RL Gym-MuJoCo domains, any version (D4RL's data are -v2; ocrl evaluates on -v4).
_D4RL_GYM_ID = re.compile(r"^(?P<task>Hopper|HalfCheetah|Walker2d|Ant)-v(?P<version>[2-5])$")
# Families that gymnasium-robotics registers when imported (the optional extra `robotics`).
_ROBOTICS_ID = re.compile(
    r"^(AntMaze|PointMaze|AdroitHand|Fetch|HandManipulate|HandReach|FrankaKitchen)"
)
ROBOTICS_INSTALL = "pip install -e '.[robotics]'"


class EnvError(DatasetError):
    """Bad environment input (unknown id, missing extra); a DatasetError, so `friendly_errors` exits 2."""


def _did_you_mean(env_id: str) -> str:
    ids = [i for i in gym.registry if isinstance(i, str)]
    by_lower = {i.lower(): i for i in ids}  # "hopper-v4" should find "Hopper-v4"
    close = [by_lower[c] for c in difflib.get_close_matches(env_id.lower(), by_lower, n=3)]
    if not close:
        return "none is close: use a registered id such as 'Hopper-v4' or 'Pendulum-v1'"
    names = [f"'{c}'" for c in close]
    if len(names) > 2:
        names = [", ".join(names[:-1]), names[-1]]
    return f"did you mean {' or '.join(names)}?"


def register_env_family(env_id: str) -> None:
    """Import gymnasium-robotics for its ids (AntMaze_*, AdroitHand*, ...), which registers them; a
    one-line `EnvError` with the install command when it is missing. Other ids need nothing."""
    if not _ROBOTICS_ID.match(env_id):
        return
    try:
        import gymnasium_robotics  # noqa: F401
    except ImportError as err:
        raise EnvError(
            f"cannot make environment '{env_id}': it is a gymnasium-robotics task and "
            f"gymnasium-robotics is not installed; {ROBOTICS_INSTALL}"
        ) from err


def _mujoco_warning(message: str) -> None:
    # The v4 XMLs' deprecated compiler attributes (HalfCheetah's settotalmass) are gymnasium's to fix and say
    # nothing about the run; every other MuJoCo warning is shown once through Python's warnings.
    if "is deprecated" not in message:
        warnings.warn(f"MuJoCo: {message.strip()}", RuntimeWarning, stacklevel=1)


def route_mujoco_warnings() -> None:
    """Send MuJoCo's warnings to Python's `warnings` instead of its default, which also appends them to
    MUJOCO_LOG.TXT in the working folder (a run writes only into its run folder); a handler set by others stays."""
    try:
        import mujoco
    except ImportError:
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def make_env(env_id: str, **kwargs) -> gym.Env:
    """gym.make with a one-line `EnvError` (with a "did you mean") for unknown ids; v4 MuJoCo deprecation warnings are
    silenced and MuJoCo's other warnings go to Python's `warnings` (no MUJOCO_LOG.TXT).

    gymnasium-robotics ids are registered on first use (`register_env_family`). A Dict observation
    space (AntMaze's achieved_goal, desired_goal, observation) is flattened by `FlattenObservation`,
    the order in which `ocrl.data.read_minari` flattens a Minari dataset's Dict observations.
    """
    register_env_family(env_id)
    route_mujoco_warnings()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*is out of date.*")
            env = gym.make(env_id, **kwargs)
        if isinstance(env.observation_space, gym.spaces.Dict):
            env = gym.wrappers.FlattenObservation(env)
        return env
    except (gym.error.NameNotFound, gym.error.VersionNotFound, gym.error.NamespaceNotFound) as err:
        raise EnvError(
            f"cannot make environment '{env_id}': it is not a registered Gymnasium id; "
            f"{_did_you_mean(env_id)} (all ids: python -c 'import gymnasium; "
            "gymnasium.pprint_registry()')"
        ) from err
    except gym.error.Error as err:
        raise EnvError(
            f"cannot make environment '{env_id}': {err}. MuJoCo tasks need "
            "`pip install gymnasium[mujoco]`; otherwise use a registered Gymnasium id such as "
            "'Hopper-v4' or 'Pendulum-v1'."
        ) from err


class TimeFeature(gym.ObservationWrapper):
    """sb3_contrib's TimeFeatureWrapper: the observation gets 1 - t / max_episode_steps appended (1 after reset)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.max_steps = (env.spec.max_episode_steps if env.spec else None) or 1000
        space = env.observation_space
        low = np.append(space.low, 0.0).astype(space.dtype)
        high = np.append(space.high, 1.0).astype(space.dtype)
        self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)
        self.t = 0

    def reset(self, **kwargs):
        self.t = 0
        return super().reset(**kwargs)

    def step(self, action):
        self.t += 1
        return super().step(action)

    def observation(self, obs):
        return np.append(obs, 1.0 - self.t / self.max_steps).astype(self.observation_space.dtype)


def check_dataset_fits(dataset: OfflineDataset, env: gym.Env) -> None:
    """Raise DatasetError when the dataset's observation/action sizes differ from the environment's."""
    obs_shape = env.observation_space.shape
    act_shape = env.action_space.shape
    if obs_shape is None or act_shape is None or len(obs_shape) != 1 or len(act_shape) != 1:
        raise DatasetError(
            f"dataset '{dataset.name}': environment {env.spec.id if env.spec else env} has non-vector spaces "
            f"({env.observation_space}, {env.action_space}); only flat Box spaces are supported"
        )
    problems = []
    if obs_shape[0] != dataset.obs_dim:
        problems.append(
            f"observations have {dataset.obs_dim} dims but the environment's have {obs_shape[0]}"
        )
    if act_shape[0] != dataset.act_dim:
        problems.append(
            f"actions have {dataset.act_dim} dims but the environment's have {act_shape[0]}"
        )
    parts = flattened_observation_keys(dataset.metadata)
    if parts is not None and not problems:
        # Equal sizes are not enough: the dataset's rows must be the same keys in the same order.
        inner = (
            env.env.observation_space if isinstance(env, gym.wrappers.FlattenObservation) else None
        )
        env_parts = (
            [(str(k), int(np.prod(s.shape))) for k, s in inner.spaces.items()]
            if isinstance(inner, gym.spaces.Dict)
            else None
        )
        if env_parts != parts:
            have = "a Box" if env_parts is None else ", ".join(f"{k} ({n})" for k, n in env_parts)
            problems.append(
                "observations are the flattened Dict "
                + ", ".join(f"{k} ({n})" for k, n in parts)
                + f" but the environment's are {have}"
            )
    if problems:
        env_id = env.spec.id if env.spec else str(env)
        raise DatasetError(
            f"dataset '{dataset.name}' ({dataset.source}) does not fit environment {env_id}: "
            + "; ".join(problems)
            + ". Pick the dataset recorded on this environment, or pass the matching --env-id."
        )


def normalized_score(
    returns: np.ndarray | float, ref_min: float, ref_max: float
) -> np.ndarray | float:
    """D4RL's normalised score on the x100 scale: 100 * (R - ref_min) / (ref_max - ref_min)."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def d4rl_domain(env_id: str | None) -> str | None:
    """The D4RL domain ("hopper", ...) of a Gymnasium MuJoCo id of any version -v2..-v5, else None."""
    m = _D4RL_GYM_ID.match(env_id or "")
    return m["task"].lower() if m else None


def reference_scores(
    env_id: str, *, any_version: bool = False
) -> tuple[float | None, float | None]:
    """D4RL's random/expert reference returns for the -v4 task of a D4RL domain (any -v2..-v5 with ``any_version``), else (None, None)."""
    # Online runs (sac.py) use the default: a score "normalised" by D4RL's constants on, say,
    # Walker2d-v5 (changed foot friction) is not comparable to the papers' tables.
    if any_version:
        domain = d4rl_domain(env_id)
        return D4RL_REF_SCORES[domain] if domain else (None, None)
    for domain, d4rl_env_id in D4RL_ENV_IDS.items():
        if env_id == d4rl_env_id:
            return D4RL_REF_SCORES[domain]
    return None, None


def resolve_reference_scores(
    dataset_ref_min: float | None,
    dataset_ref_max: float | None,
    env_id: str | None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> tuple[float | None, float | None, str]:
    """(min, max, source) of the scores that normalise returns: flags > dataset > D4RL table for the env > none."""
    if (ref_min_score is None) != (ref_max_score is None):
        given = "--ref-min-score" if ref_min_score is not None else "--ref-max-score"
        raise DatasetError(
            f"only {given} was given: pass both --ref-min-score and --ref-max-score (the returns "
            "of a random and an expert policy), or neither to use the dataset's or D4RL's scores"
        )
    if ref_min_score is not None:
        lo, hi, source = (
            float(ref_min_score),
            float(ref_max_score),
            "--ref-min-score/--ref-max-score",
        )
    elif dataset_ref_min is not None and dataset_ref_max is not None:
        lo, hi, source = float(dataset_ref_min), float(dataset_ref_max), "dataset metadata"
    else:
        # Minari's mujoco/* datasets carry no reference scores (Minari#323) and are recorded on
        # -v5; D4RL's constants are the only published ones for these tasks.
        lo, hi = reference_scores(env_id or "", any_version=True)
        if lo is None:
            return None, None, "none: scores are raw returns"
        return lo, hi, f"D4RL {d4rl_domain(env_id)} reference (random {lo:.2f}, expert {hi:.2f})"
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi == lo:
        raise DatasetError(
            f"reference scores from {source} are unusable (min {lo}, max {hi}): they must be "
            "finite and differ; fix them or pass both --ref-min-score and --ref-max-score"
        )
    return lo, hi, source


def episode_seeds(run_seed: int, num_episodes: int) -> list[int]:
    """Evaluation episode i starts from seed 1000 * run_seed + 100 + i, at every evaluation and for every algorithm."""
    return [1000 * run_seed + 100 + i for i in range(num_episodes)]


class Evaluator:
    """Runs `num_episodes` episodes at once (one per vector-env copy) with batched policy inference."""

    def __init__(
        self,
        env_id: str,
        num_episodes: int = 10,
        seed: int = 0,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        ref_min_score: float | None = None,
        ref_max_score: float | None = None,
        device: str | torch.device = "cpu",
        max_episode_steps: int | None = None,
        env_wrapper: Callable[[gym.Env], gym.Env]
        | None = None,  # applied to every episode's env (e.g. a time feature)
        env_kwargs: dict | None = None,  # passed to gym.make (e.g. a lot-sizing instance)
    ) -> None:
        if num_episodes <= 0:
            raise ValueError(f"num_episodes must be positive, got {num_episodes}")
        self.env_id = env_id
        self.num_episodes = num_episodes
        self.seeds = episode_seeds(seed, num_episodes)
        self.device = torch.device(device)
        kwargs = dict(env_kwargs or {})
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = max_episode_steps
        self.env_kwargs = (
            kwargs  # recorded in policy.json, so scripts/evaluate.py makes the same env
        )
        make_env(env_id, **kwargs).close()  # fail early, in this process, on a bad id
        self._env_kwargs, self._wrap = kwargs, env_wrapper or (lambda env: env)
        self.envs = self._make_envs()
        self.recorders: list[gym.wrappers.RecordVideo] = []
        self.obs_mean = (
            None
            if obs_mean is None
            else torch.as_tensor(obs_mean, dtype=torch.float32, device=self.device)
        )
        self.obs_std = (
            None
            if obs_std is None
            else torch.as_tensor(obs_std, dtype=torch.float32, device=self.device)
        )
        self.ref_min_score, self.ref_max_score = ref_min_score, ref_max_score
        # Box actions are clipped to their bounds; discrete ones (no bounds) are passed as they are.
        self.action_low = getattr(self.envs.single_action_space, "low", None)
        self.action_high = getattr(self.envs.single_action_space, "high", None)

    def _make_envs(
        self, recorded: Callable[[], gym.Env] | None = None, count: int = 0
    ) -> gym.vector.SyncVectorEnv:
        def make() -> gym.Env:
            return self._wrap(make_env(self.env_id, **self._env_kwargs))

        return gym.vector.SyncVectorEnv(
            [recorded or make] * count + [make] * (self.num_episodes - count),
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        )

    def record_video(self, folder: str | Path, episodes: int = 1) -> None:
        """Record the first `episodes` episodes of every later evaluation as MP4s in `folder` (`ocrl.envs.video`)."""
        feature("video")(self, folder, episodes)

    def normalize_obs(self, obs: np.ndarray) -> torch.Tensor:
        """Cast to float32 (D4RL data are float32, v4 envs return float64) and standardise."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if self.obs_mean is not None:
            x = (x - self.obs_mean) / self.obs_std
        return x

    @torch.no_grad()
    def __call__(self, policy: Policy, video_name: str = "eval") -> dict[str, float | None]:
        """Mean/std of the episode returns and, when reference scores are known, the normalised score (x100);
        after `record_video`, episode i is also written to `<folder>/<video_name>.mp4`, the name formatted
        with `episode=i` and `seed=` its start seed (e.g. "seed-{seed}")."""
        obs, _ = self.envs.reset(seed=self.seeds)
        for i, recorder in enumerate(self.recorders):
            recorder.start_recording(video_name.format(episode=i, seed=self.seeds[i]))
            recorder.recorded_frames.append(recorder.render())  # the first frame
        returns = np.zeros(self.num_episodes)
        lengths = np.zeros(self.num_episodes, dtype=np.int64)
        running = np.ones(self.num_episodes, dtype=bool)
        while running.any():
            action = policy(self.normalize_obs(obs)).cpu().numpy()
            if self.action_low is not None:
                action = np.clip(action, self.action_low, self.action_high)
            obs, reward, terminated, truncated, _ = self.envs.step(action)
            returns += reward * running
            lengths += running
            running &= ~(terminated | truncated)
        # A recording stops when its env restarts; for the episodes that ended last, here.
        for recorder in self.recorders:
            if recorder.recording:
                recorder.stop_recording()
        result: dict[str, float | None] = {
            "return": float(returns.mean()),
            "return_std": float(returns.std()),
            "episode_length": float(lengths.mean()),
            "normalized_score": None,
            "normalized_score_std": None,
        }
        if self.ref_min_score is not None and self.ref_max_score is not None:
            scores = normalized_score(returns, self.ref_min_score, self.ref_max_score)
            result["normalized_score"] = float(scores.mean())
            result["normalized_score_std"] = float(scores.std())
        return result

    def close(self) -> None:
        self.envs.close()
