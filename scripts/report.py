"""Summarise a sweep's TensorBoard logs: a Markdown table, IQM with bootstrap CIs, learning-curve PNGs.

Reads every finished run folder under RUNS_DIR named `<algo>__<dataset-or-env>__s<seed>` (what
scripts/sweep.py and the algorithm files write; finished = has `metrics.json`) and its
`eval/normalized_score` curve (`eval/return` where a task has no reference scores; `--metric return`
reads the return even where a normalised score exists, the usual axis of online MuJoCo results; `--metric TAG`
any logged scalar, e.g. expo/log_alpha, with no IQM or profile). Folders without
`metrics.json` are runs still going or interrupted: they are listed as unfinished and left out of
every number. The dataset of a run is the `dataset` (or `env_id`) field of its `config.json`, shown by
name, or for a dataset given as a path by the Minari id in its metadata marked "(generated)" when
scripts/collect_dataset.py made it; the folder name is the fallback. Writes to OUT_DIR:
- report.md: final (last evaluation) and best score per algorithm x dataset, mean ± std over seeds
  (`--center median`: median ± std), n;
  with `--published CSV` the published scores of the same algorithm and dataset beside them, with
  their sources; and per algorithm the IQM of the final scores over runs x datasets with a 95%
  percentile stratified-bootstrap confidence interval, both from rliable (Agarwal et al., 2021):
  `get_interval_estimates` with `aggregate_iqm`, runs resampled with replacement within each dataset,
  datasets kept fixed. rliable needs a rectangular (runs x datasets) matrix per algorithm, so where an
  algorithm has unequal seed counts across its datasets only its k lowest-numbered seeds of every
  dataset count (k = its smallest seed count); the runs this leaves out are listed under the table.
  Seeds are chosen by number, never by score, and no dataset is dropped: restricting to the datasets
  every algorithm ran would leave nothing when a sweep runs algorithms on different datasets, so the
  `datasets` column says how many datasets each algorithm's IQM covers;
- curves_<dataset>.png: one line per algorithm (mean, or median, over seeds) with a shaded ± std
  band around it, and
  performance_profile.png: rliable's score distribution (fraction of runs with final score > tau, with
  95% bootstrap bands) over the same matrices, linked from report.md. Both need matplotlib and the IQM
  needs rliable (`pip install -e ".[plots]"`); without them that part is skipped with a note.

    python scripts/report.py runs/sweep --out-dir docs/report --published docs/published_scores.csv

The published CSV has the columns algorithm (an algos/ file name such as td3_bc), dataset (as a run
names it, e.g. hopper-medium-v2), score, std (may be empty) and source; several rows may share an
(algorithm, dataset) pair.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

RUN_RE = re.compile(r"^(?P<algo>[A-Za-z0-9_]+)__(?P<target>.+)__s(?P<seed>\d+)(__.*)?$")
PUBLISHED_COLUMNS = ("algorithm", "dataset", "score", "std", "source")


@dataclass
class Args:
    runs_dir: tyro.conf.Positional[str]
    """folder holding the run folders (searched recursively)"""
    out_dir: str = "report"
    """where report.md and the PNGs go"""
    published: str | None = None
    """CSV of published scores (algorithm,dataset,score,std,source) to show beside ours"""
    reps: int = 2000
    """bootstrap resamples for the IQM confidence intervals and the performance-profile bands"""
    seed: int = 0
    """seed of the bootstrap"""
    metric: str = "auto"
    """auto: eval/normalized_score where a run logs it, else eval/return; return: always eval/return; or any logged scalar tag (e.g. expo/log_alpha): its table and curves only, no IQM or performance profile"""
    center: Literal["mean", "median"] = "mean"
    """the seeds' centre in the table and the curves (the ± band is the sample std either way)"""


@dataclass
class Curve:
    seed: int
    steps: np.ndarray
    values: np.ndarray
    tag: str = "eval/normalized_score"


