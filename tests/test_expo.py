"""EXPO and RLPD (algos/expo.py): the update's maths against formulas written here, OTF selection, flags."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from ocrl.algos import expo
from ocrl.data import Batch, ReplayBuffer
from ocrl.experiment import UsageError
from ocrl.nets.core import EnsembleLayerNorm, EnsembleLinear

OBS, ACT, B, E = 3, 2, 6, 4


# ------------------------------------------------------------------ plain formulas, float64
def plain_q(critic, j: int, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Q_j(s, a) from member j's weights: x W + b, LayerNorm (eps 1e-6) with member j's affine, ReLU."""
    x = torch.cat([s, a], dim=1).double()
    layers = list(critic.net)
    for layer in layers:
        if isinstance(layer, EnsembleLinear):
            x = x @ layer.weight[j].double() + layer.bias[j, 0].double()
        elif isinstance(layer, EnsembleLayerNorm):
            mu, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
            x = (x - mu) / torch.sqrt(var + 1e-6) * layer.weight[j, 0].double()
            x = x + layer.bias[j, 0].double()
        else:
            x = torch.relu(x)
    return x[:, 0]


def plain_tanh_normal(policy, x: torch.Tensor, eps: torch.Tensor, scale: float):
    """(scale * tanh(u), log pi) with u = mu + sigma eps, log-std clipped to [-20, 2], by the change of variables."""
    h = x.double()
    for lin in policy.layers:
        h = torch.relu(h @ lin.weight.double().T + lin.bias.double())
    mu = h @ policy.mean.weight.double().T + policy.mean.bias.double()
    log_std = (h @ policy.log_std.weight.double().T + policy.log_std.bias.double()).clamp(-20, 2)
    u = mu + log_std.exp() * eps.double()
    gauss = -0.5 * eps.double() ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    # log(1 - tanh(u)^2) = -2 log cosh(u), which float64 keeps exact where 1 - tanh(u)^2 rounds.
    log_prob = (gauss + 2 * torch.log(torch.cosh(u))).sum(1) - u.shape[1] * math.log(scale)
    return scale * torch.tanh(u), log_prob


def make_agent(**overrides) -> expo.EXPO:
    torch.manual_seed(0)
    fields = dict(
        hidden=(8, 8), num_qs=E, num_min_qs=2, discount=0.9, tau=0.1, device="cpu",
        diffusion_width=8, diffusion_blocks=1, time_dim=4, n_samples=3, n_edit_samples=2,
        diffusion_steps=3, edit_action_scale=0.1,
    )  # fmt: skip
    fields.update(overrides)
    agent = expo.EXPO(expo.Args(**fields), OBS, ACT, torch.device("cpu"))
    with torch.no_grad():  # LayerNorm affines and a target that differ from the defaults
        for p in agent.critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for p in agent.critic_target.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return agent


def make_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(
        observations=torch.randn(B, OBS, generator=g),
        actions=torch.rand(B, ACT, generator=g) * 2 - 1,
        rewards=torch.randn(B, generator=g),
        next_observations=torch.randn(B, OBS, generator=g),
        terminals=torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
    )


# ------------------------------------------------------------------ critic
def test_subset_q_is_the_selected_members():
    agent = make_agent()
    s, a = make_batch().observations, make_batch().actions
    idx = torch.tensor([3, 1])
    got = agent.critic_target.members(s, a, idx)
    torch.testing.assert_close(got, agent.critic_target(s, a)[idx])
    for row, j in enumerate(idx.tolist()):
        torch.testing.assert_close(got[row].double(), plain_q(agent.critic_target, j, s, a))


def test_critic_step_backs_up_the_otf_argmax_with_an_independent_subset_min():
    agent = make_agent()
    batch = make_batch()
    s, a, r, s2, d = batch
    cands = torch.rand(B, 3, ACT) * 2 - 1
    q_sel = torch.randn(B, 3)
    agent.select = lambda obs, diffusion: (cands, q_sel, cands)  # S's scores, fixed here
    agent.subset = lambda: torch.tensor([2, 0])  # S' of the value
    before, target_before = copy.deepcopy(agent.critic), copy.deepcopy(agent.critic_target)
    metrics = agent.critic_step(batch)

    with torch.no_grad():
        a2 = cands[torch.arange(B), q_sel.argmax(1)]
        next_q = torch.minimum(plain_q(target_before, 2, s2, a2), plain_q(target_before, 0, s2, a2))
        y = r.double() + 0.9 * (1 - d.double()) * next_q  # no entropy term (the code's default)
    params = list(before.parameters())
    loss = sum(((plain_q(before, j, s, a) - y) ** 2).mean() for j in range(E)) / E
    grads = torch.autograd.grad(loss, params)
    assert float(metrics["critic_loss"]) == pytest.approx(loss.item(), rel=1e-5)
    for p, g in zip(agent.critic.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad.double(), g.double(), rtol=1e-4, atol=1e-7)
    for t_new, t_old, p in zip(
        agent.critic_target.parameters(), target_before.parameters(), agent.critic.parameters(),
        strict=True,
    ):  # fmt: skip
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * p, rtol=1e-6, atol=1e-7)
    assert float(agent.seen["edited_fraction_backup"]) == pytest.approx(
        (q_sel.argmax(1) >= 3).float().mean().item()
    )


