"""Benchmarks, each printed as a ratio against a baseline measured in the same run (interleaved rounds,
medians; harness.py), one module per benchmark. Run from the repository root:

    python -m scripts.bench updates            # TD3+BC updates/s against an original-style update
    python -m scripts.bench memory             # peak memory of loading a 1M-row D4RL file
    python -m scripts.bench knn --rows 100000  # PRDC's nearest-neighbour search against scipy's KDTree
    python -m scripts.bench hdpo               # the inventory simulator against a plain rollout
    python -m scripts.bench diffusion          # ocrl's diffusion against SynthER's (--synther-path)
    python -m scripts.bench pgd                # PGD's regeneration, guided against unguided
    python -m scripts.bench ggd_td --updates 50 --rounds 3
    python -m scripts.bench expo --utd 2 --steps 2 --rounds 3
    python -m scripts.bench lot_sizing         # ocrl's lot-sizing env against PDPPO's (--pdppo-path)
    python -m scripts.bench precision --threads 1 --corl-path ../CORL   # fp32 vs bf16, CORL as the baseline
    python -m scripts.bench seeds --threads 1 --corl-path ../CORL       # td3_bc --num-seeds 1..16 per seed
    python -m scripts.bench threads            # updates/s, 1 thread against all cores, quiet/busy/pair
    python -m scripts.bench all --device cuda  # every benchmark but threads
"""

from __future__ import annotations

import importlib
from types import ModuleType

# subcommand -> module of this package (each has `Args` and `main(args)`)
BENCHMARKS = {
    "updates": "updates",
    "memory": "memory",
    "knn": "knn",
    "hdpo": "hdpo",
    "diffusion": "diffusion",
    "pgd": "pgd",
    "ggd_td": "ggd_td",
    "expo": "expo",
    "lot_sizing": "lot_sizing",
    "precision": "precision",
    "seeds": "seeds",
    "threads": "threads",
    "all": "run_all",
}


def benchmark(name: str) -> ModuleType:
    """The module of subcommand `name`."""
    return importlib.import_module(f"{__name__}.{BENCHMARKS[name]}")
