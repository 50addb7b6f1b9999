"""--num-seeds: seed k inside a group is the single-seed run of seed k (weights, optimisers, streams, scores,
files), its folder resumes as one, and the seed slices of stacked networks and optimisers round-trip."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from ocrl.algos import a2pr, ggd_td, iql, prdc, sac, td3_bc
from ocrl.experiment import UsageError, load_checkpoint
from ocrl.nets import CriticEnsemble, DeterministicActor, FlatAdam, TanhGaussianActor
from ocrl.nets.seeds import SeedSlice, SeedStreams, init_seeds, seed_member, seed_parts

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden=(32, 32), eval_episodes=1, progress=False, save_model=True)


def run(hopper_random_file, run_dir: Path, module=td3_bc, **kw) -> dict:
    args = module.Args(dataset=hopper_random_file, run_dir=str(run_dir), **TINY, **kw)
    return module.main(args)


def assert_same_state(a, b, where: str) -> None:
    """Every tensor of two nested checkpoint entries equal to the bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def file_kinds(folder: Path) -> list[str]:
    return sorted(re.sub(r"events\.out\.tfevents\..*", "events", p.name) for p in folder.iterdir())


TD3_PARTS = ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt")
SMALL_A2PR = dict(actor_hidden=(32, 32), critic_hidden=(32, 32), vae_hidden=(32, 32))
GROUP_CASES = {  # file, its flags, updates, the checkpoint parts compared (and streams, normalizer, step)
    "td3_bc": (td3_bc, TINY, 100, TD3_PARTS),
    "iql gaussian": (iql, TINY | dict(actor="gaussian"), 100,
                     ("actor", "critic", "critic_target", "value", "actor_opt", "critic_opt", "value_opt",
                      "actor_schedule")),
    "iql deterministic": (iql, TINY | dict(actor="deterministic"), 30,
                          ("actor", "critic", "value", "actor_opt", "critic_opt", "value_opt")),
    "prdc": (prdc, TINY, 100, (*TD3_PARTS, "buffer")),
    "a2pr": (a2pr, {**TINY, "hidden": None, **SMALL_A2PR}, 100,
             (*TD3_PARTS, "value", "vae", "value_opt", "vae_opt")),
}  # fmt: skip