def test_backup_entropy_variants():
    batch = make_batch()
    s, a, r, s2, d = batch
    # EXPO (section 4.3, our reading): a* ~ softmax(beta Q) over candidates, y -= gamma alpha log p(a*).
    agent = make_agent(backup_entropy=True, sampling_beta=2.0)
    with torch.no_grad():
        agent.log_alpha.fill_(math.log(0.5))
    cands, q_sel = torch.rand(B, 3, ACT) * 2 - 1, torch.randn(B, 3)
    agent.select = lambda obs, diffusion: (cands, q_sel, cands)
    agent.subset = lambda: torch.tensor([1, 3])
    target_before, before = copy.deepcopy(agent.critic_target), copy.deepcopy(agent.critic)
    rng = torch.get_rng_state()
    pick = torch.multinomial((2.0 * q_sel).softmax(1), 1).squeeze(1)
    torch.set_rng_state(rng)
    metrics = agent.critic_step(batch)
    with torch.no_grad():
        a2 = cands[torch.arange(B), pick]
        log_p = torch.log(torch.exp(2.0 * q_sel) / torch.exp(2.0 * q_sel).sum(1, keepdim=True))
        log_p = log_p[torch.arange(B), pick].double()
        v = torch.minimum(plain_q(target_before, 1, s2, a2), plain_q(target_before, 3, s2, a2))
        y = r.double() + 0.9 * (1 - d.double()) * (v - 0.5 * log_p)
        loss = sum(((plain_q(before, j, s, a) - y) ** 2).mean() for j in range(E)) / E
    assert float(metrics["critic_loss"]) == pytest.approx(loss.item(), rel=1e-5)

    # RLPD: a' ~ pi(s'), y -= gamma alpha log pi(a'|s') (SAC's term).
    agent = make_agent(policy="gaussian", backup_entropy=True)
    agent.subset = lambda: torch.tensor([0, 1])
    target_before, before = copy.deepcopy(agent.critic_target), copy.deepcopy(agent.critic)
    rng = torch.get_rng_state()
    eps = torch.randn(B, ACT)
    torch.set_rng_state(rng)
    metrics = agent.critic_step(batch)
    with torch.no_grad():
        a2, logp2 = plain_tanh_normal(agent.actor, s2, eps, 1.0)
        v = torch.minimum(plain_q(target_before, 0, s2, a2), plain_q(target_before, 1, s2, a2))
        y = r.double() + 0.9 * (1 - d.double()) * (v - 1.0 * logp2)
        loss = sum(((plain_q(before, j, s, a) - y) ** 2).mean() for j in range(E)) / E
    assert float(metrics["critic_loss"]) == pytest.approx(loss.item(), rel=1e-5)


# ------------------------------------------------------------------ edit policy and temperature
def test_edit_policy_action_is_bounded_and_its_log_prob_is_the_change_of_variables():
    torch.manual_seed(0)
    policy = expo.TanhNormalPolicy(OBS + ACT, ACT, (8, 8), scale=0.05)
    with torch.no_grad():
        policy.mean.weight.mul_(30)  # saturate some tanh's
    x = torch.randn(64, OBS + ACT)
    rng = torch.get_rng_state()
    eps = torch.randn(64, ACT)
    torch.set_rng_state(rng)
    edit, log_prob, mean_edit = policy(x)
    plain_edit, plain_log_prob = plain_tanh_normal(policy, x, eps, 0.05)
    assert edit.abs().max() <= 0.05 and mean_edit.abs().max() <= 0.05
    assert edit.abs().max() > 0.049
    torch.testing.assert_close(edit.double(), plain_edit, rtol=1e-5, atol=1e-8)
    finite = (
        plain_log_prob.isfinite()
    )  # where 1 - tanh^2 underflows the plain form is -inf, ours is not
    torch.testing.assert_close(
        log_prob.double()[finite], plain_log_prob[finite], rtol=1e-4, atol=1e-4
    )
    assert log_prob.isfinite().all()


