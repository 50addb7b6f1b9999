"""A2PR: target selection and BC weights on hand-made batches, the update and its variant flags against the
formulas on a fixed batch, the conditional VAE, --num-seeds, smoke run, learning."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from formulas import (
    actor_layers,
    assert_critic_gradient,
    critic_member,
    mlp_forward,
    td3_critic_step,
    td3_target,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ocrl.algos import a2pr
from ocrl.data import Batch
from ocrl.nets import ConditionalVAE
from ocrl.nets.seeds import SeedStreams, init_seeds, seed_member

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"actor_hidden": (32, 32), "critic_hidden": (32, 32), "vae_hidden": (32, 32)}


def scalars(run_dir: str, tag: str) -> list[float]:
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def tags(run_dir: str) -> set[str]:
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return set(acc.Tags()["scalars"])


# Five samples: VAE better, dataset better, a tie, both negative, both positive.
ADV_DATA = torch.tensor([-1.0, 2.0, 0.5, -3.0, 1.0])
ADV_VAE = torch.tensor([1.0, -1.0, 0.5, -2.0, 3.0])


def test_select_target_picks_higher_advantage_ties_to_vae():
    data = torch.arange(10.0).reshape(5, 2)
    vae = -data - 100.0
    target, use_vae = a2pr.select_target(ADV_DATA, ADV_VAE, data, vae)
    assert use_vae.tolist() == [True, False, True, True, True]
    expected = torch.stack([vae[0], data[1], vae[2], vae[3], vae[4]])
    torch.testing.assert_close(target, expected, rtol=0, atol=0)


def test_select_target_keeps_the_vae_actions_graph():
    vae = torch.zeros(5, 2, requires_grad=True)
    data = torch.ones(5, 2)
    target, _ = a2pr.select_target(ADV_DATA, ADV_VAE, data, vae)
    target.sum().backward()
    # Gradient reaches a~ exactly where it is the target (rows 0, 2, 3, 4), not where a is.
    assert vae.grad[:, 0].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]


def test_bc_weight_is_mask_when_either_advantage_is_positive():
    # The four cases of the released code's bool OR: both / only a~ / only a / neither positive.
    adv_vae = torch.tensor([1.0, 1.0, -1.0, -1.0])
    adv_data = torch.tensor([1.0, -1.0, 1.0, -1.0])
    w = a2pr.bc_weights(adv_data, adv_vae, mask=0.5)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.5, 0.0]), rtol=0, atol=0)
    # The same as the released expression on bool tensors, written out.
    released = 0.5 * ((adv_vae >= 0) + (adv_data > 0))
    torch.testing.assert_close(w, released.float(), rtol=0, atol=0)


def test_bc_weights_and_tie_rules():
    w = a2pr.bc_weights(ADV_DATA, ADV_VAE, mask=0.4)
    # 1[A(s,a~) >= 0] OR 1[A(s,a) > 0]: 1, 1, 1, 0, 1
    torch.testing.assert_close(w, torch.tensor([0.4, 0.4, 0.4, 0.0, 0.4]))
    # Q1(s,a) = V(s) and Q1(s,a~) = V(s): the dataset action does not count (>), the VAE action does (>=).
    zero = torch.zeros(3)
    torch.testing.assert_close(a2pr.bc_weights(zero, zero, mask=1.5), torch.full((3,), 1.5))
    torch.testing.assert_close(
        a2pr.bc_weights(zero, torch.full((3,), -1e-6), mask=1.5), torch.zeros(3)
    )
    # A threshold eps_A moves both indicators, with the same tie rules.
    w = a2pr.bc_weights(
        torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.0, 0.5, 0.5]), mask=1.0, threshold=1.0
    )
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 0.0]))


def test_vae_shapes_bounds_and_gradients():
    torch.manual_seed(0)
    vae = ConditionalVAE(5, 3, hidden=(16, 16), action_low=-2.0, action_high=[1.0, 2.0, 3.0])
    assert vae.latent_dim == 6  # 2 |A|
    obs, act = torch.randn(7, 5), torch.rand(7, 3)
    recon, mean, std = vae(obs, act)
    assert recon.shape == (7, 3) and mean.shape == std.shape == (7, 6)
    assert bool((std >= torch.exp(torch.tensor(-4.0)) - 1e-7).all())
    prior = vae.decode(torch.randn(1000, 5) * 10)
    assert bool((prior >= -2.0).all() and (prior <= torch.tensor([1.0, 2.0, 3.0])).all())
    assert vae.decode(obs, torch.zeros(7, 6)).shape == (7, 3)
    loss = recon.square().sum() + mean.sum() + std.sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())


def test_a_seed_stacked_vaes_slice_is_the_plain_vae():
    # ConditionalVAE(num_seeds=3): seed k's slice loads into a plain VAE and computes what it computes.
    vae3 = init_seeds(ConditionalVAE(5, 3, hidden=(16, 16), num_seeds=3), SeedStreams(range(3)))
    plain = seed_member(vae3, ConditionalVAE(5, 3, hidden=(16, 16)), 1, 3)
    obs, act, noise = torch.randn(3, 7, 5), torch.rand(3, 7, 3), torch.randn(3, 7, 6)
    for got, want in zip(vae3(obs, act, noise), plain(obs[1], act[1], noise[1]), strict=True):
        assert got.shape[:2] == (3, 7)
        torch.testing.assert_close(got[1], want, rtol=1e-6, atol=1e-6)


def one_seed(batch):
    """A (B, ...) batch as the (N = 1, B, ...) minibatch of a seed-stacked update."""
    return Batch(*(t.unsqueeze(0) for t in batch))


def test_vae_loss_decreases_on_toy_problem():
    torch.manual_seed(0)
    obs = torch.randn(512, 4)
    act = torch.tanh(obs @ torch.randn(4, 2))  # a deterministic function of the state
    vae = ConditionalVAE(4, 2, hidden=(64, 64))
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        recon, mean, std = vae(obs, act)
        kl = -0.5 * (1.0 + torch.log(std.square()) - mean.square() - std.square()).mean()
        return (recon - act).square().mean(), kl

    with torch.no_grad():
        first = losses()[0].item()
    for _ in range(300):
        recon_loss, kl = losses()
        opt.zero_grad()
        (recon_loss + 0.5 * kl).backward()
        opt.step()
    assert recon_loss.item() < 0.2 * first
    with torch.no_grad():  # decoding from the prior also fits the data
        assert (vae.decode(obs) - act).square().mean().item() < 0.3 * first


def test_a2pr_update_moves_the_actor_only_on_actor_iterations():
    torch.manual_seed(0)
    obs_dim, act_dim, b = 3, 2, 16
    args = a2pr.Args(actor_hidden=(8,), critic_hidden=(8,), vae_hidden=(8, 8))
    agent = a2pr.A2PR(args, obs_dim, act_dim, -1.0, 1.0, "cpu")
    batch = Batch(
        torch.randn(b, obs_dim), torch.rand(b, act_dim) * 2 - 1, torch.randn(b),
        torch.randn(b, obs_dim), torch.zeros(b),
    )  # fmt: skip
    before = [p.detach().clone() for p in agent.actor.parameters()]
    metrics = agent.update(one_seed(batch), update_actor=False)
    assert "actor_loss" not in metrics and "a2pr/vae_target_fraction" not in agent.diagnostics()
    assert all(torch.equal(p, q) for p, q in zip(agent.actor.parameters(), before, strict=True))
    metrics = agent.update(one_seed(batch), update_actor=True)
    stats = agent.diagnostics()
    assert all(bool(torch.isfinite(v)) for v in (*metrics.values(), *stats.values()))
    assert not all(torch.equal(p, q) for p, q in zip(agent.actor.parameters(), before, strict=True))
    # w is in {0, mask}: the zero fraction is exactly the fraction with neither advantage positive.
    seen = agent.seen
    neither = ((seen["adv_vae"] < 0) & (seen["adv_data"] <= 0)).float().mean()
    torch.testing.assert_close(stats["a2pr/weight_zero_fraction"][0], neither)
    assert set(seen["weight"].unique().tolist()) <= {0.0, args.mask}


def test_a2pr_bc_loss_equals_the_formula():
    # L_bc = mean over B x |A| of w (pi(s) - a*)^2, with a* and w from the two advantages.
    torch.manual_seed(1)
    args = a2pr.Args(actor_hidden=(8,), critic_hidden=(8,), vae_hidden=(8, 8), mask=0.7)
    agent = a2pr.A2PR(args, 3, 2, -1.0, 1.0, "cpu")
    batch = Batch(torch.randn(32, 3), torch.rand(32, 2) * 2 - 1, torch.randn(32),
                  torch.randn(32, 3), torch.zeros(32))  # fmt: skip
    metrics = agent.update(one_seed(batch), update_actor=True)
    seen = {key: value[0] for key, value in agent.seen.items()}  # the one seed's
    target = torch.where(
        (seen["adv_vae"] >= seen["adv_data"])[:, None], seen["vae_action"], batch.actions
    )
    w = 0.7 * ((seen["adv_vae"] >= 0) | (seen["adv_data"] > 0)).float()
    expected = (w[:, None] * (seen["pi"] - target) ** 2).mean()
    torch.testing.assert_close(metrics["bc_loss"][0], expected, rtol=1e-5, atol=1e-7)


LOW, HIGH = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
# Small networks; V's learning rate is large so that one V step moves V(s) across some advantages.
TINY = {
    "actor_hidden": (16, 16),
    "critic_hidden": (16, 16),
    "vae_hidden": (16, 16),
    "value_lr": 0.05,
}


@pytest.fixture
def batch64(fixed_batch):
    """64 fixed transitions in double precision, the default dtype while the test runs (its networks are
    double too): the formulas then match to 1e-9, far below the differences the variants make."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield Batch(*(x.double() for x in fixed_batch(b=64)))
    torch.set_default_dtype(previous)


