"""The inventory simulator (envs/inventory.py): hand-computed trajectories, pathwise gradients against finite
differences, the Gymnasium envs against the batched simulator, the closed-form base-stock optimum, seeded
scenarios, and SAC running on an inventory env."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.utils.env_checker import check_env
from scipy.stats import norm

from ocrl.algos import sac
from ocrl.envs.inventory import (
    LOST_SALES_OPTIMA,
    Demand,
    InventoryProblem,
    InventorySimulator,
    InventoryState,
    Scenario,
    backlog_optimum,
    make_problem,
    optimum,
    sample_scenario,
    scenario_chunks,
    with_problem,
)

F64 = torch.float64
GYM_IDS = {
    "one_store_lost": "ocrl/OneStoreLost-v0",
    "one_store_backlogged": "ocrl/OneStoreBacklogged-v0",
    "serial": "ocrl/SerialSystem-v0",
    "one_warehouse": "ocrl/OneWarehouseLost-v0",
}


def rollout(problem, stores, demand, store_orders, upstream=None, upstream_orders=None):
    """Run the simulator in float64 on one path; returns the states (stores, upstream) after each step and the costs.

    stores (S, K), demand and store_orders (T, S), upstream (U, Ku), upstream_orders (T, U).
    """
    sim = InventorySimulator(problem, dtype=F64)
    up = torch.zeros(1, problem.n_upstream, problem.upstream_slots, dtype=F64)
    if upstream is not None:
        up = torch.tensor(upstream, dtype=F64)[None]
    state = InventoryState(torch.tensor(stores, dtype=F64)[None], up)
    states, costs = [], []
    for t in range(len(demand)):
        up_orders = (
            None if upstream_orders is None else torch.tensor([upstream_orders[t]], dtype=F64)
        )
        state, cost = sim.step(
            state,
            torch.tensor([demand[t]], dtype=F64),
            torch.tensor([store_orders[t]], dtype=F64),
            up_orders,
        )
        states.append((state.stores[0].tolist(), state.upstream[0].tolist()))
        costs.append(float(cost[0]))
    return states, costs


# ---------------------------------------------------------------------------------------------------------
# 1. Hand-computed trajectories. Each expected number is worked out in the comment next to it from the
#    dynamics y = x - D, cost p relu(-y) + h relu(y), lost sales y <- relu(y), next on-hand = y + slot 1,
#    the pipeline shifts, and the order joins slot L - 1.
# ---------------------------------------------------------------------------------------------------------


def test_lead_time_one_lost_sales_and_backlog_by_hand():
    # h = 1, p = 4, L = 1, K = max(4, 1) = 4 slots; initial [3, 2, 1, 5], demand 5, 1, 6, orders 4, 0, 6.
    demand, orders = [[5.0], [1.0], [6.0]], [[4.0], [0.0], [6.0]]
    lost = make_problem("one_store_lost", p=4.0, lead_time=1)
    assert lost.store_slots == 4
    states, costs = rollout(lost, [[3.0, 2.0, 1.0, 5.0]], demand, orders)
    # t0: y = 3 - 5 = -2 -> cost 4*2 = 8, lost: y = 0; next [0 + 2 + 4 (order, L = 1), 1, 5, 0]
    # t1: y = 6 - 1 = 5  -> cost 5;              next [5 + 1, 5, 0, 0]
    # t2: y = 6 - 6 = 0  -> cost 0;              next [0 + 5 + 6, 0, 0, 0]
    assert costs == [8.0, 5.0, 0.0]
    assert [s[0][0] for s in states] == [[6, 1, 5, 0], [6, 5, 0, 0], [11, 0, 0, 0]]

    backlog = make_problem("one_store_backlogged", p=4.0, lead_time=1)
    states, costs = rollout(backlog, [[3.0, 2.0, 1.0, 5.0]], demand, orders)
    # t0: y = -2 -> cost 8, kept; next [-2 + 2 + 4, 1, 5, 0]
    # t1: y = 4 - 1 = 3 -> cost 3; next [3 + 1, 5, 0, 0]
    # t2: y = 4 - 6 = -2 -> cost 8; next [-2 + 5 + 6, 0, 0, 0]
    assert costs == [8.0, 3.0, 8.0]
    assert [s[0][0] for s in states] == [[4, 1, 5, 0], [4, 5, 0, 0], [9, 0, 0, 0]]


def test_lead_time_three_order_arrives_after_three_periods_by_hand():
    # p = 9, L = 3, K = 4 (slot 3 only holds the initial pipeline: K > L); initial [2, 1, 3, 4],
    # demand 3, 1, 5, 2, orders 7 (t0), 2 (t1), 0, 0.
    demand, orders = [[3.0], [1.0], [5.0], [2.0]], [[7.0], [2.0], [0.0], [0.0]]
    lost = make_problem("one_store_lost", p=9.0, lead_time=3)
    states, costs = rollout(lost, [[2.0, 1.0, 3.0, 4.0]], demand, orders)
    # t0: y = 2 - 3 = -1 -> 9, y = 0; next [0 + 1, 3, 4 + 7 (slot L-1 = 2), 0]
    # t1: y = 1 - 1 = 0  -> 0;        next [0 + 3, 11, 2, 0]
    # t2: y = 3 - 5 = -2 -> 18, y = 0; next [0 + 11, 2, 0, 0]   (the t0 order is on hand at t3, not t2)
    # t3: y = 11 - 2 = 9 -> 9;        next [9 + 2, 0, 0, 0]
    assert costs == [9.0, 0.0, 18.0, 9.0]
    assert [s[0][0] for s in states] == [[1, 3, 11, 0], [3, 11, 2, 0], [11, 2, 0, 0], [11, 0, 0, 0]]

    backlog = make_problem("one_store_backlogged", p=9.0, lead_time=3)
    states, costs = rollout(backlog, [[2.0, 1.0, 3.0, 4.0]], demand, orders)
    # t0: y = -1 -> 9, kept; next [-1 + 1, 3, 11, 0]
    # t1: y = 0 - 1 = -1 -> 9; next [-1 + 3, 11, 2, 0]
    # t2: y = 2 - 5 = -3 -> 27; next [-3 + 11, 2, 0, 0]
    # t3: y = 8 - 2 = 6 -> 6;  next [6 + 2, 0, 0, 0]
    assert costs == [9.0, 9.0, 27.0, 6.0]
    assert [s[0][0] for s in states] == [[0, 3, 11, 0], [2, 11, 2, 0], [8, 2, 0, 0], [8, 0, 0, 0]]


def test_cost_formula_per_store_costs_and_lead_times_by_hand():
    # Two backlogged stores: h = (2, 0.5), p = (3, 10), L = (1, 2); K = 4.
    problem = InventoryProblem(
        "two_stores",
        (1, 2),
        (2.0, 0.5),
        (3.0, 10.0),
        False,
        Demand("normal", (5.0, 5.0), (1.0, 1.0)),
    ).validate()
    states, costs = rollout(
        problem,
        [[1.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]],
        demand=[[3.0, 1.0], [0.0, 4.0], [1.0, 1.0]],
        store_orders=[[2.0, 5.0], [0.0, 0.0], [0.0, 0.0]],
    )
    # t0: store 0 y = 1 - 3 = -2 -> 3*2 = 6, next [-2 + 2, ...]; store 1 y = 3 -> 0.5*3 = 1.5, next [3, 5, 0, 0]
    # t1: store 0 y = 0 -> 0; store 1 y = 3 - 4 = -1 -> 10, next [-1 + 5, 0, 0, 0]
    # t2: store 0 y = -1 -> 3; store 1 y = 4 - 1 = 3 -> 1.5
    assert costs == [7.5, 10.0, 4.5]
    assert states[0][0] == [[0, 0, 0, 0], [3, 5, 0, 0]]
    assert states[1][0] == [[0, 0, 0, 0], [4, 0, 0, 0]]


def test_serial_upstream_on_hand_reduced_by_downstream_order_by_hand():
    # store (L 1, h 1, p 9) <- warehouse (L 3, h 0.5) <- echelon 1 (L 4, h 0.2) <- echelon 2 (L 2, h 0.1)
    problem = make_problem("serial", p=9.0, lead_time=1)
    assert problem.upstream_lead_times == (3, 4, 2) and problem.upstream_holding == (0.5, 0.2, 0.1)
    states, costs = rollout(
        problem,
        [[2.0, 0.0, 0.0, 0.0]],
        demand=[[3.0], [5.0]],
        store_orders=[[4.0], [6.0]],
        upstream=[[10.0, 0, 0, 0], [6.0, 0, 0, 0], [3.0, 0, 0, 0]],
        upstream_orders=[[5.0, 2.0, 7.0], [0.0, 0.0, 0.0]],
    )
    # t0: store y = 2 - 3 = -1 -> 9, next [-1 + 4, 0, 0, 0]
    #     warehouse z = 10 - 4 (store order) = 6 -> 0.5*6 = 3, next [6, 0, 5 (L 3), 0]
    #     echelon 1 z = 6 - 5 (warehouse order) = 1 -> 0.2, next [1, 0, 0, 2 (L 4)]
    #     echelon 2 z = 3 - 2 (echelon 1 order) = 1 -> 0.1, next [1, 7 (L 2), 0, 0]
    assert costs[0] == pytest.approx(12.3, abs=1e-12)
    assert states[0][0] == [[3, 0, 0, 0]]
    assert states[0][1] == [[6, 0, 5, 0], [1, 0, 0, 2], [1, 7, 0, 0]]
    # t1: store y = 3 - 5 = -2 -> 18, next [4, ...]; warehouse z = 6 - 6 = 0 -> 0, next [0, 5, 0, 0];
    #     echelon 1 z = 1 -> 0.2, next [1, 0, 2, 0]; echelon 2 z = 1 -> 0.1, next [1 + 7, 0, 0, 0]
    assert costs[1] == pytest.approx(18.3, abs=1e-12)
    assert states[1][1] == [[0, 5, 0, 0], [1, 0, 2, 0], [8, 0, 0, 0]]


def _warehouse_problem() -> InventoryProblem:
    demand = Demand("mvnormal", (5.0, 5.0), (1.0, 1.0), 0.5)
    return InventoryProblem(
        "wh",
        (1, 2),
        (1.0, 2.0),
        (5.0, 4.0),
        True,
        demand,
        upstream_lead_times=(2,),
        upstream_holding=(0.5,),
    ).validate()


def test_one_warehouse_ships_store_orders_and_is_charged_holding_by_hand():
    states, costs = rollout(
        _warehouse_problem(),
        [[1.0, 0, 0, 0], [3.0, 1.0, 0, 0]],
        demand=[[2.0, 1.0]],
        store_orders=[[3.0, 4.0]],
        upstream=[[8.0, 2.0, 0, 0]],
        upstream_orders=[[6.0]],
    )
    # store 0: y = 1 - 2 = -1 -> 5, lost -> 0, next [0 + 0 + 3 (L 1), 0, 0, 0]
    # store 1: y = 3 - 1 = 2 -> 2*2 = 4, next [2 + 1, 4 (L 2), 0, 0]
    # warehouse: z = 8 - (3 + 4) = 1 -> 0.5, next [1 + 2, 6 (L 2), 0, 0]
    assert costs == [9.5]
    assert states[0][0] == [[3, 0, 0, 0], [3, 4, 0, 0]]
    assert states[0][1] == [[3, 6, 0, 0]]


def test_feasibility_check_and_proportional_scaling():
    problem = _warehouse_problem()
    state = InventoryState(torch.zeros(2, 2, 4), torch.tensor([[[3.0, 0, 0, 0]], [[3.0, 0, 0, 0]]]))
    sim = InventorySimulator(problem)
    scaled = sim.feasible_orders(state, torch.tensor([[4.0, 2.0], [1.0, 1.0]]))
    # path 0 wants 6 > 3 on hand: scaled by 3/6; path 1 wants 2 <= 3: unchanged
    assert scaled.tolist() == [[2.0, 1.0], [1.0, 1.0]]
    checked = InventorySimulator(problem, check_feasibility=True)
    demand, up = torch.zeros(2, 2), torch.zeros(2, 1)
    checked.step(state, demand, scaled, up)  # feasible: no error
    with pytest.raises(ValueError, match="exceed the on-hand inventory"):
        checked.step(state, demand, torch.tensor([[4.0, 2.0], [1.0, 1.0]]), up)
    with pytest.raises(ValueError, match="upstream orders are needed"):
        sim.step(state, demand, scaled)


# ---------------------------------------------------------------------------------------------------------
# 2. Pathwise gradients against central finite differences (float64, horizon 10).
# ---------------------------------------------------------------------------------------------------------

HORIZON = 10
EPS = 1e-6


def _sum_costs(sim, scenario, policy) -> torch.Tensor:
    state = sim.initial_state(scenario)
    total = torch.zeros((), dtype=F64)
    for t in range(scenario.demand.shape[-1]):
        state, cost = sim.step(state, scenario.demand[:, :, t], policy(state))
        total = total + cost.mean()
    return total


def _float64_scenario(problem, n_paths, seed) -> Scenario:
    scenario = sample_scenario(problem, n_paths, HORIZON, seed)
    return Scenario(scenario.initial_stores.to(F64), scenario.demand.to(F64))


@pytest.mark.parametrize("level", [8.0, 14.0, 20.0])
def test_base_stock_gradient_matches_finite_differences(level):
    problem = make_problem("one_store_backlogged", p=9.0, lead_time=2)
    sim = InventorySimulator(problem, dtype=F64)
    scenario = _float64_scenario(problem, 64, seed=0)

    def cost_at(s: torch.Tensor) -> torch.Tensor:
        return _sum_costs(sim, scenario, lambda st: F.relu(s - st.stores.sum(-1)))

    s = torch.tensor(level, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(cost_at(s), s)
    with torch.no_grad():
        fd = (cost_at(s + EPS) - cost_at(s - EPS)) / (2 * EPS)
    assert abs(float(grad)) > 0.1  # a real signal, not a detached graph
    assert float(grad) == pytest.approx(float(fd), rel=1e-6, abs=1e-6)


def test_mlp_policy_gradient_matches_finite_differences():
    problem = make_problem("one_store_backlogged", p=4.0, lead_time=3)
    sim = InventorySimulator(problem, dtype=F64)
    scenario = _float64_scenario(problem, 32, seed=1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(problem.obs_dim, 6), torch.nn.ELU(), torch.nn.Linear(6, 1)
    ).to(F64)

    def cost() -> torch.Tensor:
        return _sum_costs(sim, scenario, lambda st: F.softplus(net(st.observation() / 5.0) + 1.0))

    params = list(net.parameters())
    grads = torch.cat([g.flatten() for g in torch.autograd.grad(cost(), params)])
    fds = []
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for i in range(flat.numel()):
                flat[i] += EPS
                up = cost()
                flat[i] -= 2 * EPS
                down = cost()
                flat[i] += EPS
                fds.append(float((up - down) / (2 * EPS)))
    fds = torch.tensor(fds, dtype=F64)
    assert grads.abs().max() > 0.1
    torch.testing.assert_close(grads, fds, rtol=1e-5, atol=1e-6)


def test_order_gradient_through_lost_sales_and_warehouse_matches_finite_differences():
    """Directional derivatives of the total cost w.r.t. every store and warehouse order (lost sales clamp,
    warehouse holding cost) against central differences."""
    problem = make_problem("one_warehouse", n_stores=3, seed=2)
    sim = InventorySimulator(problem, dtype=F64)
    scenario = _float64_scenario(problem, 16, seed=3)
    gen = torch.Generator().manual_seed(4)
    store_orders = (6 * torch.rand(16, HORIZON, 3, generator=gen, dtype=F64)).requires_grad_()
    up_orders = (15 * torch.rand(16, HORIZON, 1, generator=gen, dtype=F64)).requires_grad_()
    # the warehouse starts with stock so that its holding cost is active
    initial_up = torch.zeros(16, 1, problem.upstream_slots, dtype=F64)
    initial_up[:, 0, 0] = 12.0

    def cost(so, uo) -> torch.Tensor:
        state = InventoryState(scenario.initial_stores, initial_up)
        total = torch.zeros((), dtype=F64)
        for t in range(HORIZON):
            state, c = sim.step(state, scenario.demand[:, :, t], so[:, t], uo[:, t])
            total = total + c.mean()
        return total

    gs, gu = torch.autograd.grad(cost(store_orders, up_orders), [store_orders, up_orders])
    for _ in range(3):
        ds = torch.randn(store_orders.shape, generator=gen, dtype=F64)
        du = torch.randn(up_orders.shape, generator=gen, dtype=F64)
        with torch.no_grad():
            fd = (
                cost(store_orders + EPS * ds, up_orders + EPS * du)
                - cost(store_orders - EPS * ds, up_orders - EPS * du)
            ) / (2 * EPS)
        analytic = (gs * ds).sum() + (gu * du).sum()
        assert float(analytic) == pytest.approx(float(fd), rel=1e-6, abs=1e-7)
    assert gu.abs().max() > 0 and gs.abs().max() > 0


def test_simulator_default_dtype_is_float32():
    problem = make_problem("one_store_lost")
    sim = InventorySimulator(problem)
    state = sim.initial_state(sample_scenario(problem, 2, 3, seed=0))
    assert state.stores.dtype == torch.float32 and sim.underage.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------
# 3. Gymnasium envs against the batched simulator; seeding, env checker, errors.
# ---------------------------------------------------------------------------------------------------------

ENV_CASES = [
    ("one_store_lost", {"p": 4.0, "lead_time": 3}),
    ("one_store_backlogged", {"p": 9.0, "lead_time": 2}),
    ("serial", {"p": 9.0, "lead_time": 2}),
    ("one_warehouse", {"n_stores": 3, "instance_seed": 1}),
]


def feasible_action(
    problem: InventoryProblem, obs: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Random orders within the action bound that every upstream location can ship from its on-hand stock."""
    upstream = obs[problem.n_stores * problem.store_slots :].reshape(
        problem.n_upstream, problem.upstream_slots
    )
    if not problem.n_upstream:
        return rng.uniform(0.0, 12.0, problem.n_stores).astype(np.float32)
    # a margin from float32 rounding; the env clips every order to [0, order bound]
    on_hand = np.clip(upstream[:, 0] * 0.999, 0.0, problem.order_bound)
    shares = rng.dirichlet(np.ones(problem.n_stores + 1))[: problem.n_stores]  # sums to < 1
    stores = shares * on_hand[0]
    below_top = rng.uniform(0.0, 1.0, problem.n_upstream - 1) * on_hand[1:]
    top = rng.uniform(0.0, 15.0, 1)
    return np.concatenate([stores, below_top, top]).astype(np.float32)