def read_curve(run_dir: Path, metric: str = "auto") -> tuple[str, np.ndarray, np.ndarray]:
    """(tag, steps, values) of the run's evaluation curve, one value per step."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    normalized = metric == "auto" and "eval/normalized_score" in tags
    tag = metric if "/" in metric else "eval/normalized_score" if normalized else "eval/return"
    if tag not in tags:
        return tag, np.zeros(0), np.zeros(0)
    # A resumed run logs again from its checkpoint's step into a new event file: the later value wins.
    by_step = {e.step: e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time)}
    steps = np.array(sorted(by_step))
    return tag, steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def describe_dataset(value: str) -> tuple[str, str]:
    """(name, label) of a run's --dataset / --env-id value: the name matches published scores, the
    label is what the tables show. A path is named by its Minari id when its metadata has one."""
    is_path = value.startswith(("/", ".", "~")) or value.endswith((".hdf5", ".h5"))
    if not is_path:
        return value, value
    path = Path(value).expanduser()
    for meta_file in (path / "data" / "metadata.json", path / "metadata.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("dataset_id"):
            kind = "generated" if meta.get("collector") else "local copy"
            return meta["dataset_id"], f"{meta['dataset_id']} ({kind})"
    name = path.stem if path.suffix in (".hdf5", ".h5") else path.name
    return name, f"{name} (file)"


def run_dataset(folder: Path, slug: str) -> tuple[str, str]:
    """(name, label) of the run's dataset from its config.json; the folder-name slug as fallback."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    value = (config.get("dataset") or config.get("env_id")) if isinstance(config, dict) else None
    return describe_dataset(value) if isinstance(value, str) else (slug, slug)


def collect(
    runs_dir: Path, metric: str = "auto"
) -> tuple[dict[tuple[str, str], list[Curve]], dict[str, str], list[Path]]:
    """({(algo, dataset label): [Curve, ...]} over the finished runs with an evaluation curve,
    {label: dataset name}, unfinished run folders)."""
    runs: dict[tuple[str, str], list[Curve]] = defaultdict(list)
    names: dict[str, str] = {}
    unfinished = []
    for folder in sorted(p.parent for p in runs_dir.rglob("config.json")):
        match = RUN_RE.match(folder.name)
        if match is None:
            continue
        if not (folder / "metrics.json").exists():
            unfinished.append(folder)
            continue
        tag, steps, values = read_curve(folder, metric)
        if len(values):
            name, label = run_dataset(folder, match["target"])
            names[label] = name
            runs[(match["algo"], label)].append(Curve(int(match["seed"]), steps, values, tag))
    return dict(runs), names, unfinished


def read_published(path: str) -> dict[tuple[str, str], list[dict[str, str]]]:
    """{(algorithm, dataset): [row, ...]} from the published-scores CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(PUBLISHED_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"error: {path} lacks the column(s) {', '.join(sorted(missing))}")
        table: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
        for line, row in enumerate(reader, start=2):
            row = {k: (row[k] or "").strip() for k in PUBLISHED_COLUMNS}
            try:
                float(row["score"])
                if row["std"]:
                    float(row["std"])
            except ValueError:
                raise SystemExit(f"error: {path}:{line}: score and std must be numbers") from None
            table[(row["algorithm"], row["dataset"])].append(row)
    return dict(table)


def score_matrices(
    runs: dict[tuple[str, str], list[Curve]],
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], list[tuple[str, str, int]]]:
    """Per algorithm the (runs x datasets) matrix of final scores that rliable takes, the datasets of
    its columns, and the (algorithm, dataset, seed) runs left out to make it rectangular.

    An algorithm with k seeds on its least-run dataset keeps its k lowest-numbered seeds on every
    dataset: picking by seed number cannot favour good runs, and a sweep's seeds 0..k-1 are the ones
    every dataset has. Each algorithm keeps all of its datasets (see the module docstring)."""
    matrices: dict[str, np.ndarray] = {}
    columns: dict[str, list[str]] = {}
    left_out: list[tuple[str, str, int]] = []
    for algo in sorted({a for a, _ in runs}):
        datasets = sorted(d for a, d in runs if a == algo)
        k = min(len(runs[(algo, d)]) for d in datasets)
        finals = []
        for dataset in datasets:
            curves = sorted(runs[(algo, dataset)], key=lambda c: c.seed)
            finals.append([c.values[-1] for c in curves[:k]])
            left_out += [(algo, dataset, c.seed) for c in curves[k:]]
        matrices[algo] = np.array(finals, dtype=np.float64).T
        columns[algo] = datasets
    return matrices, columns, left_out


@contextlib.contextmanager
def global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the block and restore its state afterwards.

    rliable 1.2's StratifiedBootstrap draws its indices with np.random.choice, ignoring the
    random_state it is given, and create_performance_profile takes no random state at all, so the
    global RNG is the only way to make the intervals reproducible; restoring it keeps callers'
    random streams as they were."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm_with_ci(
    scores: dict[str, np.ndarray], reps: int, seed: int
) -> dict[str, tuple[float, float, float]]:
    """{algorithm: (IQM, CI low, CI high)} of {algorithm: (runs x tasks) scores}: rliable's
    aggregate_iqm and its 95% percentile stratified-bootstrap interval (runs resampled within each
    task, tasks fixed). Raises ImportError without rliable."""
    from rliable import library, metrics

    def iqm(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x)])

    result = {}
    for algo, matrix in scores.items():
        # One call per algorithm, each from the same seed, so that an algorithm's interval does not
        # depend on which other algorithms the report holds (rliable draws them from one stream).
        with global_numpy_seed(seed):
            points, intervals = library.get_interval_estimates(
                {algo: matrix}, iqm, method="percentile", reps=reps
            )
        lo, hi = intervals[algo][:, 0]
        result[algo] = (float(points[algo][0]), float(lo), float(hi))
    return result


def fmt(values: np.ndarray, center: str = "mean") -> str:
    """The values' mean (or median) ± sample std as text (std 0 for a single value)."""
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    middle = np.median(values) if center == "median" else values.mean()
    return f"{middle:.1f} ± {std:.1f}"


