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


def record_first_episode(evaluator: Any, folder: str | Path) -> None:
    """Make `evaluator` (an `Evaluator`) record the first episode of every later evaluation as an MP4 in
    `folder`; on Linux without a display MuJoCo renders through EGL unless MUJOCO_GL says otherwise."""
    if evaluator.recorder is not None:
        return
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        # Read when a MuJoCo env makes its renderer, so setting it after `import mujoco` still counts.
        os.environ.setdefault("MUJOCO_GL", "egl")

    def first() -> gym.Env:
        env = make_env(evaluator.env_id, render_mode="rgb_array", **evaluator._env_kwargs)
        env = evaluator._wrap(env)
        # Started and stopped by Evaluator.__call__, one file per evaluation; no episode starts one.
        with warnings.catch_warnings():
            # A resumed run records into its videos/ again: step-named files are not overwritten.
            warnings.filterwarnings("ignore", message=".*Overwriting existing videos.*")
            return gym.wrappers.RecordVideo(env, str(folder), episode_trigger=lambda _: False)

    evaluator.envs.close()
    evaluator.envs = evaluator._make_envs(first)
    evaluator.recorder = evaluator.envs.envs[0]
