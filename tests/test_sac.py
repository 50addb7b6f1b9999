"""SAC (algos/sac.py): the update's maths against formulas written here, smoke runs, resume, CLI checks."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from formulas import one_seed, stream_draws
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ocrl.algos import sac
from ocrl.data import Batch
from ocrl.experiment import UsageError, load_checkpoint
from ocrl.nets import TanhGaussianActor
from ocrl.nets.core import EnsembleLinear
from ocrl.nets.seeds import seed_member

OBS, ACT, B = 3, 2, 6
LOW, HIGH = torch.tensor([-2.0, -0.5]), torch.tensor([2.0, 1.5])  # scale (2, 1), bias (0, 0.5)


def tags(run_dir: str) -> set[str]:
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return set(acc.Tags()["scalars"])


# ------------------------------------------------------------------ plain formulas, float64
def plain_q(critic, j: int, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Q_j(s, a) from member j's weights: x W + b, ReLU between layers."""
    linears = [m for m in critic.net if isinstance(m, EnsembleLinear)]
    x = torch.cat([s, a], dim=1).double()
    for k, lin in enumerate(linears):
        x = x @ lin.weight[j].double() + lin.bias[j, 0].double()
        if k < len(linears) - 1:
            x = torch.relu(x)
    return x[:, 0]