def fmt_steps(curves: list[Curve]) -> str:
    """The step of the runs' last evaluation, or its range when the runs differ."""
    last = sorted({int(c.steps[-1]) for c in curves})
    return f"{last[0]:,}" if len(last) == 1 else f"{last[0]:,}–{last[-1]:,}"


def main(args: Args) -> str:
    """Write report.md and the PNGs to args.out_dir; return the Markdown, which is also printed."""
    if args.metric not in ("auto", "return") and "/" not in args.metric:
        raise SystemExit(
            f"error: --metric {args.metric}: use auto, return or a logged tag such as expo/log_alpha"
        )
    runs, names, unfinished = collect(Path(args.runs_dir), args.metric)
    if not runs:
        raise SystemExit(
            f"error: no finished run folders with evaluation logs under {args.runs_dir}"
        )
    published = read_published(args.published) if args.published else None
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    algos = sorted({a for a, _ in runs})
    datasets = sorted({d for _, d in runs})
    header = "| algorithm | dataset | steps | final | best | n |"
    rule = "|---|---|---|---|---|---|"
    if published is not None:
        header, rule = header + " published |", rule + "---|"
    lines = [
        f"# Results from {args.runs_dir}",
        "",
        f"Final = last evaluation, best = best evaluation; {args.center} ± std over seeds (sample std),",
        "n seeds; steps = step of the last evaluation (updates offline, env steps online).",
        "",
        header,
        rule,
    ]
    sources: list[str] = []
    for (algo, dataset), curves in sorted(runs.items()):
        final = np.array([c.values[-1] for c in curves])
        best = np.array([c.values.max() for c in curves])
        row = f"| {algo} | {dataset} | {fmt_steps(curves)} | {fmt(final, args.center)} | {fmt(best, args.center)} | {len(curves)} |"
        if published is not None:
            cells = []
            for entry in published.get((algo, names[dataset]), []):
                if entry["source"] not in sources:
                    sources.append(entry["source"])
                std = f" ± {entry['std']}" if entry["std"] else ""
                cells.append(f"{entry['score']}{std} [{sources.index(entry['source']) + 1}]")
            row += f" {'; '.join(cells) or '—'} |"
        lines.append(row)
    if published is not None:
        lines.append("")
        if sources:
            lines.append(
                f"Published scores from {args.published}; their budgets and protocols differ:"
            )
            lines += ["", *[f"{i}. {source}" for i, source in enumerate(sources, start=1)]]
        else:
            lines.append(
                f"No published score in {args.published} is for these (algorithm, dataset) pairs."
            )
    if unfinished:
        lines += ["", "Unfinished runs (no metrics.json), left out of every number:", ""]
        lines += [f"- `{folder.relative_to(args.runs_dir)}`" for folder in unfinished]
    scores, _, left_out = score_matrices(runs)
    diagnostic = "/" in args.metric and not args.metric.startswith("eval/")
    try:
        aggregates = None if diagnostic else iqm_with_ci(scores, args.reps, args.seed)
    except ImportError:
        aggregates = None
        note = 'rliable is not installed, so the IQM was skipped; pip install -e ".[plots]"'
        print(f"note: {note}")
        lines += ["", f"Aggregate over datasets: {note}."]
    if aggregates is not None:
        lines += [
            "",
            "Aggregate over datasets: IQM of the final scores, 95% stratified-bootstrap CI (rliable,",
            f"{args.reps} resamples of the runs within each dataset, seed {args.seed}).",
            "",
        ]
        lines += ["| algorithm | IQM | 95% CI | runs | datasets |", "|---|---|---|---|---|"]
        for algo in algos:
            point, lo, hi = aggregates[algo]
            n_runs, n_datasets = scores[algo].shape
            lines.append(
                f"| {algo} | {point:.1f} | [{lo:.1f}, {hi:.1f}] | {n_runs * n_datasets} | {n_datasets} |"
            )
        if left_out:
            lines += [
                "",
                "Left out of the IQM, the CI and the performance profile so that each algorithm has",
                "as many runs on every dataset (its lowest-numbered seeds are kept):",
                "",
            ]
            lines += [f"- {algo} on {dataset}: seed {seed}" for algo, dataset, seed in left_out]
    pngs = plot_curves(runs, algos, datasets, out, args.center)
    tags = {c.tag for curves in runs.values() for c in curves}
    profile = None
    if not diagnostic:
        profile = plot_performance_profile(
            scores, algos, out, args.reps, args.seed, normalized=tags == {"eval/normalized_score"}
        )
    if profile is not None:
        lines += [
            "",
            f"Performance profile of the final scores: ![performance profile]({profile.name})",
        ]
    if pngs:
        lines += ["", *[f"![{p.stem}]({p.name})" for p in pngs]]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    return text


