"""Stochastic multi-item, multi-machine lot sizing (PDPPO's benchmark): a batched NumPy simulator and Gymnasium envs.

An instance (``LotSizingInstance``) has I items and M machines. The state is the inventory x in Z^I and the machine
setups sigma in {0..I}^M (0 = no setup, i = set up for item i, 1-based). The action is one choice per machine,
a_m in {0..I} (0 idles machine m, i makes item i), unmasked: a machine may be told to make an item it cannot make
(P_mi = 0) and several machines may make the same item. One period, as ``envs/simplePlant.py`` of leokan92/pdppo:

    post-decision (deterministic), per machine m with a_m = i != 0:
        if sigma_m != i: pay c^s_mi and lose l_mi units (a setup change); sigma_m <- i; x_i += P_mi - loss
        (so P_mi = 0 with a setup change is *negative* production); a machine with a_m = 0 gets sigma_m <- 0,
        and its next production pays the setup again. So the post-decision setup is the action itself.
        s^x = (x^x, sigma^x = a), r^x = -(setup costs); x^x is not capped (it may exceed the cap or be < 0).
    demand d ~ Binomial(n, p)^I (20, 0.4 in every published instance: mean 8, variance 4.8), per item:
        y = x^x - d; lost sales b_i max(-y, 0) (no backlog: a negative x^x adds to the lost units);
        x' = min(max(y, 0), cap_i) (stock over the cap is discarded, no penalty); holding h_i x'.
        r^pre = -(lost sales + holding), and r = r^x + r^pre exactly (computed as that sum).

Episodes last ``instance.horizon`` periods (100) and end with ``terminated=True`` (the spec's Gymnasium port; the
original's ``done``). ``reset`` draws the start as the training code does (``_random_initial_state``): x_i
uniform on {0..cap_i - 1}, sigma_m uniform among the items machine m can make (0 if it can make none, where the
original would crash); ``initial_state="instance"`` starts from the JSON's ``initial_inventory`` and
``initial_setup`` instead (the original's ``reset_time``). The observation is the inventory only (float32, the
final code's; the setups stay hidden), or ``obs="inventory+setup"`` (I + M, the early code's).

Pieces: ``load_instance(path)`` reads the original JSON format (one-line ``EnvError`` naming the file and field
on a bad file), ``save_instance`` writes it, ``generate_instance`` draws new instances from the distribution of
``cfg_env/generate_setting.py`` (seeded; the published ones were drawn unseeded and cannot be regenerated), and
``published_instance`` finds a published file by name. ``LotSizingSimulator`` steps a batch of episodes (pure
functions of arrays; NumPy because on one CPU thread it steps 4096 episodes of the 25 x 10 instance at about
1.4M env steps/s, the same code in PyTorch at about 0.18M); ``LotSizingEnv`` is one episode as a ``gym.Env`` and ``LotSizingVectorEnv`` many at once
(a ``gym.vector.VectorEnv``, SAME_STEP autoreset, all episodes in lockstep). Their step ``info`` holds
``post_obs`` (the post-decision observation: x^x, plus sigma^x with the setup observation), ``post_reward``
(r^x = -setup cost) and ``pre_reward`` (r^pre = -(holding + lost sales)), the names of the spec, plus the three
costs, the demand and the setups.

Ids: ``ocrl/LotSizing-v0`` (kwargs ``instance=PATH`` or the generator's ``n_items``, ``n_machines``, ``horizon``,
``instance_seed``; default a generated 15 x 5 instance) and ``ocrl/LotSizing-{15x5,20x10,25x10,25x15}-v0``, the
published instances. Those files are not part of ocrl, so registration reads nothing: the published ids look
for their file in ``instance_dir=FOLDER`` (kwarg), else in ``$OCRL_LOT_SIZING_DIR``, and fail with the file name
to fetch otherwise (a generated instance of the same size would be a different problem under the same name).
``gym.make_vec(id, num_envs, vectorization_mode="vector_entry_point")`` gives the vector env.

Where this differs from the original code (``simplePlant.py`` @ dd3f453, ``PDPPOAgent.py`` @ bf3f368), the
dynamics and costs above are the code's (the spec in ``pdppo.md`` agrees with it on all of them); only the
plumbing differs: demand is drawn each period (the original draws an I x (T + 1) scenario at reset and never
uses its last column: the same law), by inverse CDF from a seeded NumPy generator (no RNG parity with the
original is possible anyway); the observation is float32 (the original's Box is int32); a machine that can make
no item starts with no setup; r sums r^x and r^pre (the original sums setup, lost sales and holding: the
last bit may differ); and the JSON's ``initial_setup`` is used only with ``initial_state="instance"``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

from ocrl.envs.evaluation import EnvError
from ocrl.envs.ids import LOT_SIZING_IDS

ObsMode = Literal["inventory", "inventory+setup"]
StartMode = Literal["random", "instance"]

#: Environment variable naming the folder of the published instance files (used by the published ids).
INSTANCE_DIR_ENV = "OCRL_LOT_SIZING_DIR"
#: The published instances of leokan92/pdppo (``code/Lot-sizing/cfg_env/``), by items x machines.
PUBLISHED = {
    "15x5": "setting_15items_5machines_t100_i100.json",
    "20x10": "setting_20items_10machines_t100_i100.json",
    "25x10": "setting_25items_10machines_t100_i100.json",
    "25x15": "setting_25items_15machines_t100_i100.json",
}
_FIELDS = (
    "time_horizon",
    "n_items",
    "n_machines",
    "initial_setup",
    "machine_production",
    "max_inventory_level",
    "initial_inventory",
    "holding_costs",
    "lost_sales_costs",
    "demand_distribution",
    "setup_costs",
    "setup_loss",
)


# ----------------------------------------------------------------------------------------------- instances


@dataclass(frozen=True)
class LotSizingInstance:
    """One instance in the fields of the original JSON (matrices are machines x items, item i at column i - 1)."""

    name: str
    horizon: int
    n_items: int
    n_machines: int
    production: tuple[tuple[int, ...], ...]
    setup_costs: tuple[tuple[float, ...], ...]
    setup_loss: tuple[tuple[int, ...], ...]
    holding_costs: tuple[float, ...]
    lost_sales_costs: tuple[float, ...]
    max_inventory: tuple[int, ...]
    initial_inventory: tuple[int, ...]
    initial_setup: tuple[int, ...]
    demand_n: int = 20
    demand_p: float = 0.4

    @property
    def demand_mean(self) -> float:
        return self.demand_n * self.demand_p

    @property
    def demand_var(self) -> float:
        return self.demand_n * self.demand_p * (1.0 - self.demand_p)

    def to_dict(self) -> dict[str, Any]:
        """The original JSON's dict (its keys and key order)."""
        d = asdict(self)
        return {
            "time_horizon": d["horizon"],
            "n_items": d["n_items"],
            "n_machines": d["n_machines"],
            "initial_setup": list(d["initial_setup"]),
            "machine_production": [list(r) for r in d["production"]],
            "max_inventory_level": list(d["max_inventory"]),
            "initial_inventory": list(d["initial_inventory"]),
            "holding_costs": list(d["holding_costs"]),
            "lost_sales_costs": list(d["lost_sales_costs"]),
            "demand_distribution": {"name": "binomial", "n": d["demand_n"], "p": d["demand_p"]},
            "setup_costs": [list(r) for r in d["setup_costs"]],
            "setup_loss": [list(r) for r in d["setup_loss"]],
        }

    def validate(self) -> LotSizingInstance:
        """Raise EnvError naming the bad field; return self."""
        instance_from_dict(self.to_dict(), self.name)
        return self


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float | np.floating)) and math.isfinite(v)


