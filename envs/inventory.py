"""Inventory control problems (HDPO's benchmarks): a batched, differentiable PyTorch simulator and Gymnasium envs.

A problem is a set of stores, optionally fed by a chain of upstream locations (a warehouse, then echelons), all
ordering from the location above them and the top one from an unlimited supplier. Every location keeps a vector
of K slots: slot 0 is on-hand (this period's arrivals included), slot k >= 1 what arrives in k periods. Per
period t, with orders a_t placed after observing the state (the dynamics of the reference, `environment.py`):

    store j:     y = x_j - D_tj,  cost p_j relu(-y) + h_j relu(y);  lost sales: y = relu(y)
    upstream u:  z = x_u - (orders of the locations it ships to),  cost h_u relu(z)
    every location: next on-hand = y (or z) + slot 1, the pipeline shifts one slot, and the location's own
                    order joins slot L - 1 (so an order placed at t is on hand at t + L).

Nothing here keeps upstream on-hand from going negative: feasibility is the policy's job (the reference does
the same), `check_feasibility=True` raises on a violation and `feasible_orders` scales store orders down.
Demand traces and initial inventories are sampled ahead of time from seeded generators (a `Scenario`);
`scenario_chunks` yields a long test scenario in pieces so that memory stays bounded. `simulate` rolls a policy
out over a scenario (the cost per path, differentiable), `path_costs`/`average_cost` score it per period and
store without gradients (`long_run_costs` on a new scenario, in chunks), `cost_tail` counts the paths that
cost over 10x the median one, `cost_summary` gathers mean, median and tail, and `gap_pct` is the gap to `optimum`.

Settings (`make_problem`): one_store_lost (Poisson(5)), one_store_backlogged (Normal(5, 1.6) clipped at 0; its
paths start with on-hand 5 x U[-1, 1], every other slot of every setting starts at mean demand x U[0, 1]),
serial (store <- warehouse <- 2 echelons, Normal(5, 2) clipped, backlog) and one_warehouse (S stores with
sampled costs and lead times, correlated Normal demand clipped at 0, lost sales). `LOST_SALES_OPTIMA` and
`backlog_optimum` are the known optima the tests and the gap table use. The Gymnasium ids `ocrl/OneStoreLost-v0`,
`ocrl/OneStoreBacklogged-v0`, `ocrl/SerialSystem-v0` and `ocrl/OneWarehouseLost-v0` wrap the same dynamics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm

from ocrl.envs.ids import INVENTORY_IDS

# (A) of the reference: DP optimum of one store, lost sales, Poisson(5), h = 1 (Zipkin 2008), {(p, L): cost}.
# Published with two decimals, so a gap computed against them carries about +-0.1% of rounding.
LOST_SALES_OPTIMA: dict[tuple[float, int], float] = {
    (4.0, 1): 4.04, (4.0, 2): 4.40, (4.0, 3): 4.60, (4.0, 4): 4.73,
    (9.0, 1): 5.44, (9.0, 2): 6.09, (9.0, 3): 6.53, (9.0, 4): 6.84,
    (19.0, 1): 6.68, (19.0, 2): 7.66, (19.0, 3): 8.36, (19.0, 4): 8.89,
    (39.0, 1): 7.84, (39.0, 2): 9.11, (39.0, 3): 10.04, (39.0, 4): 10.79,
}  # fmt: skip
# (C) of the reference: optimal cost of the 4-location serial system (echelon-stock, Clark-Scarf) on the test set
# of the authors' fork (ray_serial_paper_comparison_8K.ipynb), {(p, store L): cost}; two decimals as well.
SERIAL_OPTIMA: dict[tuple[float, int], float] = {
    (4.0, 1): 6.89, (9.0, 1): 8.36, (19.0, 1): 9.59, (39.0, 1): 10.68,
    (4.0, 2): 7.59, (9.0, 2): 9.25, (19.0, 2): 10.65, (39.0, 2): 11.89,
    (4.0, 3): 8.20, (9.0, 3): 10.02, (19.0, 3): 11.57, (39.0, 3): 12.94,
    (4.0, 4): 8.75, (9.0, 4): 10.72, (19.0, 4): 12.40, (39.0, 4): 13.88,
}  # fmt: skip
BACKLOG_LEAD_TIMES = (1, 4, 7, 10, 15, 20)
UNDERAGE_COSTS = (4.0, 9.0, 19.0, 39.0)


def backlog_optimum(
    p: float, lead_time: int, h: float = 1.0, mean: float = 5.0, std: float = 1.6
) -> tuple[float, float]:
    """(S*, cost) of the optimal base-stock policy for one backlogged store with Normal demand (clipping ignored)."""
    spread = std * math.sqrt(lead_time + 1)
    z = norm.ppf(p / (p + h))
    return mean * (lead_time + 1) + spread * z, (p + h) * spread * norm.pdf(z)


def optimum(problem: InventoryProblem) -> float | None:
    """The known optimal cost per period per store (one store, or the serial system), None where none is known."""
    if problem.n_stores != 1 or problem.store_holding != (1.0,):
        return None
    p, lead_time = problem.store_underage[0], problem.store_lead_times[0]
    demand = problem.demand
    if problem.n_upstream:
        serial = make_problem("serial", p, lead_time)
        same = (
            problem.upstream_lead_times,
            problem.upstream_holding,
            problem.demand,
            problem.lost_sales,
        ) == (serial.upstream_lead_times, serial.upstream_holding, serial.demand, serial.lost_sales)
        return SERIAL_OPTIMA.get((p, lead_time)) if same else None
    if problem.lost_sales and demand.kind == "poisson" and demand.mean == (5.0,):
        return LOST_SALES_OPTIMA.get((p, lead_time))
    if not problem.lost_sales and demand.kind == "normal":
        return backlog_optimum(p, lead_time, mean=demand.mean[0], std=demand.std[0])[1]
    return None


@dataclass(frozen=True)
class Demand:
    """Demand per store and period: Poisson(mean), Normal(mean, std) or a correlated multivariate Normal."""

    kind: Literal["poisson", "normal", "mvnormal"]
    mean: tuple[float, ...]
    std: tuple[float, ...] = ()
    correlation: float = 0.0
    clip: bool = True

    def validate(self, n_stores: int) -> None:
        """Raise ValueError naming the bad field."""
        if self.kind not in ("poisson", "normal", "mvnormal"):
            raise ValueError(f"demand kind '{self.kind}' is not one of poisson, normal, mvnormal")
        if len(self.mean) != n_stores or any(m <= 0 for m in self.mean):
            raise ValueError(
                f"demand mean {self.mean} needs {n_stores} positive values (one per store)"
            )
        if self.kind != "poisson" and (len(self.std) != n_stores or any(s < 0 for s in self.std)):
            raise ValueError(
                f"demand std {self.std} needs {n_stores} non-negative values (one per store)"
            )
        if not -1.0 / max(1, n_stores - 1) <= self.correlation < 1.0:
            raise ValueError(
                f"demand correlation {self.correlation} makes the covariance matrix of {n_stores} stores "
                "not positive definite; use a value in [-1/(S-1), 1)"
            )

    def sample(self, n_paths: int, periods: int, generator: torch.Generator) -> torch.Tensor:
        """(n_paths, stores, periods) float32 demand on the CPU, from ``generator``."""
        mean = torch.tensor(self.mean, dtype=torch.float64)
        shape = (n_paths, periods, len(self.mean))
        if self.kind == "poisson":
            out = torch.poisson(mean.expand(shape).contiguous(), generator=generator)
        else:
            std = torch.tensor(self.std, dtype=torch.float64)
            noise = torch.randn(shape, generator=generator, dtype=torch.float64)
            if self.kind == "mvnormal" and len(self.mean) > 1:
                corr = torch.full((len(std), len(std)), self.correlation, dtype=torch.float64)
                corr.fill_diagonal_(1.0)
                noise = noise @ torch.linalg.cholesky(corr).T
            out = mean + std * noise
            if self.clip:
                out = out.clamp(min=0.0)
        return out.transpose(1, 2).to(torch.float32).contiguous()


@dataclass(frozen=True)
class InventoryProblem:
    """One instance: stores, the upstream chain (downstream first: warehouse, then echelons) and the demand."""

    name: str
    store_lead_times: tuple[int, ...]
    store_holding: tuple[float, ...]
    store_underage: tuple[float, ...]
    lost_sales: bool
    demand: Demand
    upstream_lead_times: tuple[int, ...] = ()
    upstream_holding: tuple[float, ...] = ()
    inventory_periods: int = 4
    """minimum number of slots per location (the reference's K = max(inventory_periods, L))"""
    order_bound_factor: float = 4.0
    """the top location's order is at most this times the total mean demand (policies' output bound)"""
    seed_offset: int = 0
    """added to the demand seed (the reference shifts one-store seeds by L + 10 p)"""
    initial_on_hand: tuple[float, float] = (0.0, 1.0)
    """initial on-hand range in multiples of mean demand, U[lo, hi] (pipeline slots: U[0, 1], the reference's)"""

    @property
    def n_stores(self) -> int:
        return len(self.store_lead_times)

    @property
    def n_upstream(self) -> int:
        return len(self.upstream_lead_times)

    @property
    def store_slots(self) -> int:
        return max(self.inventory_periods, *self.store_lead_times)

    @property
    def upstream_slots(self) -> int:
        return max(self.inventory_periods, *self.upstream_lead_times) if self.n_upstream else 0

    @property
    def obs_dim(self) -> int:
        return self.n_stores * self.store_slots + self.n_upstream * self.upstream_slots

    @property
    def order_bound(self) -> float:
        return self.order_bound_factor * sum(self.demand.mean)

    def validate(self) -> InventoryProblem:
        """Raise ValueError naming the bad parameter; return self."""
        s = self.n_stores
        if s < 1:
            raise ValueError(f"{self.name}: at least one store is needed")
        for label, values in [
            ("store_holding", self.store_holding),
            ("store_underage", self.store_underage),
        ]:
            if len(values) != s or any(v < 0 or not math.isfinite(v) for v in values):
                raise ValueError(f"{self.name}: {label} {values} needs {s} finite values >= 0")
        if any(int(lt) != lt or lt < 1 for lt in self.store_lead_times + self.upstream_lead_times):
            raise ValueError(
                f"{self.name}: lead times must be integers >= 1 (an order placed at t arrives at t + L), "
                f"got stores {self.store_lead_times}, upstream {self.upstream_lead_times}"
            )
        if len(self.upstream_holding) != self.n_upstream or any(
            h < 0 for h in self.upstream_holding
        ):
            raise ValueError(
                f"{self.name}: upstream_holding {self.upstream_holding} needs one value >= 0 per upstream "
                f"location ({self.n_upstream})"
            )
        if self.n_upstream and s > 1 and self.n_upstream > 1:
            raise ValueError(
                f"{self.name}: several stores under a chain of echelons is not supported"
            )
        if self.inventory_periods < 1:
            raise ValueError(f"{self.name}: inventory_periods must be >= 1")
        lo, hi = self.initial_on_hand
        if not (
            math.isfinite(lo)
            and math.isfinite(hi)
            and lo <= hi
            and (lo >= 0 or not self.lost_sales)
        ):
            raise ValueError(
                f"{self.name}: initial_on_hand {self.initial_on_hand} needs finite lo <= hi (lo >= 0 under lost sales)"
            )
        self.demand.validate(s)
        return self


def make_problem(
    setting: str,
    p: float = 9.0,
    lead_time: int = 2,
    n_stores: int = 3,
    seed: int = 0,
) -> InventoryProblem:
    """The reference's benchmark settings: one_store_lost, one_store_backlogged, serial, one_warehouse."""
    if p <= 0 or not math.isfinite(p):
        raise ValueError(f"underage cost p must be a positive number, got {p}")
    if int(lead_time) != lead_time or lead_time < 1:
        raise ValueError(f"lead time must be an integer >= 1, got {lead_time}")
    shift = int(
        round(lead_time + 10 * p)
    )  # the reference's "consistency with the manuscript" seed shift
    if setting == "one_store_lost":
        problem = InventoryProblem(
            setting,
            (lead_time,),
            (1.0,),
            (float(p),),
            True,
            Demand("poisson", (5.0,)),
            seed_offset=shift,
        )
    elif setting == "one_store_backlogged":
        # Initial on-hand U[-1, 1] x mean demand (the reference: U[0, 1]): a trained policy never meets a
        # negative on-hand otherwise, its order there sinks into softplus's flat tail when the initial
        # backlog clears and is never trained back, and long test paths that dip below 0 stay trapped
        # (docs/hdpo_gap_table.md, "Reading the numbers").
        demand = Demand("normal", (5.0,), (1.6,))
        problem = InventoryProblem(
            setting,
            (lead_time,),
            (1.0,),
            (float(p),),
            False,
            demand,
            seed_offset=shift,
            initial_on_hand=(-1.0, 1.0),
        )
    elif setting == "serial":
        # store <- warehouse (h 0.5, L 3) <- echelon 1 (h 0.2, L 4) <- echelon 2 (h 0.1, L 2); the reference
        # lists the echelons' h = [0.1, 0.2] and L = [2, 4] from the top, which is our reading.
        problem = InventoryProblem(
            setting,
            (lead_time,),
            (1.0,),
            (float(p),),
            False,
            Demand("normal", (5.0,), (2.0,)),
            upstream_lead_times=(3, 4, 2),
            upstream_holding=(0.5, 0.2, 0.1),
        )
    elif setting == "one_warehouse":
        if n_stores < 1:
            raise ValueError(f"one_warehouse needs n_stores >= 1, got {n_stores}")
        rng = np.random.default_rng(seed)  # the store primitives are part of the instance
        mean = rng.uniform(2.5, 7.5, n_stores)
        cv = rng.uniform(0.25, 0.5, n_stores)
        problem = InventoryProblem(
            f"{setting}_{n_stores}",
            tuple(int(v) for v in rng.integers(2, 4, n_stores)),
            tuple(float(v) for v in rng.uniform(0.7, 1.3, n_stores)),
            tuple(float(v) for v in rng.uniform(6.3, 11.7, n_stores)),
            True,
            Demand("mvnormal", tuple(mean.tolist()), tuple((mean * cv).tolist()), 0.5),
            upstream_lead_times=(3,),
            upstream_holding=(0.3,),
        )
    else:
        raise ValueError(
            f"unknown inventory setting '{setting}'; choose one_store_lost, one_store_backlogged, serial "
            "or one_warehouse"
        )
    return problem.validate()


class InventoryState(NamedTuple):
    """Inventories of a batch: stores (B, S, K) and upstream locations (B, U, Ku), slot 0 on-hand."""

    stores: torch.Tensor
    upstream: torch.Tensor

    def observation(self) -> torch.Tensor:
        """(B, obs_dim): every slot of every location, stores first."""
        return torch.cat([self.stores.flatten(1), self.upstream.flatten(1)], dim=1)


@dataclass
class Scenario:
    """Pre-sampled initial store inventories (N, S, K) and demand (N, S, T)."""

    initial_stores: torch.Tensor
    demand: torch.Tensor

    def __len__(self) -> int:
        return self.demand.shape[0]

    def subset(self, index: torch.Tensor | slice) -> Scenario:
        """The paths at ``index``."""
        return Scenario(self.initial_stores[index], self.demand[index])

    def to(self, device: torch.device | str) -> Scenario:
        return Scenario(self.initial_stores.to(device), self.demand.to(device))


def sample_scenario(problem: InventoryProblem, n_paths: int, periods: int, seed: int) -> Scenario:
    """``n_paths`` demand traces of ``periods`` periods and initial inventories, seeded (CPU, float32)."""
    if n_paths < 1 or periods < 1:
        raise ValueError(
            f"a scenario needs n_paths >= 1 and periods >= 1, got {n_paths}, {periods}"
        )
    gen = torch.Generator().manual_seed(int(seed) + problem.seed_offset)
    mean = torch.tensor(problem.demand.mean, dtype=torch.float32)
    u = torch.rand(n_paths, problem.n_stores, problem.store_slots, generator=gen)
    lo, hi = problem.initial_on_hand
    u[..., 0] = lo + (hi - lo) * u[..., 0]  # the same draws: (0, 1) leaves every scenario as it was
    return Scenario(mean[None, :, None] * u, problem.demand.sample(n_paths, periods, gen))


def scenario_chunks(
    problem: InventoryProblem, n_paths: int, periods: int, seed: int, chunk: int
) -> Iterator[Scenario]:
    """A long scenario in pieces of ``chunk`` paths, each with its own seed derived from ``seed``."""
    for i, start in enumerate(range(0, n_paths, chunk)):
        yield sample_scenario(problem, min(chunk, n_paths - start), periods, seed * 1_000_003 + i)


@dataclass
class InventorySimulator:
    """Differentiable dynamics of one problem on one device (``step`` is pure: gradients flow through it)."""

    problem: InventoryProblem
    device: torch.device | str = "cpu"
    check_feasibility: bool = False
    dtype: torch.dtype = torch.float32
    """dtype of the costs, the initial state and the inventories (float64 for gradient checks)"""

    def __post_init__(self) -> None:
        pb = self.problem.validate()
        self.device = torch.device(self.device)
        like = {"dtype": self.dtype, "device": self.device}
        self.holding = torch.tensor(pb.store_holding, **like)
        self.underage = torch.tensor(pb.store_underage, **like)
        self.upstream_holding = torch.tensor(pb.upstream_holding, **like)
        self.store_slot = _arrival_slot(pb.store_lead_times)
        self.upstream_slot = _arrival_slot(pb.upstream_lead_times)

    def initial_state(self, scenario: Scenario) -> InventoryState:
        """Stores from the scenario, upstream locations empty (as the reference)."""
        stores = scenario.initial_stores.to(self.device, self.dtype)
        upstream = torch.zeros(
            len(scenario),
            self.problem.n_upstream,
            self.problem.upstream_slots,
            device=self.device,
            dtype=self.dtype,
        )
        return InventoryState(stores, upstream)

    def step(
        self,
        state: InventoryState,
        demand: torch.Tensor,
        store_orders: torch.Tensor,
        upstream_orders: torch.Tensor | None = None,
    ) -> tuple[InventoryState, torch.Tensor]:
        """One period: (next state, cost (B,) summed over locations). demand and store_orders are (B, S)."""
        y = state.stores[..., 0] - demand
        excess = F.relu(y)
        cost = (self.underage * (excess - y) + self.holding * excess).sum(
            -1
        )  # excess - y = relu(-y)
        stores = _advance(
            state.stores, excess if self.problem.lost_sales else y, store_orders, self.store_slot
        )
        upstream = state.upstream
        if self.problem.n_upstream:
            if upstream_orders is None:
                raise ValueError(
                    f"{self.problem.name}: upstream orders are needed (one per upstream location)"
                )
            shipped = torch.cat(
                [store_orders.sum(-1, keepdim=True), upstream_orders[:, :-1]], dim=1
            )
            z = upstream[..., 0] - shipped
            if self.check_feasibility and bool((z < -1e-4).any()):
                raise ValueError(
                    f"{self.problem.name}: orders exceed the on-hand inventory upstream (by up to "
                    f"{float(-z.min()):.4g}); the policy must keep shipments within on-hand stock"
                )
            cost = cost + (self.upstream_holding * F.relu(z)).sum(-1)
            upstream = _advance(upstream, z, upstream_orders, self.upstream_slot)
        return InventoryState(stores, upstream), cost

    def feasible_orders(self, state: InventoryState, store_orders: torch.Tensor) -> torch.Tensor:
        """Store orders scaled down proportionally where they exceed the warehouse's on-hand inventory."""
        if not self.problem.n_upstream:
            return store_orders
        available = state.upstream[:, 0, :1].clamp(min=0.0)
        total = store_orders.sum(-1, keepdim=True)
        return store_orders * torch.where(
            total > available, available / total.clamp(min=1e-12), 1.0
        )


def _arrival_slot(lead_times: tuple[int, ...]) -> int | torch.Tensor:
    """Where each location's order joins its pipeline (L - 1): one int when all lead times agree."""
    if len(set(lead_times)) <= 1:
        return (lead_times[0] - 1) if lead_times else 0
    return torch.tensor([lt - 1 for lt in lead_times])


def _advance(
    inv: torch.Tensor, leftover: torch.Tensor, orders: torch.Tensor, slot: int | torch.Tensor
) -> torch.Tensor:
    """Shift the pipeline one period, add the leftover to on-hand and the new orders at their lead time."""
    # Few large ops: this runs T times per gradient step and dominates HDPO's cost on a CPU. The in-place
    # additions act on pad's fresh output, which autograd does not need to keep.
    new = F.pad(inv[..., 1:], (0, 1))
    new[..., 0] += leftover
    if isinstance(slot, int):
        new[..., slot] += orders
    else:
        index = slot.to(inv.device).expand_as(orders).unsqueeze(-1)
        new = new.scatter_add(-1, index, orders.unsqueeze(-1))
    return new


# ------------------------------------------------------------------------ rolling a policy out on scenarios

#: A policy maps a batch of states to (store orders (B, S), upstream orders (B, U) or None).
Policy = Callable[[InventoryState], tuple[torch.Tensor, torch.Tensor | None]]


def inventory_position(state: InventoryState) -> torch.Tensor:
    """(B, S): every slot of each store (on-hand, possibly negative under backlog, plus its pipeline)."""
    return state.stores.sum(-1)


def upstream_bounds(problem: InventoryProblem, state: InventoryState) -> torch.Tensor:
    """(B, U + 1): what each location may order: the on-hand stock above it, the order bound for the top one."""
    top = torch.full_like(state.upstream[:, :1, 0], problem.order_bound)
    return torch.cat([F.relu(state.upstream[..., 0]), top], dim=1)


def simulate(
    policy: Policy,
    sim: InventorySimulator,
    scenario: Scenario,
    periods: int,
    ignore: int = 0,
    round_orders: bool = False,
) -> torch.Tensor:
    """Total cost per path (B,) over periods ignore..periods-1, back-propagatable through the whole horizon."""
    state = sim.initial_state(scenario)
    demand = scenario.demand.to(sim.device)
    total = torch.zeros(len(scenario), device=sim.device)
    for t in range(periods):
        store_orders, upstream_orders = policy(state)
        if round_orders:
            store_orders = torch.round(store_orders)
            upstream_orders = None if upstream_orders is None else torch.round(upstream_orders)
        state, cost = sim.step(state, demand[:, :, t], store_orders, upstream_orders)
        if t >= ignore:
            total = total + cost
    return total


@torch.no_grad()
def path_costs(
    policy: Policy,
    sim: InventorySimulator,
    scenarios: Scenario | Iterable[Scenario],
    periods: int,
    ignore: int,
    round_orders: bool = False,
) -> torch.Tensor:
    """Cost per period per store of every path (N,), float64 on the CPU (chunks of paths allowed)."""
    scale = (periods - ignore) * sim.problem.n_stores
    chunks = [scenarios] if isinstance(scenarios, Scenario) else scenarios
    return torch.cat(
        [
            simulate(policy, sim, c, periods, ignore, round_orders).double().cpu() / scale
            for c in chunks
        ]
    )


def long_run_costs(
    policy: Policy,
    sim: InventorySimulator,
    n_paths: int,
    periods: int,
    ignore: int,
    seed: int,
    chunk: int,
    round_orders: bool = False,
) -> torch.Tensor:
    """``path_costs`` on a new scenario of ``n_paths`` paths (``scenario_chunks``), ``chunk`` paths at a time."""
    chunks = (c.to(sim.device) for c in scenario_chunks(sim.problem, n_paths, periods, seed, chunk))
    return path_costs(policy, sim, chunks, periods, ignore, round_orders)


def gap_pct(cost: float, best: float | None) -> float | None:
    """100 (cost - best) / best, the gap to a known optimum; None where none is known."""
    return None if best is None else 100.0 * (cost - best) / best


class CostSummary(NamedTuple):
    """Per-path costs in four numbers: mean, median path, and the ``cost_tail`` (paths over 10x the median)."""

    cost: float
    cost_median_path: float
    tail_paths: int
    tail_cost_share: float


def cost_summary(costs: torch.Tensor) -> CostSummary:
    """The mean and median of per-path costs (N,) and their ``cost_tail``."""
    return CostSummary(float(costs.mean()), float(costs.median()), *cost_tail(costs))


def average_cost(
    policy: Policy,
    sim: InventorySimulator,
    scenarios: Scenario | Iterable[Scenario],
    periods: int,
    ignore: int,
    round_orders: bool = False,
) -> float:
    """Average cost per period per store over the scored periods of every path (chunks of paths allowed)."""
    return float(path_costs(policy, sim, scenarios, periods, ignore, round_orders).mean())


def cost_tail(costs: torch.Tensor, factor: float = 10.0) -> tuple[int, float]:
    """Paths costing more than ``factor`` x the median path, and their share of the total cost."""
    if float(costs.median()) <= 0.0:  # a free median path: no scale to compare with
        return 0, 0.0
    tail = costs > factor * costs.median()
    return int(tail.sum()), float(costs[tail].sum() / costs.sum())


class InventoryEnv(gym.Env):
    """One problem as a Gymnasium env: observation = every inventory slot, action = the orders, reward = -cost.

    The action is (store orders, upstream orders), clipped to [0, order bound]; store orders beyond the
    warehouse's on-hand stock are scaled down proportionally (``feasible_orders``), and an order placed with an
    echelon is capped at that echelon's on-hand stock (``info`` has the orders actually placed). Each episode
    samples its demand trace from the env's seeded generator, or takes one from ``reset(options={"demand":
    (S, T) array})`` (initial stores then empty); ``options["initial_stores"]`` ((S, K) array) sets the initial
    store inventories. An episode is truncated after ``horizon`` periods.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        setting: str = "one_store_lost",
        p: float = 9.0,
        lead_time: int = 2,
        n_stores: int = 3,
        horizon: int = 100,
        instance_seed: int = 0,
        problem: InventoryProblem | None = None,
    ):
        self.problem = (
            problem.validate()
            if problem
            else make_problem(setting, p, lead_time, n_stores, instance_seed)
        )
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = horizon
        self.sim = InventorySimulator(self.problem)
        pb = self.problem
        low = 0.0 if pb.lost_sales and not pb.n_upstream else -np.inf
        self.observation_space = gym.spaces.Box(low, np.inf, (pb.obs_dim,), np.float32)
        n_actions = pb.n_stores + pb.n_upstream
        self.action_space = gym.spaces.Box(0.0, pb.order_bound, (n_actions,), np.float32)
        self._state: InventoryState | None = None
        self._scenario: Scenario | None = None
        self._t = 0

    def _obs(self) -> np.ndarray:
        return self._state.observation()[0].numpy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        pb = self.problem
        if "demand" in options:
            demand = torch.as_tensor(np.asarray(options["demand"], dtype=np.float32))
            if demand.shape != (pb.n_stores, self.horizon):
                raise ValueError(
                    f"options['demand'] has shape {tuple(demand.shape)}, expected "
                    f"(stores, horizon) = ({pb.n_stores}, {self.horizon})"
                )
            initial = torch.zeros(pb.n_stores, pb.store_slots)
            self._scenario = Scenario(initial[None], demand[None])
        else:
            self._scenario = sample_scenario(
                pb, 1, self.horizon, int(self.np_random.integers(2**31))
            )
        if options.get("initial_stores") is not None:
            initial = torch.as_tensor(np.asarray(options["initial_stores"], dtype=np.float32))
            if initial.shape != (pb.n_stores, pb.store_slots):
                raise ValueError(
                    f"options['initial_stores'] has shape {tuple(initial.shape)}, expected "
                    f"(stores, slots) = ({pb.n_stores}, {pb.store_slots})"
                )
            self._scenario.initial_stores = initial[None]
        self._state = self.sim.initial_state(self._scenario)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.horizon:
            raise RuntimeError(f"the episode ended after {self.horizon} periods; call reset()")
        act = np.clip(np.asarray(action, dtype=np.float32), 0.0, self.problem.order_bound)
        if act.shape != self.action_space.shape:
            raise ValueError(f"action has shape {act.shape}, expected {self.action_space.shape}")
        act = torch.as_tensor(act)[None]
        store_orders = self.sim.feasible_orders(self._state, act[:, : self.problem.n_stores])
        upstream_orders = act[:, self.problem.n_stores :]
        if self.problem.n_upstream > 1:  # an echelon ships at most its on-hand stock downstream
            upstream_orders = torch.cat(
                [
                    torch.minimum(upstream_orders[:, :-1], F.relu(self._state.upstream[:, 1:, 0])),
                    upstream_orders[:, -1:],
                ],
                dim=1,
            )
        demand = self._scenario.demand[:, :, self._t]
        self._state, cost = self.sim.step(self._state, demand, store_orders, upstream_orders)
        self._t += 1
        info = {
            "cost": float(cost[0]),
            "store_orders": store_orders[0].numpy(),
            "upstream_orders": upstream_orders[0].numpy(),
        }
        return self._obs(), -float(cost[0]), False, self._t >= self.horizon, info


#: Registered (`ocrl.envs.ids`) when ocrl.envs is imported.
GYM_IDS = INVENTORY_IDS


def with_problem(problem: InventoryProblem, **changes) -> InventoryProblem:
    """A validated copy of ``problem`` with some fields changed."""
    return replace(problem, **changes).validate()