def a2pr_iteration(batch: Batch, seed: int = 5, **flags):
    """One A2PR iteration of a fresh agent (networks from --seed 0) on `batch` (as one seed's minibatch), its
    random draws from its stream seeded with `seed`: (args, copy of the agent before it, the agent after it,
    metrics, diagnostics)."""
    args = a2pr.Args(**(TINY | flags))
    agent = a2pr.A2PR(args, batch.observations.shape[1], batch.actions.shape[1], LOW, HIGH, "cpu")
    # V shifted onto Q1(s, a), so that about half of the advantages are positive.
    with torch.no_grad():
        s, a = batch.observations[None], batch.actions[None]
        agent.value[-1].bias += (agent.critic.member(s, a, 0) - agent.value(s).squeeze(-1)).median()
    before = copy.deepcopy(agent)
    agent.streams.generators[0].manual_seed(seed)  # the seed's noise comes from its own stream
    metrics = agent.update(one_seed(batch), update_actor=True)
    return args, before, agent, metrics, agent.diagnostics()


def a2pr_formulas(args, before, after, batch: Batch, seed: int = 5) -> dict[str, torch.Tensor]:
    """One A2PR iteration as the reference writes it (critic -> V -> VAE -> actor), with the variant flags.

    `before` holds the networks before the iteration, `after` those after it: each of the critic, V and the
    VAE is stepped once, in that order, and not touched again, so the later parts use `after`'s. The three
    random draws (the target smoothing noise, the VAE step's z, the actor step's z) are redrawn from a
    generator seeded with `seed` (the seed's stream). The agents' networks are seed-stacked (one seed)."""
    s, a, r, s2, d = batch
    b, latent = len(s), after.vae.latent_dim
    a2, y = td3_target(
        before,
        batch,
        LOW,
        HIGH,
        seed,
        args.discount,
        args.policy_noise,
        args.noise_clip,
        stream=True,
    )
    stream = torch.Generator().manual_seed(seed)
    torch.randn(a.shape, generator=stream)  # td3_target's smoothing noise, the update's first draw
    z_vae, z_pi = (torch.randn(b, latent, generator=stream) for _ in range(2))  # its next two
    q1, q2 = critic_member(after.critic, 0), critic_member(after.critic, 1)

    def V(agent, x):
        return agent.value(x[None])[0].squeeze(-1)

    def encode(agent, x, u):
        return [t[0] for t in agent.vae.encode(x[None], u[None])]

    def decode(agent, x, z):
        return agent.vae.decode(x[None], z[None])[0]

    def Q1(x, u):
        return mlp_forward(q1, torch.cat([x, u], 1)).squeeze(-1)

    out = {}
    with torch.no_grad():
        # V: mean of (V(s) - min(y_online, y))^2, or the expectile loss |tau - 1[diff < 0]| diff^2.
        v_before, v_after = V(before, s), V(after, s)
        y_online = r + args.discount * (1 - d) * torch.min(
            Q1(s2, a2), mlp_forward(q2, torch.cat([s2, a2], 1)).squeeze(-1)
        )
        diff = torch.min(y_online, y) - v_before
        out["value_loss_mse"] = (diff**2).mean()
        out["value_loss_expectile"] = (
            (args.expectile - (diff < 0).to(diff.dtype)).abs() * diff**2
        ).mean()
        # stale: V(s) from before V's step; fresh: from after it.
        v_s = v_before if args.value_timing == "stale" else v_after
        out["v_s"] = v_s
        # VAE: reconstruction masked by 1[A(s, a) > eps_A], KL on every sample.
        adv_data = Q1(s, a) - v_s
        positive = (adv_data > args.adv_threshold).float()
        mean, std = encode(before, s, a)
        recon = decode(before, s, mean + std * z_vae)
        recon_loss = (args.vae_weight * positive[:, None] * (recon - a) ** 2).mean()
        kl = -0.5 * (1 + torch.log(std**2) - mean**2 - std**2).mean()
        out.update(adv_data=adv_data, positive=positive, vae_loss=recon_loss + 0.5 * kl)

    # Actor: a~ = VAE(s, pi(s)) with its graph (unless detached), a* and w from the two advantages.
    theta = actor_layers(before.actor)
    params = [t.requires_grad_() for pair in theta for t in pair]
    scale, bias = (HIGH - LOW) / 2, (HIGH + LOW) / 2
    pi = torch.tanh(mlp_forward(theta, s)) * scale + bias
    q_pi = Q1(s, pi)
    lmbda = args.alpha / q_pi.abs().mean().detach()
    mean, std = encode(after, s, pi)
    vae_action = decode(after, s, mean + std * z_pi)
    if args.detach_vae_target:
        vae_action = vae_action.detach()
    with torch.no_grad():
        adv_vae = Q1(s, vae_action) - v_s
    use_vae = adv_vae >= adv_data
    target = torch.where(use_vae[:, None], vae_action, a)
    eps_a = args.adv_threshold
    w = args.mask * ((adv_vae >= eps_a) | (adv_data > eps_a)).float()
    bc_loss = (w[:, None] * (pi - target) ** 2).mean()
    actor_loss = -lmbda * q_pi.mean() + bc_loss
    grads = torch.autograd.grad(actor_loss, params)
    # Back to nn.Linear's (out, in) layout (a seed's slice of SeedLinear's), in actor.parameters() order.
    out["actor_grads"] = [g.t() if g.dim() == 2 else g for g in grads]
    out.update(adv_vae=adv_vae, use_vae=use_vae, w=w, bc_loss=bc_loss.detach(),
               actor_loss=actor_loss.detach())  # fmt: skip
    return out