def plot_curves(
    runs: dict[tuple[str, str], list[Curve]],
    algos: list[str],
    datasets: list[str],
    out: Path,
    center: str = "mean",
) -> list[Path]:
    """One PNG per dataset with a mean (or median) curve and a ± std band per algorithm; [] without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "note: matplotlib is not installed, so the learning-curve PNGs were skipped; "
            'pip install -e ".[plots]" to draw them'
        )
        return []
    paths = []
    for dataset in datasets:
        fig, ax = plt.subplots(figsize=(6, 4))
        for algo in algos:
            curves = runs.get((algo, dataset))
            if not curves:
                continue
            length = min(len(c.values) for c in curves)
            steps = curves[0].steps[:length]
            values = np.stack([c.values[:length] for c in curves])
            # Sample std, as in the table; one colour per algorithm across all the PNGs.
            middle = np.median(values, 0) if center == "median" else values.mean(0)
            std = values.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(middle)
            color = f"C{algos.index(algo) % 10}"
            ax.plot(steps, middle, color=color, label=f"{algo} (n={len(curves)})")
            ax.fill_between(steps, middle - std, middle + std, color=color, alpha=0.2)
        tags = {c.tag for algo in algos for c in runs.get((algo, dataset), [])}
        ax.set_xlabel("step")
        if tags == {"eval/normalized_score"}:
            quantity = "normalised score"
        elif all(tag.startswith("eval/") for tag in tags):
            quantity = "return"
        else:
            quantity = ", ".join(sorted(tags))
        ax.set_ylabel(f"{quantity} ({center} ± std over seeds)")
        ax.set_title(dataset)
        ax.legend()
        path = out / f"curves_{re.sub(r'[^A-Za-z0-9._-]+', '-', dataset).strip('-')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_performance_profile(
    scores: dict[str, np.ndarray],
    algos: list[str],
    out: Path,
    reps: int,
    seed: int,
    normalized: bool = True,
) -> Path | None:
    """performance_profile.png: per algorithm the fraction of its runs x datasets whose final score
    exceeds tau, with 95% stratified-bootstrap bands (rliable's create_performance_profile and
    plot_performance_profiles); None without matplotlib or rliable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from rliable import library, plot_utils
    except ImportError:
        print(
            "note: matplotlib or rliable is not installed, so the performance profile was skipped; "
            'pip install -e ".[plots]" to draw it'
        )
        return None
    every = np.concatenate([m.ravel() for m in scores.values()])
    low, high = float(every.min()), float(every.max())
    # tau spans the observed scores, so every profile falls from 1 to 0 within the plot.
    tau = np.linspace(low, high if high > low else low + 1.0, 101)
    profiles, bands = {}, {}
    for algo, matrix in scores.items():
        # Per algorithm from one seed, as in iqm_with_ci: a band does not depend on the others.
        with global_numpy_seed(seed):
            profile, band = library.create_performance_profile({algo: matrix}, tau, reps=reps)
        profiles[algo], bands[algo] = profile[algo], band[algo]
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(
        profiles,
        tau,
        performance_profile_cis=bands,
        ax=ax,
        # The curves' colours, so an algorithm looks the same in every PNG of the report.
        colors={algo: f"C{algos.index(algo) % 10}" for algo in profiles},
        xlabel=f"final {'normalised score' if normalized else 'score'} (τ)",
        ylabel="fraction of runs with score > τ",
        labelsize="medium",
        ticklabelsize="medium",
        legend=True,
        legendsize="small",
    )
    path = out / "performance_profile.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main(tyro.cli(Args))
