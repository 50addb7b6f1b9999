"""Summarise PDPPO / PPO runs on a lot-sizing instance beside the authors' published training logs.

Reads every finished run folder (with metrics.json) under the given folders: `algos/pdppo.py` runs are grouped
by --critic, --variant and --train-actor-trunk from their config.json; `algos/ppo.py` runs on a lot-sizing id
are one more group ("clean PPO"). Per group, over seeds: the paper's training-curve metrics (the mean return of
the episodes that ended in the last 4,000-step window, the best such window, and their sum), the greedy
evaluation return, and Welch's t-test of each group's final training return against PDPPO's (`dual`). The
authors' values are the final logged 40-episode averages of their runs 1-10 at 1M steps
(leokan92/pdppo code/Lot-sizing/logs, as summarised in the reference page).

    python scripts/pdppo_table.py runs/pdppo_25x10 runs/ppo_lotsizing_25x10 --instance 25x10
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Final logged 40-episode averages at 1M steps, runs 1-10, mean and population sd (the reference page).
AUTHORS: dict[str, dict[str, tuple[float, float]]] = {
    "15x5": {"PDPPO": (-3314.5, 531.0), "PPO": (-3500.7, 839.9)},
    "20x10": {"PDPPO": (-4758.5, 654.8), "PPO": (-6259.6, 685.1)},
    "25x10": {"PDPPO": (-7660.0, 1530.3), "PPO": (-14675.3, 2258.4)},
    "25x15": {"PDPPO": (-6813.1, 996.1), "PPO": (-11554.1, 1819.0)},
}


@dataclass
class Args:
    run_dirs: tyro.conf.Positional[tuple[str, ...]]
    """folders holding the run folders (searched recursively)"""
    instance: str = "25x10"
    """the published setting whose authors' values are shown"""


def ppo_last_window(run: Path, window: int = 4000) -> float | None:
    """Mean return of the episodes of an algos/ppo.py run that ended in its last `window` steps."""
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/episodic_return" not in acc.Tags()["scalars"]:
        return None
    events = acc.Scalars("charts/episodic_return")
    last = max(e.step for e in events)
    returns = [e.value for e in events if e.step > last - window]
    return float(np.mean(returns)) if returns else None


def group_of(config: dict) -> str | None:
    if "critic" in config:
        if config.get("variant") == "early":
            return "PDPPO, early variant"
        name = (
            "PDPPO (dual critics)"
            if config["critic"] == "dual"
            else "PPO (released, --critic single)"
        )
        return name + (", trunk trained" if config.get("train_actor_trunk") else "")
    if "LotSizing" in str(config.get("env_id", "")):
        return "clean PPO (algos/ppo.py)"
    return None


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.mean(values):.0f} ± {statistics.stdev(values):.0f}"


def main(args: Args) -> str:
    groups: dict[str, dict[str, list[float]]] = {}
    steps: dict[str, set[int]] = {}
    for root in args.run_dirs:
        for metrics_path in sorted(Path(root).rglob("metrics.json")):
            run = metrics_path.parent
            config = json.loads((run / "config.json").read_text())
            name = group_of(config)
            if name is None:
                continue
            metrics = json.loads(metrics_path.read_text())
            g = groups.setdefault(name, {"last": [], "max": [], "sum": [], "eval": []})
            last = metrics.get("train_return_last")
            if last is None:
                last = ppo_last_window(run)
            g["last"].append(last)
            if metrics.get("train_return_max") is not None:
                g["max"].append(metrics["train_return_max"])
                g["sum"].append(metrics["train_return_sum"])
            g["eval"].append(metrics["return"])
            steps.setdefault(name, set()).add(int(metrics["steps"]))
    base = groups.get("PDPPO (dual critics)", {}).get("last", [])
    lines = [
        "| method | seeds | steps | final training return (last 4,000 steps) | best window | sum of windows "
        "| greedy evaluation | Welch p vs PDPPO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in groups.items():
        p = "–"
        if name != "PDPPO (dual critics)" and len(base) > 1 and len(g["last"]) > 1:
            p = f"{stats.ttest_ind(base, g['last'], equal_var=False).pvalue:.3f}"
        lines.append(
            f"| {name} | {len(g['last'])} | {', '.join(str(s) for s in sorted(steps[name]))} "
            f"| {fmt(g['last'])} | {fmt(g['max'])} | {fmt(g['sum'])} | {fmt(g['eval'])} | {p} |"
        )
    authors = AUTHORS.get(args.instance, {})
    for name, (mean, sd) in authors.items():
        lines.append(
            f"| authors' {name} (their logs) | 10 | 1000000 | {mean:.0f} ± {sd:.0f} | | | | |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