def assert_matches(metrics, stats, agent, want, value_loss: str = "mse") -> None:
    """The update's losses, logged statistics and actor gradient (of its one seed) equal the formulas'."""
    close = {"rtol": 1e-9, "atol": 1e-12}  # in float64
    metrics, stats = ({k: v[0] for k, v in d.items()} for d in (metrics, stats))
    torch.testing.assert_close(metrics["value_loss"], want[f"value_loss_{value_loss}"], **close)
    torch.testing.assert_close(stats["a2pr/v_mean"], want["v_s"].mean(), **close)
    torch.testing.assert_close(stats["a2pr/positive_adv_fraction"], want["positive"].mean())
    torch.testing.assert_close(metrics["vae_loss"], want["vae_loss"], **close)
    torch.testing.assert_close(stats["a2pr/vae_target_fraction"], want["use_vae"].float().mean())
    torch.testing.assert_close(stats["a2pr/weight_zero_fraction"], (want["w"] == 0).float().mean())
    torch.testing.assert_close(metrics["bc_loss"], want["bc_loss"], **close)
    torch.testing.assert_close(metrics["actor_loss"], want["actor_loss"], **close)
    for p, g in zip(agent.actor.parameters(), want["actor_grads"], strict=True):
        torch.testing.assert_close(p.grad[0], g, **close)  # the gradient of the actor's step


