"""scripts/sweep.py, local backend: a tiny grid, resume without redoing finished runs, failures reported."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_local_sweep_runs_resumes_and_reports_failures(hopper_random_file, tmp_path):
    sweep = load_script()
    args = sweep.Args(
        algos=("td3_bc", "prdc"), datasets=(hopper_random_file,), seeds=(0, 1),
        flags=("total_steps=40", "eval_every=40", "eval_episodes=1", "log_every=20"),
        out_dir=str(tmp_path), workers=2,
    )  # fmt: skip
    result = sweep.main(args)
    assert result["failed"] == [] and len(result["finished"]) == 4
    for run in result["finished"]:
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        assert metrics["steps"] == 40
        assert "--seed" in (Path(run) / "stdout.log").read_text()

    # Resume: only the run without metrics.json runs again.
    redo = Path(result["finished"][0])
    (redo / "metrics.json").unlink()
    stamps = {
        run: (Path(run) / "metrics.json").stat().st_mtime_ns for run in result["finished"][1:]
    }
    again = sweep.main(args)
    assert again["finished"] == [str(redo)] and again["failed"] == []
    assert all((Path(run) / "metrics.json").stat().st_mtime_ns == t for run, t in stamps.items())

    # A failing run is reported with its log and does not stop the others.
    bad = sweep.Args(
        algos=("td3_bc",), datasets=(hopper_random_file, "does-not-exist"), seeds=(0,),
        flags=("total_steps=40", "eval_every=40", "eval_episodes=1"), out_dir=str(tmp_path / "bad"), workers=2,
    )  # fmt: skip
    out = sweep.main(bad)
    assert len(out["finished"]) == 1 and len(out["failed"]) == 1
    log = (Path(out["failed"][0]) / "stdout.log").read_text()
    assert "unknown dataset 'does-not-exist'" in log


def test_plan_passes_d4rl_presets_and_flags(tmp_path):
    sweep = load_script()
    jobs = sweep.plan(
        sweep.Args(algos=("td3_bc", "prdc", "sac"), datasets=("hopper-medium-v2", "ocrl/hopper/medium-v0"),
                   env_ids=("Pendulum-v1",), seeds=(3,), flags=("total_steps=7", "hidden=64 64"), out_dir=str(tmp_path))
    )  # fmt: skip
    assert len(jobs) == 5
    by_target = {(j.algo, j.target): j.command for j in jobs}
    assert by_target[("prdc", "hopper-medium-v2")][-7:-5] == ["--preset", "hopper-medium-v2"]
    assert "--preset" not in by_target[("td3_bc", "ocrl/hopper/medium-v0")]
    sac_cmd = by_target[("sac", "Pendulum-v1")]
    assert sac_cmd[2:4] == ["--env-id", "Pendulum-v1"] and sac_cmd[-5:] == [
        "--total-steps",
        "7",
        "--hidden",
        "64",
        "64",
    ]
    assert jobs[0].run_dir == tmp_path / "td3_bc__hopper-medium-v2__s3"
