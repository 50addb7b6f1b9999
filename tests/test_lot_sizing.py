"""envs/lot_sizing.py: the environment checks of docs' PDPPO spec (pdppo.md) on a hand-made instance.

Every expected number below is worked out by hand in the comments from the spec's transition:
post-decision x^x = x + sum_m [a_m = i] (P_mi - loss on a setup change), setup cost on a change, idling drops
the setup; then y = x^x - d, lost sales b max(-y, 0), x' = min(max(y, 0), cap), holding h x'.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from ocrl.envs.evaluation import EnvError
from ocrl.envs.ids import LOT_SIZING_PUBLISHED
from ocrl.envs.lot_sizing import (
    INSTANCE_DIR_ENV,
    PUBLISHED,
    LotSizingEnv,
    LotSizingSimulator,
    LotSizingState,
    LotSizingVectorEnv,
    generate_instance,
    instance_from_dict,
    load_instance,
    save_instance,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lot_sizing"

# 3 items, 2 machines. Machine 0 cannot make item 2, machine 1 cannot make item 3 (P = 0).
HAND = {
    "time_horizon": 4,
    "n_items": 3,
    "n_machines": 2,
    "initial_setup": [1, 0],
    "machine_production": [[10, 0, 5], [7, 12, 0]],
    "max_inventory_level": [100, 30, 100],
    "initial_inventory": [5, 0, 20],
    "holding_costs": [0.01, 0.02, 0.5],
    "lost_sales_costs": [0.1, 1.1, 2.0],
    "demand_distribution": {"name": "binomial", "n": 20, "p": 0.4},
    "setup_costs": [[20, 25, 15], [18, 30, 22]],
    "setup_loss": [[1, 3, 2], [2, 1, 1]],
}


def hand(**changes):
    return instance_from_dict({**HAND, **changes}, "hand")


def run(env: LotSizingEnv, start, setup, actions, demand):
    """Reset at (start, setup) with a fixed demand trace and play ``actions``; the step results."""
    demand = np.array(demand + [[0, 0, 0]] * (env.instance.horizon - len(demand)))
    env.reset(seed=0, options={"inventory": start, "setup": setup, "demand": demand})
    return [env.step(np.array(a)) for a in actions]


def check_rewards(out, setup_cost, lost, holding):
    """Each stream against the hand numbers, and r = r^x + r^pre exactly."""
    _, r, _, _, info = out
    assert info["setup_cost"] == setup_cost
    assert info["lost_sales_cost"] == pytest.approx(lost, abs=1e-12)
    assert info["holding_cost"] == pytest.approx(holding, abs=1e-12)
    assert info["post_reward"] == -setup_cost
    assert info["pre_reward"] == pytest.approx(-(lost + holding), abs=1e-12)
    assert r == info["post_reward"] + info["pre_reward"]  # exactly
    assert r == pytest.approx(-(setup_cost + lost + holding), abs=1e-12)


def test_setup_change_repeat_and_idling():
    env = LotSizingEnv(hand())
    out = run(env, [5, 0, 20], [1, 0], [[1, 2], [0, 2], [1, 0]], [[4, 5, 6]])
    # t0: m0 repeats item 1 (setup 1): no cost, +10; m1 switches 0 -> 2: cost 30, loss 1, +12 - 1.
    # x^x = [15, 11, 20]; demand [4, 5, 6] -> [11, 6, 14]; holding .11 + .12 + 7.
    np.testing.assert_array_equal(out[0][4]["post_obs"], [15, 11, 20])
    np.testing.assert_array_equal(out[0][0], [11, 6, 14])
    np.testing.assert_array_equal(out[0][4]["setup"], [1, 2])
    check_rewards(out[0], 30.0, 0.0, 0.11 + 0.12 + 7.0)
    # t1: m0 idles (setup -> 0), m1 repeats item 2: no cost, +12. x^x = [11, 18, 14], no demand.
    np.testing.assert_array_equal(out[1][4]["post_obs"], [11, 18, 14])
    np.testing.assert_array_equal(out[1][4]["setup"], [0, 2])
    check_rewards(out[1], 0.0, 0.0, 0.11 + 0.36 + 7.0)
    # t2: m0 makes item 1 again after idling: pays setup 20 and loss 1 (+9); m1 idles.
    np.testing.assert_array_equal(out[2][4]["post_obs"], [20, 18, 14])
    np.testing.assert_array_equal(out[2][4]["setup"], [1, 0])
    check_rewards(out[2], 20.0, 0.0, 0.20 + 0.36 + 7.0)


def test_several_machines_make_one_item():
    env = LotSizingEnv(hand())
    out = run(env, [5, 0, 20], [1, 0], [[1, 1]], [[0, 0, 0]])
    # m0 repeats item 1 (+10), m1 switches 0 -> 1 (cost 18, loss 2: +7 - 2): x^x_1 = 5 + 10 + 5.
    np.testing.assert_array_equal(out[0][4]["post_obs"], [20, 0, 20])
    check_rewards(out[0], 18.0, 0.0, 0.20 + 0.0 + 10.0)


def test_negative_production_is_a_lost_sale():
    env = LotSizingEnv(hand())
    out = run(env, [0, 0, 0], [0, 0], [[2, 0], [2, 0], [2, 0]], [[0, 0, 0], [0, 0, 0], [0, 4, 0]])
    # t0: m0 cannot make item 2 (P = 0) but switches to it: cost 25, loss 3 -> x^x_2 = -3; no demand,
    # yet 3 units are lost sales (1.1 each); inventory back to 0.
    np.testing.assert_array_equal(out[0][4]["post_obs"], [0, -3, 0])
    np.testing.assert_array_equal(out[0][0], [0, 0, 0])
    check_rewards(out[0], 25.0, 3 * 1.1, 0.0)
    # t1: the setup is kept: no cost, no loss, production 0.
    np.testing.assert_array_equal(out[1][4]["post_obs"], [0, 0, 0])
    check_rewards(out[1], 0.0, 0.0, 0.0)
    # t2: same, with demand 4 for item 2: 4 lost.
    check_rewards(out[2], 0.0, 4 * 1.1, 0.0)
    env.reset(seed=0, options={"inventory": [0, 0, 0], "setup": [0, 0], "demand": np.zeros((4, 3))})
    out = env.step(np.array([2, 0]))[4]
    assert out["post_obs"][1] == -3  # the post-decision inventory itself goes negative


def test_lost_sales_and_the_cap():
    env = LotSizingEnv(hand())
    out = run(env, [95, 25, 98], [1, 2], [[1, 2]], [[5, 3, 100]])
    # Both machines repeat their setups: x^x = [105, 37, 98] (not capped before demand).
    # y = [100, 34, -2] -> x' = [100, 30 (cap of item 2: 4 discarded, unpenalised), 0]; 2 lost at 2.0.
    # Holding on the end-of-period inventory: 100 * .01 + 30 * .02 + 0.
    np.testing.assert_array_equal(out[0][4]["post_obs"], [105, 37, 98])
    np.testing.assert_array_equal(out[0][0], [100, 30, 0])
    check_rewards(out[0], 0.0, 2 * 2.0, 1.0 + 0.6)
    out = run(env, [95, 25, 98], [1, 2], [[1, 2]], [[0, 0, 0]])
    # No demand: 105 -> 100 and 37 -> 30, excess discarded, no cost for it.
    np.testing.assert_array_equal(out[0][0], [100, 30, 98])
    check_rewards(out[0], 0.0, 0.0, 1.0 + 0.6 + 49.0)


def test_setup_observation_and_post_decision_method():
    env = LotSizingEnv(hand(), obs="inventory+setup")
    obs, info = env.reset(
        seed=0, options={"inventory": [5, 0, 20], "setup": [1, 0], "demand": np.zeros((4, 3))}
    )
    np.testing.assert_array_equal(obs, [5, 0, 20, 1, 0])
    post_obs, post_reward = env.post_decision([1, 2])
    np.testing.assert_array_equal(post_obs, [15, 11, 20, 1, 2])
    assert post_reward == -30.0
    obs, _, _, _, info = env.step([1, 2])
    np.testing.assert_array_equal(info["post_obs"], post_obs)
    np.testing.assert_array_equal(obs, [15, 11, 20, 1, 2])
    assert env.observation_space.shape == (5,) and obs.dtype == np.float32


def test_episode_ends_after_horizon_and_bad_actions():
    env = LotSizingEnv(hand())
    env.reset(seed=3)
    with pytest.raises(ValueError, match="items 0..3"):
        env.step([4, 0])
    with pytest.raises(ValueError, match="items 0..3"):
        env.step([-1, 0])
    with pytest.raises(ValueError, match="2 integers|1 x 2"):
        env.step([1, 0, 0])
    flags = [env.step([0, 0])[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(True, False)]
    with pytest.raises(RuntimeError, match="ended after 4 periods"):
        env.step([0, 0])


def test_random_and_instance_starts():
    inst = hand(machine_production=[[10, 0, 5], [0, 0, 0]])  # machine 1 can make nothing
    sim = LotSizingSimulator(inst)
    state = sim.initial_state(20_000, np.random.default_rng(0))
    assert state.inventory.min() == 0 and (state.inventory.max(0) == [99, 29, 99]).all()
    assert set(np.unique(state.setup[:, 0])) == {1, 3}  # the items machine 0 can make
    assert abs((state.setup[:, 0] == 1).mean() - 0.5) < 0.02
    assert (state.setup[:, 1] == 0).all()
    env = LotSizingEnv(hand(), initial_state="instance")
    obs, info = env.reset(seed=1)
    np.testing.assert_array_equal(obs, [5, 0, 20])
    np.testing.assert_array_equal(info["setup"], [1, 0])


def reference_step(inst, x, sigma, a, d):
    """The spec's pseudocode, one episode, plain Python: (x^x, x', sigma', setup, lost, holding)."""
    x, sigma, setup = list(x), list(sigma), 0.0
    for m, i in enumerate(a):
        if i != 0:
            loss = 0
            if sigma[m] != i:
                setup += inst.setup_costs[m][i - 1]
                loss = inst.setup_loss[m][i - 1]
            sigma[m] = i
            x[i - 1] += inst.production[m][i - 1] - loss
        else:
            sigma[m] = 0
    post, lost, holding = list(x), 0.0, 0.0
    for i in range(inst.n_items):
        x[i] -= d[i]
        if x[i] < 0:
            lost += -x[i] * inst.lost_sales_costs[i]
            x[i] = 0
        elif x[i] > inst.max_inventory[i]:
            x[i] = inst.max_inventory[i]
        holding += inst.holding_costs[i] * x[i]
    return post, x, sigma, setup, lost, holding