def test_edit_and_temperature_steps_match_the_formulas():
    agent = make_agent()
    with torch.no_grad():
        agent.log_alpha.fill_(math.log(0.3))
    batch = make_batch()
    s, a = batch.observations, batch.actions
    rng = torch.get_rng_state()
    eps = torch.randn(B, ACT)
    torch.set_rng_state(rng)
    edit_before = copy.deepcopy(agent.edit)
    metrics = agent.policy_step(batch)
    # L_edit = mean(alpha log pi_edit(a_hat | s, a) - mean_k Q_k(s, a + a_hat)), on the batch's own a.
    params = list(edit_before.parameters())
    a_hat, logp = plain_tanh_normal(edit_before, torch.cat([s, a], 1), eps, 0.1)
    q = sum(plain_q(agent.critic, j, s, a.double() + a_hat) for j in range(E)) / E
    loss = (0.3 * logp - q).mean()
    grads = torch.autograd.grad(loss, params)
    assert float(metrics["edit_loss"]) == pytest.approx(loss.item(), rel=1e-5)
    for p, g in zip(agent.edit.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad.double(), g.double(), rtol=1e-4, atol=1e-7)
    # L_alpha = alpha (H - H_target), H = -mean log pi of that step, H_target = -|A|/2 ('code').
    entropy = -logp.mean().item()
    assert float(metrics["entropy"]) == pytest.approx(entropy, rel=1e-5)
    assert float(metrics["alpha_loss"]) == pytest.approx(0.3 * (entropy + ACT / 2), rel=1e-5)
    # Adam's first step moves log alpha by -lr * sign(dL/dlog alpha) = -lr * sign(H - H_target).
    expected = math.log(0.3) - 3e-4 * math.copysign(1.0, entropy + ACT / 2)
    assert agent.log_alpha.item() == pytest.approx(expected, rel=1e-5)
    # With beta_edit 0.1 the edit entropy is at most |A| log 0.2 < -|A|/2: alpha can only grow.
    assert entropy < ACT * math.log(0.2) < -ACT / 2 and agent.log_alpha.item() > math.log(0.3)


def test_target_entropy_variants():
    args = expo.Args(edit_action_scale=0.05)
    assert expo.target_entropy(args, 3) == pytest.approx(-1.5)
    adjusted = replace(args, target_entropy="adjusted")
    assert expo.target_entropy(adjusted, 3) == pytest.approx(-1.5 + 3 * math.log(0.05))
    port = replace(args, target_entropy="port")
    assert expo.target_entropy(port, 3) == pytest.approx(-3 + 3 * math.log(0.1))
    agent = make_agent(target_entropy="port")
    assert agent.target_entropy == pytest.approx(-ACT + ACT * math.log(0.2))


def test_diffusion_step_imitates_the_batch_and_moves_the_ema_by_actor_tau():
    agent = make_agent(actor_tau=0.25)
    batch = make_batch()
    ema_before = copy.deepcopy(agent.diffusion_ema.ema_model)
    rng = torch.get_rng_state()
    expected = agent.diffusion.loss(batch.observations, batch.actions)
    torch.set_rng_state(rng)
    metrics = agent.diffusion_step(batch)
    assert float(metrics["bc_loss"]) == pytest.approx(expected.item(), rel=1e-6)
    assert agent.diffusion_opt.param_groups[0]["weight_decay"] == 1e-4
    for e_new, e_old, p in zip(
        agent.diffusion_ema.ema_model.parameters(), ema_before.parameters(),
        agent.diffusion.parameters(), strict=True,
    ):  # fmt: skip
        torch.testing.assert_close(e_new, 0.75 * e_old + 0.25 * p)


# ------------------------------------------------------------------ OTF selection
def test_otf_scores_base_and_edited_candidates_and_acting_picks_the_argmax():
    agent = make_agent()
    agent.subset = lambda: torch.tensor([1, 2])
    s = make_batch().observations
    torch.manual_seed(5)
    cands, q, base = agent.otf(s, agent.diffusion)
    assert cands.shape == (B, 5, ACT) and q.shape == (B, 5) and base.shape == (B, 3, ACT)
    torch.testing.assert_close(cands[:, :3], base)
    edits = cands[:, 3:] - base[:, :2]  # the edits of the first K base samples
    assert edits.abs().max() <= 0.1 + 1e-6 and base.abs().max() <= 1.0
    flat_s = s.repeat_interleave(5, 0)
    plain = torch.minimum(
        plain_q(agent.critic_target, 1, flat_s, cands.reshape(-1, ACT)),
        plain_q(agent.critic_target, 2, flat_s, cands.reshape(-1, ACT)),
    ).view(B, 5)
    torch.testing.assert_close(q.double(), plain, rtol=1e-5, atol=1e-6)
    # act() runs the same selection (EMA weights, here equal to the online ones) and takes the argmax.
    agent.select = lambda obs, diffusion: (cands, q, base)
    action = agent.act(s)
    torch.testing.assert_close(action, cands[torch.arange(B), plain.argmax(1)])
    assert float(agent.seen["edited_fraction_act"]) == pytest.approx(
        (plain.argmax(1) >= 3).float().mean()
    )


