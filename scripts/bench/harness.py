"""What every benchmark shares: interleaved timed rounds and their medians, synthetic transitions, and
importing an outside checkout of an original implementation with stand-ins for what it imports but never
uses."""

from __future__ import annotations

import contextlib
import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ocrl.data import ReplayBuffer


@dataclass
class CpuArgs:
    """The flag every benchmark but threads takes."""

    threads: int | None = None
    """torch CPU threads (default: torch's); benchmark on a shared machine with 1"""


@dataclass
class DeviceArgs(CpuArgs):
    """The flags of a benchmark that runs torch on a device."""

    device: str = "cpu"
    """device to run on"""


@dataclass
class TransitionArgs(DeviceArgs):
    """The flags of a benchmark that trains on minibatches of synthetic transitions."""

    obs_dim: int = 11
    """observation size (Hopper: 11)"""
    act_dim: int = 3
    """action size (Hopper: 3)"""
    batch_size: int = 256
    """minibatch size"""


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_round(step: Callable[[int], None], updates: int, device: torch.device) -> float:
    """Calls per second of step(0), ..., step(updates - 1)."""
    sync(device)
    start = time.perf_counter()
    for it in range(updates):
        step(it)
    sync(device)
    return updates / (time.perf_counter() - start)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of fn, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def step_rates(
    steps: dict[str, Callable[[int], None]], calls: int, rounds: int, device: torch.device
) -> dict[str, float]:
    """Each step function's median calls/s over `rounds` interleaved rounds of `calls` calls."""
    rates = interleaved(
        {n: lambda s=s: time_round(s, calls, device) for n, s in steps.items()}, rounds
    )
    return medians(rates)


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each variant's measurements: `rounds` rounds, each calling every variant once in turn, so that
    background load falls on all of them alike."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            out[name].append(measure())
    return out


def medians(values: dict[str, list[float]]) -> dict[str, float]:
    """The median of each list."""
    return {name: statistics.median(v) for name, v in values.items()}


def synthetic(rows: int, obs_dim: int, act_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random transitions in D4RL's array layout (terminals at a rate of 1e-3)."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((rows, obs_dim), dtype=np.float32)
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(rows, dtype=np.float32),
        "next_observations": np.roll(obs, -1, axis=0),
        "terminals": (rng.random(rows) < 0.001).astype(np.float32),
    }


def replay_buffer(
    data: dict[str, np.ndarray], device: torch.device | str, rows: slice = slice(None)
) -> ReplayBuffer:
    """The rows of `synthetic` data in a training buffer on `device`."""
    keys = ("observations", "actions", "rewards", "next_observations", "terminals")
    return ReplayBuffer.from_arrays(*(data[k][rows] for k in keys), device)


def installed(name: str) -> bool:
    """Whether the top-level package of `name` can be imported."""
    return importlib.util.find_spec(name.split(".")[0]) is not None


def stand_in(name: str, **attrs) -> types.ModuleType:
    """An empty module called `name` holding `attrs`."""
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@contextlib.contextmanager
def stand_ins(modules: dict[str, types.ModuleType], path: str | None = None) -> Iterator[None]:
    """`modules` in sys.modules (and `path` first on sys.path) for the duration only; what was there
    before is put back afterwards."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    if path is not None:
        sys.path.insert(0, path)
    try:
        yield
    finally:
        if path is not None:
            sys.path.remove(path)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def load_file(name: str, file: Path) -> types.ModuleType:
    """The Python file at `file`, imported as a module called `name` (not added to sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Unused:
    """Stands for a class of an outside checkout that a benchmark never instantiates."""

    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError("a stand-in of an outside checkout was called")
