"""Helpers of scripts/device_check.sh (the one-call check of every CUDA path); each prints markdown.

python scripts/device_check.py env                      # torch, CUDA, the device, package versions
python scripts/device_check.py summary NAME=RUN_DIR ... # finished? steps, last losses, all finite?
python scripts/device_check.py bench -- <benchmark> <flags>  # python -m scripts.bench, then torch.compile's counters
python scripts/device_check.py graphs [cuda]            # does a randperm subset replay inside CUDA graphs?
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def env() -> None:
    """One markdown line per fact about the interpreter, torch, CUDA and the packages ocrl imports."""
    print(f"- python {platform.python_version()} ({sys.executable})")
    print(f"- torch {torch.__version__}, CUDA build {torch.version.cuda}, "
          f"cuda available: {torch.cuda.is_available()}")  # fmt: skip
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"- device 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
              f"{p.multi_processor_count} SMs")  # fmt: skip
    for name in ("numpy", "gymnasium", "mujoco", "minari", "tyro", "h5py", "scipy", "triton"):
        try:
            module = importlib.import_module(name)
            print(f"- {name} {getattr(module, '__version__', '?')}")
        except Exception as e:  # report, never stop: the rest of the check may not need it
            print(f"- {name}: import failed: {type(e).__name__}: {e}")
    import ocrl

    print(f"- ocrl from {Path(ocrl.__file__).parent}")


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, list[float]] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return values


def summary(pairs: list[str]) -> None:
    """A table row per NAME=RUN_DIR: metrics.json written, steps, return, the last logged losses, finiteness."""
    print("| run | finished | steps | wall s | return | last losses | every logged scalar finite |")
    print("|---|---|---|---|---|---|---|")
    for pair in pairs:
        name, _, folder = pair.partition("=")
        run_dir = Path(folder)
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file():
            print(f"| {name} | NO (no metrics.json in {run_dir}) | | | | | |")
            continue
        metrics = json.loads(metrics_file.read_text())
        try:
            scalars = _scalars(run_dir)
        except Exception as e:  # a summary must not hide the other runs
            scalars, note = {}, f"events unreadable: {e}"
        else:
            note = ""
        losses = {
            k.split("/", 1)[1]: v[-1] for k, v in scalars.items() if k.startswith("losses/") and v
        }
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(losses.items())[:4]) or note or "none"
        finite = all(math.isfinite(x) for v in scalars.values() for x in v)
        ret = metrics.get("return")
        extra = [
            f"{k} {metrics[k]:.3g}"
            for k in ("terminal_rate_synthetic", "observations_max_mean_gap_in_std",
                      "dynamics_normalized_mse_synthetic", "dynamics_normalized_mse_real",
                      "samples_per_s")
            if isinstance(metrics.get(k), (int, float))
        ]  # fmt: skip
        if extra:
            shown += "; " + ", ".join(extra)
        print(
            f"| {name} | yes | {metrics.get('steps')} | {metrics.get('wall_time_s')} | "
            f"{'' if ret is None else f'{ret:.1f}'} | {shown} | "
            f"{'yes' if finite else 'NO'} ({sum(map(len, scalars.values()))} values) |"
        )


def _counters() -> str:
    from torch._dynamo.utils import counters

    inductor = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
    stats = dict(counters["stats"])
    breaks = sum(counters["graph_break"].values())
    recompiles = (
        {k: v for k, v in counters["recompiles"].items()} if "recompiles" in counters else {}
    )
    return (
        f"torch.compile counters: inductor cudagraph entries {inductor or '{}'} (cudagraph_skips "
        f"{counters['inductor'].get('cudagraph_skips', 0)}), graph breaks {breaks} "
        f"{dict(counters['graph_break']) or ''}, stats {stats}, recompiles {recompiles or 0}"
    )


def bench(argv: list[str]) -> None:
    """`python -m scripts.bench` with these arguments (a benchmark and its flags), then torch.compile's counters."""
    import runpy

    sys.path.insert(0, str(HERE.parent))  # the repository root, where `scripts.bench` is importable
    sys.argv = ["python -m scripts.bench", *argv]
    start = time.perf_counter()
    runpy.run_module("scripts.bench", run_name="__main__")
    print(f"\n(bench {' '.join(argv)}: {time.perf_counter() - start:.0f} s)")
    print(_counters())


