"""Updates per second with one torch thread and with all cores, quiet and beside other work (the --threads
default).

Each measurement is a fresh process running an algorithm's own `main()` at its default network sizes, timed
over the update loop only: the first `--warmup` loop steps (and SAC's random-action phase) are left out,
then the loop stops after `--seconds`. Three conditions: alone ("quiet"), beside one process that keeps a
core busy (a Python spin loop), and two identical runs side by side (the rate is their mean).
`--threads 0` is torch's default, one thread per core. td3_bc iql a2pr sac diffusion take ~10 minutes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Loop steps left out before the clock starts: SAC's warm-up phase takes random actions with no update.
SAC_LEARNING_STARTS = 1_000
FLAGS: dict[str, dict] = {
    "td3_bc": {},
    "iql": {},
    "a2pr": {},
    "sac": {"env_id": "Hopper-v4", "learning_starts": SAC_LEARNING_STARTS},
    "diffusion": {},
}


@dataclass
class Args:
    """Algorithm files' updates/s with 1 thread and all cores, quiet, busy and paired."""

    algos: tuple[str, ...] = ("td3_bc", "iql", "a2pr", "sac", "diffusion")
    """algorithm files to time, at their default sizes"""
    threads: tuple[int, ...] = (1, 0)
    """--threads values to compare (0: torch's default, all cores)"""
    conditions: tuple[str, ...] = ("quiet", "busy", "pair")
    """quiet: alone; busy: beside a process spinning on one core; pair: two identical runs at once"""
    seconds: float = 20.0
    """timed seconds per measurement, after the warm-up"""
    warmup: int = 30
    """loop steps before the clock starts (after SAC's random-action phase)"""
    out: str | None = None
    """also write the results as JSON here"""
    worker: str | None = None
    """(internal) time one algorithm in this process"""
    worker_threads: int = 1
    """(internal) --threads of the worker"""


def work(name: str, threads: int, seconds: float, warmup: int) -> None:
    """Run algos/<name>.py's main with --threads `threads`, timing `seconds` of its loop; print JSON and exit."""
    import importlib

    from ocrl.experiment import loop as loop_module

    algo = importlib.import_module(f"ocrl.algos.{name}")
    start_at = warmup + FLAGS[name].get("learning_starts", 0)
    original_steps = loop_module.TrainingLoop.steps

    def timed_steps(self, stride: int = 1):
        t0 = None
        for step in original_steps(self, stride):
            if step >= start_at and t0 is None:
                t0, step0 = time.perf_counter(), step
            if t0 is not None and time.perf_counter() - t0 >= seconds:
                rate = (step - step0) / (time.perf_counter() - t0)
                print(json.dumps({"updates_per_s": rate, "updates": step - step0}), flush=True)
                shutil.rmtree(run_dir.parent, ignore_errors=True)
                os._exit(0)
            yield step

    loop_module.TrainingLoop.steps = timed_steps
    run_dir = Path(tempfile.mkdtemp(prefix="bench_threads_")) / "run"
    fields = {f.name for f in dataclasses.fields(algo.Args)}
    overrides = dict(total_steps=10**9, eval_every=10**9, log_every=10**9, progress=False)
    overrides = {k: v for k, v in overrides.items() if k in fields}
    algo.main(algo.Args(**FLAGS[name], **overrides, threads=threads, run_dir=str(run_dir)))


def measure(name: str, threads: int, copies: int, args: Args) -> float:
    """Mean updates/s of `copies` simultaneous workers."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "scripts.bench", "threads"]
    cmd += ["--worker", name, "--worker-threads", str(threads)]
    cmd += ["--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    procs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
        )
        for _ in range(copies)
    ]
    rates = []
    for proc in procs:
        out, _ = proc.communicate(timeout=args.seconds * 40 + 600)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(
                f"{name} --threads {threads}: no timing printed (exit {proc.returncode})"
            )
        rates.append(json.loads(lines[-1])["updates_per_s"])
    return statistics.mean(rates)


def main(args: Args) -> list[dict] | None:
    if args.worker:
        return work(args.worker, args.worker_threads, args.seconds, args.warmup)
    rows = []
    print(f"cores: {os.cpu_count()}; {args.seconds:.0f} s timed per measurement")
    print(f"{'algorithm':<10} {'threads':>7} " + " ".join(f"{c:>9}" for c in args.conditions))
    for name in args.algos:
        for threads in args.threads:
            row = {"algorithm": name, "threads": threads}
            for condition in args.conditions:
                spinner = None
                if condition == "busy":
                    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                try:
                    row[condition] = measure(name, threads, 2 if condition == "pair" else 1, args)
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
            rows.append(row)
            label = "all" if threads == 0 else str(threads)
            cells = " ".join(f"{row[c]:9.1f}" for c in args.conditions)
            print(f"{name:<10} {label:>7} {cells}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows
