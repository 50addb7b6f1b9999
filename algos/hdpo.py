"""HDPO: hindsight differentiable policy optimisation for inventory control (Alvo, Russo & Kanoria, arXiv 2306.11246).

A deterministic ordering policy pi_theta is trained by back-propagating the simulated cost through the whole
horizon of a differentiable inventory simulator (`ocrl.envs.inventory`), on demand traces sampled ahead of time
("hindsight": every path is a fixed counterfactual scenario):

    L(theta) = 1 / (|B| T S) sum_{b in B} sum_{t < T} c_t^b(theta),     one Adam step per minibatch B of paths

An epoch is one shuffled pass over the training paths; every `dev_every` epochs the dev cost picks the best
parameters, `patience` epochs without a better one stop training, and the best policy is tested on a new, long
scenario (orders rounded for Poisson demand, as the reference), with the median path and a warning when a few
paths cost over 10x it (a backlog trap, docs/hdpo_gap_table.md). Scenarios start every store slot at mean
demand x U[0, 1], as the reference, except the one-store backlogged on-hand: U[-1, 1] (`make_problem`), so the
policy is trained at the negative on-hand long test paths reach; with U[0, 1] its order there fell to 0 once the
initial backlog cleared and a path that dipped below 0 never recovered (`--initial-on-hand 0 1` restores the
reference's starts). Each policy class gives its formula. Every
location has K = max(4, L) inventory slots, so one_warehouse (store L in {2, 3}, warehouse L 3) feeds its MLP
S x 4 store slots and the warehouse's 4: the rule K = max(inventory_periods, L) that the reference page gives
for the released code (../shared/reference/hdpo.md, "Simulator dynamics"; it also says the authors' fork uses
K = 1 in its one-store lost config, which is not followed here). The defaults are the one-store schedule the
page gives for the released code at HEAD (MatiasAlvo/Neural_inventory_control @ 4d77c14), used here for every
setting (for one_warehouse the page lists 8192 training paths of batch 1024 and 8192 dev and test paths).
That takes hours on a CPU: `--max-steps` / `--max-minutes` stop after the epoch that reaches them
(scripts/hdpo_gap_table.py has our 2-core budget, docs/hdpo_gap_table.md its gaps). The page says the released
code's `train` never runs its test; here every run ends with it. The paper's symmetry-aware and GNN policies
are not implemented. On backlogged instances at lr 0.01 clip the gradient (`--grad-clip 1`).

    python algos/hdpo.py --setting one_store_lost --p 9 --lead-time 2
    python algos/hdpo.py --setting one_store_backlogged --p 4 --lead-time 1 --policy base_stock
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ocrl.envs.inventory import (
    InventoryProblem,
    InventorySimulator,
    InventoryState,
    Scenario,
    average_cost,
    cost_summary,
    gap_pct,
    inventory_position,
    long_run_costs,
    make_problem,
    optimum,
    sample_scenario,
    simulate,
    upstream_bounds,
)
from ocrl.experiment import Agent, TrainingLoop, check_finite, save_checkpoint, start_run
from ocrl.experiment.args import RunArgs
from ocrl.experiment.flags import UsageError, check_args, run_cli
from ocrl.nets import MLP

Setting = Literal["one_store_lost", "one_store_backlogged", "serial", "one_warehouse"]
PolicyName = Literal["vanilla", "base_stock", "capped_base_stock", "echelon_stock"]


@dataclass
class Args(RunArgs):
    setting: Setting = "one_store_lost"
    """problem class: one_store_lost (Poisson(5)), one_store_backlogged (Normal(5, 1.6)), serial, one_warehouse"""
    p: float = 9.0
    """underage (lost-sales or backlog) cost per unit of the store; h = 1"""
    lead_time: int = 2
    """store lead time L: an order placed at t is on hand at t + L"""
    n_stores: int = 3
    """stores under the warehouse (one_warehouse only)"""
    instance_seed: int = 0
    """seed of the sampled store costs, lead times and demand parameters (one_warehouse only)"""
    policy: PolicyName = "vanilla"
    """vanilla (the setting's MLP), base_stock, capped_base_stock (one store), echelon_stock (serial)"""
    hidden: tuple[int, ...] | None = None
    """MLP hidden widths; default [32, 32, 32] one store, [32, 32] serial, [512, 512, 512] one warehouse"""
    lr: float | None = None
    """Adam learning rate; default per policy: 0.003 vanilla one store, 0.01 serial, 3e-4 warehouse, 0.5 base/echelon stock, 1.0 capped"""
    grad_clip: float | None = None
    """clip the gradient norm to this value (off in the reference's vanilla policies)"""
    initial_on_hand: tuple[float, float] | None = None
    """initial on-hand as U[lo, hi] x mean demand; default the setting's (backlogged one store: -1 1, else 0 1; the reference: 0 1)"""
    n_train: int = 32768
    """training paths (demand traces)"""
    batch_size: int = 8192
    """paths per gradient step"""
    train_periods: int = 50
    """periods simulated per training path (every one counts in the loss)"""
    n_dev: int = 32768
    """dev paths, used for model selection"""
    dev_periods: int = 100
    """periods per dev path"""
    dev_ignore: int = 60
    """first dev periods left out of the dev cost (warm-up)"""
    n_test: int = 32768
    """test paths (a separate scenario)"""
    test_periods: int = 5000
    """periods per test path"""
    test_ignore: int = 3000
    """first test periods left out of the test cost (warm-up)"""
    test_chunk: int = 4096
    """test paths simulated at once (bounds the test's memory)"""
    round_test: bool | None = None
    """round orders at test; default on for Poisson (integer) demand, as the reference"""
    epochs: int = 20000
    """at most this many passes over the training paths"""
    dev_every: int = 10
    """epochs between dev evaluations"""
    patience: int = 500
    """stop after this many epochs without a better dev cost"""
    max_steps: int | None = None
    """stop after the epoch that reaches this many gradient steps (a CPU budget; off in the reference)"""
    max_minutes: float | None = None
    """stop training after the epoch that reaches this many minutes"""
    seed: int = 0
    """seed of the network initialisation, the shuffling and the scenarios (test uses seed + 1000)"""
    save_model: bool = False
    """write the best policy's weights to policy.pt in the run folder (atomically); no policy.pt2: this policy orders from the simulator's state, not a Gymnasium observation (docs/runs.md, Policy files)"""

    # What TrainingLoop reads: it counts gradient steps and logs (and checks) the training cost once an epoch.
    log_every = property(lambda self: self.n_train // self.batch_size)
    total_steps = property(lambda self: self.epochs * self.log_every)


class VanillaNet(nn.Module):
    """The vanilla policies' ELU MLP: every inventory slot in, one output per location (stores, upstream)."""

    hidden, lr = (32, 32), 0.01  # the released code's default widths and learning rate (serial)

    def __init__(self, problem: InventoryProblem, hidden: tuple[int, ...]):
        super().__init__()
        self.problem = problem
        self.net = MLP(problem.obs_dim, problem.n_stores + problem.n_upstream, hidden, nn.ELU)


class VanillaOneStore(VanillaNet):
    """One store (no upstream slots): q = softplus(z + 1) >= 0."""

    hidden, lr = (32, 32, 32), 0.003

    def forward(self, state: InventoryState) -> tuple[torch.Tensor, torch.Tensor | None]:
        return F.softplus(self.net(state.stores.flatten(1)) + 1.0), None


class BaseStock(nn.Module):
    """q = relu(S - inventory position), S = softplus(theta), theta from 10; capped: min(q, softplus(cap))."""

    def __init__(self, problem: InventoryProblem, capped: bool = False):
        super().__init__()
        self.lr = 1.0 if capped else 0.5
        self.level = nn.Parameter(torch.full((problem.n_stores,), 10.0))  # softplus(10) ~ 10
        self.cap = nn.Parameter(torch.full((problem.n_stores,), 10.0)) if capped else None

    def forward(self, state: InventoryState) -> tuple[torch.Tensor, torch.Tensor | None]:
        orders = F.relu(F.softplus(self.level) - inventory_position(state))
        return orders if self.cap is None else torch.minimum(orders, F.softplus(self.cap)), None


class EchelonStock(nn.Module):
    """Serial system: S_k = cumsum(softplus(theta)) (theta from 10), q_k = min(relu(S_k - echelon IP_k), upstream on-hand)."""

    def __init__(self, problem: InventoryProblem):
        super().__init__()
        self.problem, self.lr = problem, 0.5
        self.increments = nn.Parameter(torch.full((problem.n_upstream + 1,), 10.0))

    def forward(self, state: InventoryState) -> tuple[torch.Tensor, torch.Tensor | None]:
        levels = torch.cumsum(F.softplus(self.increments), 0)
        local = torch.cat([state.stores.sum(-1), state.upstream.sum(-1)], dim=1)  # (B, U + 1)
        orders = F.relu(levels - torch.cumsum(local, dim=1))  # cumsum: echelon inventory positions
        bounds = upstream_bounds(self.problem, state)
        orders = torch.cat([torch.minimum(orders[:, :-1], bounds[:, :-1]), orders[:, -1:]], dim=1)
        return orders[:, :1], orders[:, 1:]


class VanillaSerial(VanillaNet):
    """Location k orders sigmoid(z_k) x its upstream on-hand (the top one: x 4 x mean demand)."""

    def forward(self, state: InventoryState) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.net(state.observation())
        orders = torch.sigmoid(z) * upstream_bounds(self.problem, state)
        return orders[:, :1], orders[:, 1:]


class VanillaWarehouse(VanillaNet):
    """Stores get softmax([z_1..z_S, 1]) of the warehouse's on-hand (keep column dropped); the warehouse
    orders sigmoid(z_w) x 4 x total mean demand."""

    hidden, lr = (512, 512, 512), 3e-4

    def forward(self, state: InventoryState) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.net(state.observation())
        logits = torch.cat([z[:, :-1], torch.ones_like(z[:, :1])], dim=1)
        shares = torch.softmax(logits, dim=1)[:, :-1]
        store_orders = shares * F.relu(state.upstream[:, 0, :1])
        return store_orders, torch.sigmoid(z[:, -1:]) * self.problem.order_bound


def make_policy(args: Args, problem: InventoryProblem) -> tuple[nn.Module, float]:
    """The policy network of --policy for this problem and its learning rate; UsageError if they do not fit."""
    store_only, serial = not problem.n_upstream, problem.n_stores == 1 and problem.n_upstream
    if args.policy in ("base_stock", "capped_base_stock") and not store_only:
        raise UsageError(f"--policy {args.policy}: is for store-only problems, not --setting {args.setting}; use echelon_stock for serial")  # fmt: skip
    if args.policy == "echelon_stock" and not serial:
        raise UsageError(f"--policy echelon_stock: needs a serial system, not --setting {args.setting}; use --setting serial")  # fmt: skip
    if args.policy == "vanilla":
        net = VanillaOneStore if store_only else VanillaSerial if serial else VanillaWarehouse
        policy = net(problem, args.hidden or net.hidden)
    else:
        capped = args.policy == "capped_base_stock"
        policy = EchelonStock(problem) if serial else BaseStock(problem, capped=capped)
    return policy, args.lr if args.lr is not None else policy.lr


class HDPO(Agent):
    """The policy and its Adam optimiser; `update` is one gradient step on a batch of paths."""

    def __init__(self, args: Args, problem: InventoryProblem, device: torch.device):
        self.args, self.sim = args, InventorySimulator(problem, device)
        self.policy, self.lr = make_policy(args, problem)
        self.optimizer = torch.optim.Adam(self.policy.to(device).parameters(), lr=self.lr)

    def update(self, batch: Scenario) -> dict[str, torch.Tensor]:
        """Simulate the batch's paths, back-propagate the mean cost per period per store, one Adam step."""
        args = self.args
        scale = args.batch_size * args.train_periods * self.sim.problem.n_stores
        loss = simulate(self.policy, self.sim, batch, args.train_periods).sum() / scale
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.policy.parameters(), args.grad_clip)
        self.optimizer.step()
        return {"train_cost": loss.detach()}


def check_hdpo_args(args: Args) -> None:
    """Raise UsageError naming the flag, its value and the fix, before anything is written."""
    counts = ["batch_size", "n_train", "n_dev", "n_test", "train_periods", "epochs", "dev_every"]
    counts += ["patience", "test_chunk", "lead_time"] + ["max_steps"] * (args.max_steps is not None)
    check_args(args, counts + ["n_stores"] * (args.setting == "one_warehouse"))
    checks = [
        (args.p > 0 and math.isfinite(args.p), f"--p {args.p}: the underage cost must be > 0"),
        (args.n_train >= args.batch_size, f"--n-train {args.n_train}: must be >= --batch-size {args.batch_size}"),
        (0 <= args.dev_ignore < args.dev_periods, f"--dev-ignore {args.dev_ignore}: must be in [0, --dev-periods {args.dev_periods})"),
        (0 <= args.test_ignore < args.test_periods, f"--test-ignore {args.test_ignore}: must be in [0, --test-periods {args.test_periods})"),
        (args.grad_clip is None or args.grad_clip > 0, f"--grad-clip {args.grad_clip}: must be > 0 (or left out: no clipping)"),
        (args.max_minutes is None or args.max_minutes > 0, f"--max-minutes {args.max_minutes}: must be > 0 (or left out)"),
        (all(w >= 1 for w in args.hidden or ()), f"--hidden {args.hidden}: widths must be >= 1"),
        (args.initial_on_hand is None or (
            all(math.isfinite(v) for v in args.initial_on_hand)
            and args.initial_on_hand[0] <= args.initial_on_hand[1]
            and (args.initial_on_hand[0] >= 0 or args.setting not in ("one_store_lost", "one_warehouse"))
        ), f"--initial-on-hand {args.initial_on_hand}: needs finite lo <= hi, lo >= 0 under lost sales"),
    ]  # fmt: skip
    for message in (m for ok, m in checks if not ok):
        raise UsageError(message)


def make_instance(args: Args) -> tuple[InventoryProblem, str]:
    """The inventory problem the flags describe, and its id (run folders, tables)."""
    problem = make_problem(args.setting, args.p, args.lead_time, args.n_stores, args.instance_seed)
    if args.initial_on_hand is not None:
        problem = dataclasses.replace(
            problem, initial_on_hand=tuple(args.initial_on_hand)
        ).validate()
    if args.setting == "one_warehouse":
        return problem, f"{problem.name}_i{args.instance_seed}"
    return problem, f"{args.setting}_p{args.p:g}_L{args.lead_time}"


def final_test(args: Args, policy: nn.Module, sim: InventorySimulator, best_known: float | None):
    """The long-run cost of `policy` on fresh test paths (seed + 1000): its summary, gap to the optimum, seconds."""
    round_test = (
        sim.problem.demand.kind == "poisson" if args.round_test is None else args.round_test
    )
    tick = time.perf_counter()
    test = cost_summary(long_run_costs(
        policy, sim, args.n_test, args.test_periods, args.test_ignore, args.seed + 1000,
        args.test_chunk, round_test,
    ))  # fmt: skip
    return test, gap_pct(test.cost, best_known), time.perf_counter() - tick


def main(args: Args) -> dict:
    args, device, _ = start_run(
        args, check_hdpo_args
    )  # every flag, before the run folder is created
    problem, name = make_instance(args)
    agent = HDPO(args, problem, device)
    policy, sim, best_known = agent.policy, agent.sim, optimum(problem)
    # One scenario split by path: the first n_dev paths are the dev set, the rest train.
    periods = max(args.train_periods, args.dev_periods)
    scenario = sample_scenario(problem, args.n_dev + args.n_train, periods, args.seed)
    dev = scenario.subset(slice(0, args.n_dev)).to(device)
    train = scenario.subset(slice(args.n_dev, None)).to(device)
    shuffle = torch.Generator(device="cpu").manual_seed(args.seed)
    loop = TrainingLoop("hdpo", name, args, agent.parts(), None, rate_tag="charts/steps_per_s")
    run = loop.run
    print(f"HDPO {name}: policy {args.policy} ({type(policy).__name__}), lr {agent.lr}, optimum {best_known}")  # fmt: skip

    best_dev, best_state, best_epoch = math.inf, copy.deepcopy(policy.state_dict()), 0
    steps_to_1pct, time_to_1pct, stop_reason = None, None, "epochs"
    started = time.perf_counter()
    batches = args.n_train // args.batch_size  # gradient steps per epoch (full batches only)
    for done in loop.steps(stride=batches):  # one epoch per iteration; loop.step counts the steps
        epoch = done // batches + 1
        order = torch.randperm(args.n_train, generator=shuffle).to(device)
        for b in range(batches):
            metrics = agent.update(train.subset(order[b * args.batch_size : (b + 1) * args.batch_size]))  # fmt: skip
        loop.log({**metrics, "charts/epoch": epoch})  # every epoch; a non-finite cost stops the run
        step, elapsed = loop.step, time.perf_counter() - started
        steps_out = args.max_steps is not None and step >= args.max_steps
        out_of_budget = steps_out or (args.max_minutes is not None and elapsed >= 60 * args.max_minutes)  # fmt: skip
        if loop.due(args.dev_every * batches) or out_of_budget:
            dev_cost = average_cost(policy, sim, dev, args.dev_periods, args.dev_ignore)
            check_finite(step, {"eval/dev_cost": dev_cost}, run)
            dev_gap = gap_pct(dev_cost, best_known)
            if dev_cost < best_dev:
                best_dev, best_epoch = dev_cost, epoch
                best_state = copy.deepcopy(policy.state_dict())
            if steps_to_1pct is None and dev_gap is not None and dev_gap <= 1.0:
                steps_to_1pct, time_to_1pct = step, time.perf_counter() - started
            run.log_eval(step, {"return": -dev_cost, "dev_cost": dev_cost, "dev_gap_pct": dev_gap})
            shown = "" if dev_gap is None else f" ({dev_gap:+.2f}%)"
            loop.pbar.set_postfix_str(f"epoch {epoch}, dev cost {dev_cost:.3f}{shown}")
            if epoch - best_epoch >= args.patience:
                stop_reason = "patience"
                break
        if out_of_budget:
            stop_reason = "max_steps" if steps_out else "max_minutes"
            break
    loop.pbar.close()
    train_time = time.perf_counter() - started
    policy.load_state_dict(best_state)
    if args.save_model:
        save_checkpoint(loop.dir / "policy.pt", policy.state_dict())
    test, test_gap, test_time = final_test(args, policy, sim, best_known)
    run.log(step, {f"test/{k}": v for k, v in [*test._asdict().items(), ("gap_pct", test_gap)] if v is not None})  # fmt: skip
    vs_optimum = "" if test_gap is None else f", optimum {best_known:.4f}, gap {test_gap:+.3f}%"
    print(f"test cost {test.cost:.4f} per period per store{vs_optimum} (best dev {best_dev:.4f} at epoch {best_epoch}; {step} gradient steps, stopped by {stop_reason})")  # fmt: skip
    if test.tail_paths:
        print(f"warning: {test.tail_paths} of {args.n_test} test paths cost more than 10x the median path ({test.cost_median_path:.4f}) and carry {100 * test.tail_cost_share:.1f}% of the total cost")  # fmt: skip
    return run.finish(step, {
        "instance": name, **{f"test_{k}": v for k, v in test._asdict().items()}, "optimum": best_known,
        "gap_pct": test_gap, "dev_cost_best": best_dev, "best_epoch": best_epoch, "epochs": epoch,
        "stop_reason": stop_reason, "steps_to_1pct": steps_to_1pct, "time_to_1pct_s": time_to_1pct,
        "train_time_s": train_time, "test_time_s": test_time, "lr": agent.lr,
    })  # fmt: skip


if __name__ == "__main__":
    run_cli(main, Args)
