"""Run a grid of algorithms x datasets (or env ids) x seeds x flag overrides as ordinary algorithm runs.

Every run is `python algos/<algo>.py ... --run-dir OUT/<algo>__<target>__s<seed>` (started in the project
root) with its output in `stdout.log` there. A run folder with `metrics.json` is finished and is skipped,
so an interrupted sweep resumes where it stopped (a run that left a checkpoint, i.e. one started with
`--flags save_model=true`, continues from it with `--resume`). Failures do not stop the others; they are
listed at the end with their log paths and the exit code is 1. A sweep over D4RL dataset names passes
the matching `--preset` when the algorithm has one.

    python scripts/sweep.py --algos td3_bc prdc --datasets ocrl/hopper/medium-v0 --seeds 0 1 2 \
        --flags total_steps=50000 --out-dir runs/sweep

`--group-seeds` trains the consecutive seeds of a cell in one process when the algorithm takes
`--num-seeds` (its networks stacked on a seed axis: more updates per core): `--seed FIRST --num-seeds N
--run-dir OUT/<algo>__<target>__s<FIRST>-<LAST>`, each seed in `s<k>` there with the files its own run
writes. A group that stopped with every seed at one checkpoint continues as a group (`--resume` of its
folder); otherwise seed by seed (`--resume` of each seed folder with a checkpoint, a fresh single run for one
without).

Backends:
- `local` (default): `--workers` runs at once as subprocesses of this script, each pinned to
  `--threads-per-run` OMP/torch threads so parallel runs do not oversubscribe the cores.
- `ray` (`pip install -e ".[ray]"`): every run is a Ray task reserving `--threads-per-run` CPUs (and
  `--gpus-per-run` GPUs) that starts the same subprocess. Without `--ray-address` a local Ray instance
  with `workers x threads-per-run` CPUs is started and stopped again; with `--ray-address ADDRESS` (as
  for `ray.init`, e.g. `auto`, `HOST:6379` or `ray://HOST:10001`) the runs go to that cluster, which
  decides how many run at once. A remote run executes `python algos/<algo>.py` with the Python of the
  Ray worker in the project root, so this assumes every node has the same checkout at the same path
  with ocrl installed in its Python, and sees `--out-dir` (and any dataset given as a path) at the same
  path on a shared filesystem: that is where the run writes and where this script looks for
  `metrics.json` and checkpoints when it resumes. Runs meant for a GPU should reserve one with
  `--gpus-per-run`, so that Ray places them on GPU nodes and sets their CUDA_VISIBLE_DEVICES (a
  fraction such as 0.25 lets four runs share a GPU); otherwise Ray schedules by CPUs alone. This script
  connects as any Ray driver does, so a cluster's own settings apply: one with token authentication
  (what a local `ray.init` starts with Ray 2.60) needs `RAY_AUTH_MODE=token` and its token here.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

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
    """overrides passed to every run, as name=value (e.g. total_steps=50000 save_model=true)"""
    out_dir: str = "runs/sweep"
    """root of the run folders"""
    backend: Literal["local", "ray"] = "local"
    """local: subprocesses of this script; ray: Ray tasks that start the same subprocesses"""
    ray_address: str | None = None
    """address of an existing Ray cluster (--backend ray); default: start a local Ray instance"""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """runs at once (local backend and local Ray instance; a Ray cluster schedules by its own CPUs)"""
    threads_per_run: int | None = None
    """OMP/torch threads (and Ray CPUs) of each run; default max(1, cores // workers)"""
    gpus_per_run: float = 0.0
    """GPUs reserved by each Ray task (fractions share a GPU); 0: Ray schedules runs by CPUs alone"""
    auto_preset: bool = True
    """pass --preset DATASET when the dataset is a D4RL name the algorithm has a preset for"""
    group_seeds: bool = False
    """run the consecutive seeds of a cell as one --num-seeds process, for the algorithms that take it"""
    dry_run: bool = False
    """print the commands and exit"""


@dataclass
class Job:
    algo: str
    target: str
    seed: int
    run_dir: Path
    command: list[str]
    """[python, algos/<algo>.py, flags...]: the script path is relative to the project root, and whoever
    runs the job (this process or a Ray worker) puts its own Python first"""
    seed_dirs: list[Path] = field(default_factory=list)
    """the run folders it finishes: run_dir itself, or a --num-seeds group's s<k> folders"""

    def __post_init__(self) -> None:
        self.seed_dirs = self.seed_dirs or [self.run_dir]

    @property
    def finished(self) -> bool:
        return all((d / "metrics.json").exists() for d in self.seed_dirs)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _flag_args(flags: tuple[str, ...]) -> list[str]:
    out = []
    for item in flags:
        if "=" not in item:
            raise SystemExit(f"error: --flags takes name=value items, got '{item}'")
        name, value = item.split("=", 1)
        flag = name.replace("_", "-")
        if value.lower() in ("true", "false"):  # tyro booleans are --flag / --no-flag
            out.append(f"--{flag}" if value.lower() == "true" else f"--no-{flag}")
        else:
            out += [f"--{flag}", *value.split()]
    return out


def _portable_target(target: str) -> str:
    """A dataset given as a path relative to this directory, made absolute: runs start in the project
    root (possibly on another node), where the relative path would point elsewhere."""
    path = Path(target).expanduser()
    return os.path.abspath(path) if path.exists() else target


def _consecutive(seeds: tuple[int, ...]) -> list[list[int]]:
    """The seeds in runs of consecutive numbers (a --num-seeds group trains seed .. seed + N - 1)."""
    groups: list[list[int]] = []
    for seed in seeds:
        if groups and seed == groups[-1][-1] + 1:
            groups[-1].append(seed)
        else:
            groups.append([seed])
    return groups


def plan(args: Args) -> list[Job]:
    """The grid as jobs, in a stable order."""
    out_dir = Path(os.path.abspath(Path(args.out_dir).expanduser()))
    jobs = []
    for algo in args.algos:
        script = f"algos/{algo}.py"
        if not (ROOT / script).is_file():
            raise SystemExit(f"error: no algorithm file {ROOT / script}")
        online = algo in ONLINE
        module = importlib.import_module(f"ocrl.algos.{algo}")
        presets = getattr(module, "PRESETS", {})
        grouped = args.group_seeds and "num_seeds" in {f.name for f in fields(module.Args)}
        for target in args.env_ids if online else args.datasets:
            cmd = [sys.executable, script, "--env-id" if online else "--dataset"]
            cmd += [target if online else _portable_target(target)]
            flags = ["--no-progress"] + (
                ["--preset", target] if args.auto_preset and target in presets else []
            )
            flags += _flag_args(args.flags)
            for seeds in _consecutive(args.seeds) if grouped else [[s] for s in args.seeds]:
                run_dir = out_dir / f"{algo}__{_slug(target)}__s{seeds[0]}"
                if len(seeds) > 1:
                    run_dir = run_dir.with_name(f"{run_dir.name}-{seeds[-1]}")
                    seed_dirs = [run_dir / f"s{k}" for k in range(len(seeds))]
                    if not any(d.exists() for d in seed_dirs):  # a fresh group
                        group = ["--seed", str(seeds[0]), "--num-seeds", str(len(seeds))]
                        command = [*cmd, *group, "--run-dir", str(run_dir), *flags]
                        jobs.append(Job(algo, target, seeds[0], run_dir, command, seed_dirs))
                        continue
                    # Every seed stopped at one checkpoint: the group goes on as one process.
                    if _resumable_group(seed_dirs):
                        command = [*cmd, "--resume", str(run_dir), *flags]
                        jobs.append(Job(algo, target, seeds[0], run_dir, command, seed_dirs))
                        continue
                    # Otherwise each seed continues (or starts) on its own.
                    todo = zip(seeds, seed_dirs, strict=True)
                else:
                    todo = [(seeds[0], run_dir)]
                for seed, seed_dir in todo:
                    command = [*cmd, "--seed", str(seed), "--run-dir", str(seed_dir), *flags]
                    ckpt = (seed_dir / "checkpoint.pt").exists()
                    if ckpt and not (seed_dir / "metrics.json").exists():
                        command += ["--resume", str(seed_dir)]
                    jobs.append(Job(algo, target, seed, seed_dir, command))
    return jobs


def _resumable_group(seed_dirs: list[Path]) -> bool:
    """Whether every seed of a stopped group has a checkpoint, at one step, and none has finished."""
    # Only here: planning a sweep needs no torch otherwise.
    from ocrl.experiment.run import CHECKPOINT_FILE, load_checkpoint

    ckpts = [d / CHECKPOINT_FILE for d in seed_dirs]
    if not all(c.exists() for c in ckpts) or any((d / "metrics.json").exists() for d in seed_dirs):
        return False
    try:  # mmap: only the step is read
        steps = {int(load_checkpoint(c, mmap=True)["step"]) for c in ckpts}
    except Exception:  # a damaged or foreign checkpoint: the seed's own run says so
        return False
    return len(steps) == 1


def run_job(job: Job, threads: int, root: str) -> tuple[int, bool]:
    """Run one job as a subprocess in `root`, its output appended to run_dir/stdout.log.

    Returns (exit code, whether metrics.json exists). Both are decided where the run executed, so the
    Ray backend does not depend on the driver seeing the file at once."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    if "--resume" not in job.command:
        # A run that stopped before its first checkpoint starts over; its own log stays.
        for entry in job.run_dir.iterdir():
            if entry.name != "stdout.log":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    command = [sys.executable, *job.command[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(job.run_dir / "stdout.log", "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    return proc.returncode, job.finished


def _outcome(code: int, has_metrics: bool) -> tuple[bool, str]:
    """(finished, why not) of a run from its exit code and whether it wrote metrics.json."""
    if code != 0:
        return False, f"exit code {code}"
    return has_metrics, "" if has_metrics else "exit code 0 but no metrics.json"


def _run_local(todo: list[Job], args: Args, threads: int) -> Iterator[tuple[Job, bool, str]]:
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = {pool.submit(run_job, job, threads, str(ROOT)): job for job in todo}
        for future in as_completed(futures):
            yield futures[future], *_outcome(*future.result())


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SystemExit(
            'error: --backend ray needs Ray, an optional extra: pip install -e ".[ray]"'
        ) from None
    return ray


def _run_ray(todo: list[Job], args: Args, threads: int) -> Iterator[tuple[Job, bool, str]]:
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if args.ray_address:
            ray.init(address=args.ray_address, logging_level="WARNING")
        else:
            ray.init(
                num_cpus=max(1, args.workers) * threads,
                include_dashboard=False,
                logging_level="WARNING",
            )
    module = sys.modules[run_job.__module__]
    if module.__name__ != "__main__":
        # This file is a script, not an importable module on the workers: ship run_job by value.
        ray.cloudpickle.register_pickle_by_value(module)
    # No retries: a run that failed is reported, and the next sweep resumes it from its checkpoint.
    task = ray.remote(num_cpus=threads, num_gpus=args.gpus_per_run, max_retries=0)(run_job)
    pending = {task.remote(job, threads, str(ROOT)): job for job in todo}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                yield job, *_outcome(*ray.get(done[0]))
            except ray.exceptions.RayError as error:  # the task itself died (node lost, ...)
                yield job, False, f"Ray task error: {str(error).splitlines()[0]}"
    finally:
        if pending:  # interrupted: do not leave runs going on the cluster
            # A plain cancel raises KeyboardInterrupt inside the task, and subprocess.run kills its
            # child on the way out; force=True would kill the worker and orphan the run.
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=30)
        if started_here:
            ray.shutdown()


def main(args: Args) -> dict[str, list[str]]:
    jobs = plan(args)
    todo = [j for j in jobs if not j.finished]
    print(
        f"{len(jobs)} runs in the grid, {len(jobs) - len(todo)} already finished, {len(todo)} to run"
    )
    if args.dry_run:
        print(f"(commands run in {ROOT})")
        for job in todo:
            print(" ".join(job.command))
        return {"finished": [], "failed": []}
    if args.backend == "ray":
        _import_ray()  # fail before anything starts
    finished, failed = [], []
    if todo:
        threads = args.threads_per_run or max(1, (os.cpu_count() or 1) // max(1, args.workers))
        runner = _run_ray if args.backend == "ray" else _run_local
        start = time.time()
        for job, ok, why in runner(todo, args, threads):
            (finished if ok else failed).append(str(job.run_dir))
            status = "done  " if ok else f"FAILED ({why})"
            print(f"[{time.time() - start:7.0f}s] {status} {job.run_dir}")
    order = {str(job.run_dir): i for i, job in enumerate(jobs)}  # report in grid order
    finished.sort(key=order.__getitem__)
    failed.sort(key=order.__getitem__)
    if failed:
        print(f"\n{len(failed)} run(s) failed; their logs:")
        for run_dir in failed:
            print(f"  {run_dir}/stdout.log")
    return {"finished": finished, "failed": failed}


if __name__ == "__main__":
    result = main(tyro.cli(Args))
    sys.exit(1 if result["failed"] else 0)