def _vector(d: dict, key: str, n: int, what: str, source: str, integer: bool) -> tuple:
    v = d[key]
    ok = _is_int if integer else _is_num
    if not isinstance(v, list) or len(v) != n or not all(ok(x) and x >= 0 for x in v):
        if not isinstance(v, list):
            got = type(v).__name__
        elif len(v) != n:
            got = f"a list of {len(v)}"
        else:
            j = next(j for j, x in enumerate(v) if not (ok(x) and x >= 0))
            got = f"{v[j]!r} at position {j}"
        kind = "integers" if integer else "finite numbers"
        raise EnvError(f"{source}: field '{key}' must be {n} {kind} >= 0 ({what}), got {got}")
    return tuple(int(x) if integer else float(x) for x in v)


def _matrix(d: dict, key: str, m: int, n: int, source: str, integer: bool) -> tuple:
    v = d[key]
    if not isinstance(v, list) or len(v) != m:
        got = f"{len(v)} rows" if isinstance(v, list) else type(v).__name__
        raise EnvError(
            f"{source}: field '{key}' must be n_machines x n_items = {m} x {n}, got {got}"
        )
    return tuple(
        _vector({key: row}, key, n, f"row {r}, one per item", source, integer)
        for r, row in enumerate(v)
    )


def instance_from_dict(d: Any, source: str = "<dict>") -> LotSizingInstance:
    """A checked instance from the original JSON's dict; ``EnvError`` "source: field '...' ..." if malformed."""
    if not isinstance(d, dict):
        raise EnvError(f"{source}: expected a JSON object with fields {', '.join(_FIELDS)}")
    missing = [k for k in _FIELDS if k not in d]
    if missing:
        raise EnvError(f"{source}: field '{missing[0]}' is missing (needed: {', '.join(_FIELDS)})")
    for key in ("time_horizon", "n_items", "n_machines"):
        if not _is_int(d[key]) or d[key] < 1:
            raise EnvError(f"{source}: field '{key}' must be an integer >= 1, got {d[key]!r}")
    n_items, m = d["n_items"], d["n_machines"]
    demand = d["demand_distribution"]
    if not isinstance(demand, dict) or demand.get("name") != "binomial":
        raise EnvError(
            f"{source}: field 'demand_distribution' must be {{'name': 'binomial', 'n': N, 'p': P}} "
            f"(the only law of the published instances), got {demand!r}"
        )
    n, p = demand.get("n"), demand.get("p")
    if not _is_int(n) or n < 0 or not _is_num(p) or not 0.0 <= p <= 1.0:
        raise EnvError(
            f"{source}: field 'demand_distribution' needs an integer n >= 0 and p in [0, 1], "
            f"got n={n!r}, p={p!r}"
        )
    cap = _vector(d, "max_inventory_level", n_items, "one per item", source, True)
    start = _vector(d, "initial_inventory", n_items, "one per item", source, True)
    if any(x > c for x, c in zip(start, cap, strict=True)):
        raise EnvError(f"{source}: field 'initial_inventory' exceeds 'max_inventory_level'")
    setup = _vector(d, "initial_setup", m, "one per machine", source, True)
    if any(s > n_items for s in setup):
        raise EnvError(
            f"{source}: field 'initial_setup' must hold items 0..{n_items} (0 = no setup), got {list(setup)}"
        )
    return LotSizingInstance(
        name=source,
        horizon=d["time_horizon"],
        n_items=n_items,
        n_machines=m,
        production=_matrix(d, "machine_production", m, n_items, source, True),
        setup_costs=_matrix(d, "setup_costs", m, n_items, source, False),
        setup_loss=_matrix(d, "setup_loss", m, n_items, source, True),
        holding_costs=_vector(d, "holding_costs", n_items, "one per item", source, False),
        lost_sales_costs=_vector(d, "lost_sales_costs", n_items, "one per item", source, False),
        max_inventory=cap,
        initial_inventory=start,
        initial_setup=setup,
        demand_n=int(n),
        demand_p=float(p),
    )


