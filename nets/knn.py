"""Exact k-nearest-neighbour search (Euclidean) over a fixed float32 point set: KD-tree, brute force, adaptive.

Backends, all exact (they return the true nearest neighbours, ties broken arbitrarily):

* ``"kdtree"``: ``scipy.spatial.cKDTree`` on the CPU. Fast when queries lie near the data; slow (up to
  seconds per batch at 1M points) when they are far, because the tree then has to visit most leaves.
* ``"brute"``: chunked matrix-multiply brute force in torch, on the device of the points; its cost does not
  depend on where the queries are. The fast expansion ||x||^2 - 2 x.p + ||p||^2 loses precision, so each
  query's best candidates are re-ranked with exact float64 differences, and a per-query certificate (a
  rigorous bound on the float32 rounding error) proves no skipped point can be closer; a query that fails
  it (near-ties) is redone over every strip whose minimum could hide a closer point. On CUDA that check is
  the search's one host synchronisation (a single boolean).
* ``"adaptive"`` (CPU): keeps a running time per query of three exact arms (KD-tree with 1 worker, KD-tree
  with all workers, brute force) and runs the cheapest, re-timing the others now and then. The answers do
  not depend on the arm; the speed follows the query distribution (far queries early in PRDC training:
  brute force; near ones later: a single-thread KD-tree, which avoids scipy's thread start-up cost).
* ``"auto"``: ``"brute"`` on CUDA, ``"adaptive"`` on the CPU (measured: ``python -m scripts.bench knn``).
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "kdtree", "brute", "adaptive"]
STRIP = 64  # points per strip of the brute-force pass
RERANK_STRIPS = 4  # strips re-ranked exactly per query (more only when the certificate fails)
ARMS = ("kdtree-1", "kdtree", "brute")  # the adaptive backend's choices
FALLBACK_POINTS = 1 << 22  # candidate points re-ranked at once when the certificate fails
EXPLORE = 50  # the adaptive backend re-times its stalest arm every EXPLORE calls


class NearestNeighbors:
    """An exact Euclidean k-NN index over the rows of `points` (N, D); `query` returns (indices, distances)."""

    def __init__(
        self,
        points: torch.Tensor,
        backend: Backend = "auto",
        chunk_size: int | None = None,
        workers: int = -1,
        kdtree_eps: float = 0.0,
    ) -> None:
        if points.dim() != 2 or points.shape[0] == 0:
            raise ValueError(
                f"points must be a non-empty (N, D) tensor, got shape {tuple(points.shape)}"
            )
        if backend not in ("auto", "kdtree", "brute", "adaptive"):
            raise ValueError(f"unknown backend '{backend}': use auto, kdtree, brute or adaptive")
        self.device = points.device
        if backend == "auto":
            backend = "brute" if points.device.type == "cuda" else "adaptive"
        if backend in ("kdtree", "adaptive") and points.device.type != "cpu":
            # A CPU index for device points, as the original PRDC: queries cross to the host and back.
            points = points.cpu()
            self.device = points.device
        self.backend: str = backend
        self.workers, self.kdtree_eps = workers, kdtree_eps
        self.num_points, self.dim = points.shape
        points = points.detach().to(torch.float32).contiguous()
        if backend in ("brute", "adaptive"):
            self._init_brute(points, chunk_size)
        if backend in ("kdtree", "adaptive"):
            from scipy.spatial import cKDTree

            self._tree = cKDTree(points.numpy())
        self._cost = [math.inf] * len(ARMS)  # adaptive: running seconds per query of each arm
        self._last_try = [0] * len(ARMS)
        self._calls = 0

    # ------------------------------------------------------------------ brute force
    # The point set is cut into chunks of `chunk_size` rows; within a chunk, row r belongs to strip
    # r % strips_per_chunk, so each strip holds STRIP rows. One pass computes, per query, the minimum
    # expanded distance of every strip (a cheap vectorised reduction, no argmin); the few strips with the
    # smallest minima are then re-ranked member by member with exact float64 differences.
    def _init_brute(self, points: torch.Tensor, chunk_size: int | None) -> None:
        """Centre the points (distances are translation invariant; smaller norms mean smaller rounding)."""
        if (
            chunk_size is None
        ):  # CPU: a (chunk, B) block stays in cache; GPU: large blocks, bounded memory
            chunk_size = 1024 if points.device.type == "cpu" else 131_072
        chunk_size = max(STRIP, chunk_size // STRIP * STRIP)
        chunk_size = min(chunk_size, -(-self.num_points // STRIP) * STRIP)
        self.chunk_size = chunk_size
        self._strips_per_chunk = chunk_size // STRIP
        self._points = points
        self._center = points.mean(dim=0, dtype=torch.float64).to(torch.float32)
        padded = -(-self.num_points // chunk_size) * chunk_size
        centered = torch.zeros(padded, self.dim, device=points.device)
        centered[: self.num_points] = points - self._center
        self._centered = centered
        sq_norms = centered.double().pow(2).sum(dim=1).to(torch.float32)
        sq_norms[self.num_points :] = math.inf  # padding rows are never nearest
        self._sq_norms = sq_norms.unsqueeze(1)
        self._max_norm = float(sq_norms[: self.num_points].max().sqrt())
        self._strip_offsets = torch.arange(STRIP, device=points.device) * self._strips_per_chunk

    def _rounding_bound(self, x_sq: torch.Tensor) -> torch.Tensor:
        """Upper bound on |fl32(||p||^2 - 2x.p) - (||x - p||^2 - ||x||^2)| over all points p, per query."""
        unit = 2.0**-24  # float32 unit roundoff; matmuls run at "highest" precision (no TF32) below
        return 2.0 * (self.dim + 6) * unit * (x_sq.sqrt() + self._max_norm) ** 2 + 1e-30

    def _brute(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            return self._brute_exact(x, k)
        finally:
            torch.set_float32_matmul_precision(precision)

    def _strip_members(self, strips: torch.Tensor) -> torch.Tensor:
        """Point indices (..., STRIP) of global strip ids (...)."""
        chunk, j = strips // self._strips_per_chunk, strips % self._strips_per_chunk
        return (chunk * self.chunk_size + j).unsqueeze(-1) + self._strip_offsets

    def _brute_exact(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, spc = x.shape[0], self._strips_per_chunk
        xc_t = (x - self._center).T.contiguous()
        x_sq = (x.double() - self._center.double()).pow(2).sum(dim=1)
        bound = self._rounding_bound(x_sq)
        mins = []
        for start in range(0, self._centered.shape[0], self.chunk_size):
            block = self._centered[start : start + self.chunk_size]
            # ||p||^2 - 2 p.x for a (chunk, B) block; ||x||^2 is a per-query constant
            d = torch.addmm(
                self._sq_norms[start : start + self.chunk_size], block, xc_t, alpha=-2.0
            )
            mins.append(d.view(STRIP, spc, b).amin(dim=0))
        strip_min = torch.cat(mins).T  # (B, strips)
        n_strips = strip_min.shape[1]
        take = min(n_strips, -(-k // STRIP) + RERANK_STRIPS)
        vals, strips = torch.topk(strip_min, min(take + 1, n_strips), dim=1, largest=False)
        floor = vals[:, take] if take < n_strips else torch.full_like(vals[:, 0], math.inf)
        idx = self._strip_members(strips[:, :take]).reshape(b, -1)
        exact = self._exact_sq(x, idx)
        best_sq, order = torch.topk(exact, k, dim=1, largest=False, sorted=True)
        best_i = idx.gather(1, order)
        # Certificate: a point outside the re-ranked strips has expanded distance >= floor, so its true
        # squared distance is >= floor + ||x||^2 - bound; above the k-th exact distance, none was missed.
        kth = best_sq[:, -1]
        ok = (floor.double() + x_sq - bound) > kth
        if not bool(ok.all()):  # redo those queries over every strip that could hold a closer point
            best_i, best_sq = best_i.clone(), best_sq.clone()
            limit = (kth - x_sq + bound).to(torch.float32)  # in the units of ||p||^2 - 2x.p
            limit = torch.nextafter(limit, torch.full_like(limit, math.inf))
            bad = (~ok).nonzero().squeeze(1)
            within = (
                strip_min[bad] <= limit[bad, None]
            )  # (bad, strips): strips that may hold a closer point
            width = int(within.sum(dim=1).max())
            if (
                len(bad) * width * STRIP <= FALLBACK_POINTS
            ):  # all bad queries at once, padded to the widest
                _, strips = torch.topk(within.to(torch.int8), width, dim=1, sorted=False)
                members = self._strip_members(strips).reshape(len(bad), -1)
                picked = within.gather(1, strips).repeat_interleave(STRIP, dim=1)
                sq = self._exact_sq(x[bad], members).masked_fill(~picked, math.inf)
                best, order = torch.topk(sq, k, dim=1, largest=False, sorted=True)
                best_i[bad], best_sq[bad] = members.gather(1, order), best
            else:  # many near-ties (e.g. duplicated data): one query at a time, bounded memory
                for row, q in enumerate(bad.tolist()):
                    members = self._strip_members(within[row].nonzero().squeeze(1)).reshape(1, -1)
                    sq = self._exact_sq(x[q : q + 1], members)
                    best, order = torch.topk(sq, k, dim=1, largest=False, sorted=True)
                    best_i[q], best_sq[q] = members.gather(1, order)[0], best[0]
        return best_i, best_sq.sqrt().to(torch.float32)

    def _exact_sq(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Exact float64 squared distances from each query row to the points in its row of idx (padding: inf)."""
        valid = idx < self.num_points
        pts = self._points[idx.clamp_max(self.num_points - 1)].double()
        sq = (pts - x.double().unsqueeze(1)).pow(2).sum(dim=2)
        return sq.masked_fill(~valid, math.inf)

    # ------------------------------------------------------------------ KD-tree and adaptive
    def _kdtree(
        self, x: torch.Tensor, k: int, workers: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        workers = self.workers if workers is None else workers
        d, i = self._tree.query(x.numpy(), k=k, eps=self.kdtree_eps, workers=workers)
        return _as_2d(i, k), _as_2d(d, k)

    def _adaptive(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the arm with the lowest running mean time per query; every EXPLORE calls re-time the stalest arm."""
        self._calls += 1
        if self._calls % EXPLORE == 0 or min(self._last_try) == 0:
            arm = min(range(len(ARMS)), key=lambda a: self._last_try[a])
        else:
            arm = min(range(len(ARMS)), key=lambda a: self._cost[a])
        t = time.perf_counter()
        if ARMS[arm] == "brute":
            out = self._brute(x, k)
        else:
            out = self._kdtree(x, k, workers=1 if ARMS[arm] == "kdtree-1" else self.workers)
        per_query = (time.perf_counter() - t) / max(len(x), 1)
        old = self._cost[arm]
        self._cost[arm] = per_query if math.isinf(old) else 0.7 * old + 0.3 * per_query
        self._last_try[arm] = self._calls
        return out

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def query(self, x: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (B, k) int64 and distances (B, k) float32 of the k nearest points, nearest first, on x's device."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if not 1 <= k <= self.num_points:
            raise ValueError(f"k must be in [1, {self.num_points}], got {k}")
        out_device = x.device
        x = x.detach().to(self.device, torch.float32)
        if self.backend == "brute":
            idx, dist = self._brute(x, k)
        elif self.backend == "kdtree":
            idx, dist = self._kdtree(x, k)
        else:
            idx, dist = self._adaptive(x, k)
        return idx.to(out_device), dist.to(out_device)


def _as_2d(a: np.ndarray, k: int) -> torch.Tensor:
    a = np.asarray(a).reshape(-1, k)
    return torch.from_numpy(a.astype(np.int64 if a.dtype.kind in "iu" else np.float32))
