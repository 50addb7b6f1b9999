"""Run a grid of algorithms x datasets (or env ids) x seeds x flag overrides as ordinary algorithm runs.

Every run is `python algos/<algo>.py ... --run-dir OUT/<algo>__<target>__s<seed>` with its output in
`stdout.log` there. A run folder with `metrics.json` is finished and is skipped, so an interrupted sweep
resumes where it stopped (a run that left a checkpoint continues from it with `--resume`). Failures do
not stop the others; they are listed at the end with their log paths and the exit code is 1.
A sweep over D4RL dataset names passes the matching `--preset` when the algorithm has one.

    python scripts/sweep.py --algos td3_bc prdc --datasets ocrl/hopper/medium-v0 --seeds 0 1 2 \
        --flags total_steps=50000 --out-dir runs/sweep

Backends: local processes (`--workers`, default the CPU count, each run pinned to
`--threads-per-run` torch threads so parallel runs do not oversubscribe the cores). A Ray backend is
not implemented yet.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
ONLINE = {"sac"}  # algorithms that take --env-id instead of --dataset


@dataclass
class Args:
    algos: tuple[str, ...] = ("td3_bc",)
    """algorithm files under algos/ (without .py)"""
    datasets: tuple[str, ...] = ("ocrl/hopper/medium-v0",)
    """datasets of the offline algorithms (any name load_dataset accepts)"""
    env_ids: tuple[str, ...] = ("Hopper-v4",)
    """environments of the online algorithms"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of every (algorithm, dataset) cell"""
    flags: tuple[str, ...] = ()
    """overrides passed to every run, as name=value (e.g. total_steps=50000 eval_every=5000)"""
    out_dir: str = "runs/sweep"
    """root of the run folders"""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """runs at once"""
    threads_per_run: int | None = None
    """OMP/torch threads of each run; default max(1, cores // workers)"""
    auto_preset: bool = True
    """pass --preset DATASET when the dataset is a D4RL name the algorithm has a preset for"""
    dry_run: bool = False
    """print the commands and exit"""


@dataclass
class Job:
    algo: str
    target: str
    seed: int
    run_dir: Path
    command: list[str]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _flag_args(flags: tuple[str, ...]) -> list[str]:
    out = []
    for item in flags:
        if "=" not in item:
            raise SystemExit(f"error: --flags takes name=value items, got '{item}'")
        name, value = item.split("=", 1)
        out += [f"--{name.replace('_', '-')}", *value.split()]
    return out


def plan(args: Args) -> list[Job]:
    """The grid as jobs, in a stable order."""
    jobs = []
    for algo in args.algos:
        script = ROOT / "algos" / f"{algo}.py"
        if not script.is_file():
            raise SystemExit(f"error: no algorithm file {script}")
        online = algo in ONLINE
        presets = getattr(importlib.import_module(f"ocrl.algos.{algo}"), "PRESETS", {})
        for target in args.env_ids if online else args.datasets:
            for seed in args.seeds:
                run_dir = Path(args.out_dir) / f"{algo}__{_slug(target)}__s{seed}"
                cmd = [sys.executable, str(script), "--env-id" if online else "--dataset", target]
                cmd += ["--seed", str(seed), "--run-dir", str(run_dir), "--no-progress"]
                if args.auto_preset and target in presets:
                    cmd += ["--preset", target]
                cmd += _flag_args(args.flags)
                if (run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists():
                    cmd += ["--resume", str(run_dir)]
                jobs.append(Job(algo, target, seed, run_dir, cmd))
    return jobs


def run_job(job: Job, threads: int) -> tuple[Job, int]:
    """Run one job as a subprocess, its output in run_dir/stdout.log; return its exit code."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(job.run_dir / "stdout.log", "a") as log:
        log.write(f"$ {' '.join(job.command)}\n")
        log.flush()
        proc = subprocess.run(job.command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return job, proc.returncode


def main(args: Args) -> dict[str, list[str]]:
    jobs = plan(args)
    todo = [j for j in jobs if not (j.run_dir / "metrics.json").exists()]
    print(
        f"{len(jobs)} runs in the grid, {len(jobs) - len(todo)} already finished, {len(todo)} to run"
    )
    if args.dry_run:
        for job in todo:
            print(" ".join(job.command))
        return {"finished": [], "failed": []}
    threads = args.threads_per_run or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    finished, failed = [], []
    start = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        for job, code in pool.map(lambda j: run_job(j, threads), todo):
            ok = code == 0 and (job.run_dir / "metrics.json").exists()
            (finished if ok else failed).append(str(job.run_dir))
            print(f"[{time.time() - start:7.0f}s] {'done  ' if ok else 'FAILED'} {job.run_dir}")
    if failed:
        print(f"\n{len(failed)} run(s) failed; their logs:")
        for run_dir in failed:
            print(f"  {run_dir}/stdout.log")
    return {"finished": finished, "failed": failed}


if __name__ == "__main__":
    result = main(tyro.cli(Args))
    sys.exit(1 if result["failed"] else 0)
