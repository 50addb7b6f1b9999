"""--track (Weights & Biases, in offline mode: no network), --capture-video (MP4s of evaluation episodes), and
the one-line refusal of each optional flag (--export-onnx too) without its extra."""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest

from ocrl.algos import sac, td3_bc

TINY_SAC = dict(
    env_id="Pendulum-v1", total_steps=300, learning_starts=100, eval_every=150, eval_episodes=1,
    hidden=(16, 16), batch_size=32, progress=False,
)  # fmt: skip


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B in offline mode, its config and cache folders inside tmp_path."""
    pytest.importorskip("wandb", reason="the optional extra `track` is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))


def _records(path: Path):
    """The protobuf records of an offline run's run-<id>.wandb file (LevelDB's log format: 32 KiB blocks of
    chunks with a 7-byte header, after W&B's own 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = path.read_bytes(), 7, 32 * 1024, b""
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, size, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + size], pos + 7 + size
        if kind in (1, 2):  # a full record, or the first chunk of one
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # "eval/return" may come as the path eval, return


def offline_run(run_dir: Path, n: int = 0) -> dict:
    """The run id, name, project, group, resumed flag, config and final summary of the n-th offline W&B run in a
    run folder; W&B's service may still be writing the file after `finish`, so it is read until complete."""
    deadline = time.monotonic() + 30
    while True:
        out = _read_offline_run(run_dir, n)
        if ("id" in out and "final/return" in out["summary"]) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_offline_run(run_dir: Path, n: int) -> dict:
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    (file,) = folders[n].glob("run-*.wandb")
    out: dict = {"summary": {}, "config": {}, "history_steps": []}
    for record in _records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, name=run.display_name, project=run.project)
            out.update(group=run.run_group, resumed=run.resumed)
            out["config"].update({c.key: json.loads(c.value_json) for c in run.config.update})
        elif kind == "summary":
            out["summary"].update(
                {_key(s): json.loads(s.value_json) for s in record.summary.update}
            )
        elif kind == "history":
            items = {_key(h): json.loads(h.value_json) for h in record.history.item}
            out["history_steps"].append(items.get("global_step"))
    return out


def test_track_logs_scalars_and_config_to_an_offline_wandb_run(offline_wandb, tmp_path):
    run_dir = tmp_path / "run"
    args = sac.Args(**TINY_SAC, run_dir=str(run_dir), track=True, wandb_group="g1")
    metrics = sac.main(args)
    assert list(run_dir.glob("events.out.tfevents.*"))  # TensorBoard stays
    wb = offline_run(run_dir)
    assert wb["name"] == "run" and wb["project"] == "ocrl" and wb["group"] == "g1"
    assert wb["config"]["env_id"] == "Pendulum-v1" and wb["config"]["total_steps"] == 300
    # The same last evaluation as metrics.json, and the loss logs, against the environment step.
    assert wb["summary"]["eval/return"] == pytest.approx(metrics["return"], rel=1e-12)
    assert "losses/critic_loss" in wb["summary"] and wb["summary"]["global_step"] == 300
    assert wb["summary"]["final/return"] == pytest.approx(metrics["return"], rel=1e-12)
    steps = [s for s in wb["history_steps"] if s is not None]
    assert steps == sorted(steps) and 150 in steps and 300 in steps


def test_a_resumed_run_continues_its_wandb_run(offline_wandb, tmp_path):
    run_dir = tmp_path / "run"
    sac.main(
        sac.Args(
            **{**TINY_SAC, "total_steps": 150}, run_dir=str(run_dir), save_model=True, track=True
        )
    )
    first = offline_run(run_dir)
    metrics = sac.main(sac.Args(**TINY_SAC, resume=str(run_dir)))  # --track comes from config.json
    second = offline_run(run_dir, 1)
    assert second["id"] == first["id"]
    assert second["summary"]["eval/return"] == pytest.approx(metrics["return"], rel=1e-12)
    assert second["summary"]["global_step"] == 300


@pytest.mark.parametrize(
    "algo, flag, missing, extra",
    [
        (td3_bc, "--track", "wandb", "track"),
        (sac, "--capture-video", "moviepy", "video"),
        (td3_bc, "--export-onnx", "onnxruntime", "onnx"),
    ],
)
def test_a_flag_without_its_extra_is_one_line_exit_2_and_no_folder(
    algo, flag, missing, extra, monkeypatch, tmp_path, run_algorithm
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    run_dir = tmp_path / "run"
    code, err = run_algorithm(algo, [flag, "--run-dir", str(run_dir), "--no-progress"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert flag in err and missing in err and f"pip install -e '.[{extra}]'" in err
    assert not run_dir.exists()


def _can_render_mujoco() -> str | None:
    """None when a Hopper frame renders headless, else why not."""
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")
    from ocrl.envs import make_env

    try:
        env = make_env("Hopper-v5", render_mode="rgb_array")
        env.reset(seed=0)
        env.render()
        env.close()
    except (
        Exception
    ) as err:  # mujoco raises FatalError, ImportError or AttributeError without a GL library
        return f"MuJoCo cannot render with MUJOCO_GL={os.environ['MUJOCO_GL']}: {err}"
    return None


def test_capture_video_writes_a_playable_mp4_of_every_evaluation(tmp_path):
    pytest.importorskip("moviepy", reason="the optional extra `video` is not installed")
    imageio = pytest.importorskip("imageio")
    why = _can_render_mujoco()
    if why:
        pytest.skip(why)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    args = sac.Args(
        **{**TINY_SAC, "env_id": "Hopper-v5", "total_steps": 200, "eval_every": 100},
        run_dir=str(run_dir), capture_video=True,
    )  # fmt: skip
    sac.main(args)
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["step-000000100.mp4", "step-000000200.mp4"]
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    lengths = {e.step: int(e.value) for e in acc.Scalars("eval/episode_length")}
    for video in videos:
        reader = imageio.get_reader(video, "ffmpeg")
        # The reset frame and one per step of the (single) evaluation episode.
        assert reader.count_frames() == lengths[int(video.stem.split("-")[1])] + 1
        frame = reader.get_data(0)
        assert frame.shape == (480, 480, 3) and frame.std() > 0  # a picture, not a blank
        assert reader.get_meta_data()["fps"] == 125  # Hopper's render_fps: real time
        reader.close()
    assert not list(tmp_path.glob("*.mp4"))  # nothing outside the run folder


def test_wandb_that_cannot_start_is_one_line_exit_2_and_no_run(
    offline_wandb, monkeypatch, tmp_path, run_algorithm
):
    from ocrl.experiment.run import WandbTracker

    def no_login(*_):
        raise RuntimeError("No API key configured. Use `wandb login` to log in.\nmore detail")

    monkeypatch.setattr(WandbTracker, "_init", staticmethod(no_login))
    run_dir = tmp_path / "run"
    argv = ["--env-id", "Pendulum-v1", "--track", "--run-dir", str(run_dir), "--no-progress"]
    code, err = run_algorithm(sac, argv)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "No API key configured" in err and "WANDB_MODE=offline" in err
    assert not (run_dir / "config.json").exists() and not list(run_dir.glob("events.*"))