def plain_policy(actor, s: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, log pi(a|s)) with u = mu + sigma * eps, a = tanh(u) * scale + bias, by the change of variables."""
    h = s.double()
    for lin in (m for m in actor.trunk if isinstance(m, torch.nn.Linear)):
        h = torch.relu(h @ lin.weight.double().T + lin.bias.double())
    mu = h @ actor.mean.weight.double().T + actor.mean.bias.double()
    raw = h @ actor.log_std.weight.double().T + actor.log_std.bias.double()
    log_std = -5.0 + 0.5 * (2.0 - (-5.0)) * (torch.tanh(raw) + 1.0)
    std = log_std.exp()
    u = mu + std * eps.double()
    scale, bias = (HIGH - LOW).double() / 2, (HIGH + LOW).double() / 2
    gauss = -0.5 * ((u - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    log_prob = (gauss - torch.log(scale * (1.0 - torch.tanh(u) ** 2))).sum(1)
    return torch.tanh(u) * scale + bias, log_prob


def plain(actor) -> TanhGaussianActor:
    """The (N = 1) seed-stacked actor as a plain single-seed TanhGaussianActor with its weights."""
    return seed_member(actor, TanhGaussianActor(OBS, ACT, (8, 8), LOW, HIGH), 0, 1)


def make_agent(**overrides) -> sac.SAC:
    torch.manual_seed(0)
    args = sac.Args(hidden=(8, 8), discount=0.9, tau=0.1, device="cpu", **overrides)
    return sac.SAC(args, OBS, ACT, LOW, HIGH, torch.device("cpu"))


def make_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(
        observations=torch.randn(B, OBS, generator=g),
        actions=torch.rand(B, ACT, generator=g) * (HIGH - LOW) + LOW,
        rewards=torch.randn(B, generator=g),
        next_observations=torch.randn(B, OBS, generator=g),
        terminals=torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
    )


# ------------------------------------------------------------------ the update's maths
def test_critic_update_matches_the_formula_and_its_gradient():
    agent = make_agent()
    with torch.no_grad():
        agent.log_alpha.fill_(math.log(0.3))  # a temperature other than 1, so alpha matters
        for p in agent.critic_target.parameters():  # a target that differs from the critic
            p.add_(0.1 * torch.randn_like(p))
    batch = make_batch()
    s, a, r, s2, d = batch
    before = copy.deepcopy(agent.critic)
    target_before = copy.deepcopy(agent.critic_target)
    # The update draws a' ~ pi(s') with one randn of shape (B, |A|) from the seed's stream; the same noise here.
    (eps,) = stream_draws(agent, 1, (B, ACT))
    metrics = agent.update(one_seed(batch), actor_steps=0)

    alpha = 0.3
    with torch.no_grad():
        a2, logp2 = plain_policy(plain(agent.actor), s2, eps)
        min_q = torch.minimum(plain_q(target_before, 0, s2, a2), plain_q(target_before, 1, s2, a2))
        y = r.double() + 0.9 * (1.0 - d.double()) * (min_q - alpha * logp2)
    params = list(before.parameters())
    loss = sum(((plain_q(before, j, s, a) - y) ** 2).mean() for j in range(2))
    grads = torch.autograd.grad(loss, params)

    assert float(metrics["alpha"]) == pytest.approx(alpha, rel=1e-6)
    assert float(metrics["critic_loss"]) == pytest.approx(loss.item(), rel=1e-5)
    for p_new, p_old, g in zip(agent.critic.parameters(), params, grads, strict=True):
        torch.testing.assert_close(p_new.grad.double(), g.double(), rtol=1e-4, atol=1e-6)
        # Adam's first step: p - lr * m_hat / (sqrt(v_hat) + eps) = p - lr * g / (|g| + 1e-8).
        step = 1e-3 * g.double() / (g.double().abs() + 1e-8)
        torch.testing.assert_close(p_new.double(), p_old.double() - step, rtol=0, atol=2e-6)
    # Polyak: target <- (1 - tau) target + tau * critic, after the critic step.
    for t_new, t_old, p in zip(
        agent.critic_target.parameters(), target_before.parameters(), agent.critic.parameters(),
        strict=True,
    ):  # fmt: skip
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * p, rtol=1e-6, atol=1e-7)


def test_actor_and_temperature_steps_match_the_formulas():
    agent = make_agent()
    batch = make_batch()
    s = batch.observations
    _, eps_pi, eps_alpha = stream_draws(agent, 3, (B, ACT))
    actor_before = plain(copy.deepcopy(agent.actor))
    metrics = agent.update(one_seed(batch), actor_steps=1)
    critic_after = agent.critic  # the actor step uses the critic after its own step
    # Actor: mean(alpha * log pi(a|s) - min_j Q_j(s, a)), alpha = 1 (log alpha starts at 0).
    params = list(actor_before.parameters())
    a_pi, logp = plain_policy(actor_before, s, eps_pi)
    q_pi = torch.minimum(plain_q(critic_after, 0, s, a_pi), plain_q(critic_after, 1, s, a_pi))
    actor_loss = (1.0 * logp - q_pi).mean()
    grads = torch.autograd.grad(actor_loss, params)
    assert float(metrics["actor_loss"]) == pytest.approx(actor_loss.item(), rel=1e-5)
    assert float(metrics["entropy"]) == pytest.approx(-logp.mean().item(), rel=1e-5)
    for p, g in zip(agent.actor.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad[0].double(), g.double(), rtol=1e-4, atol=1e-6)

    # Temperature: mean(-exp(log alpha) * (log pi(a|s) + target_entropy)) with the stepped actor.
    with torch.no_grad():
        _, logp_new = plain_policy(plain(agent.actor), s, eps_alpha)
    alpha_loss = (-1.0 * (logp_new + (-ACT))).mean()
    assert float(metrics["alpha_loss"]) == pytest.approx(float(alpha_loss), rel=1e-5)
    # d alpha_loss / d log_alpha = alpha_loss (alpha = 1): Adam's first step moves log alpha by -lr * sign.
    expected = -1e-3 * math.copysign(1.0, float(alpha_loss))
    assert agent.log_alpha.item() == pytest.approx(expected, rel=1e-4)


def test_log_prob_is_the_exact_change_of_variables_and_cleanrls_differs_by_its_epsilon():
    # What algos/sac.py's docstring says about nets.TanhGaussianActor and CleanRL's get_action.
    torch.manual_seed(0)
    actor = TanhGaussianActor(OBS, ACT, (8, 8), LOW, HIGH)
    s = torch.randn(64, OBS)
    scale, bias = (HIGH - LOW).double() / 2, (HIGH + LOW).double() / 2
    for shift, cleanrl_gap in ((0.0, (0.0, 1e-4)), (6.0, (1e-2, 1.0))):
        # shift 6: u near 6, where 1 - tanh(u)^2 ~ 2e-5 and the 1e-6 inside CleanRL's log matters.
        with torch.no_grad():
            actor.mean.bias.add_(shift)
        rng = torch.get_rng_state()
        eps = torch.randn(64, ACT)
        torch.set_rng_state(rng)
        action, log_prob, _ = actor(s)
        a_plain, exact = plain_policy(actor, s, eps)
        torch.testing.assert_close(action.double(), a_plain, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(log_prob.double(), exact, rtol=0, atol=1e-4)
        # CleanRL subtracts log(scale * (1 - tanh(u)^2) + 1e-6) instead of log(scale * (1 - tanh(u)^2)).
        one_minus_y2 = 1 - ((a_plain - bias) / scale) ** 2
        cleanrl = (
            exact
            + torch.log(scale * one_minus_y2).sum(1)
            - torch.log(scale * one_minus_y2 + 1e-6).sum(1)
        )
        gap = (exact - cleanrl).mean().item()
        assert cleanrl_gap[0] <= gap < cleanrl_gap[1], (shift, gap)
    # Saturated tanh: ours stays finite where 1 - tanh(u)^2 is 0 in floating point.
    with torch.no_grad():
        actor.mean.bias.fill_(30.0)
    assert torch.isfinite(actor(s)[1]).all()


# ------------------------------------------------------------------ runs
def test_sac_smoke_and_resume_restores_buffer(tmp_path):
    base = sac.Args(
        env_id="Pendulum-v1", total_steps=300, learning_starts=100, eval_every=150, eval_episodes=2,
        log_every=50, batch_size=32, save_model=True, progress=False,
    )  # fmt: skip
    first = sac.main(replace(base, run_dir=str(tmp_path / "run")))
    assert (
        first["steps"] == 300 and first["return"] is not None and first["normalized_score"] is None
    )
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["buffer"]["size"] == 300 and ckpt["step"] == 300
    assert {"terminals", "timeouts"} <= set(ckpt["buffer"])
    assert {"actor", "critic", "critic_target", "log_alpha", "alpha_opt"} <= set(ckpt)
    assert {"charts/episodic_return", "losses/critic_loss", "losses/alpha", "eval/return"} <= tags(
        str(tmp_path / "run")
    )
    resumed = sac.main(
        replace(sac.Args(), resume=str(tmp_path / "run"), total_steps=450, progress=False)
    )
    assert resumed["resumed_from"] == 300 and resumed["steps"] == 450
    after = load_checkpoint(tmp_path / "run")
    assert after["buffer"]["size"] == 450
    assert not torch.equal(after["log_alpha"], ckpt["log_alpha"])  # the temperature kept learning


def test_sac_hopper_gets_normalized_score(tmp_path):
    metrics = sac.main(sac.Args(env_id="Hopper-v4", total_steps=120, learning_starts=60, eval_every=120,
                                eval_episodes=1, batch_size=16, run_dir=str(tmp_path), progress=False))  # fmt: skip
    assert metrics["normalized_score"] is not None


def test_sac_flags_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(UsageError, match="--policy-freq 0"):
        sac.main(sac.Args(env_id="Pendulum-v1", policy_freq=0, run_dir=str(tmp_path / "a")))
    with pytest.raises(UsageError, match="--discount 1.5"):
        sac.main(sac.Args(env_id="Pendulum-v1", discount=1.5, run_dir=str(tmp_path / "b")))
    with pytest.raises(UsageError, match="flat Box"):
        sac.main(sac.Args(env_id="CartPole-v1", run_dir=str(tmp_path / "c")))
    assert not any(tmp_path.iterdir())


def test_interrupted_hopper_run_resumes_bit_exactly(
    tmp_path, interrupt_evaluation, assert_same_state
):
    # Killed after the checkpoint at step 200, mid-episode and after the random warm-up, then resumed:
    # weights, optimisers, replay buffer, RNGs, the envs' MuJoCo states and metrics.json equal the
    # uninterrupted run's (when the episodes restarted on --resume, none of these held).
    base = sac.Args(
        env_id="Hopper-v4", total_steps=400, learning_starts=150, eval_every=200, eval_episodes=2,
        log_every=100, batch_size=32, hidden=(32, 32), num_envs=2, save_model=True, progress=False,
        seed=3,
    )  # fmt: skip
    straight = sac.main(replace(base, run_dir=str(tmp_path / "straight")))
    interrupt_evaluation(2)
    with pytest.raises(KeyboardInterrupt):
        sac.main(replace(base, run_dir=str(tmp_path / "interrupted")))
    interrupt_evaluation(0)
    saved = load_checkpoint(tmp_path / "interrupted")
    assert saved["step"] == 200
    assert (saved["envs"]["episode_length"] > 0).all()  # the checkpoint is mid-episode
    resumed = sac.main(
        sac.Args(resume=str(tmp_path / "interrupted"), total_steps=400, progress=False)
    )

    a = load_checkpoint(tmp_path / "straight")
    b = load_checkpoint(tmp_path / "interrupted")
    assert a["step"] == b["step"] == 400 and b["buffer"]["size"] == 400
    a["run"].pop("wall_time"), b["run"].pop("wall_time")
    assert assert_same_state(a, b) > 30
    skip = {"wall_time_s", "run_dir", "resumed_from"}
    assert resumed["resumed_from"] == 200 and straight["resumed_from"] == 0
    assert {k: v for k, v in resumed.items() if k not in skip} == {
        k: v for k, v in straight.items() if k not in skip
    }
    assert resumed["return"] is not None and resumed["normalized_score"] is not None


def test_compiled_group_runs(tmp_path):
    # torch.compile of the seed-stacked update: FlatAdam's step and the packed Polyak update stay outside the graph.
    out = sac.main(sac.Args(
        env_id="Pendulum-v1", total_steps=200, learning_starts=100, batch_size=16, hidden=(16, 16),
        eval_every=200, eval_episodes=1, num_seeds=2, compile=True, run_dir=str(tmp_path), progress=False,
    ))  # fmt: skip
    assert [m["steps"] for m in out["seeds"]] == [200, 200]
    assert all(math.isfinite(m["return"]) for m in out["seeds"])
