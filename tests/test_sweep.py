"""scripts/sweep.py: tiny grids on the local and the Ray backend, resume without redoing finished runs,
failures reported, and the commands the plan builds."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_local_sweep_runs_resumes_and_reports_failures(hopper_random_file, tmp_path):
    sweep = load_script()
    # One algorithm here: the Ray test below runs the two-algorithm grid (each run costs ~10 s of imports).
    args = sweep.Args(
        algos=("td3_bc",), datasets=(hopper_random_file,), seeds=(0, 1),
        flags=("total_steps=40", "eval_every=40", "eval_episodes=1", "log_every=20"),
        out_dir=str(tmp_path), workers=2,
    )  # fmt: skip
    result = sweep.main(args)
    assert result["failed"] == [] and len(result["finished"]) == 2
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


def test_plan_flags_and_paths_are_valid_from_the_project_root(tmp_path, monkeypatch):
    sweep = load_script()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.hdf5").touch()
    (job,) = sweep.plan(
        sweep.Args(algos=("td3_bc",), datasets=("mine.hdf5",), seeds=(0,), out_dir="rel",
                   flags=("save_model=true", "normalize_obs=False", "total_steps=5"))
    )  # fmt: skip
    # Runs start in the project root (on a Ray node too), so relative paths are made absolute here.
    assert job.command[1] == "algos/td3_bc.py"
    assert job.command[2:4] == ["--dataset", str(tmp_path / "mine.hdf5")]
    assert job.run_dir == tmp_path / "rel" / "td3_bc__mine.hdf5__s0"
    assert job.command[-4:] == ["--save-model", "--no-normalize-obs", "--total-steps", "5"]


def test_ray_backend_without_ray_says_how_to_install_it(monkeypatch, tmp_path):
    sweep = load_script()
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(SystemExit, match=r"pip install -e \"\.\[ray\]\""):
        sweep.main(sweep.Args(backend="ray", seeds=(0,), out_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())  # nothing started


def test_ray_sweep_runs_resumes_and_reports_failures(tmp_path, monkeypatch):
    # Not importorskip: CI installs the [ray] extra, so this test must run there.
    import ray

    sweep = load_script()
    # One local Ray instance for the whole test (start-up costs ~8 s on two cores): the first sweep
    # starts it through ray.init and its ray.shutdown is recorded instead of done; later sweeps find
    # it running and reuse it.
    calls = []
    real_init = ray.init

    def init(**kwargs):
        calls.append(("init", kwargs))
        return real_init(**kwargs)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(("shutdown", {})))
    flags = ("total_steps=200", "eval_every=100", "eval_episodes=1", "log_every=100",
             "hidden=32 32", "save_model=true")  # fmt: skip
    args = sweep.Args(
        algos=("td3_bc", "prdc"), datasets=("ocrl/hopper/medium-v0",), seeds=(0, 1), flags=flags,
        out_dir=str(tmp_path), backend="ray", workers=2, threads_per_run=1,
    )  # fmt: skip
    try:
        result = sweep.main(args)
        assert [c[0] for c in calls] == ["init", "shutdown"] and calls[0][1]["num_cpus"] == 2
        assert result["failed"] == [] and len(result["finished"]) == 4
        assert result["finished"][0].endswith("td3_bc__ocrl-hopper-medium-v0__s0")
        for run in result["finished"]:
            assert json.loads((Path(run) / "metrics.json").read_text())["steps"] == 200

        # A second call redoes nothing.
        assert sweep.main(args) == {"finished": [], "failed": []}

        # An interrupted run (checkpoint but no metrics.json) resumes from its checkpoint; only it runs.
        redo = Path(result["finished"][3])
        (redo / "metrics.json").unlink()
        stamps = {
            run: (Path(run) / "metrics.json").stat().st_mtime_ns for run in result["finished"][:3]
        }
        again = sweep.main(args)
        assert again == {"finished": [str(redo)], "failed": []}
        assert json.loads((redo / "metrics.json").read_text())["resumed_from"] == 200
        commands = [x for x in (redo / "stdout.log").read_text().splitlines() if x.startswith("$ ")]
        assert len(commands) == 2 and commands[1].endswith(f"--resume {redo}")
        assert all(
            (Path(run) / "metrics.json").stat().st_mtime_ns == t for run, t in stamps.items()
        )

        # A failing run is reported with its log.
        bad = sweep.Args(algos=("td3_bc",), datasets=("does-not-exist",), seeds=(0,), flags=flags,
                         out_dir=str(tmp_path), backend="ray")  # fmt: skip
        out = sweep.main(bad)
        assert out["finished"] == [] and len(out["failed"]) == 1
        assert (
            "unknown dataset 'does-not-exist'"
            in (Path(out["failed"][0]) / "stdout.log").read_text()
        )
        # --group-seeds on Ray: seeds 0 and 1 as one --num-seeds 2 task, each seed in its own folder.
        grouped = sweep.main(dataclasses.replace(args, algos=("td3_bc",), group_seeds=True,
                                                 out_dir=str(tmp_path / "grouped")))  # fmt: skip
        assert grouped["failed"] == [] and len(grouped["finished"]) == 1
        for k in range(2):
            seed_dir = Path(grouped["finished"][0]) / f"s{k}"
            assert json.loads((seed_dir / "config.json").read_text())["seed"] == k
            assert json.loads((seed_dir / "metrics.json").read_text())["steps"] == 200
        assert [c[0] for c in calls] == ["init", "shutdown"]  # the later sweeps reused the instance
    finally:
        monkeypatch.undo()
        ray.shutdown()


def test_group_seeds_runs_consecutive_seeds_in_one_process_and_finishes_a_stopped_group(
    hopper_random_file, tmp_path
):
    sweep = load_script()
    args = sweep.Args(algos=("td3_bc", "sac"), datasets=(hopper_random_file,), env_ids=("Pendulum-v1",),
                      seeds=(0, 1, 2, 5), group_seeds=True, out_dir=str(tmp_path),
                      flags=("total_steps=10", "eval_every=10", "eval_episodes=1", "hidden=16 16", "save_model=true"))  # fmt: skip
    jobs = [j for j in sweep.plan(args) if j.algo == "td3_bc"]
    # Seeds 0-2 are one --num-seeds 3 process, seed 5 its own run; sac's the same.
    assert [j.seed for j in jobs] == [0, 5] and len(sweep.plan(args)) == 4
    (sac_group,) = [j for j in sweep.plan(args) if j.algo == "sac" and j.seed == 0]
    assert sac_group.command[sac_group.command.index("--num-seeds") + 1] == "3"
    group = jobs[0]
    assert group.command[group.command.index("--num-seeds") + 1] == "3"
    assert group.seed_dirs == [group.run_dir / f"s{k}" for k in range(3)]
    result = sweep.main(dataclasses.replace(args, algos=("td3_bc",)))
    assert not result["failed"] and len(result["finished"]) == 2
    for k in range(3):
        config = json.loads((group.run_dir / f"s{k}" / "config.json").read_text())
        assert config["seed"] == k and (group.run_dir / f"s{k}" / "metrics.json").exists()
    # A group stopped with every seed at one checkpoint continues as one process.
    for k in range(3):
        (group.run_dir / f"s{k}" / "metrics.json").unlink()
    (whole,) = [
        j for j in sweep.plan(dataclasses.replace(args, algos=("td3_bc",))) if not j.finished
    ]
    assert whole.command[whole.command.index("--resume") + 1] == str(group.run_dir)
    assert sweep.main(dataclasses.replace(args, algos=("td3_bc",)))["failed"] == []
    # A group stopped part-way continues seed by seed: s1 resumes from its checkpoint, s2 starts anew.
    (group.run_dir / "s1" / "metrics.json").unlink()
    shutil.rmtree(group.run_dir / "s2")
    again = [j for j in sweep.plan(dataclasses.replace(args, algos=("td3_bc",))) if not j.finished]
    assert [(j.seed, j.run_dir.name, "--resume" in j.command) for j in again] == [
        (1, "s1", True),
        (2, "s2", False),
    ]