def load_instance(path: str | os.PathLike) -> LotSizingInstance:
    """An instance from a JSON file of the original format (``cfg_env/setting_*.json``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise EnvError(f"{path}: cannot read the lot-sizing instance ({err.strerror})") from err
    try:
        d = json.loads(text)
    except json.JSONDecodeError as err:
        raise EnvError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "is the file truncated?"
        ) from err
    return instance_from_dict(d, str(path))


def save_instance(instance: LotSizingInstance, path: str | os.PathLike) -> Path:
    """Write ``instance`` in the original JSON format (4-space indent, as ``generate_setting.py``)."""
    path = Path(path)
    path.write_text(json.dumps(instance.to_dict(), indent=4) + "\n")
    return path


def published_instance(
    setting: str, instance_dir: str | os.PathLike | None = None
) -> LotSizingInstance:
    """A published instance ("25x10") from ``instance_dir``, else ``$OCRL_LOT_SIZING_DIR``."""
    if setting not in PUBLISHED:
        raise EnvError(
            f"unknown published lot-sizing setting '{setting}'; use one of {', '.join(PUBLISHED)}"
        )
    folder = instance_dir if instance_dir is not None else os.environ.get(INSTANCE_DIR_ENV)
    file = PUBLISHED[setting]
    if folder is None:
        raise EnvError(
            f"the published lot-sizing instance {setting} is the file {file} of leokan92/pdppo "
            f"(code/Lot-sizing/cfg_env/), which ocrl does not ship: pass instance_dir=FOLDER "
            f"(gym.make(..., instance_dir=FOLDER)) or set ${INSTANCE_DIR_ENV} to the folder holding it"
        )
    return load_instance(Path(folder) / file)


def instance_from_flag(
    name: str, instance_dir: str | os.PathLike | None = None, n_items: int = 15,
    n_machines: int = 5, instance_seed: int = 0,
) -> LotSizingInstance:  # fmt: skip
    """The instance an --instance flag names: a published setting, a JSON path, or 'generated' (100 periods)."""
    if name == "generated":
        return generate_instance(n_items, n_machines, 100, instance_seed)
    if name in PUBLISHED:
        return published_instance(name, instance_dir)
    if Path(name).suffix == ".json":
        return load_instance(name)
    raise EnvError(
        f"--instance {name}: not one of {', '.join(PUBLISHED)}, 'generated' or a .json path"
    )


def _min_bias(rng: np.random.Generator, shape, low: int, high: int, p_low: float) -> np.ndarray:
    """Integers in [low, high]: ``low`` with probability ``p_low``, the others uniform (``generate_vector_min_bias``)."""
    if high == low:
        return np.full(shape, low, dtype=np.int64)
    other = rng.integers(low + 1, high + 1, size=shape)
    return np.where(rng.random(shape) < p_low, low, other)


def generate_instance(
    n_items: int, n_machines: int, horizon: int = 100, seed: int = 0
) -> LotSizingInstance:
    """A new instance from the distribution of ``cfg_env/generate_setting.py``, seeded.

    P = 0 w.p. 0.4 else U{1..40}; setup cost 15 w.p. 0.2 else U{16..30}; setup loss 1 w.p. 0.7 else U{2, 3};
    lost-sales cost 0.1 or 1.1 (1/2 each); holding 0.01; cap 100; initial inventory 0 w.p. 0.05 else
    U{1..50}; initial setup 0 w.p. 0.4 else U{1..I}; demand Binomial(20, 0.4). As in the original, nothing
    forces every item to have a machine or every machine an item.
    """
    if n_items < 1 or n_machines < 1 or horizon < 1:
        raise ValueError(
            f"an instance needs n_items, n_machines, horizon >= 1, got {n_items}, {n_machines}, {horizon}"
        )
    rng = np.random.default_rng(seed)
    shape = (n_machines, n_items)
    d = {
        "time_horizon": horizon,
        "n_items": n_items,
        "n_machines": n_machines,
        "initial_setup": _min_bias(rng, n_machines, 0, n_items, 0.4).tolist(),
        "machine_production": _min_bias(rng, shape, 0, 40, 0.4).tolist(),
        "max_inventory_level": [100] * n_items,
        "initial_inventory": _min_bias(rng, n_items, 0, 50, 0.05).tolist(),
        "holding_costs": [0.01] * n_items,
        "lost_sales_costs": np.where(rng.random(n_items) < 0.5, 0.1, 1.1).tolist(),
        "demand_distribution": {"name": "binomial", "n": 20, "p": 0.4},
        "setup_costs": _min_bias(rng, shape, 15, 30, 0.2).astype(float).tolist(),
        "setup_loss": _min_bias(rng, shape, 1, 3, 0.7).tolist(),
    }
    return instance_from_dict(
        d, f"generated_{n_items}items_{n_machines}machines_t{horizon}_seed{seed}"
    )


# ----------------------------------------------------------------------------------------------- simulator


class LotSizingState(NamedTuple):
    """A batch of states: inventory (B, I) and machine setups (B, M), int64."""

    inventory: np.ndarray
    setup: np.ndarray


class LotSizingTransition(NamedTuple):
    """One period of a batch: the post-decision and next states, and the three costs (B,) (positive)."""

    post_inventory: np.ndarray
    state: LotSizingState
    setup_cost: np.ndarray
    lost_sales_cost: np.ndarray
    holding_cost: np.ndarray

    @property
    def post_reward(self) -> np.ndarray:
        """r^x = -setup cost (B,)."""
        return -self.setup_cost

    @property
    def pre_reward(self) -> np.ndarray:
        """r^pre = -(holding + lost sales) (B,)."""
        return -(self.lost_sales_cost + self.holding_cost)

    @property
    def reward(self) -> np.ndarray:
        """r = r^x + r^pre (B,), exactly that sum."""
        return self.post_reward + self.pre_reward


class LotSizingSimulator:
    """The dynamics of one instance over a batch of B episodes (NumPy; every method is a pure function)."""

    def __init__(self, instance: LotSizingInstance):
        self.instance = instance.validate()
        inst = instance
        self.n_items, self.n_machines, self.horizon = inst.n_items, inst.n_machines, inst.horizon
        self.production = np.array(inst.production, dtype=np.int64)
        self.setup_costs = np.array(inst.setup_costs, dtype=np.float64)
        self.setup_loss = np.array(inst.setup_loss, dtype=np.int64)
        self.holding = np.array(inst.holding_costs, dtype=np.float64)
        self.lost_sales = np.array(inst.lost_sales_costs, dtype=np.float64)
        self.cap = np.array(inst.max_inventory, dtype=np.int64)
        k = np.arange(inst.demand_n + 1)
        pmf = np.array([math.comb(inst.demand_n, int(j)) for j in k], dtype=np.float64)
        pmf *= inst.demand_p**k * (1.0 - inst.demand_p) ** (inst.demand_n - k)
        self._demand_cdf = np.cumsum(pmf)[:-1]  # d = #{k < n: F(k) <= u}, u ~ U[0, 1)
        # Per machine, the items it can make (1-based), left-aligned, and how many.
        self._can_make = np.zeros((self.n_machines, self.n_items), dtype=np.int64)
        self._n_can_make = (self.production > 0).sum(1)
        for m in range(self.n_machines):
            items = np.flatnonzero(self.production[m]) + 1
            self._can_make[m, : len(items)] = items
        self._machines = np.arange(self.n_machines)

    def initial_state(
        self, n: int, rng: np.random.Generator, mode: StartMode = "random"
    ) -> LotSizingState:
        """``n`` starts: random (x_i ~ U{0..cap_i - 1}, sigma_m uniform over the items m can make) or the JSON's."""
        if mode == "instance":
            inv = np.array(self.instance.initial_inventory, dtype=np.int64)
            setup = np.array(self.instance.initial_setup, dtype=np.int64)
            return LotSizingState(np.tile(inv, (n, 1)), np.tile(setup, (n, 1)))
        if mode != "random":
            raise ValueError(f"initial_state '{mode}' is not one of random, instance")
        inv = rng.integers(0, np.maximum(self.cap, 1), size=(n, self.n_items))
        pick = (rng.random((n, self.n_machines)) * self._n_can_make).astype(np.int64)
        setup = self._can_make[self._machines, pick]  # 0 where a machine can make nothing
        return LotSizingState(inv, setup)

    def sample_demand(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, I) int64 demand, i.i.d. Binomial(n, p) by inverse CDF (3x faster than ``rng.binomial``)."""
        u = rng.random((n, self.n_items))
        return np.searchsorted(self._demand_cdf, u, side="right").astype(np.int64)

    def check_action(self, action: np.ndarray, n: int) -> np.ndarray:
        """The action as an (n, M) int64 array; ValueError unless every entry is an item 0..I."""
        a = np.asarray(action)
        if a.shape != (n, self.n_machines) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(
                f"action must be {n} x {self.n_machines} integers (one item 0..{self.n_items} per "
                f"machine, 0 = idle), got shape {a.shape} dtype {a.dtype}"
            )
        if a.size and (a.min() < 0 or a.max() > self.n_items):
            raise ValueError(
                f"action entries must be items 0..{self.n_items} (0 = idle), got {a.min()}..{a.max()}"
            )
        return a.astype(np.int64, copy=False)

    def post_decision(
        self, state: LotSizingState, action: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(post-decision inventory x^x (B, I), setup cost (B,)); the post-decision setup is ``action``."""
        a = action
        item = np.maximum(a - 1, 0)
        runs = a > 0
        change = runs & (state.setup != a)
        cost = np.where(change, self.setup_costs[self._machines, item], 0.0).sum(1)
        made = self.production[self._machines, item] - np.where(
            change, self.setup_loss[self._machines, item], 0
        )
        made = np.where(runs, made, 0)
        n = a.shape[0]
        # Scatter-add into (B, I + 1): column 0 collects the idle machines' zeros.
        slot = (np.arange(n)[:, None] * (self.n_items + 1) + a).ravel()
        added = np.bincount(slot, weights=made.ravel(), minlength=n * (self.n_items + 1))
        added = added.reshape(n, self.n_items + 1)[:, 1:]
        return state.inventory + added.astype(np.int64), cost

    def step(
        self, state: LotSizingState, action: np.ndarray, demand: np.ndarray
    ) -> LotSizingTransition:
        """One period of every episode: post-decision, then demand (B, I): lost sales, cap, holding."""
        post, setup_cost = self.post_decision(state, action)
        y = post - demand
        lost = (np.maximum(-y, 0) * self.lost_sales).sum(1)
        inv = np.minimum(np.maximum(y, 0), self.cap)
        holding = (inv * self.holding).sum(1)
        return LotSizingTransition(
            post, LotSizingState(inv, action.copy()), setup_cost, lost, holding
        )

    def observe(self, inventory: np.ndarray, setup: np.ndarray, obs: ObsMode) -> np.ndarray:
        """(B, I) or (B, I + M) float32 observation."""
        if obs == "inventory":
            return inventory.astype(np.float32)
        return np.concatenate([inventory, setup], axis=1).astype(np.float32)

    def observation_space(self, obs: ObsMode) -> gym.spaces.Box:
        """Box(0, cap) per item, plus Box(0, I) per machine with the setups."""
        if obs not in ("inventory", "inventory+setup"):
            raise ValueError(f"obs '{obs}' is not one of inventory, inventory+setup")
        high = self.cap.astype(np.float32)
        if obs == "inventory+setup":
            high = np.concatenate([high, np.full(self.n_machines, self.n_items, np.float32)])
        return gym.spaces.Box(np.zeros_like(high), high, dtype=np.float32)