def _mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def graphs(device_name: str) -> None:
    """Whether a critic subset drawn with torch.randperm inside a reduce-overhead (CUDA-graph) compiled function
    is drawn afresh at every replay, and whether replays see in-place weight updates, as EXPO's OTF needs."""
    from ocrl.algos import expo

    device = torch.device(
        device_name
    )  # cpu only to try the code (there reduce-overhead graphs nothing)
    torch.manual_seed(0)
    replays = 60

    # 1. The bare construct: rows of x picked by randperm(10)[:2], min over them.
    x = torch.randn(10, 64, device=device)

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x[torch.randperm(10, device=x.device)[:2]].min(dim=0).values

    compiled = torch.compile(pick, mode="reduce-overhead")
    eager_all = {tuple(sorted((i, j))) for i in range(10) for j in range(10) if i != j}
    table = {s: torch.minimum(x[s[0]], x[s[1]]) for s in eager_all}

    def which(out: torch.Tensor) -> tuple[int, int] | None:
        return next((s for s, v in table.items() if torch.equal(v, out)), None)

    seen, unknown = [], 0
    for _ in range(replays):
        out = compiled(x).clone()
        s = which(out)
        unknown += s is None
        seen.append(s)
    distinct = len({s for s in seen if s is not None})
    print(f"- bare randperm(10)[:2] under reduce-overhead: {replays} calls gave {distinct} distinct "
          f"subsets of 45 (eager draws expect ~{45 * (1 - (44 / 45) ** replays):.0f}); "
          f"{unknown} outputs matched no subset")  # fmt: skip

    # 2. EXPO's subset-min target Q (critic_target.members over agent.subset()) on fixed inputs, compiled the same way;
    # then the target critics change in place (as polyak_update does) and the replays must follow.
    agent = expo.EXPO(expo.Args(compile=True), 11, 3, device)
    obs, act = torch.randn(256, 11, device=device), torch.rand(256, 3, device=device) * 2 - 1

    def subset_min(obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return agent.critic_target.members(obs, act, agent.subset()).min(dim=0).values

    compiled_q = torch.compile(subset_min, mode="reduce-overhead")
    for phase in ("initial weights", "after an in-place weight change"):
        with torch.no_grad():
            every = agent.critic_target(obs, act)  # (E, B)
        pairs = {
            (i, j): torch.minimum(every[i], every[j])
            for i in range(every.shape[0])
            for j in range(i + 1, every.shape[0])
        }
        hits, misses = [], 0
        for _ in range(replays):
            out = compiled_q(obs, act).clone()
            match = next(
                (s for s, v in pairs.items() if torch.allclose(v, out, rtol=1e-3, atol=1e-4)), None
            )
            misses += match is None
            hits.append(match)
        print(f"- EXPO subset-min, {phase}: {len({h for h in hits if h})} distinct subsets of "
              f"{len(pairs)} in {replays} replays; {misses} replays matched no subset of the current "
              "weights (must be 0)")  # fmt: skip
        with torch.no_grad():
            for p in agent.critic_target.parameters():
                p.mul_(1.05).add_(0.01)

    # 3. The OTF selection itself (agent.select: the compiled otf), at the act batch (1) and the backup batch
    # (256), with both diffusion modules, against eager otf: the backup value's mean over many draws.
    agent = expo.EXPO(expo.Args(compile=True), 11, 3, device)
    obs = torch.randn(256, 11, device=device)
    for module_name, module in (
        ("diffusion", agent.diffusion), ("EMA", agent.diffusion_ema.ema_model)
    ):  # fmt: skip
        for b in (256, 1):
            o = obs[:b]
            comp = [agent.select(o, module)[1].max(dim=1).values.mean().item() for _ in range(20)]
            eager = [agent.otf(o, module)[1].max(dim=1).values.mean().item() for _ in range(20)]
            (cm, cs), (em, es) = map(_mean_se, (comp, eager))
            print(f"- EXPO OTF ({module_name}, batch {b}): mean best-candidate Q over 20 calls, compiled "
                  f"{cm:.4f} +- {cs:.4f}, eager {em:.4f} +- {es:.4f} (+- one standard error); "
                  f"finite: {all(map(math.isfinite, comp))}")  # fmt: skip
    print(_counters())


def main() -> None:
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "env":
        env()
    elif command == "summary":
        summary(rest)
    elif command == "bench":
        bench(rest[1:] if rest[:1] == ["--"] else rest)
    elif command == "graphs":
        graphs(rest[0] if rest else "cuda")
    else:
        raise SystemExit(
            f"device_check.py: unknown command '{command}' (env, summary, bench, graphs)"
        )


if __name__ == "__main__":
    main()