def test_batched_simulator_matches_the_plain_reference():
    inst = generate_instance(6, 4, horizon=30, seed=5)
    sim = LotSizingSimulator(inst)
    rng = np.random.default_rng(1)
    state = sim.initial_state(48, rng)
    state = LotSizingState(state.inventory, rng.integers(0, 7, size=(48, 4)))  # any setups, 0 too
    for _ in range(30):
        a = rng.integers(0, 7, size=(48, 4))  # unmasked: infeasible items and idling included
        d = sim.sample_demand(48, rng)
        tr = sim.step(state, a, d)
        for b in range(48):
            post, x, sigma, setup, lost, holding = reference_step(
                inst, state.inventory[b], state.setup[b], a[b], d[b]
            )
            assert tr.post_inventory[b].tolist() == post
            assert tr.state.inventory[b].tolist() == x and tr.state.setup[b].tolist() == sigma
            assert tr.setup_cost[b] == setup
            assert tr.lost_sales_cost[b] == pytest.approx(lost, abs=1e-9)
            assert tr.holding_cost[b] == pytest.approx(holding, abs=1e-9)
        assert (tr.reward == tr.post_reward + tr.pre_reward).all()
        state = tr.state


def test_vector_env_equals_single_env_step_by_step():
    inst = generate_instance(5, 3, horizon=7, seed=2)
    env = LotSizingEnv(inst, obs="inventory+setup")
    venv = LotSizingVectorEnv(1, instance=inst, obs="inventory+setup")
    obs, _ = env.reset(seed=11)
    vobs, _ = venv.reset(seed=11)
    actions = np.random.default_rng(0).integers(0, 6, size=(21, 3))
    for t, a in enumerate(actions):  # three episodes: the autoreset start equals reset()
        np.testing.assert_array_equal(vobs[0], obs)
        obs, r, term, trunc, info = env.step(a)
        vobs, vr, vterm, vtrunc, vinfo = venv.step(a[None])
        assert vr[0] == r and vterm[0] == term and vtrunc[0] == trunc
        for key in ("post_obs", "post_reward", "pre_reward", "demand", "setup"):
            np.testing.assert_array_equal(vinfo[key][0], info[key])
        if term:
            assert (t + 1) % 7 == 0
            np.testing.assert_array_equal(vinfo["final_obs"][0], obs)
            np.testing.assert_array_equal(vinfo["final_info"]["post_obs"][0], info["post_obs"])
            obs, _ = env.reset()