def test_a2pr_critic_step_equals_td3s_formula(fixed_batch):
    # a2pr.py writes TD3's critic step out again: smoothed target action, clipped double Q, (1 - d)
    # bootstrap, the sum of the two MSEs; checked against the plain formula, loss and gradient.
    batch = fixed_batch(b=32)
    args = a2pr.Args(**TINY, discount=0.9, policy_noise=0.3, noise_clip=0.4)
    agent = a2pr.A2PR(args, 3, 2, LOW, HIGH, "cpu")
    expected, grads = td3_critic_step(agent, batch, LOW, HIGH, 5, 0.9, 0.3, 0.4, stream=True)
    agent.streams.generators[0].manual_seed(5)  # the seed's noise comes from its own stream
    metrics = agent.update(one_seed(batch), update_actor=True)
    torch.testing.assert_close(metrics["critic_loss"][0], expected, rtol=1e-5, atol=1e-6)
    # The step followed that loss (V's, the VAE's and the actor's steps leave the critic's gradient).
    assert_critic_gradient(agent.critic, grads)


def test_a2pr_default_iteration_equals_the_formulas(batch64):
    # The released code's iteration: MSE V loss, stale V(s), eps_A = 0, a~ with its graph.
    batch = batch64
    args, before, agent, metrics, stats = a2pr_iteration(batch)
    want = a2pr_formulas(args, before, agent, batch)
    assert_matches(metrics, stats, agent, want)
    # The batch exercises both targets and both weights.
    assert 0 < want["use_vae"].float().mean() < 1 and 0 < (want["w"] == 0).float().mean() < 1


