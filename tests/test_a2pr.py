"""A2PR: target selection and BC weights on hand-made batches, the conditional VAE, smoke run, resume, learning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ocrl.algos import a2pr
from ocrl.data import Batch
from ocrl.nets import ConditionalVAE

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
    metrics = agent.update(batch, update_actor=False)
    assert "actor_loss" not in metrics and "a2pr/vae_target_fraction" not in agent.diagnostics()
    assert all(torch.equal(p, q) for p, q in zip(agent.actor.parameters(), before, strict=True))
    metrics = agent.update(batch, update_actor=True)
    stats = agent.diagnostics()
    assert all(bool(torch.isfinite(v)) for v in (*metrics.values(), *stats.values()))
    assert not all(torch.equal(p, q) for p, q in zip(agent.actor.parameters(), before, strict=True))
    # w is in {0, mask}: the zero fraction is exactly the fraction with neither advantage positive.
    seen = agent.seen
    neither = ((seen["adv_vae"] < 0) & (seen["adv_data"] <= 0)).float().mean()
    torch.testing.assert_close(stats["a2pr/weight_zero_fraction"], neither)
    assert set(seen["weight"].unique().tolist()) <= {0.0, args.mask}


def test_a2pr_bc_loss_equals_the_formula():
    # L_bc = mean over B x |A| of w (pi(s) - a*)^2, with a* and w from the two advantages.
    torch.manual_seed(1)
    args = a2pr.Args(actor_hidden=(8,), critic_hidden=(8,), vae_hidden=(8, 8), mask=0.7)
    agent = a2pr.A2PR(args, 3, 2, -1.0, 1.0, "cpu")
    batch = Batch(torch.randn(32, 3), torch.rand(32, 2) * 2 - 1, torch.randn(32),
                  torch.randn(32, 3), torch.zeros(32))  # fmt: skip
    metrics = agent.update(batch, update_actor=True)
    seen = agent.seen
    target = torch.where(
        (seen["adv_vae"] >= seen["adv_data"])[:, None], seen["vae_action"], batch.actions
    )
    w = 0.7 * ((seen["adv_vae"] >= 0) | (seen["adv_data"] > 0)).float()
    expected = (w[:, None] * (seen["pi"] - target) ** 2).mean()
    torch.testing.assert_close(metrics["bc_loss"], expected, rtol=1e-5, atol=1e-7)


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
def test_a2pr_learns_on_shipped_hopper_medium(tmp_path):
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
        )
    )  # fmt: skip
    assert metrics["normalized_score"] > 12.0, metrics
    # The target differs from TD3+BC's: a share of the samples regress onto the VAE action.
    frac = scalars(str(tmp_path), "a2pr/vae_target_fraction")
    assert all(0.0 < f < 1.0 for f in frac), frac
    positive = scalars(str(tmp_path), "a2pr/positive_adv_fraction")
    assert all(0.0 < f < 1.0 for f in positive), positive
