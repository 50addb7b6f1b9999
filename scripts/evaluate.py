"""Evaluate a run's policy file (policy.pt2) on N episodes, optionally on another env, and record videos.

    python scripts/evaluate.py runs/td3_bc__hopper... --episodes 10
    python scripts/evaluate.py RUN_DIR --env-id Hopper-v5 --seed 3 --video videos/

Episodes start from the run's evaluation seeds (`ocrl.envs.episode_seeds` of the run's seed, or of --seed),
so with the run's settings the mean return is the run's last evaluation return. Prints the mean return and,
with the run's reference scores, the D4RL-normalised score; writes eval.json into the run folder. --video
records MP4s of the first episodes (at most 3) through Gymnasium's RecordVideo: it needs the `video` extra
(pip install -e '.[video]') and a headless MuJoCo backend (MUJOCO_GL=egl with libegl1, or
MUJOCO_GL=osmesa with libosmesa6; egl is tried when MUJOCO_GL is unset and there is no display).
--onnx evaluates the run's policy.onnx (--export-onnx) with onnxruntime instead (the `onnx` extra).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from ocrl.experiment.run import UsageError

VIDEO_EPISODES = 3


@dataclass
class Args:
    """Evaluate a run's policy.pt2 on N episodes of its env (or another that fits); optionally record MP4s."""

    run_dir: tyro.conf.Positional[str]
    """a run folder holding policy.pt2 and policy.json"""
    episodes: int | None = None
    """episodes, run in parallel as in the run's evaluations (default: the run's --eval-episodes)"""
    env_id: str | None = None
    """another env whose observation and action shapes fit the policy (default: the run's)"""
    seed: int | None = None
    """episode i starts from seed 1000 * seed + 100 + i (default: the run's --seed)"""
    video: str | None = None
    """folder for MP4s of the first (at most 3) episodes; needs the `video` extra and EGL or OSMesa"""
    progress: bool = True
    """show a progress bar of environment steps"""
    onnx: bool = False
    """evaluate policy.onnx (written by --export-onnx) with onnxruntime instead of policy.pt2"""


class InputError(UsageError):
    """Bad input: one line, exit 2."""


def read_info(run_dir: Path) -> dict:
    """policy.json of a run folder, with a one-line error when the folder has no policy file."""
    from ocrl.experiment.policy import POLICY_FILE, POLICY_INFO

    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder: pass a run folder (runs/<algo>__...)")
    if not (run_dir / POLICY_FILE).is_file() or not (run_dir / POLICY_INFO).is_file():
        raise InputError(
            f"{run_dir} holds no {POLICY_FILE} and {POLICY_INFO}: pass the folder of a finished run of "
            "an algorithm that writes a policy file"
        )
    try:
        return json.loads((run_dir / POLICY_INFO).read_text())
    except json.JSONDecodeError:
        raise InputError(
            f"{run_dir / POLICY_INFO} is not valid JSON; the run folder is damaged"
        ) from None


def check_fits(info: dict, env, env_id: str) -> None:
    """The env's observation and action shapes must be the policy's."""
    want_obs = tuple(info["observation_space"]["shape"])
    want_act = tuple(info["action_space"]["shape"])
    have_obs = tuple(env.observation_space.shape or ())
    have_act = tuple(env.action_space.shape or ())
    if have_obs != want_obs or have_act != want_act:
        raise InputError(
            f"--env-id {env_id}: observations {have_obs} and actions {have_act} do not fit the policy's "
            f"{want_obs} and {want_act} (trained on {info['env_id']}); pick an env with those shapes"
        )


class _Counting:
    """The policy, advancing a progress bar of environment steps at every call."""

    def __init__(self, policy, bar) -> None:
        self.policy, self.bar = policy, bar

    def __call__(self, obs):
        self.bar.update(1)
        return self.policy(obs)


def onnx_policy(run_dir: Path):
    """policy.onnx of a run under onnxruntime, as a function of float32 torch observations."""
    import numpy as np
    import torch

    from ocrl.experiment.policy import ONNX_FILE

    if not (run_dir / ONNX_FILE).is_file():
        raise InputError(
            f"--onnx: {run_dir} holds no {ONNX_FILE}; train with --export-onnx, or evaluate policy.pt2 "
            "without --onnx"
        )
    try:
        import onnxruntime
    except ImportError:
        raise InputError("--onnx needs onnxruntime: pip install -e '.[onnx]'") from None
    session = onnxruntime.InferenceSession(
        str(run_dir / ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def act(obs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: np.asarray(obs.cpu(), np.float32)})[0])

    return act