def test_batch_episodes_are_independent():
    inst = generate_instance(8, 5, horizon=10, seed=3)
    rng = np.random.default_rng(4)
    n = 16
    start = rng.integers(0, 100, size=(n, 8))
    setup = rng.integers(0, 9, size=(n, 5))
    demand = rng.integers(0, 21, size=(n, 10, 8))
    actions = rng.integers(0, 9, size=(10, n, 5))
    venv = LotSizingVectorEnv(n, instance=inst)
    venv.reset(seed=0, options={"inventory": start, "setup": setup, "demand": demand})
    batch = [venv.step(a) for a in actions]
    env = LotSizingEnv(inst)
    for b in range(n):
        env.reset(options={"inventory": start[b], "setup": setup[b], "demand": demand[b]})
        for t in range(10):
            obs, r, *_ = env.step(actions[t, b])
            ref = batch[t][4]["final_obs"] if t == 9 else batch[t][0]
            np.testing.assert_array_equal(ref[b], obs)
            assert batch[t][1][b] == r


def test_demand_mean_8_variance_4_8():
    sim = LotSizingSimulator(hand())
    d = sim.sample_demand(100_000, np.random.default_rng(0)).ravel()  # N = 300,000 draws
    n = d.size
    # Binomial(20, 0.4): mean 8, variance 4.8, fourth central moment 3 s^4 + s^2 (1 - 6pq) = 67.008.
    assert abs(d.mean() - 8.0) < 5 * math.sqrt(4.8 / n)  # 5 standard errors: 0.020
    assert abs(d.var(ddof=1) - 4.8) < 5 * math.sqrt((67.008 - 4.8**2) / n)  # 0.061
    assert d.min() >= 0 and d.max() <= 20
    pmf = np.array([math.comb(20, k) * 0.4**k * 0.6 ** (20 - k) for k in range(21)])
    freq = np.bincount(d, minlength=21) / n
    assert (np.abs(freq - pmf) < 5 * np.sqrt(pmf * (1 - pmf) / n) + 1e-9).all()
    # ... and the env's own draws (6000: 20 episodes of 100 periods, 3 items)
    env = LotSizingEnv(hand(time_horizon=100))
    env.reset(seed=5)
    draws = []
    for _ in range(20):
        env.reset()
        draws += [env.step([0, 0])[4]["demand"] for _ in range(100)]
    draws = np.concatenate(draws)
    assert abs(draws.mean() - 8.0) < 5 * math.sqrt(4.8 / draws.size)


