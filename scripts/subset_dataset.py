"""Write a random fraction of a dataset's episodes as a new D4RL-layout file (SynthER's small-data experiments).

Whole episodes are kept (cut at terminals | timeouts, as `OfflineDataset.episodes`), drawn without replacement
with `--seed` until `--fraction` of the rows is reached, in their original order; the env id, reference scores
and metadata are carried over, with the source and fraction recorded.

    python scripts/subset_dataset.py DATASETS/ocrl/hopper/medium-replay-v0 --fraction 0.15 --out subset15.hdf5
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tyro

from ocrl.data import DatasetError, load_dataset
from ocrl.data.d4rl import write_d4rl_hdf5


@dataclass
class Args:
    dataset: tyro.conf.Positional[str]
    """dataset to take episodes from (D4RL name or file, Minari folder or id)"""
    out: str
    """the .hdf5 file to write (must not exist)"""
    fraction: float = 0.15
    """share of the rows to keep, in whole episodes"""
    seed: int = 0
    """seed of the episode draw"""


def main(args: Args) -> Path:
    if not 0 < args.fraction <= 1:
        raise DatasetError(f"--fraction {args.fraction}: must lie in (0, 1]")
    out = Path(args.out)
    if out.exists():
        raise DatasetError(f"--out {out}: exists already; pick a new path")
    ds = load_dataset(args.dataset)
    episodes = ds.episodes()
    order = np.random.default_rng(args.seed).permutation(len(episodes))
    lengths = np.array([e.stop - e.start for e in episodes])
    count = int(np.searchsorted(np.cumsum(lengths[order]), args.fraction * len(ds)) + 1)
    chosen = sorted(order[: min(count, len(episodes))])
    rows = np.concatenate([np.arange(episodes[i].start, episodes[i].stop) for i in chosen])
    nxt = ds.next_observations
    subset = replace(
        ds,
        observations=ds.observations[rows],
        actions=ds.actions[rows],
        rewards=ds.rewards[rows],
        terminals=ds.terminals[rows],
        timeouts=ds.timeouts[rows].copy(),
        next_observations=None if nxt is None else nxt[rows],
        name=f"{ds.name}-subset{args.fraction:g}-s{args.seed}",
        metadata={
            **{k: v for k, v in ds.metadata.items() if k != "format"},
            "ocrl_subset_of": ds.name,
            "ocrl_subset_fraction": args.fraction,
            "ocrl_subset_seed": args.seed,
        },
    )
    if nxt is None:
        # Without stored next observations, an episode that ran off the end of the file must end in a
        # timeout here, or its last row would pair with the next chosen episode's first state.
        ends = np.cumsum([episodes[i].stop - episodes[i].start for i in chosen]) - 1
        open_end = ~(subset.terminals[ends] | subset.timeouts[ends])
        subset.timeouts[ends[open_end]] = True
    write_d4rl_hdf5(subset, out)
    print(
        f"wrote {out}: {len(rows)} of {len(ds)} rows ({len(rows) / len(ds):.1%}), "
        f"{len(chosen)} of {len(episodes)} episodes"
    )
    return out


if __name__ == "__main__":
    from ocrl.experiment import friendly_errors

    with friendly_errors():
        main(tyro.cli(Args))