def _episode_start(
    sim: LotSizingSimulator, n: int, rng: np.random.Generator, mode: StartMode, options: dict
) -> tuple[LotSizingState, np.ndarray | None]:
    """The start of ``n`` episodes (options "inventory" (n, I), "setup" (n, M) override) and a fixed demand trace."""
    state = sim.initial_state(n, rng, mode)
    inv, setup = state
    if options.get("inventory") is not None:
        inv = np.asarray(options["inventory"], dtype=np.int64).reshape(n, sim.n_items)
    if options.get("setup") is not None:
        setup = sim.check_action(np.asarray(options["setup"]).reshape(n, sim.n_machines), n)
    demand = None
    if options.get("demand") is not None:
        demand = np.asarray(options["demand"], dtype=np.int64)
        if demand.size != n * sim.horizon * sim.n_items or demand.min() < 0:
            raise ValueError(
                f"options['demand'] must hold {n} x {sim.horizon} x {sim.n_items} integers >= 0 "
                f"(episodes x periods x items), got shape {demand.shape}"
            )
        demand = demand.reshape(n, sim.horizon, sim.n_items)
    return LotSizingState(inv, setup), demand


def _resolve_instance(
    instance: LotSizingInstance | str | os.PathLike | None,
    published: str | None,
    instance_dir: str | os.PathLike | None,
    n_items: int,
    n_machines: int,
    horizon: int,
    instance_seed: int,
) -> LotSizingInstance:
    if isinstance(instance, LotSizingInstance):
        return instance
    if instance is not None:
        return load_instance(instance)
    if published is not None:
        return published_instance(published, instance_dir)
    return generate_instance(n_items, n_machines, horizon, instance_seed)