def evaluate(
    run_dir: Path,
    episodes: int | None = None,
    env_id: str | None = None,
    seed: int | None = None,
    video: Path | None = None,
    progress: bool = True,
    onnx: bool = False,
) -> dict:
    """Evaluate the run's policy; write and return eval.json's contents."""
    info = read_info(run_dir)
    from tqdm import tqdm

    from ocrl.envs.evaluation import (
        Evaluator,
        TimeFeature,
        make_env,
        reference_scores,
    )
    from ocrl.experiment.policy import load_policy
    from ocrl.files import atomic_write_text

    if episodes is not None and episodes <= 0:
        raise InputError(f"--episodes {episodes}: must be positive")
    env_id = env_id or info["env_id"]
    episodes = episodes or info["eval_episodes"]
    seed = info["seed"] if seed is None else seed
    missing = info.get("env_kwargs_unrecorded") or []
    if missing and env_id == info["env_id"]:
        raise InputError(
            f"{run_dir}: the run made {env_id} with settings that policy.json cannot hold "
            f"({', '.join(missing)}), so evaluate.py cannot rebuild its env; load the policy with "
            "ocrl.load_policy and step that env yourself"
        )
    # The run's env settings (a dataset's recorded kwargs) belong to its own env id only.
    kwargs = dict(info.get("env_kwargs") or {}) if env_id == info["env_id"] else {}
    wrap = TimeFeature if info.get("time_feature") else (lambda env: env)
    probe = wrap(make_env(env_id, **kwargs))
    check_fits(info, probe, env_id)
    max_steps = (probe.spec.max_episode_steps if probe.spec else None) or 1000
    probe.close()
    act = onnx_policy(run_dir) if onnx else load_policy(run_dir).module
    # The run's reference scores on its env; D4RL's for another version of a D4RL domain, else none.
    if env_id == info["env_id"]:
        lo, hi = info.get("ref_min_score"), info.get("ref_max_score")
    else:
        lo, hi = reference_scores(env_id, any_version=True)
    if video is not None:
        try:
            import moviepy  # noqa: F401
        except ImportError:
            raise InputError(
                "--video needs moviepy, which Gymnasium's RecordVideo writes MP4s with: "
                "pip install -e '.[video]'"
            ) from None
    # ocrl's Evaluator, as in the run: the same vector env, seeds and batch, so the same returns.
    evaluator = Evaluator(
        env_id, episodes, seed, ref_min_score=lo, ref_max_score=hi, env_wrapper=wrap,
        env_kwargs=kwargs,
    )  # fmt: skip
    if video is not None:
        # The first episodes, as --capture-video records a run's: seed-<seed>-episode-0.mp4.
        evaluator.record_video(video, episodes=min(VIDEO_EPISODES, episodes))
    bar = tqdm(total=max_steps, desc="steps", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        result = evaluator(_Counting(act, bar), video_name="seed-{seed}-episode-0")
    finally:
        evaluator.close()
        bar.close()
    elapsed = time.perf_counter() - start
    result = {
        "env_id": env_id, "episodes": episodes, "seed": seed, **result,
        "ref_min_score": lo, "ref_max_score": hi, "wall_time_s": round(elapsed, 3),
        "video": str(video) if video is not None else None,
        "policy_file": "policy.onnx" if onnx else "policy.pt2",
    }  # fmt: skip
    atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2))
    score = result["normalized_score"]
    shown = (
        f", normalised score {score:.1f} +- {result['normalized_score_std']:.1f}"
        if score is not None
        else ""
    )
    print(
        f"{env_id}, {episodes} episodes from seed {seed}: return {result['return']:.2f} +- "
        f"{result['return_std']:.2f}{shown} ({elapsed:.1f}s); {run_dir / 'eval.json'}"
    )
    return result


def main(args: Args) -> dict:
    """Evaluate args.run_dir's policy as the flags say; the result is also in eval.json."""
    video = Path(args.video) if args.video is not None else None
    return evaluate(
        Path(args.run_dir), args.episodes, args.env_id, args.seed, video, args.progress, args.onnx
    )


if __name__ == "__main__":
    from ocrl.experiment import friendly_errors

    with friendly_errors():
        main(tyro.cli(Args))
