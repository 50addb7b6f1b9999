"""PRDC's nearest-neighbour search (`ocrl.nets.NearestNeighbors`): milliseconds per batch of 256 queries
against a 1M-point set of MuJoCo size (S+A = 11+3 = 14 and 17+6 = 23), for every backend, as a ratio
against a plain `scipy.spatial.KDTree` query in the same run, for queries near the data (dataset points,
action + N(0, 0.1)) and far from it (dataset states with uniform actions, like an untrained policy). The
point sets are synthetic stand-ins for PRDC's (beta * standardised state, action): smooth
Ornstein-Uhlenbeck state trajectories of 1,000 steps with OU actions in [-1, 1]."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from ocrl.nets import NearestNeighbors

from .harness import DeviceArgs, sync


@dataclass
class Args(DeviceArgs):
    """PRDC's nearest-neighbour search, every backend, against scipy's KDTree."""

    rows: int = 1_000_000
    """points in the nearest-neighbour index"""
    rounds: int = 5
    """timed batches per backend and query kind; the median is reported"""
    batch_size: int = 256
    """queries per batch"""


def knn_point_set(
    rows: int, obs_dim: int, act_dim: int, beta: float = 2.0, seed: int = 0
) -> np.ndarray:
    """PRDC's [beta * standardised state, action] for synthetic smooth trajectories (episodes of 1,000 steps)."""
    rng = np.random.default_rng(seed)
    episodes = -(-rows // 1000)
    obs = np.empty((episodes, 1000, obs_dim), np.float32)
    act = np.empty((episodes, 1000, act_dim), np.float32)
    x = rng.standard_normal((episodes, obs_dim)).astype(np.float32)
    a = np.zeros((episodes, act_dim), np.float32)
    # OU processes: states drift slowly, actions change faster and are clipped
    for t in range(1000):
        x += -0.02 * x + 0.2 * rng.standard_normal(x.shape, dtype=np.float32)
        a += -0.15 * a + 0.3 * rng.standard_normal(a.shape, dtype=np.float32)
        obs[:, t], act[:, t] = x, np.clip(a, -1.0, 1.0)
    obs, act = obs.reshape(-1, obs_dim)[:rows], act.reshape(-1, act_dim)[:rows]
    obs = (obs - obs.mean(0)) / (obs.std(0) + 1e-3)
    return np.concatenate([beta * obs, act], axis=1).astype(np.float32)


def build(points: np.ndarray, device: torch.device) -> tuple[object, dict, dict[str, float]]:
    """(scipy KDTree, {name: NearestNeighbors} of every backend, build seconds of each)."""
    from scipy.spatial import KDTree

    t = time.perf_counter()
    baseline = KDTree(points)
    seconds = {"scipy KDTree": time.perf_counter() - t}
    backends: dict[str, NearestNeighbors] = {}
    for name in ("kdtree", "adaptive", "brute"):
        t = time.perf_counter()
        backends[f"{name} (cpu)"] = NearestNeighbors(torch.from_numpy(points), name)
        seconds[f"{name} (cpu)"] = time.perf_counter() - t
    if device.type == "cuda":
        t = time.perf_counter()
        backends["brute (cuda)"] = NearestNeighbors(torch.from_numpy(points).to(device), "brute")
        torch.cuda.synchronize()
        seconds["brute (cuda)"] = time.perf_counter() - t
    return baseline, backends, seconds


def main(args: Args) -> dict[str, float]:
    device = torch.device(args.device)
    rng = np.random.default_rng(1)
    results: dict[str, float] = {}
    print(f"\nNearest-neighbour search, ms per batch of {args.batch_size} queries against {args.rows:,} "
          f"points (synthetic MuJoCo-size sets; median of {args.rounds} batches; torch threads "
          f"{torch.get_num_threads()}; ratio = KDTree time / backend time, >1 is faster)")  # fmt: skip
    print("| S+A | queries | scipy KDTree ms | backend | ms | ratio vs KDTree | own-point NN |")
    print("|---|---|---|---|---|---|---|")
    for obs_dim, act_dim in ((11, 3), (17, 6)):
        points = knn_point_set(args.rows, obs_dim, act_dim)
        baseline, backends, build_s = build(points, device)
        print(f"| {obs_dim + act_dim} | (build, s) | {build_s['scipy KDTree']:.2f} | "
              + ", ".join(f"{k} {v:.2f}" for k, v in build_s.items() if k != "scipy KDTree") + " | | | |")  # fmt: skip
        for kind in ("near", "far"):
            batches = []
            for _ in range(args.rounds):
                rows = rng.integers(0, len(points), args.batch_size)
                q = points[rows].copy()
                if kind == "near":
                    q[:, obs_dim:] += 0.1 * rng.standard_normal(
                        (len(rows), act_dim), dtype=np.float32
                    )
                else:
                    q[:, obs_dim:] = rng.uniform(-1, 1, (len(rows), act_dim)).astype(np.float32)
                batches.append((rows, q))
            times: dict[str, list[float]] = {"scipy KDTree": []}
            refs, own = [], []
            for rows, q in batches:  # the plain baseline, as PRDC's code calls it
                t = time.perf_counter()
                _, ref = baseline.query(q, k=1, workers=-1)
                times["scipy KDTree"].append(time.perf_counter() - t)
                refs.append(ref)
                own.append(float(np.mean(ref == rows)))
            for name, index in backends.items():
                times[name] = []
                # warm-up (adaptive: time its arms)
                for _ in range(4 if index.backend == "adaptive" else 1):
                    index.query(torch.from_numpy(batches[0][1]).to(index.device))
                for (_, q), ref in zip(batches, refs, strict=True):
                    qt = torch.from_numpy(q).to(index.device)
                    sync(index.device)
                    t = time.perf_counter()
                    idx, _ = index.query(qt)
                    sync(index.device)
                    times[name].append(time.perf_counter() - t)
                    got = idx[:, 0].cpu().numpy()
                    if not np.array_equal(got, ref):  # only ties may differ
                        d_ref = np.linalg.norm(points[ref] - q, axis=1)
                        d_got = np.linalg.norm(points[got] - q, axis=1)
                        assert np.allclose(d_ref, d_got, rtol=0, atol=1e-6), f"{name} is not exact"
            base = statistics.median(times["scipy KDTree"]) * 1e3
            frac = statistics.mean(own)
            print(f"| {obs_dim + act_dim} | {kind} | {base:.1f} | scipy KDTree | {base:.1f} | 1.00x | {frac:.2f} |")  # fmt: skip
            for name in backends:
                ms = statistics.median(times[name]) * 1e3
                results[f"{obs_dim + act_dim}/{kind}/{name}"] = ms
                print(f"| {obs_dim + act_dim} | {kind} | {base:.1f} | {name} | {ms:.1f} | {base / ms:.2f}x | |")  # fmt: skip
    return results
