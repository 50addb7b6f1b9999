"""Peak memory of loading a 1M-transition D4RL-format file into the training buffer, as a multiple of the
float32 size of its arrays (target: at most 2x)."""

from __future__ import annotations

import gc
import tempfile
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ocrl.data import OfflineDataset, ReplayBuffer, load_dataset
from ocrl.data.d4rl import write_d4rl_hdf5

from .harness import CpuArgs, synthetic


@dataclass
class Args(CpuArgs):
    """Peak memory of loading a D4RL file into the training buffer, against its float32 size."""

    rows: int = 1_000_000
    """rows of the synthetic D4RL file"""
    obs_dim: int = 11
    """observation size (Hopper: 11)"""
    act_dim: int = 3
    """action size (Hopper: 3)"""


def main(args: Args) -> float:
    rows = args.rows
    data = synthetic(rows, args.obs_dim, args.act_dim)
    ds = OfflineDataset(
        observations=data["observations"], actions=data["actions"], rewards=data["rewards"],
        terminals=data["terminals"] > 0.5, timeouts=(np.arange(rows) % 1000) == 999,
        next_observations=data["next_observations"], name="synthetic", env_id="Hopper-v4",
    )  # fmt: skip
    float32_bytes = sum(
        a.size * 4
        for a in (
            ds.observations,
            ds.actions,
            ds.rewards,
            ds.next_observations,
            ds.terminals,
            ds.timeouts,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic_1m.hdf5"
        write_d4rl_hdf5(ds, path)
        del ds, data
        gc.collect()
        tracemalloc.start()
        loaded = load_dataset(str(path))
        trans = loaded.transitions()
        mean, std = loaded.obs_mean_std()
        for arr in (trans.observations, trans.next_observations):
            arr -= mean
            arr /= std
        buffer = ReplayBuffer.from_arrays(
            trans.observations,
            trans.actions,
            trans.rewards,
            trans.next_observations,
            trans.terminals,
            "cpu",
        )
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del buffer, trans, loaded
    ratio = peak / float32_bytes
    print(f"\nLoading a {rows:,}-row D4RL file into the training buffer (CPU): float32 size {float32_bytes / 2**20:.1f} MiB, "
          f"peak traced {peak / 2**20:.1f} MiB, held after loading {current / 2**20:.1f} MiB -> peak {ratio:.2f}x the float32 size "
          f"(target <= 2x)")  # fmt: skip
    return ratio