@pytest.mark.parametrize("obs", ["inventory", "inventory+setup"])
def test_gymnasium_env_checker(obs):
    env = gym.make("ocrl/LotSizing-v0", instance=hand(), obs=obs)
    check_env(env.unwrapped, skip_render_check=True)
    venv = gym.make_vec(
        "ocrl/LotSizing-v0", num_envs=3, vectorization_mode="vector_entry_point", obs=obs
    )
    o, _ = venv.reset(seed=0)
    assert venv.observation_space.contains(o) and o.shape == (
        3,
        venv.single_observation_space.shape[0],
    )
    o, r, term, trunc, info = venv.step(venv.action_space.sample())
    assert r.shape == (3,) and info["post_obs"].shape == o.shape


def test_generated_instances_follow_the_generator_distribution(tmp_path):
    inst = generate_instance(200, 50, seed=0)
    assert inst == generate_instance(200, 50, seed=0) and inst != generate_instance(200, 50, seed=1)
    p = np.array(inst.production)
    cost, loss = np.array(inst.setup_costs), np.array(inst.setup_loss)
    tol = 5 * math.sqrt(0.25 / p.size)  # 5 standard errors of a frequency over 10,000 entries
    assert abs((p == 0).mean() - 0.4) < tol and p.max() <= 40
    assert abs((p[p > 0] <= 20).mean() - 0.5) < 2 * tol  # uniform on 1..40
    assert abs((cost == 15).mean() - 0.2) < tol and cost.min() >= 15 and cost.max() <= 30
    assert abs((loss == 1).mean() - 0.7) < tol and set(np.unique(loss)) == {1, 2, 3}
    b = np.array(inst.lost_sales_costs)
    assert set(b) == {0.1, 1.1} and abs((b == 0.1).mean() - 0.5) < 0.2
    assert set(inst.holding_costs) == {0.01} and set(inst.max_inventory) == {100}
    assert 0 <= min(inst.initial_inventory) and max(inst.initial_inventory) <= 50
    assert (inst.demand_n, inst.demand_p, inst.horizon) == (20, 0.4, 100)
    path = save_instance(inst, tmp_path / "gen.json")
    assert load_instance(path).to_dict() == inst.to_dict()