def test_clip_edited_actions_keeps_candidates_in_range():
    agent = make_agent(clip_edited_actions=True, edit_action_scale=0.9)
    with torch.no_grad():
        agent.edit.mean.bias.fill_(5.0)  # edits near +0.9: unclipped they would leave [-1, 1]
    cands, _, _ = agent.otf(make_batch().observations, agent.diffusion)
    assert cands.abs().max() <= 1.0
    agent = make_agent(edit_action_scale=0.9)
    with torch.no_grad():
        agent.edit.mean.bias.fill_(5.0)
    torch.manual_seed(0)
    cands, _, _ = agent.otf(torch.randn(64, OBS), agent.diffusion)
    assert cands.abs().max() > 1.0  # the code's default: no clipping


def test_minibatches_interleave_offline_and_online_rows():
    offline, online = ReplayBuffer(OBS, ACT, 50), ReplayBuffer(OBS, ACT, 50)
    offline.add(torch.zeros(50, OBS), torch.zeros(50, ACT), torch.zeros(50), torch.zeros(50, OBS),
                torch.zeros(50), torch.zeros(50))  # fmt: skip
    online.add(torch.ones(50, OBS), torch.ones(50, ACT), torch.ones(50), torch.ones(50, OBS),
               torch.zeros(50), torch.zeros(50))  # fmt: skip
    batches = expo.mixed_minibatches(offline, online, batch_size=8, utd=3)
    assert len(batches) == 3
    for batch in batches:
        assert batch.observations.shape == (8, OBS)
        assert torch.equal(batch.rewards, torch.tensor([0.0, 1.0] * 4))


# ------------------------------------------------------------------ flags
@pytest.mark.parametrize(
    "over, expected",
    [
        (dict(batch_size=15), "--batch-size 15: must be even"),
        (dict(num_min_qs=11), "--num-min-qs 11: at most --num-qs (10)"),
        (dict(n_edit_samples=9), "--n-edit-samples 9"),
        (dict(edit_action_scale=0.0), "--edit-action-scale 0.0"),
        (dict(utd_ratio=0), "--utd-ratio 0"),
        (dict(learning_starts=-1), "--learning-starts -1"),
        (dict(policy="gaussian", target_entropy="adjusted"), "needs --policy expo"),
        (dict(policy="gaussian", pretrain_steps=10), "--pretrain-steps"),
        (dict(reward_bias=float("inf")), "--reward-bias inf"),
    ],
)
def test_bad_flags_are_usage_errors(over, expected):
    with pytest.raises(UsageError, match=None) as err:
        expo.check_expo_args(expo.Args(**over))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_gaussian_policy_is_rlpd_without_the_expressive_parts():
    agent = make_agent(policy="gaussian")
    parts = set(agent.parts())
    assert {"actor", "critic", "critic_target", "log_alpha"} <= parts
    assert not {"diffusion", "edit", "diffusion_ema"} & parts
    s = make_batch().observations
    torch.testing.assert_close(agent.act_eval(s), agent.actor(s)[2])  # RLPD evaluates the mean
    assert agent.target_entropy == -ACT / 2


# ------------------------------------------------------------------ learning (slow)
@pytest.mark.slow
def test_pretrained_base_policy_hops_on_hopper_medium(tmp_path):
    # --pretrain-steps trains the diffusion base by imitation only (the *_pretrain.sh start); acting is
    # the OTF choice over 4 base + 2 edited samples with untrained critics. About 12 s on one core.
    # Measured, 5 episodes: return 757 / 622 / 790 (seeds 1 / 2 / 3) after 4,000 imitation steps;
    # 48 with no pre-training (seed 1, 3 episodes after 100 online steps).
    metrics = expo.main(
        expo.Args(
            dataset="ocrl/hopper/medium-v0",
            pretrain_steps=4000,
            total_steps=100,
            learning_starts=100,
            batch_size=256,
            hidden=(32, 32),
            diffusion_width=64,
            diffusion_blocks=1,
            time_dim=16,
            n_samples=4,
            n_edit_samples=2,
            eval_episodes=5,
            eval_every=100,
            policy_lr=1e-3,
            seed=1,
            progress=False,
            run_dir=str(tmp_path / "run"),
        )  # fmt: skip
    )
    assert metrics["return"] > 300, metrics
