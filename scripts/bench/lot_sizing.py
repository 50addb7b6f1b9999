"""Lot sizing: env steps per second of ocrl's lot-sizing environment (one episode at a time, and 4 and
4,096 episodes at once) against PDPPO's `SimplePlant` (leokan92/pdppo, loaded by path from an outside
checkout given by --pdppo-path; not part of ocrl), uniform random actions, a reset every horizon steps;
interleaved rounds, medians, ratios against the first row."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .harness import CpuArgs, installed, interleaved, load_file, medians, stand_in, stand_ins


@dataclass
class Args(CpuArgs):
    """ocrl's lot-sizing environments against PDPPO's SimplePlant (--pdppo-path)."""

    pdppo_path: str = "../pdppo/code/Lot-sizing"
    """PDPPO's code/Lot-sizing folder (envs/simplePlant.py): `git clone https://github.com/leokan92/pdppo ../pdppo`"""
    instance: str | None = None
    """instance JSON (default: a generated 25 items x 10 machines instance)"""
    steps: int = 10_000
    """single-env steps per timed round (episodes of 100 periods, reset timed)"""
    rounds: int = 5
    """interleaved rounds per variant; the median is reported"""


def import_pdppo_env(path: str):
    """(SimplePlant, StochasticDemandModel) of PDPPO's code/Lot-sizing at `path`, or None.

    The two files are loaded by path: the repository's scenarioManager/__init__.py imports a module the
    repository lacks (scenario_reducer), and SimplePlant uses the old `gym` only as its base class (an empty
    stand-in when gym is not installed). Nothing of PDPPO is modified or copied."""
    root = Path(path)
    files = root / "envs" / "simplePlant.py", root / "scenarioManager" / "stochasticDemandModel.py"
    if not all(f.is_file() for f in files):
        return None
    modules = {}
    if not installed("gym"):
        modules["gym"] = stand_in("gym", Env=type("Env", (), {}))
    demand = load_file("pdppo_stochastic_demand", files[1])
    modules["scenarioManager"] = stand_in(
        "scenarioManager", StochasticDemandModel=demand.StochasticDemandModel
    )
    with stand_ins(modules):
        plant = load_file("pdppo_simple_plant", files[0])
    return plant.SimplePlant, demand.StochasticDemandModel


def main(args: Args) -> dict[str, float]:
    from ocrl.envs.lot_sizing import (
        LotSizingEnv,
        LotSizingVectorEnv,
        generate_instance,
        load_instance,
    )

    instance = (
        load_instance(args.instance) if args.instance else generate_instance(25, 10, 100, seed=0)
    )
    horizon, n = instance.horizon, args.steps
    rng = np.random.default_rng(0)
    actions = rng.integers(0, instance.n_items + 1, size=(n, instance.n_machines))

    def episodes(env) -> float:  # the PDPPO agents' loop: reset, then `horizon` steps
        start = time.perf_counter()
        for k in range(n):
            if k % horizon == 0:
                env.reset()
            env.step(actions[k])
        return n / (time.perf_counter() - start)

    rounds: dict[str, Callable[[], float]] = {}
    original = import_pdppo_env(args.pdppo_path)
    if original is None:
        print(f"\nPDPPO's code not found at {args.pdppo_path}: only ocrl's numbers")
    else:
        simple_plant, demand_model = original
        settings = instance.to_dict()
        plant = simple_plant(settings, demand_model(settings))
        rounds["PDPPO SimplePlant (one episode)"] = lambda: episodes(plant)
    single = LotSizingEnv(instance=instance)
    single.reset(seed=0)
    rounds["ocrl LotSizingEnv (one episode)"] = lambda: episodes(single)
    for b in (4, 4096):
        venv = LotSizingVectorEnv(b, seed=0, instance=instance)
        venv.reset(seed=0)
        batch = rng.integers(0, instance.n_items + 1, size=(max(1, n // b), b, instance.n_machines))

        def vector(venv=venv, batch=batch) -> float:
            start = time.perf_counter()
            for a in batch:
                venv.step(a)
            return batch.shape[0] * batch.shape[1] / (time.perf_counter() - start)

        rounds[f"ocrl LotSizingVectorEnv ({b} episodes)"] = vector
    med = medians(interleaved(rounds, args.rounds))
    base = next(iter(med.values()))
    print(f"\nlot sizing, {instance.n_items} items x {instance.n_machines} machines, uniform random "
          f"actions, env steps/s (median of {args.rounds} interleaved rounds)")  # fmt: skip
    print(f"| env | steps/s | ratio vs {next(iter(med))} |\n|---|---|---|")
    for name, rate in med.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")
    return med