def test_a2pr_expectile_value_loss(batch64):
    # --value-loss expectile: mean |tau - 1[diff < 0]| diff^2, diff = min(y_online, y) - V(s).
    batch = batch64
    args, before, agent, metrics, stats = a2pr_iteration(
        batch, value_loss="expectile", expectile=0.7
    )
    want = a2pr_formulas(args, before, agent, batch)
    assert_matches(metrics, stats, agent, want, value_loss="expectile")
    # ... which is not the default MSE on this batch, so a loss that ignored the flag would fail above.
    assert abs(want["value_loss_expectile"] - want["value_loss_mse"]) > 0.1 * want["value_loss_mse"]
    # and V's step follows it: V after the expectile step differs from V after the MSE step.
    default = a2pr_iteration(batch)[2]
    obs = batch.observations[None]
    assert not torch.allclose(agent.value(obs), default.value(obs))


def test_a2pr_value_timing_fresh_uses_v_after_its_step(batch64):
    # stale (the code): the VAE mask and the actor use V(s) from before V's step; fresh: from after it.
    batch = batch64
    runs = {timing: a2pr_iteration(batch, value_timing=timing) for timing in ("stale", "fresh")}
    wants = {}
    for timing, (args, before, agent, metrics, stats) in runs.items():
        wants[timing] = want = a2pr_formulas(args, before, agent, batch)
        assert_matches(metrics, stats, agent, want)
    stale, fresh = wants["stale"], wants["fresh"]
    # The two differ on this batch: V(s), and through it the mask and the BC weights.
    assert not torch.allclose(stale["v_s"], fresh["v_s"], atol=1e-3)
    assert not torch.equal(stale["positive"], fresh["positive"])
    assert not torch.equal(stale["w"], fresh["w"])
    v_mean = {timing: run[4]["a2pr/v_mean"][0] for timing, run in runs.items()}
    assert abs(v_mean["stale"] - v_mean["fresh"]) > 1e-3