@pytest.mark.parametrize(("setting", "kwargs"), ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_gym_env_matches_batched_simulator(setting, kwargs):
    horizon, n_paths = 30, 3
    env = gym.make(GYM_IDS[setting], horizon=horizon, **kwargs)
    problem = env.unwrapped.problem
    assert problem == make_problem(
        setting,
        kwargs.get("p", 9.0),
        kwargs.get("lead_time", 2),
        kwargs.get("n_stores", 3),
        kwargs.get("instance_seed", 0),
    )
    scenario = sample_scenario(problem, n_paths, horizon, seed=5)
    rng = np.random.default_rng(6)
    observations, rewards, actions = [], [], []
    for b in range(n_paths):
        obs, _ = env.reset(
            options={
                "demand": scenario.demand[b].numpy(),
                "initial_stores": scenario.initial_stores[b].numpy(),
            }
        )
        path_obs, path_rewards, path_actions = [obs], [], []
        for t in range(horizon):
            action = feasible_action(problem, obs, rng)
            obs, reward, terminated, truncated, info = env.step(action)
            assert not terminated and truncated == (t == horizon - 1)
            assert reward == -info["cost"]
            np.testing.assert_array_equal(info["store_orders"], action[: problem.n_stores])
            path_obs.append(obs)
            path_rewards.append(reward)
            path_actions.append(action)
        observations.append(path_obs)
        rewards.append(path_rewards)
        actions.append(path_actions)
    env.close()
    observations, rewards = np.array(observations), np.array(rewards)
    actions = torch.as_tensor(np.array(actions))  # (B, T, A)
    assert problem.n_upstream == 0 or (actions[..., : problem.n_stores] > 0).any()

    sim = InventorySimulator(problem)
    state = sim.initial_state(scenario)
    np.testing.assert_array_equal(state.observation().numpy(), observations[:, 0])
    for t in range(horizon):
        state, cost = sim.step(
            state,
            scenario.demand[:, :, t],
            actions[:, t, : problem.n_stores],
            actions[:, t, problem.n_stores :] if problem.n_upstream else None,
        )
        np.testing.assert_allclose(state.observation().numpy(), observations[:, t + 1], atol=1e-5)
        np.testing.assert_allclose(-cost.numpy(), rewards[:, t], rtol=1e-6, atol=1e-5)


def test_env_caps_infeasible_orders():
    env = gym.make("ocrl/SerialSystem-v0", horizon=5)
    obs, _ = env.reset(seed=0)
    pb = env.unwrapped.problem
    assert not obs[pb.n_stores * pb.store_slots :].any()  # upstream starts empty
    obs, _, _, _, info = env.step(np.full(4, 5.0, dtype=np.float32))
    # the warehouse and echelon 1 have nothing on hand: only the top echelon's supplier order goes through
    assert info["store_orders"].tolist() == [0.0]
    assert info["upstream_orders"].tolist() == [0.0, 0.0, 5.0]
    assert (obs[pb.n_stores * pb.store_slots :] >= 0).all()

    env = gym.make("ocrl/OneWarehouseLost-v0", n_stores=2, horizon=5)
    env.reset(seed=0)
    sim_state = env.unwrapped._state
    sim_state.upstream[:, 0, 0] = 6.0  # put 6 units on hand at the warehouse
    _, _, _, _, info = env.step(np.array([6.0, 3.0, 1.0], dtype=np.float32))
    np.testing.assert_allclose(info["store_orders"], [4.0, 2.0])  # 9 wanted, 6 shipped pro rata


@pytest.mark.parametrize("setting", list(GYM_IDS))
def test_env_reset_seed_is_reproducible(setting):
    env = gym.make(GYM_IDS[setting], horizon=8)
    actions = np.random.default_rng(0).uniform(0, 3, (8, *env.action_space.shape))

    def episode(seed):
        obs, _ = env.reset(seed=seed)
        trace = [obs]
        for action in actions:
            obs, reward, *_ = env.step(action.astype(np.float32))
            trace += [obs, np.array([reward])]
        return np.concatenate(trace)

    first, again, other = episode(3), episode(3), episode(4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("setting", list(GYM_IDS))
def test_env_passes_gymnasium_env_checker(setting):
    env = gym.make(GYM_IDS[setting], horizon=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advice on unbounded / unnormalised Boxes, not failures
        check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space.shape == (env.unwrapped.problem.obs_dim,)


def test_env_initial_stores_without_demand_and_step_limits():
    env = gym.make("ocrl/OneStoreLost-v0", horizon=2)
    initial = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    obs, _ = env.reset(seed=0, options={"initial_stores": initial})
    np.testing.assert_array_equal(obs, initial[0])
    with pytest.raises(ValueError, match="action has shape"):
        env.step(np.zeros(2, dtype=np.float32))
    env.step(np.zeros(1, dtype=np.float32))
    *_, truncated, _ = env.step(np.zeros(1, dtype=np.float32))
    assert truncated
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(1, dtype=np.float32))
    with pytest.raises(RuntimeError, match="call reset"):
        gym.make("ocrl/OneStoreLost-v0").unwrapped.step(np.zeros(1, dtype=np.float32))


def test_bad_parameters_give_clear_errors():
    with pytest.raises(ValueError, match="unknown inventory setting 'two_stores'"):
        make_problem("two_stores")
    for p in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="underage cost p must be a positive"):
            gym.make("ocrl/OneStoreLost-v0", p=p)
    for lead_time in (0, 1.5):
        with pytest.raises(ValueError, match="lead time must be an integer >= 1"):
            gym.make("ocrl/OneStoreBacklogged-v0", lead_time=lead_time)
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        gym.make("ocrl/SerialSystem-v0", horizon=0)
    with pytest.raises(ValueError, match="n_stores >= 1"):
        make_problem("one_warehouse", n_stores=0)

    env = gym.make("ocrl/OneWarehouseLost-v0", n_stores=2, horizon=5)
    with pytest.raises(ValueError, match=r"options\['demand'\] has shape \(2, 6\)"):
        env.reset(options={"demand": np.ones((2, 6))})
    with pytest.raises(ValueError, match=r"options\['demand'\] has shape \(5,\)"):
        env.reset(options={"demand": np.ones(5)})
    with pytest.raises(ValueError, match=r"options\['initial_stores'\] has shape \(2, 2\)"):
        env.reset(options={"demand": np.ones((2, 5)), "initial_stores": np.ones((2, 2))})

    warehouse = make_problem("one_warehouse", n_stores=3)
    for corr in (-0.6, 1.0, 1.5):  # a 3-store correlation must lie in [-1/2, 1)
        with pytest.raises(ValueError, match="correlation"):
            with_problem(warehouse, demand=replace(warehouse.demand, correlation=corr))
    with_problem(warehouse, demand=replace(warehouse.demand, correlation=-0.4))  # valid
    with pytest.raises(ValueError, match="demand kind 'gamma'"):
        with_problem(warehouse, demand=replace(warehouse.demand, kind="gamma"))
    with pytest.raises(ValueError, match="demand mean"):
        with_problem(warehouse, demand=replace(warehouse.demand, mean=(5.0, 5.0)))
    with pytest.raises(ValueError, match="lead times must be integers >= 1"):
        with_problem(warehouse, upstream_lead_times=(0,))
    with pytest.raises(ValueError, match="store_underage"):
        with_problem(warehouse, store_underage=(1.0, -1.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# 4. An ordinary RL algorithm (SAC) runs on an inventory env.
# ---------------------------------------------------------------------------------------------------------


def test_sac_runs_on_one_store_lost(tmp_path):
    metrics = sac.main(sac.Args(
        env_id="ocrl/OneStoreLost-v0", total_steps=300, learning_starts=100, batch_size=32,
        hidden=(32, 32), eval_every=300, eval_episodes=2, log_every=100, device="cpu",
        run_dir=str(tmp_path / "run"), progress=False,
    ))  # fmt: skip
    assert metrics["steps"] == 300
    assert metrics["normalized_score"] is None  # no D4RL reference scores for this env
    assert math.isfinite(metrics["return"]) and metrics["return"] < 0  # reward = -cost
    assert (tmp_path / "run" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------------------
# 5. The optimal base-stock policy's simulated cost against the closed form.
# ---------------------------------------------------------------------------------------------------------


def test_backlog_optimum_matches_reference_table_b():
    # (p, L): (S*, cost) from table (B) of the reference, two decimals
    for (p, lead_time), (level, cost) in {
        (4.0, 1): (11.90, 3.17),
        (9.0, 4): (29.59, 6.28),
        (19.0, 10): (63.73, 10.95),
        (39.0, 20): (119.37, 17.14),
    }.items():
        s_star, c_star = backlog_optimum(p, lead_time)
        assert s_star == pytest.approx(level, abs=0.006) and c_star == pytest.approx(
            cost, abs=0.006
        )
    assert optimum(make_problem("one_store_backlogged", 9.0, 4)) == backlog_optimum(9.0, 4)[1]
    assert optimum(make_problem("one_store_lost", 9.0, 2)) == LOST_SALES_OPTIMA[(9.0, 2)] == 6.09
    assert optimum(make_problem("serial", 9.0, 4)) == 10.72  # table (C)
    assert optimum(make_problem("one_warehouse")) is None
    assert optimum(make_problem("one_warehouse")) is None


def _expected_base_stock_cost(level, p, lead_time, h=1.0, mean=5.0, std=1.6):
    """E[h (S - X)^+ + p (X - S)^+] with X ~ Normal(mean (L + 1), std^2 (L + 1)): the demand over L + 1 periods."""
    m, s = mean * (lead_time + 1), std * math.sqrt(lead_time + 1)
    z = (level - m) / s
    loss = norm.pdf(z) - z * norm.sf(z)  # E[(X - S)^+] / s
    return h * (level - m) + (p + h) * s * loss


@pytest.mark.parametrize(("p", "lead_time"), [(4.0, 1), (19.0, 4)])
def test_optimal_base_stock_cost_matches_closed_form(p, lead_time):
    n_paths, periods, warmup = 8192, 220, 20
    problem = make_problem("one_store_backlogged", p=p, lead_time=lead_time)
    sim = InventorySimulator(problem, dtype=F64)
    scenario = sample_scenario(problem, n_paths, periods, seed=7)
    scenario = Scenario(scenario.initial_stores.to(F64), scenario.demand.to(F64))
    s_star, c_star = backlog_optimum(p, lead_time)
    # Bias of the clipped demand: y moves by minus the sum of (-D)^+ over the L + 1 periods an order covers,
    # and the cost is max(p, h)-Lipschitz in y, so |E cost(clipped) - E cost(Normal)| is at most
    # max(p, h) (L + 1) E[(-D)^+], with E[(-D)^+] = sigma (phi(a) - a Phi(-a)), a = mean / sigma (~4e-4 here).
    # (A loose but rigorous margin: near S* the first-order effect of the shift nearly cancels.)
    a = 5.0 / 1.6
    clip_bias = max(p, 1.0) * (lead_time + 1) * 1.6 * (norm.pdf(a) - a * norm.sf(a))
    assert clip_bias < 0.01 * c_star  # at most 0.037 here, against costs of 3.2 and 7.4
    costs = {}
    for level in (s_star - 1.5, s_star, s_star + 1.5):
        state = sim.initial_state(scenario)
        per_path = torch.zeros(n_paths, dtype=F64)
        for t in range(periods):
            position = state.stores.sum(-1)  # on-hand plus every pipeline slot
            order = F.relu(level - position)
            if t >= warmup:  # steady state: every path orders up to the level
                torch.testing.assert_close(position + order, torch.full_like(order, level))
            state, cost = sim.step(state, scenario.demand[:, :, t], order)
            if t >= warmup:
                per_path += cost
        per_path /= periods - warmup
        mean = float(per_path.mean())
        # the per-path averages are independent across paths (not the periods within one path)
        stderr = float(per_path.std()) / math.sqrt(n_paths)
        expected = _expected_base_stock_cost(level, p, lead_time)
        assert abs(mean - expected) < 4 * stderr + clip_bias, (level, mean, expected, stderr)
        costs[level] = mean
    assert _expected_base_stock_cost(s_star, p, lead_time) == pytest.approx(c_star, rel=1e-9)
    # the optimum is a minimum of the simulated cost too (same demand for all three levels)
    assert costs[s_star] < min(costs[s_star - 1.5], costs[s_star + 1.5]) - 0.1


# ---------------------------------------------------------------------------------------------------------
# 6. Seeded scenarios and demand distributions.
# ---------------------------------------------------------------------------------------------------------


def test_scenarios_are_seeded():
    problem = make_problem("one_store_backlogged", p=9.0, lead_time=5)
    a, b = sample_scenario(problem, 8, 20, seed=1), sample_scenario(problem, 8, 20, seed=1)
    c = sample_scenario(problem, 8, 20, seed=2)
    assert torch.equal(a.demand, b.demand) and torch.equal(a.initial_stores, b.initial_stores)
    assert not torch.equal(a.demand, c.demand) and not torch.equal(
        a.initial_stores, c.initial_stores
    )
    assert a.demand.shape == (8, 1, 20) and a.initial_stores.shape == (
        8,
        1,
        5,
    )  # K = max(4, L = 5)
    assert a.demand.dtype == torch.float32
    # the reference's one-store seed shift (L + 10 p) is applied on top of the seed
    unshifted = with_problem(problem, seed_offset=0)
    assert problem.seed_offset == 5 + 90
    assert torch.equal(sample_scenario(unshifted, 8, 20, seed=1 + 95).demand, a.demand)
    # initial inventories: on-hand in [-mean, mean] (backlog), every pipeline slot in [0, mean demand]
    assert ((a.initial_stores[..., 0] >= -5.0) & (a.initial_stores[..., 0] <= 5.0)).all()
    assert ((a.initial_stores[..., 1:] >= 0) & (a.initial_stores[..., 1:] <= 5.0)).all()
    assert len(a) == 8 and torch.equal(a.subset(slice(2, 4)).demand, a.demand[2:4])


def test_backlogged_paths_start_at_negative_on_hand_too():
    # One store under backlog: on-hand starts at mean x U[-1, 1], pipeline slots at mean x U[0, 1] (the
    # reference's range). Without negative starting stock a trained vanilla policy never meets a negative
    # on-hand, orders nothing there and leaves long test paths that dip below 0 trapped in a growing
    # backlog (docs/hdpo_gap_table.md). Written out from the same uniform draws: u = rand(N, 1, K).
    backlog = make_problem("one_store_backlogged", p=4.0, lead_time=1)
    n, seed = 4000, 3
    u = torch.rand(n, 1, 4, generator=torch.Generator().manual_seed(seed + backlog.seed_offset))
    initial = sample_scenario(backlog, n, 5, seed).initial_stores
    assert torch.allclose(initial[..., 0], 5.0 * (2.0 * u[..., 0] - 1.0))
    assert torch.allclose(initial[..., 1:], 5.0 * u[..., 1:])
    # about half the paths start in backlog
    assert 0.45 < float((initial[..., 0] < 0).float().mean()) < 0.55
    # Lost sales keeps the reference's U[0, 1] x mean in every slot (on-hand cannot be negative there).
    lost = make_problem("one_store_lost", p=4.0, lead_time=1)
    u = torch.rand(n, 1, 4, generator=torch.Generator().manual_seed(seed + lost.seed_offset))
    assert torch.equal(sample_scenario(lost, n, 5, seed).initial_stores, 5.0 * u)
    with pytest.raises(ValueError, match="initial_on_hand"):
        with_problem(lost, initial_on_hand=(-1.0, 1.0))


def test_scenario_chunks_add_up_and_are_seeded():
    problem = make_problem("one_warehouse", n_stores=2)
    chunks = list(scenario_chunks(problem, 10, 7, seed=3, chunk=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert all(c.demand.shape[1:] == (2, 7) for c in chunks)
    assert not torch.equal(chunks[0].demand, chunks[1].demand)
    again = list(scenario_chunks(problem, 10, 7, seed=3, chunk=4))
    assert all(torch.equal(x.demand, y.demand) for x, y in zip(chunks, again, strict=True))
    other = list(scenario_chunks(problem, 10, 7, seed=4, chunk=4))
    assert not torch.equal(chunks[0].demand, other[0].demand)
    assert [len(c) for c in scenario_chunks(problem, 3, 7, seed=3, chunk=4)] == [3]


def test_poisson_demand_is_integer_with_mean_five():
    demand = sample_scenario(make_problem("one_store_lost"), 4000, 50, seed=0).demand
    assert torch.equal(demand, demand.round()) and (demand >= 0).all()
    # 200,000 draws: the standard error of the mean is sqrt(5 / 2e5) ~ 0.005, of the variance ~ 0.02
    assert float(demand.mean()) == pytest.approx(5.0, abs=0.03)
    assert float(demand.var()) == pytest.approx(5.0, abs=0.1)


def test_normal_demand_is_clipped_and_has_the_configured_moments():
    demand = sample_scenario(make_problem("one_store_backlogged"), 4000, 50, seed=0).demand
    assert (demand >= 0).all() and not torch.equal(demand, demand.round())
    assert float(demand.mean()) == pytest.approx(5.0, abs=0.02)
    assert float(demand.std()) == pytest.approx(1.6, abs=0.02)


def test_mvnormal_correlation_matches_configuration():
    gen = torch.Generator().manual_seed(0)
    demand = Demand("mvnormal", (5.0, 3.0, 4.0), (1.0, 0.6, 2.0), 0.5, clip=False)
    x = demand.sample(2000, 50, gen).transpose(0, 1).reshape(3, -1).double()  # (stores, draws)
    corr = torch.corrcoef(x)
    off_diagonal = corr[~torch.eye(3, dtype=torch.bool)]
    # 100,000 draws: the standard error of a correlation of 0.5 is (1 - 0.25) / sqrt(1e5) ~ 0.0024
    torch.testing.assert_close(off_diagonal, torch.full_like(off_diagonal, 0.5), atol=0.015, rtol=0)
    torch.testing.assert_close(
        x.mean(1), torch.tensor([5.0, 3.0, 4.0], dtype=F64), atol=0.02, rtol=0
    )
    torch.testing.assert_close(
        x.std(1), torch.tensor([1.0, 0.6, 2.0], dtype=F64), atol=0.02, rtol=0
    )
    assert (x < 0).any()  # not clipped

    independent = replace(demand, correlation=0.0).sample(2000, 50, gen)
    corr = torch.corrcoef(independent.transpose(0, 1).reshape(3, -1).double())
    assert corr[~torch.eye(3, dtype=torch.bool)].abs().max() < 0.015

    # the benchmark's warehouse demand (correlation 0.5, clipped at 0 so slightly less correlated)
    problem = make_problem("one_warehouse", n_stores=3)
    sampled = sample_scenario(problem, 2000, 50, seed=0).demand
    assert (sampled >= 0).all()
    corr = torch.corrcoef(sampled.transpose(0, 1).reshape(3, -1).double())
    assert ((corr[~torch.eye(3, dtype=torch.bool)] - 0.5).abs() < 0.05).all()