# ----------------------------------------------------------------------------------------------- Gymnasium


class LotSizingEnv(gym.Env):
    """One episode as a Gymnasium env: MultiDiscrete([I + 1] * M) actions, the inventory (+ setups) as obs.

    The instance is ``instance`` (a ``LotSizingInstance`` or a JSON path), else the published ``published``
    setting ("25x10", found in ``instance_dir`` or ``$OCRL_LOT_SIZING_DIR``), else a generated one
    (``n_items``, ``n_machines``, ``horizon``, ``instance_seed``). ``reset(options=...)`` may fix the start
    ("inventory" (I,), "setup" (M,)) and the demand trace ("demand" (T, I)).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        instance: LotSizingInstance | str | os.PathLike | None = None,
        obs: ObsMode = "inventory",
        initial_state: StartMode = "random",
        published: str | None = None,
        instance_dir: str | os.PathLike | None = None,
        n_items: int = 15,
        n_machines: int = 5,
        horizon: int = 100,
        instance_seed: int = 0,
    ):
        inst = _resolve_instance(
            instance, published, instance_dir, n_items, n_machines, horizon, instance_seed
        )
        self.sim = LotSizingSimulator(inst)
        self.instance = self.sim.instance
        self.obs_mode = obs
        self.initial_state = initial_state
        self.observation_space = self.sim.observation_space(obs)
        self.action_space = gym.spaces.MultiDiscrete([inst.n_items + 1] * inst.n_machines)
        self._state: LotSizingState | None = None
        self._demand: np.ndarray | None = None
        self._t = 0

    @property
    def setup(self) -> np.ndarray:
        """The current machine setups (M,) (hidden from the default observation)."""
        return self._state.setup[0].copy()

    def _obs(self, inventory: np.ndarray, setup: np.ndarray) -> np.ndarray:
        return self.sim.observe(inventory, setup, self.obs_mode)[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._state, demand = _episode_start(
            self.sim, 1, self.np_random, self.initial_state, options or {}
        )
        self._demand = None if demand is None else demand[0]
        self._t = 0
        return self._obs(*self._state), {"setup": self.setup}

    def post_decision(self, action) -> tuple[np.ndarray, float]:
        """(post_obs, post_reward) of ``action`` in the current state, without stepping."""
        a = self.sim.check_action(np.asarray(action).reshape(1, -1), 1)
        post, cost = self.sim.post_decision(self._state, a)
        return self._obs(post, a), -float(cost[0])

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.sim.horizon:
            raise RuntimeError(f"the episode ended after {self.sim.horizon} periods; call reset()")
        a = self.sim.check_action(np.asarray(action).reshape(1, -1), 1)
        if self._demand is None:
            demand = self.sim.sample_demand(1, self.np_random)
        else:
            demand = self._demand[self._t][None]
        tr = self.sim.step(self._state, a, demand)
        self._state = tr.state
        self._t += 1
        post_reward, pre_reward = float(tr.post_reward[0]), float(tr.pre_reward[0])
        info = {
            "post_obs": self._obs(tr.post_inventory, a),
            "post_reward": post_reward,
            "pre_reward": pre_reward,
            "setup_cost": float(tr.setup_cost[0]),
            "lost_sales_cost": float(tr.lost_sales_cost[0]),
            "holding_cost": float(tr.holding_cost[0]),
            "demand": demand[0],
            "setup": self.setup,
        }
        obs = self._obs(*tr.state)
        return obs, post_reward + pre_reward, self._t >= self.sim.horizon, False, info


class LotSizingVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` episodes stepped together by one ``LotSizingSimulator`` call (no per-episode Python).

    A ``gym.vector.VectorEnv`` (not a bare batched class) so that Gymnasium's vector wrappers and
    ``gym.make_vec`` work; its arrays come straight from the simulator. All episodes have the same horizon,
    so they run in lockstep: after period T every one is terminated and restarted in the same step
    (SAME_STEP autoreset, as ``algos/sac.py`` uses): the returned obs is the new start, ``info["final_obs"]``
    the last one. The step info (``post_obs`` (B, D), ``post_reward``, ``pre_reward``, the costs, ``demand``
    (B, I), ``setup`` (B, M)) is at the top level on every step, and also under ``final_info`` at the end.
    Arguments as ``LotSizingEnv``; ``reset(options=...)`` takes the same keys with a leading episode axis.
    """

    def __init__(self, num_envs: int = 1, seed: int | None = None, **kwargs):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        env = LotSizingEnv(**kwargs)  # resolves the instance and checks the arguments
        self.sim, self.instance = env.sim, env.instance
        self.obs_mode, self.initial_state = env.obs_mode, env.initial_state
        self.num_envs = num_envs
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self.single_observation_space = env.observation_space
        self.single_action_space = env.action_space
        self.observation_space = gym.vector.utils.batch_space(env.observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(env.action_space, num_envs)
        self._rng, _ = seeding.np_random(seed)
        self._mask = np.ones(num_envs, dtype=bool)
        self._state: LotSizingState | None = None
        self._demand: np.ndarray | None = None
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng, _ = seeding.np_random(seed)
            self.action_space.seed(seed)
        self._state, self._demand = _episode_start(
            self.sim, self.num_envs, self._rng, self.initial_state, options or {}
        )
        self._t = 0
        return self.sim.observe(*self._state, self.obs_mode), {
            "setup": self._state.setup.copy(),
            "_setup": self._mask,
        }

    def step(self, actions):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        a = self.sim.check_action(actions, self.num_envs)
        if self._demand is None:
            demand = self.sim.sample_demand(self.num_envs, self._rng)
        else:
            demand = self._demand[:, self._t]
        tr = self.sim.step(self._state, a, demand)
        self._state = tr.state
        self._t += 1
        info: dict[str, Any] = {
            "post_obs": self.sim.observe(tr.post_inventory, a, self.obs_mode),
            "post_reward": tr.post_reward,
            "pre_reward": tr.pre_reward,
            "setup_cost": tr.setup_cost,
            "lost_sales_cost": tr.lost_sales_cost,
            "holding_cost": tr.holding_cost,
            "demand": demand,
            "setup": tr.state.setup,
        }
        info.update({f"_{k}": self._mask for k in list(info)})
        obs = self.sim.observe(*tr.state, self.obs_mode)
        done = self._t >= self.sim.horizon
        if done:
            step_info = dict(info)
            info["final_obs"], info["_final_obs"] = obs, self._mask
            info["final_info"], info["_final_info"] = step_info, self._mask
            self._state, self._demand = _episode_start(
                self.sim, self.num_envs, self._rng, self.initial_state, {}
            )
            self._t = 0
            obs = self.sim.observe(*self._state, self.obs_mode)
        terminated = np.full(self.num_envs, done)
        return obs, tr.reward, terminated, np.zeros(self.num_envs, dtype=bool), info


#: Registered (`ocrl.envs.ids`) when ocrl.envs is imported.
GYM_IDS = LOT_SIZING_IDS
