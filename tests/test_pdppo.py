"""PDPPO (algos/pdppo.py): returns, advantages and losses against formulas written here, which parameters train
(the released frozen trunk), the replay buffer's sizes, and the run contract (smoke, bit-exact resume, bad flags)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from ocrl.algos import pdppo
from ocrl.experiment import load_checkpoint

OBS, M, CHOICES, B = 4, 3, 5, 20


def tiny_args(**over) -> pdppo.Args:
    fields = dict(
        instance="generated", n_items=4, n_machines=3, total_steps=1200, update_every=200,
        k_epochs=3, hidden=16, eval_every=600, eval_episodes=2, log_every=400, progress=False,
    )  # fmt: skip
    fields.update(over)
    return pdppo.Args(**fields)


def fixed_buffer(seed: int = 0) -> dict[str, torch.Tensor]:
    """B transitions: two 10-step episodes, random states, actions and both reward streams."""
    g = torch.Generator().manual_seed(seed)
    terminals = torch.zeros(B)
    terminals[9] = terminals[19] = 1.0
    pre, post = -torch.rand(B, generator=g) * 10, -torch.rand(B, generator=g) * 30
    return {
        "obs": torch.rand(B, OBS, generator=g) * 50, "post_obs": torch.rand(B, OBS, generator=g) * 50,
        "actions": torch.randint(0, CHOICES, (B, M), generator=g),
        "logprobs": -torch.rand(B, M, generator=g) * 2, "values": torch.randn(B, generator=g),
        "post_values": torch.randn(B, generator=g), "pre_rewards": pre, "post_rewards": post,
        "rewards": pre + post, "terminals": terminals,
    }  # fmt: skip


def make_agent(**over) -> pdppo.PDPPO:
    torch.manual_seed(0)
    args = tiny_args(hidden=8, k_epochs=1, **over)
    return pdppo.PDPPO(args, OBS, M, CHOICES, torch.device("cpu"))


def plain_returns(rewards, terminals, gamma):
    """R_t = sum_{k >= t, same episode} gamma^(k - t) r_k, written out."""
    out = []
    for t in range(len(rewards)):
        total, weight, k = 0.0, 1.0, t
        while True:
            total += weight * float(rewards[k])
            if terminals[k] or k == len(rewards) - 1:
                break
            weight *= gamma
            k += 1
        out.append(total)
    return torch.tensor(out)


def test_discounted_returns_restart_after_each_episode():
    buf = fixed_buffer()
    got = pdppo.discounted_returns(buf["pre_rewards"], buf["terminals"], 0.9)
    torch.testing.assert_close(got, plain_returns(buf["pre_rewards"], buf["terminals"], 0.9))


def plain_surrogate(actor, buf, adv, clip=0.2):
    x = torch.relu(actor.fc2(torch.relu(actor.fc1(buf["obs"]))))
    logits = actor.head(x).view(B, M, CHOICES)
    logp_all = logits - torch.logsumexp(logits, -1, keepdim=True)
    logp = logp_all.gather(-1, buf["actions"][..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    ratio = (logp - buf["logprobs"]).exp()
    a = adv[:, None]
    return -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a), entropy


def captured_grads(optimizer, params):
    seen = []
    real_step = optimizer.step

    def step(*a, **k):
        seen.append([None if p.grad is None else p.grad.clone() for p in params])
        return real_step(*a, **k)

    optimizer.step = step
    return seen


def test_dual_update_is_the_max_advantage_formula_with_one_adam_per_network():
    agent = make_agent()
    buf = fixed_buffer()
    r = plain_returns(buf["pre_rewards"], buf["terminals"], 0.9)
    r_post = plain_returns(buf["post_rewards"], buf["terminals"], 0.9)
    adv = torch.maximum(r - buf["values"], r_post - buf["post_values"])
    surrogate, entropy = plain_surrogate(agent.actor, buf, adv)
    actor_loss = (surrogate - 0.001 * entropy).mean()  # + 0.7 (L_V + L_Vx).detach(): no gradient
    head = list(agent.actor.head.parameters())
    want_actor = torch.autograd.grad(actor_loss, head)
    v_loss = ((agent.critic(buf["obs"])[:, 0] - r) ** 2).mean()
    want_critic = torch.autograd.grad(v_loss, list(agent.critic.parameters()))
    v_post_loss = ((agent.critic_post(buf["post_obs"])[:, 0] - r_post) ** 2).mean()

    actor_seen = captured_grads(agent.actor_opt, head)
    critic_seen = captured_grads(agent.critic_opt, list(agent.critic.parameters()))
    metrics = agent.update(buf)
    for got, want in zip(actor_seen[0], want_actor, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for got, want in zip(critic_seen[0], want_critic, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert float(metrics["post_value_loss"]) == pytest.approx(float(v_post_loss.detach()), rel=1e-5)
    frac = ((r_post - buf["post_values"]) > (r - buf["values"])).float().mean()
    assert float(metrics["pdppo/post_advantage_fraction"]) == pytest.approx(float(frac))


def test_single_critic_is_the_released_ppo_loss_on_the_total_return():
    agent = make_agent(critic="single")
    buf = fixed_buffer()
    r = plain_returns(buf["rewards"], buf["terminals"], 0.9)
    surrogate, entropy = plain_surrogate(agent.actor, buf, r - buf["values"])
    value = agent.critic(buf["obs"])[:, 0]
    loss = (surrogate + 0.7 * F.mse_loss(value, r) - 0.001 * entropy).mean()
    params = [p for g in agent.optimizer.param_groups for p in g["params"]]
    want = torch.autograd.grad(loss, params)
    seen = captured_grads(agent.optimizer, params)
    agent.update(buf)
    for got, w in zip(seen[0], want, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-6)
    assert [g["lr"] for g in agent.optimizer.param_groups] == [5.5e-4, 1e-3]


@pytest.mark.parametrize("critic", ["dual", "single"])
@pytest.mark.parametrize("train_trunk", [False, True])
def test_faithful_mode_trains_exactly_the_actor_head_and_the_critics(critic, train_trunk):
    agent = make_agent(critic=critic, train_actor_trunk=train_trunk)
    nets = {"actor": agent.actor, "critic": agent.critic}
    if critic == "dual":
        nets["critic_post"] = agent.critic_post
    before = {n: {k: v.clone() for k, v in net.state_dict().items()} for n, net in nets.items()}
    agent.update(fixed_buffer())
    changed = {
        f"{n}.{k}"
        for n, net in nets.items()
        for k, v in net.state_dict().items()
        if not torch.equal(v, before[n][k])
    }
    trunk = {"actor.fc1.weight", "actor.fc1.bias", "actor.fc2.weight", "actor.fc2.bias"}
    expected = {"actor.head.weight", "actor.head.bias"} | {
        f"{n}.{k}" for n, net in nets.items() if n != "actor" for k in net.state_dict()
    }
    assert changed == (expected | trunk if train_trunk else expected)


def test_each_update_sees_the_released_buffer_sizes(tmp_path, monkeypatch):
    sizes = []
    real_update = pdppo.PDPPO.update

    def recording(self, buf):
        sizes.append(buf["obs"].shape[0])
        return real_update(self, buf)

    monkeypatch.setattr(pdppo.PDPPO, "update", recording)
    pdppo.main(tiny_args(total_steps=1600, replay_rollouts=3, run_dir=str(tmp_path / "a")))
    # 200 per rollout; the oldest is dropped after an update once more than 3 rollouts are stored.
    assert sizes == [200, 400, 600, 800, 800, 800, 800, 800]
    sizes.clear()
    pdppo.main(tiny_args(total_steps=600, replay_rollouts=0, run_dir=str(tmp_path / "b")))
    assert sizes == [200, 200, 200]


def test_smoke_run_reports_the_papers_training_curve_metrics(tmp_path):
    metrics = pdppo.main(tiny_args(total_steps=8000, run_dir=str(tmp_path / "run")))
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["steps"] == 8000 and metrics["critic"] == "dual"
    # Two 4,000-step windows of 40 episodes each (100 periods).
    assert metrics["train_return_sum"] == pytest.approx(
        metrics["train_return_last"] + (metrics["train_return_sum"] - metrics["train_return_last"])
    )
    assert metrics["train_return_max"] >= metrics["train_return_last"]
    assert metrics["train_return_last"] < 0 and isinstance(metrics["return"], float)


def test_early_preset_runs_with_the_setups_observed(tmp_path):
    args = dataclasses.replace(tiny_args(**pdppo.PRESETS["early"]), update_every=200,
                               total_steps=400, run_dir=str(tmp_path / "run"))  # fmt: skip
    metrics = pdppo.main(args)
    assert metrics["variant"] == "early" and metrics["steps"] == 400


def test_resume_after_interruption_is_bit_exact(
    tmp_path, interrupt_evaluation, assert_same_checkpoints
):
    base = tiny_args(save_model=True, seed=3)
    straight = pdppo.main(dataclasses.replace(base, run_dir=str(tmp_path / "straight")))
    interrupt_evaluation(2)
    with pytest.raises(KeyboardInterrupt):
        pdppo.main(dataclasses.replace(base, run_dir=str(tmp_path / "interrupted")))
    interrupt_evaluation(0)
    assert load_checkpoint(tmp_path / "interrupted")["step"] == 600
    resumed = pdppo.main(pdppo.Args(resume=str(tmp_path / "interrupted"), total_steps=1200))
    assert resumed["resumed_from"] == 600 and resumed["steps"] == 1200
    assert assert_same_checkpoints(tmp_path / "straight", tmp_path / "interrupted") > 10
    assert resumed["return"] == straight["return"]
    assert resumed["train_return_sum"] == straight["train_return_sum"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--total-steps", "0"], "--total-steps 0"),
        (["--update-every", "150"], "--update-every 150"),
        (["--replay-rollouts", "-1"], "--replay-rollouts -1"),
        (["--lr-actor", "nan"], "--lr-actor nan"),
        (["--instance", "99x9"], "--instance 99x9"),
        (["--instance", "/nonexistent/x.json"], "x.json"),
        (["--variant", "early", "--critic", "single"], "--critic single"),
    ],
)
def test_bad_flag_is_one_line_exit_2_and_no_folder(argv, expected, tmp_path, run_algorithm):
    run_dir = tmp_path / "run"
    argv = ["--instance", "generated", *argv, "--run-dir", str(run_dir), "--no-progress"]
    code, err = run_algorithm(pdppo, argv)
    assert code == 2 and err.startswith("error:") and "\n" not in err and expected in err, err
    assert not run_dir.exists()


def test_a_published_instance_without_its_folder_is_a_clean_error(
    tmp_path, monkeypatch, run_algorithm
):
    monkeypatch.delenv("OCRL_LOT_SIZING_DIR", raising=False)
    code, err = run_algorithm(pdppo, ["--instance", "25x10", "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "setting_25items_10machines_t100_i100.json" in err and "\n" not in err


def test_garbage_checkpoint_for_resume_is_refused(tmp_path, capsys, run_algorithm):
    run_dir = tmp_path / "run"
    pdppo.main(tiny_args(total_steps=400, run_dir=str(run_dir)))
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    before = sorted(p.name for p in run_dir.iterdir())
    capsys.readouterr()
    code, err = run_algorithm(pdppo, ["--resume", str(run_dir), "--no-progress"])
    assert code == 2 and "\n" not in err and "checkpoint.pt" in err, err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def load_table_script(monkeypatch):
    """scripts/pdppo_table.py as a module (scripts/ is not a package)."""
    import importlib.util
    import sys

    path = pdppo.__file__.replace("algos/pdppo.py", "scripts/pdppo_table.py")
    spec = importlib.util.spec_from_file_location("pdppo_table", path)
    table = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pdppo_table", table)
    spec.loader.exec_module(table)
    return table


def test_the_table_script_groups_runs_and_compares_with_welch(tmp_path, monkeypatch):
    from scipy import stats

    root = tmp_path / "runs"
    finals = {"dual": [-8000.0, -9000.0, -8500.0], "single": [-14000.0, -15000.0, -13000.0]}
    for critic, values in finals.items():
        for seed, value in enumerate(values):
            run = root / f"pdppo_{critic}__lotsizing-25x10__s{seed}"
            run.mkdir(parents=True)
            config = {"critic": critic, "variant": "final", "train_actor_trunk": False}
            (run / "config.json").write_text(json.dumps(config))
            metrics = {"train_return_last": value, "train_return_max": value + 100,
                       "train_return_sum": 50 * value, "return": value - 1, "steps": 200000}  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(metrics))
    table = load_table_script(monkeypatch)
    text = table.main(table.Args(run_dirs=(str(root),), instance="25x10"))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert "| 3 | 200000 | -8500 ± 500 |" in rows["PDPPO (dual critics)"]
    p = stats.ttest_ind(finals["dual"], finals["single"], equal_var=False).pvalue
    assert rows["PPO (released, --critic single)"].rstrip(" |").endswith(f"{p:.3f}")
    authors = [line for line in text.splitlines() if line.startswith("| authors' PDPPO")]
    assert "| 200000 | -10182 ± 676 |" in authors[0]  # the authors' logs at the runs' budget
    assert "| 1000000 | -7660 ± 1613 |" in authors[1]  # and at the paper's 1M (sample sd)


def test_the_table_script_reads_the_curves_at_a_given_step(tmp_path, monkeypatch):
    import statistics

    from torch.utils.tensorboard import SummaryWriter

    curves = {0: [-9000.0, -7000.0, -8000.0, -6000.0], 1: [-8000.0, -8500.0, -7500.0, -5000.0]}
    for seed, windows in curves.items():
        run = tmp_path / "runs" / f"dual_s{seed}"
        run.mkdir(parents=True)
        config = {"critic": "dual", "variant": "final", "train_actor_trunk": False}
        (run / "config.json").write_text(json.dumps(config))
        metrics = {"train_return_last": windows[-1], "train_return_max": max(windows),
                   "train_return_sum": sum(windows), "return": 0.0, "steps": 16000}  # fmt: skip
        (run / "metrics.json").write_text(json.dumps(metrics))
        with SummaryWriter(str(run)) as writer:
            for i, value in enumerate(windows):
                writer.add_scalar("pdppo/episode_return", value, (i + 1) * 4000)
    short = tmp_path / "runs" / "dual_short"  # ends before the step asked for: left out
    short.mkdir()
    (short / "config.json").write_text(json.dumps({"critic": "dual", "variant": "final"}))
    (short / "metrics.json").write_text(json.dumps({"return": 0.0, "steps": 4000}))
    with SummaryWriter(str(short)) as writer:
        writer.add_scalar("pdppo/episode_return", -1.0, 4000)
    table = load_table_script(monkeypatch)
    text = table.main(table.Args(run_dirs=(str(tmp_path / "runs"),), at_step=12000))
    row = next(line for line in text.splitlines() if line.startswith("| PDPPO (dual critics)"))
    at_12k = [-8000.0, -7500.0]  # the third window of each run
    best = [-7000.0, -7500.0]  # the best of the first three
    sums = [-24000.0, -24000.0]
    expected = (
        f"| 2 | 12000 | {statistics.mean(at_12k):.0f} ± {statistics.stdev(at_12k):.0f} "
        f"| {statistics.mean(best):.0f} ± {statistics.stdev(best):.0f} | -24000 ± 0 | – |"
    )
    assert expected in row, row
    assert sums[0] == sum(curves[0][:3]) and sums[1] == sum(curves[1][:3])
    with pytest.raises(SystemExit) as exit_info:
        table.main(table.Args(run_dirs=(str(tmp_path / "runs"),), at_step=5000))
    assert exit_info.value.code == 2
