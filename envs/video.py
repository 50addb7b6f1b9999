"""Videos of evaluation episodes (--capture-video, scripts/evaluate.py --video): imported only when a run
records (`ocrl.plugins.FEATURES`); RecordVideo writes the MP4s with MoviePy (the optional extra `video`)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym

from ocrl.envs.evaluation import make_env


def record_episodes(evaluator: Any, folder: str | Path, episodes: int = 1) -> None:
    """Make `evaluator` (an `Evaluator`) record its first `episodes` episodes of every later evaluation as MP4s
    in `folder`; on Linux without a display MuJoCo renders through EGL unless MUJOCO_GL says otherwise."""
    if evaluator.recorders:
        return
    if not 1 <= episodes <= evaluator.num_episodes:
        raise ValueError(f"episodes must lie in [1, {evaluator.num_episodes}], got {episodes}")
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        # Read when a MuJoCo env makes its renderer, so setting it after `import mujoco` still counts.
        os.environ.setdefault("MUJOCO_GL", "egl")

    def recorded() -> gym.Env:
        env = make_env(evaluator.env_id, render_mode="rgb_array", **evaluator._env_kwargs)
        env = evaluator._wrap(env)
        # Started and stopped by Evaluator.__call__, one file per episode; no episode starts one by itself.
        with warnings.catch_warnings():
            # A resumed run records into its videos/ again: step-named files are not overwritten.
            warnings.filterwarnings("ignore", message=".*Overwriting existing videos.*")
            return gym.wrappers.RecordVideo(
                env, str(folder), episode_trigger=lambda _: False, disable_logger=True
            )

    evaluator.envs.close()
    evaluator.envs = evaluator._make_envs(recorded, episodes)
    evaluator.recorders = list(evaluator.envs.envs[:episodes])