@pytest.mark.parametrize("case", GROUP_CASES)
def test_seed_k_of_a_group_of_four_is_the_single_seed_run_of_seed_k(
    hopper_random_file, tmp_path, case
):
    module, flags, steps, parts = GROUP_CASES[case]
    flags = {k: v for k, v in flags.items() if v is not None}

    def main(run_dir: Path, **kw) -> dict:
        args = module.Args(dataset=hopper_random_file, run_dir=str(run_dir), total_steps=steps,
                           eval_every=steps // 2, **flags, **kw)  # fmt: skip
        return module.main(args)

    group = main(tmp_path / "group", seed=3, num_seeds=4)
    for k in range(4):
        alone = main(tmp_path / f"alone{k}", seed=3 + k)
        member = group["seeds"][k]
        assert member["return"] == alone["return"] and member["return_best"] == alone["return_best"]
        a, b = (
            load_checkpoint(tmp_path / "group" / f"s{k}"),
            load_checkpoint(tmp_path / f"alone{k}"),
        )
        for part in (*parts, "streams", "normalizer", "step"):
            assert_same_state(a[part], b[part], f"{case} seed {3 + k} {part}")
        assert file_kinds(tmp_path / "group" / f"s{k}") == file_kinds(tmp_path / f"alone{k}")
        config = json.loads((tmp_path / "group" / f"s{k}" / "config.json").read_text())
        assert config["seed"] == 3 + k and config["num_seeds"] == 1
        if case == "iql gaussian":  # the single-seed format: one (act_dim,) log_std
            assert b["actor"]["log_std"].shape == (3,) and (b["actor"]["log_std"] != 0).all()


def test_a_group_seed_folder_resumes_as_the_single_seed_run(hopper_random_file, tmp_path):
    run(hopper_random_file, tmp_path / "group", seed=5, num_seeds=2, total_steps=40, eval_every=40)
    resumed = td3_bc.main(td3_bc.Args(resume=str(tmp_path / "group" / "s1"), total_steps=80))
    alone = run(hopper_random_file, tmp_path / "alone", seed=6, total_steps=80, eval_every=40)
    assert resumed["return"] == alone["return"]
    a, b = load_checkpoint(tmp_path / "group" / "s1"), load_checkpoint(tmp_path / "alone")
    for part in ("actor", "critic", "actor_opt", "critic_opt", "streams"):
        assert_same_state(a[part], b[part], part)


def test_a_group_folder_resumes_as_the_group(hopper_random_file, tmp_path):
    """--resume DIR of a group continues all its seeds: the same as the group trained without a stop."""
    run(
        hopper_random_file, tmp_path / "stopped", seed=5, num_seeds=3, total_steps=40, eval_every=40
    )
    resumed = td3_bc.main(td3_bc.Args(resume=str(tmp_path / "stopped"), total_steps=80))
    straight = run(hopper_random_file, tmp_path / "straight", seed=5, num_seeds=3, total_steps=80,
                   eval_every=40)  # fmt: skip
    assert [m["return"] for m in resumed["seeds"]] == [m["return"] for m in straight["seeds"]]
    for k in range(3):
        a, b = (
            load_checkpoint(tmp_path / "stopped" / f"s{k}"),
            load_checkpoint(tmp_path / "straight" / f"s{k}"),
        )
        assert a["step"] == 80
        for part in ("actor", "critic", "critic_target", "actor_opt", "critic_opt", "streams"):
            assert_same_state(a[part], b[part], f"seed {k} {part}")


def test_a_group_whose_seeds_differ_is_not_resumed_as_one(hopper_random_file, tmp_path):
    run(hopper_random_file, tmp_path / "g", seed=0, num_seeds=2, total_steps=10, eval_every=10)
    td3_bc.main(td3_bc.Args(resume=str(tmp_path / "g" / "s1"), total_steps=20))  # s1 alone moves on
    before = (tmp_path / "g" / "s0" / "metrics.json").read_text()
    script = str(ROOT / "algos" / "td3_bc.py")
    proc = subprocess.run([sys.executable, script, "--resume", str(tmp_path / "g"), "--total-steps", "30"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "checkpoints are at different steps ([10, 20])" in proc.stderr
    assert (tmp_path / "g" / "s0" / "metrics.json").read_text() == before
    config = json.loads((tmp_path / "g" / "s1" / "config.json").read_text())
    (tmp_path / "g" / "s1" / "config.json").write_text(json.dumps({**config, "alpha": 1.0}))
    with pytest.raises(UsageError, match="s1 is not seed 1 of s0's group \\(differs in alpha\\)"):
        td3_bc.main(td3_bc.Args(resume=str(tmp_path / "g"), total_steps=30))


def test_an_iql_group_seed_folder_resumes_as_the_single_seed_run_folder(
    hopper_random_file, tmp_path
):
    # A resume keeps the first run's cosine length (--total-steps 40), so both sides are resumed runs.
    run(hopper_random_file, tmp_path / "group", iql, seed=5, num_seeds=2, total_steps=40,
        eval_every=40)  # fmt: skip
    run(hopper_random_file, tmp_path / "alone", iql, seed=6, total_steps=40, eval_every=40)
    resumed = [
        iql.main(iql.Args(resume=str(tmp_path / folder), total_steps=80))
        for folder in ("group/s1", "alone")
    ]
    assert resumed[0]["return"] == resumed[1]["return"]
    a, b = load_checkpoint(tmp_path / "group" / "s1"), load_checkpoint(tmp_path / "alone")
    assert a["step"] == 80
    for part in ("actor", "critic", "critic_target", "value", "actor_opt", "critic_opt",
                 "value_opt", "actor_schedule", "streams"):  # fmt: skip
        assert_same_state(a[part], b[part], part)


def test_init_draws_seed_k_the_same_whatever_the_group_size():
    def nets(n: int):
        streams = SeedStreams(range(7, 7 + n))
        actor = init_seeds(DeterministicActor(5, 2, (8, 8), num_seeds=n), streams)
        critic = init_seeds(CriticEnsemble(5, 2, (8, 8), num_critics=2, num_seeds=n), streams)
        return actor, critic

    (actor3, critic3), (actor1, critic1) = nets(3), nets(1)
    for stacked, single in ((actor3, actor1), (critic3, critic1)):
        assert_same_state(
            SeedSlice(stacked, 0, 3).state_dict(), SeedSlice(single, 0, 1).state_dict(), ""
        )
    # Seed 8 (index 1) draws other weights than seed 7, and its slice is a plain single-seed actor's state.
    other = SeedSlice(actor3, 1, 3).state_dict()
    assert not torch.equal(
        other["net.0.weight"], SeedSlice(actor1, 0, 1).state_dict()["net.0.weight"]
    )
    plain = seed_member(actor3, DeterministicActor(5, 2, (8, 8)), 1, 3)
    obs = torch.randn(4, 5)
    stacked_obs = torch.zeros(3, 4, 5)
    stacked_obs[1] = obs
    torch.testing.assert_close(plain(obs), actor3(stacked_obs)[1], rtol=1e-6, atol=1e-6)


def test_a_stacked_tensor_its_optimiser_and_a_per_seed_list_are_sliced_to_the_single_seed_format():
    """sac's (N,) log-temperature: seed k's part is the single-seed run's scalar, its FlatAdam state scalars too;
    a list of N parts (replay buffers, training envs) gives seed k its own entry."""
    log_alpha = torch.zeros(3, requires_grad=True)
    opt = FlatAdam([log_alpha], lr=0.1)
    (log_alpha * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
    opt.step()
    buffers = [object() for _ in range(3)]
    parts = seed_parts({"log_alpha": log_alpha, "alpha_opt": opt, "buffer": buffers}, 1, 3)
    assert parts["buffer"] is buffers[1]
    assert (
        parts["log_alpha"].state_dict().shape == () and float(parts["log_alpha"].state_dict()) > 0
    )
    saved = parts["alpha_opt"].state_dict()
    assert {key: v.shape for key, v in saved["state"][0].items()} == dict.fromkeys(
        ("step", "exp_avg", "exp_avg_sq"), ()
    )
    # A single-seed run's state (torch Adam over one scalar) into seed 0 of another group.
    single = torch.tensor(0.5, requires_grad=True)
    single_opt = torch.optim.Adam([single], lr=0.1)
    (2 * single).backward()
    single_opt.step()
    other = torch.zeros(3, requires_grad=True)
    other_opt = FlatAdam([other], lr=0.1)
    target = seed_parts({"log_alpha": other, "alpha_opt": other_opt}, 0, 3)
    target["log_alpha"].load_state_dict(single.detach())
    target["alpha_opt"].load_state_dict(single_opt.state_dict())
    assert other[0] == single and (other[1:] == 0).all()
    assert_same_state(
        target["alpha_opt"].state_dict()["state"], single_opt.state_dict()["state"], ""
    )


def test_a_stacked_tanh_gaussian_actor_is_seed_by_seed_the_plain_actor():
    streams = SeedStreams(range(4, 7))
    stacked = init_seeds(TanhGaussianActor(5, 2, (8, 8), -2.0, 2.0, num_seeds=3), streams)
    single = init_seeds(TanhGaussianActor(5, 2, (8, 8), -2.0, 2.0, num_seeds=1), SeedStreams([5]))
    assert_same_state(
        SeedSlice(stacked, 1, 3).state_dict(), SeedSlice(single, 0, 1).state_dict(), ""
    )
    plain = seed_member(stacked, TanhGaussianActor(5, 2, (8, 8), -2.0, 2.0), 1, 3)
    obs, noise = torch.randn(3, 4, 5), torch.randn(3, 4, 2)
    for got, want in zip(stacked(obs, noise), plain(obs[1], noise[1]), strict=True):
        torch.testing.assert_close(got[1], want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plain.act(obs[1]), stacked(obs, noise)[2][1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("adam", [FlatAdam, partial(torch.optim.Adam, foreach=True)])
def test_seed_slices_of_a_module_and_its_optimiser_round_trip(adam):
    streams = SeedStreams(range(3))
    critic = init_seeds(CriticEnsemble(4, 1, (8,), num_critics=2, num_seeds=3), streams)
    opt = adam(critic.parameters(), lr=1e-2)
    q = critic(torch.randn(3, 6, 4), torch.randn(3, 6, 1))  # (2 critics, 3 seeds, 6)
    assert q.shape == (2, 3, 6)
    q.square().sum().backward()
    opt.step()
    opt.param_groups[0]["lr"] = 4e-3  # as an lr schedule moves it
    saved = SeedSlice(opt, 2, 3, critic).state_dict()
    weights = SeedSlice(critic, 2, 3).state_dict()
    assert weights["net.0.weight"].shape == (2, 5, 8)  # a single-seed CriticEnsemble's shape
    # Into seed 0 of a fresh group: that slice changes, the others do not.
    fresh = init_seeds(
        CriticEnsemble(4, 1, (8,), num_critics=2, num_seeds=3), SeedStreams(range(10, 13))
    )
    fresh_opt = adam(fresh.parameters(), lr=1e-2)
    before = SeedSlice(fresh, 1, 3).state_dict()
    SeedSlice(fresh, 0, 3).load_state_dict(weights)
    SeedSlice(fresh_opt, 0, 3, fresh).load_state_dict(saved)
    assert_same_state(SeedSlice(fresh, 0, 3).state_dict(), weights, "weights")
    assert_same_state(
        SeedSlice(fresh_opt, 0, 3, fresh).state_dict()["state"], saved["state"], "adam"
    )
    assert fresh_opt.param_groups[0]["lr"] == 4e-3
    assert_same_state(SeedSlice(fresh, 1, 3).state_dict(), before, "untouched seed")


def test_group_flags_are_checked_before_anything_is_written(hopper_random_file, tmp_path):
    run(hopper_random_file, tmp_path / "g", seed=0, num_seeds=2, total_steps=10, eval_every=10)
    script = str(ROOT / "algos" / "td3_bc.py")
    for flags, message in (
        (["--num-seeds", "0"], "--num-seeds 0: must be a positive whole number"),
        (
            ["--num-seeds", "3", "--run-dir", str(tmp_path / "g")],
            f"{tmp_path / 'g' / 's0'}: holds a run",
        ),
    ):
        proc = subprocess.run(
            [sys.executable, script, "--dataset", hopper_random_file, "--total-steps", "10", *flags],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "g" / "s2").exists()


@pytest.mark.parametrize("precision", ["bf16"])
def test_a_bf16_group_ends_finite(hopper_random_file, tmp_path, precision):
    out = run(hopper_random_file, tmp_path / "g", seed=0, num_seeds=3, total_steps=60, eval_every=60,
              precision=precision)  # fmt: skip
    assert len(out["seeds"]) == 3
    for k in range(3):
        ckpt = load_checkpoint(tmp_path / "g" / f"s{k}")
        assert all(torch.isfinite(t).all() for t in ckpt["actor"].values() if t.is_floating_point())


# ------------------------------------------------------------------ online: sac, ggd_td
ONLINE = dict(env_id="Pendulum-v1", total_steps=300, learning_starts=100, hidden=(16, 16), batch_size=32,
              eval_every=150, eval_episodes=1, save_model=True, progress=False)  # fmt: skip
ONLINE_CASES = {  # file, its flags over ONLINE
    "sac": (sac, {}),
    "ggd_td": (ggd_td, {}),  # --loss ggd with the BIEV regulariser, 5 envs, Tanh
    # Two envs per seed, three action dimensions (output heads wider than one column), bf16.
    "sac hopper 2 envs bf16": (
        sac, dict(env_id="Hopper-v4", num_envs=2, total_steps=200, eval_every=100, precision="bf16"),
    ),
}  # fmt: skip


def assert_same_checkpoint(a: dict, b: dict, where: str) -> None:
    """Every entry of two checkpoints equal to the bit, but the global RNGs (seeded with the process's --seed and
    drawn from by nothing of these files) and the run's wall time."""
    assert a.keys() == b.keys(), where
    a["run"].pop("wall_time"), b["run"].pop("wall_time")
    for key in a.keys() - {"rng"}:
        assert_same_state(a[key], b[key], f"{where} {key}")


@pytest.mark.parametrize("case", ONLINE_CASES)
def test_seed_k_of_an_online_group_of_three_is_the_single_seed_run_of_seed_k(tmp_path, case):
    """Each seed of a group has its single-seed run's training envs (and warm-up actions), replay buffer, weights,
    optimisers, temperature and streams: seed k's checkpoint and returns equal that run's to the bit."""
    module, flags = ONLINE_CASES[case]
    kw = ONLINE | flags
    group = module.main(module.Args(run_dir=str(tmp_path / "group"), seed=2, num_seeds=3, **kw))
    for k in range(3):
        alone = module.main(module.Args(run_dir=str(tmp_path / f"alone{k}"), seed=2 + k, **kw))
        member = group["seeds"][k]
        assert member["return"] == alone["return"] and member["return_best"] == alone["return_best"]
        a = load_checkpoint(tmp_path / "group" / f"s{k}")
        b = load_checkpoint(tmp_path / f"alone{k}")
        assert {"buffer", "envs", "log_alpha", "alpha_opt", "streams"} <= a.keys()
        assert b["log_alpha"].shape == () and b["buffer"]["size"] == kw["total_steps"]
        assert_same_checkpoint(a, b, f"{case} seed {2 + k}")
        assert file_kinds(tmp_path / "group" / f"s{k}") == file_kinds(tmp_path / f"alone{k}")
        config = json.loads((tmp_path / "group" / f"s{k}" / "config.json").read_text())
        assert config["seed"] == 2 + k and config["num_seeds"] == 1
    # The seeds' runs differ from each other (their own envs, buffers and draws).
    assert len({m["return"] for m in group["seeds"]}) == 3


@pytest.mark.parametrize("module", [sac, ggd_td], ids=["sac", "ggd_td"])
def test_an_online_group_resumes_as_the_group(tmp_path, module):
    """--resume DIR of a sac/ggd_td group continues every seed's envs, buffer and networks: the group trained
    without a stop, to the bit."""
    kw = ONLINE | dict(num_seeds=2, seed=4)
    module.main(module.Args(run_dir=str(tmp_path / "stopped"), **(kw | dict(total_steps=150))))
    resumed = module.main(
        module.Args(resume=str(tmp_path / "stopped"), total_steps=300, progress=False)
    )
    straight = module.main(module.Args(run_dir=str(tmp_path / "straight"), **kw))
    assert [m["return"] for m in resumed["seeds"]] == [m["return"] for m in straight["seeds"]]
    for k in range(2):
        a = load_checkpoint(tmp_path / "stopped" / f"s{k}")
        b = load_checkpoint(tmp_path / "straight" / f"s{k}")
        assert a["step"] == 300 and a["buffer"]["size"] == 300
        assert_same_checkpoint(a, b, f"seed {k}")


@pytest.mark.parametrize("module", [sac, ggd_td], ids=["sac", "ggd_td"])
def test_a_bf16_online_group_ends_finite(tmp_path, module):
    out = module.main(
        module.Args(run_dir=str(tmp_path / "g"), **(ONLINE | dict(num_seeds=3, precision="bf16")))
    )
    assert len(out["seeds"]) == 3
    for k in range(3):
        ckpt = load_checkpoint(tmp_path / "g" / f"s{k}")
        for part in ("actor", "critic", "critic_target"):
            assert all(
                torch.isfinite(t).all() for t in ckpt[part].values() if t.is_floating_point()
            )
        assert torch.isfinite(ckpt["log_alpha"]) and ckpt["log_alpha"] != 0