def test_a2pr_detach_vae_target_cuts_the_actor_gradient_through_the_vae(batch64):
    # Without the flag the BC term back-propagates through a~ = VAE(s, pi(s)) into pi; with it, a~ is a
    # constant. Each actor gradient equals its formula's, and the two differ.
    batch = batch64
    grads = {}
    for detach in (False, True):
        args, before, agent, metrics, stats = a2pr_iteration(batch, detach_vae_target=detach)
        want = a2pr_formulas(args, before, agent, batch)
        assert_matches(metrics, stats, agent, want)
        grads[detach] = [p.grad for p in agent.actor.parameters()]
    # Samples whose target is a~ with a non-zero weight exist, so the VAE path carries gradient.
    assert bool((want["use_vae"] & (want["w"] > 0)).any())
    # The path through the VAE's encoder and decoder is a small part of the gradient at initialisation, but
    # far above the 1e-9 to which each gradient matches its formula.
    change = max((g - h).norm() / g.norm() for g, h in zip(grads[False], grads[True], strict=True))
    assert change > 1e-5, change


def test_a2pr_adv_threshold_moves_the_mask_and_the_weights(batch64):
    # eps_A enters the VAE's mask 1[A(s,a) > eps_A] and both BC-weight indicators.
    batch = batch64
    args, before, agent, *_ = a2pr_iteration(batch)
    adv = a2pr_formulas(args, before, agent, batch)["adv_data"]
    # A threshold half way between the 48th and 49th of the 64 advantages (eps_A changes neither the critic
    # nor V, so the advantages stay the same).
    ranked = adv.sort().values
    eps_a = float(ranked[47] + ranked[48]) / 2
    args, before, agent, metrics, stats = a2pr_iteration(batch, adv_threshold=eps_a)
    want = a2pr_formulas(args, before, agent, batch)
    assert_matches(metrics, stats, agent, want)
    assert stats["a2pr/positive_adv_fraction"][0] == 16 / 64
    # The threshold changes the mask and the weights on this batch, compared with eps_A = 0.
    at_zero = a2pr_formulas(replace(args, adv_threshold=0.0), before, agent, batch)
    assert at_zero["positive"].mean() != 16 / 64
    assert not torch.equal(want["w"], at_zero["w"])