def test_bad_json_gives_one_line_errors(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(HAND, indent=4))
    assert load_instance(good).n_items == 3
    cases = {
        "truncated": (json.dumps(HAND, indent=4)[:200], "not valid JSON"),
        "missing": (
            json.dumps({k: v for k, v in HAND.items() if k != "setup_loss"}),
            "'setup_loss'",
        ),
        "short_row": (
            json.dumps({**HAND, "setup_costs": [[20, 25, 15], [18, 30]]}),
            "'setup_costs'.*row 1",
        ),
        "bad_law": (
            json.dumps({**HAND, "demand_distribution": {"name": "normal", "mu": 8, "sigma": 2}}),
            "'demand_distribution'",
        ),
        "negative": (json.dumps({**HAND, "holding_costs": [0.01, -1, 0.5]}), "'holding_costs'"),
        "string": (json.dumps({**HAND, "n_items": "3"}), "'n_items'"),
        "not_object": ("[1, 2]", "JSON object"),
    }
    for name, (text, pattern) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        with pytest.raises(EnvError, match=pattern) as err:
            load_instance(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EnvError, match="cannot read"):
        load_instance(tmp_path / "absent.json")


def test_published_ids_need_the_instance_folder(monkeypatch):
    monkeypatch.delenv(INSTANCE_DIR_ENV, raising=False)
    with pytest.raises(EnvError, match="setting_25items_10machines_t100_i100.json.*instance_dir"):
        gym.make("ocrl/LotSizing-25x10-v0")


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/data/lot_sizing (a clone has none)")
def test_published_instances_load(monkeypatch):
    for setting, file in PUBLISHED.items():
        inst = load_instance(SHARED / file)
        items, machines = map(int, setting.split("x"))
        assert (inst.n_items, inst.n_machines, inst.horizon) == (items, machines, 100)
        assert (inst.demand_n, inst.demand_p, inst.demand_mean) == (20, 0.4, 8.0)
        assert set(inst.lost_sales_costs) <= {0.1, 1.1} and set(inst.max_inventory) == {100}
        assert np.array(inst.production).max() <= 40 and np.array(inst.setup_costs).min() >= 15
        assert inst.to_dict() == json.loads((SHARED / file).read_text())  # nothing lost or added
    env = gym.make("ocrl/LotSizing-15x5-v0", instance_dir=str(SHARED))
    assert env.unwrapped.instance.initial_inventory[:3] == (8, 6, 33)
    monkeypatch.setenv(INSTANCE_DIR_ENV, str(SHARED))
    venv = gym.make_vec("ocrl/LotSizing-25x15-v0", 4, vectorization_mode="vector_entry_point")
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (4, 25)


def test_registered_ids_name_the_published_instances():
    assert LOT_SIZING_PUBLISHED == tuple(PUBLISHED)


def test_ocrl_envs_loads_the_simulators_only_when_an_id_is_made(tmp_path):
    # A fresh process: `import ocrl.envs` registers the ids with string entry points, and gym.make
    # of each family imports its simulator then.
    code = """
import sys
import gymnasium as gym
import ocrl.envs
sims = ("ocrl.envs.inventory", "ocrl.envs.lot_sizing", "scipy")
assert not any(m in sys.modules for m in sims), [m for m in sims if m in sys.modules]
gym.make("ocrl/OneStoreLost-v0", horizon=4).reset(seed=0)
gym.make("ocrl/LotSizing-v0").reset(seed=0)
gym.make_vec("ocrl/LotSizing-v0", 2, vectorization_mode="vector_entry_point").reset(seed=0)
assert all(m in sys.modules for m in sims)
from ocrl.envs import InventoryEnv, LotSizingVectorEnv
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
