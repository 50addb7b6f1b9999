"""Summarise PDPPO / PPO runs on a lot-sizing instance beside the authors' published training logs.

Reads every finished run folder (with metrics.json) under the given folders: `algos/pdppo.py` runs are grouped
by --critic, --variant and --train-actor-trunk from their config.json; `algos/ppo.py` runs on a lot-sizing id
are one more group ("clean PPO"). Per group, over seeds: the paper's training-curve metrics (the mean return of
the episodes that ended in the last 4,000-step window, the best such window, and their sum), the greedy
evaluation return, and Welch's t-test of each group's final training return against PDPPO's (`dual`).
`--at-step N` reads the curves (tensorboard `pdppo/episode_return`, one 40-episode mean per 4,000 steps) up to
step N instead, so that runs of different lengths compare at one budget; the greedy evaluation is then left out.

The authors' values come from their published logs (leokan92/pdppo code/Lot-sizing/logs, runs 1-10 of each
setting, one 40-episode mean per 4,000 steps): at 100k and 200k steps the window ending there, the best window
and the sum of windows up to it; at 1M the final window. Mean and sample sd (ddof 1) over the 10 runs.

    python scripts/pdppo_table.py runs/pdppo_25x10 runs/ppo_lotsizing_25x10 --instance 25x10
    python scripts/pdppo_table.py runs/pdppo_25x10 --instance 25x10 --at-step 100000
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# The authors' logs, runs 1-10: {step: {setting: {method: {metric: (mean, sample sd)}}}}; "last" is the window
# ending at the step, "max" the best window and "sum" the sum of windows up to it (4,000 steps per window).
AUTHORS: dict[int, dict[str, dict[str, dict[str, tuple[float, float]]]]] = {
    100_000: {
        "15x5": {
            "PDPPO": {"last": (-4763.5, 786.9), "max": (-4696.5, 712.0), "sum": (-168754, 16031)},
            "PPO": {"last": (-5940.0, 1250.0), "max": (-5856.1, 1216.8), "sum": (-250547, 13133)},
        },
        "20x10": {
            "PDPPO": {"last": (-7224.7, 834.9), "max": (-6836.5, 661.7), "sum": (-235264, 37899)},
            "PPO": {"last": (-15847.5, 2633.7), "max": (-8498.5, 608.6), "sum": (-311331, 29056)},
        },
        "25x10": {
            "PDPPO": {
                "last": (-12982.2, 1210.6),
                "max": (-12548.7, 1279.4),
                "sum": (-453929, 89910),
            },
            "PPO": {"last": (-21160.4, 2674.7), "max": (-13658.4, 1458.8), "sum": (-445578, 70710)},
        },
        "25x15": {
            "PDPPO": {
                "last": (-11534.9, 2605.7),
                "max": (-10595.9, 2351.4),
                "sum": (-358074, 67240),
            },
            "PPO": {"last": (-23720.5, 3039.4), "max": (-11268.2, 833.6), "sum": (-418689, 48867)},
        },
    },
    200_000: {
        "15x5": {
            "PDPPO": {"last": (-4249.2, 678.7), "max": (-4196.2, 640.8), "sum": (-279969, 30525)},
            "PPO": {"last": (-4000.3, 499.5), "max": (-3781.5, 498.8), "sum": (-364586, 17744)},
        },
        "20x10": {
            "PDPPO": {"last": (-6091.9, 532.2), "max": (-6008.0, 479.0), "sum": (-397298, 48142)},
            "PPO": {"last": (-8704.6, 2619.8), "max": (-6247.9, 740.7), "sum": (-552930, 62523)},
        },
        "25x10": {
            "PDPPO": {"last": (-10181.5, 675.8), "max": (-10135.1, 668.5), "sum": (-729011, 88935)},
            "PPO": {
                "last": (-18221.2, 3224.7),
                "max": (-13219.3, 1510.8),
                "sum": (-964638, 150006),
            },
        },
        "25x15": {
            "PDPPO": {
                "last": (-9317.4, 1684.7),
                "max": (-9074.2, 1695.9),
                "sum": (-609698, 114735),
            },
            "PPO": {
                "last": (-17319.5, 6084.1),
                "max": (-10878.6, 1229.8),
                "sum": (-996553, 126366),
            },
        },
    },
    1_000_000: {
        "15x5": {"PDPPO": {"last": (-3314.5, 559.8)}, "PPO": {"last": (-3500.7, 885.3)}},
        "20x10": {"PDPPO": {"last": (-4758.5, 690.2)}, "PPO": {"last": (-6259.6, 722.2)}},
        "25x10": {"PDPPO": {"last": (-7660.0, 1613.1)}, "PPO": {"last": (-14675.3, 2380.6)}},
        "25x15": {"PDPPO": {"last": (-6813.1, 1050.0)}, "PPO": {"last": (-11554.1, 1917.4)}},
    },
}
WINDOW = 4000


@dataclass
class Args:
    run_dirs: tyro.conf.Positional[tuple[str, ...]]
    """folders holding the run folders (searched recursively)"""
    instance: str = "25x10"
    """the published setting whose authors' values are shown"""
    at_step: int | None = None
    """compare the training curves at this step (a multiple of 4,000) instead of each run's end"""


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one tensorboard scalar of a run, in step order; [] when it was not logged."""
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return sorted((e.step, e.value) for e in acc.Scalars(tag))


def ppo_last_window(run: Path, end: int | None = None, window: int = WINDOW) -> float | None:
    """Mean return of the episodes of an algos/ppo.py run that ended in the `window` steps up to `end` (default: its last step)."""
    events = scalars(run, "charts/episodic_return")
    if not events:
        return None
    last = max(step for step, _ in events) if end is None else end
    returns = [value for step, value in events if last - window < step <= last]
    return float(np.mean(returns)) if returns else None


def curve_upto(run: Path, step: int) -> list[float] | None:
    """A PDPPO run's 4,000-step window means up to `step`; None when the run did not reach it."""
    windows = [(s, v) for s, v in scalars(run, "pdppo/episode_return") if s <= step]
    if not windows or windows[-1][0] != step:
        return None
    return [v for _, v in windows]


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
    if args.at_step is not None and (args.at_step <= 0 or args.at_step % WINDOW):
        print(f"--at-step {args.at_step}: must be a positive multiple of {WINDOW}", file=sys.stderr)
        raise SystemExit(2)
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
            if args.at_step is None:
                last = metrics.get("train_return_last")
                if last is None:
                    last = ppo_last_window(run)
                best, total = metrics.get("train_return_max"), metrics.get("train_return_sum")
                evaluation, step = metrics["return"], int(metrics["steps"])
            elif "critic" in config:
                windows = curve_upto(run, args.at_step)
                if windows is None:
                    continue
                last, best, total = windows[-1], max(windows), float(np.sum(windows))
                evaluation, step = None, args.at_step
            else:
                last, best, total, evaluation = ppo_last_window(run, args.at_step), None, None, None
                if last is None or int(metrics["steps"]) < args.at_step:
                    continue
                step = args.at_step
            g = groups.setdefault(name, {"last": [], "max": [], "sum": [], "eval": []})
            g["last"].append(last)
            if best is not None:
                g["max"].append(best)
                g["sum"].append(total)
            if evaluation is not None:
                g["eval"].append(evaluation)
            steps.setdefault(name, set()).add(step)
    base = groups.get("PDPPO (dual critics)", {}).get("last", [])
    lines = [
        "| method | seeds | steps | training return (last 4,000 steps) | best window | sum of windows "
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
    ours = set().union(*steps.values())
    shown = [args.at_step] if args.at_step in AUTHORS else sorted(s for s in AUTHORS if s in ours)
    for step in dict.fromkeys([*shown, 1_000_000]):  # the budget compared, then the paper's 1M
        for name, values in AUTHORS[step].get(args.instance, {}).items():
            cells = [
                f"{values[k][0]:.0f} ± {values[k][1]:.0f}" if k in values else ""
                for k in ("last", "max", "sum")
            ]
            lines.append(
                f"| authors' {name} (their logs) | 10 | {step} | {' | '.join(cells)} | | |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
