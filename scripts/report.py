"""Summarise a sweep's TensorBoard logs: a Markdown table, IQM with bootstrap CIs, learning-curve PNGs.

Reads every run folder under RUNS_DIR named `<algo>__<dataset-or-env>__s<seed>` (what scripts/sweep.py
and the algorithm files write) and its `eval/normalized_score` curve (`eval/return` where a task has no
reference scores). Writes to OUT_DIR:
- report.md: final (last evaluation) and best score per algorithm x dataset, mean ± std over seeds, n;
  and per algorithm the IQM over all runs x datasets with a 95% percentile bootstrap confidence
  interval (runs resampled with replacement within each dataset, as rliable does);
- curves_<dataset>.png: one line per algorithm (mean over seeds) with a shaded ± std band, when
  matplotlib is installed.

    python scripts/report.py runs/sweep --out-dir docs/report
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from scipy.stats import trim_mean
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

RUN_RE = re.compile(r"^(?P<algo>[A-Za-z0-9_]+)__(?P<target>.+)__s(?P<seed>\d+)(__.*)?$")


@dataclass
class Args:
    runs_dir: tyro.conf.Positional[str]
    """folder holding the run folders (searched recursively)"""
    out_dir: str = "report"
    """where report.md and the PNGs go"""
    reps: int = 2000
    """bootstrap resamples for the IQM confidence intervals"""
    seed: int = 0
    """seed of the bootstrap"""


def read_curve(run_dir: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """(tag, steps, values) of the run's evaluation curve."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    tag = "eval/normalized_score" if "eval/normalized_score" in tags else "eval/return"
    if tag not in tags:
        return tag, np.zeros(0), np.zeros(0)
    events = acc.Scalars(tag)
    return (
        tag,
        np.array([e.step for e in events]),
        np.array([e.value for e in events], dtype=np.float64),
    )


def collect(runs_dir: Path) -> dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]]:
    """{(algo, dataset): [(seed, steps, values), ...]} over every run folder with an evaluation curve."""
    runs: dict[tuple[str, str], list] = defaultdict(list)
    for folder in sorted(p.parent for p in runs_dir.rglob("config.json")):
        match = RUN_RE.match(folder.name)
        if match is None:
            continue
        _, steps, values = read_curve(folder)
        if len(values):
            runs[(match["algo"], match["target"])].append((int(match["seed"]), steps, values))
    return dict(runs)


def iqm_with_ci(
    per_task: list[np.ndarray], reps: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """IQM over all runs of all tasks and its 95% percentile-bootstrap interval (runs resampled per task)."""
    point = float(trim_mean(np.concatenate(per_task), 0.25))
    boot = np.empty(reps)
    for i in range(reps):
        boot[i] = trim_mean(
            np.concatenate([rng.choice(x, size=len(x), replace=True) for x in per_task]), 0.25
        )
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)


def fmt(values: np.ndarray) -> str:
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.1f} ± {std:.1f}"


def main(args: Args) -> str:
    runs = collect(Path(args.runs_dir))
    if not runs:
        raise SystemExit(f"error: no run folders with evaluation logs under {args.runs_dir}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    algos = sorted({a for a, _ in runs})
    datasets = sorted({d for _, d in runs})
    lines = [
        f"# Results from {args.runs_dir}",
        "",
        "Final = last evaluation, best = best evaluation; mean ± std over seeds (sample std), n seeds.",
        "",
        "| algorithm | dataset | final | best | n |",
        "|---|---|---|---|---|",
    ]
    finals: dict[str, list[np.ndarray]] = defaultdict(list)
    for (algo, dataset), seeds in sorted(runs.items()):
        final = np.array([values[-1] for _, _, values in seeds])
        best = np.array([values.max() for _, _, values in seeds])
        finals[algo].append(final)
        lines.append(f"| {algo} | {dataset} | {fmt(final)} | {fmt(best)} | {len(seeds)} |")
    rng = np.random.default_rng(args.seed)
    lines += [
        "",
        "Aggregate over datasets: IQM of the final scores, 95% bootstrap CI.",
        "",
        "| algorithm | IQM | 95% CI | runs | datasets |",
        "|---|---|---|---|---|",
    ]
    for algo in algos:
        point, lo, hi = iqm_with_ci(finals[algo], args.reps, rng)
        n_runs = sum(len(x) for x in finals[algo])
        lines.append(
            f"| {algo} | {point:.1f} | [{lo:.1f}, {hi:.1f}] | {n_runs} | {len(finals[algo])} |"
        )
    pngs = plot_curves(runs, algos, datasets, out)
    if pngs:
        lines += ["", *[f"![{p.stem}]({p.name})" for p in pngs]]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    return text


def plot_curves(runs, algos: list[str], datasets: list[str], out: Path) -> list[Path]:
    """One PNG per dataset with a mean curve and a ± std band per algorithm; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, so no learning-curve PNGs were drawn")
        return []
    paths = []
    for dataset in datasets:
        fig, ax = plt.subplots(figsize=(6, 4))
        for algo in algos:
            seeds = runs.get((algo, dataset))
            if not seeds:
                continue
            length = min(len(v) for _, _, v in seeds)
            steps = seeds[0][1][:length]
            values = np.stack([v[:length] for _, _, v in seeds])
            mean, std = values.mean(0), values.std(0)
            ax.plot(steps, mean, label=f"{algo} (n={len(seeds)})")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel("updates")
        ax.set_ylabel("normalised score")
        ax.set_title(dataset)
        ax.legend()
        path = out / f"curves_{re.sub(r'[^A-Za-z0-9._-]+', '-', dataset)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


if __name__ == "__main__":
    main(tyro.cli(Args))