def test_a2pr_smoke_logs_statistics(hopper_random_file, tmp_path):
    args = a2pr.Args(
        dataset=hopper_random_file, total_steps=100, eval_every=100, eval_episodes=2, log_every=50,
        run_dir=str(tmp_path / "run"), progress=False,
    )  # fmt: skip
    metrics = a2pr.main(args)
    assert metrics["steps"] == 100 and metrics["normalized_score"] is not None
    logged = tags(str(tmp_path / "run"))
    assert {
        "eval/normalized_score", "losses/critic_loss", "losses/actor_loss", "losses/value_loss",
        "losses/vae_loss", "losses/bc_loss", "losses/lmbda", "charts/updates_per_s",
        "a2pr/vae_target_fraction", "a2pr/positive_adv_fraction", "a2pr/weight_zero_fraction",
        "a2pr/v_mean", "a2pr/q_data_mean", "a2pr/v_target_mean", "a2pr/vae_recon_loss",
        "a2pr/vae_kl", "a2pr/vae_policy_distance", "a2pr/q_pi_abs_mean",
    } <= logged  # fmt: skip
    run = str(tmp_path / "run")
    # Diagnostics are interval means, written once per log interval (at 50 and 100).
    assert len(scalars(run, "a2pr/positive_adv_fraction")) == 2
    # lambda * mean|Q1(s, pi)| = alpha
    lam, qabs = scalars(run, "losses/lmbda")[-1], scalars(run, "a2pr/q_pi_abs_mean")[-1]
    assert lam * qabs == pytest.approx(2.5, rel=0.2)  # lambda is the last step's, |Q| a mean


def test_a2pr_variants_run(hopper_random_file, tmp_path):
    args = a2pr.Args(
        dataset=hopper_random_file, total_steps=10, eval_every=10, eval_episodes=1, log_every=10,
        value_loss="expectile", value_timing="fresh", detach_vae_target=True, adv_threshold=0.1,
        run_dir=str(tmp_path), progress=False, **SMALL,
    )  # fmt: skip
    assert a2pr.main(args)["steps"] == 10


def test_a2pr_presets_in_help():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / "a2pr.py"), "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0
    for text in ("hopper-medium-v2", "halfcheetah-medium-expert-v2", "--adv-threshold", "--mask"):
        assert text in proc.stdout, text
    assert a2pr.PRESETS["hopper-medium-v2"] == {
        "alpha": 2.5, "vae_weight": 1.0, "mask": 0.4, "discount": 0.995,
    }  # fmt: skip
    assert a2pr.PRESETS["halfcheetah-medium-v2"]["alpha"] == 40.0


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a2pr_learns_on_shipped_hopper_medium(tmp_path, precision):
    # The paper's networks (3 x 256 actor, 4 x 256 critics and V, 750-wide VAE) cost about 8x TD3+BC per update
    # on this CPU, so the test uses 2 x 128 for every network and mask 4.0 (BC weight 0 or 4).
    # Measured with the released code's weight (mask when either advantage is positive; 2-core CPU,
    # OMP_NUM_THREADS=1, 4,000 updates, 10 evaluation episodes, evaluations every 1,000, 22-29 s each):
    # seeds 0 / 1 / 2 scored 21.9 / 21.2 / 22.6 at 4,000 updates (best 28.2 / 31.4 / 34.8). mask 2.0 scored
    # 3.8 / 22.1 / 18.6 and mask 3.0 4.0 / 22.0 (seeds 0, 1): too slow to learn for a test at this budget.
    # An untrained actor scores ~1, the data's behaviour policy 33; the threshold leaves a margin of ~9.
    metrics = a2pr.main(
        a2pr.Args(
            dataset="ocrl/hopper/medium-v0", total_steps=4000, eval_every=4000, eval_episodes=10,
            seed=0, log_every=1000, run_dir=str(tmp_path), progress=False, mask=4.0,
            actor_hidden=(128, 128), critic_hidden=(128, 128), vae_hidden=(128, 128),
            precision=precision,
        )
    )  # fmt: skip
    assert metrics["normalized_score"] > 12.0, metrics
    # The target differs from TD3+BC's: a share of the samples regress onto the VAE action.
    frac = scalars(str(tmp_path), "a2pr/vae_target_fraction")
    assert all(0.0 < f < 1.0 for f in frac), frac
    positive = scalars(str(tmp_path), "a2pr/positive_adv_fraction")
    assert all(0.0 < f < 1.0 for f in positive), positive
