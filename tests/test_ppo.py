"""PPO (algos/ppo.py): GAE (ocrl.data.gae), the clipped losses and their gradient against formulas written here, the
running normalisers, MultiDiscrete heads, flag checks and a CartPole learning test."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from ocrl.algos import ppo
from ocrl.data import RunningMeanStd, gae
from ocrl.envs import EnvError
from ocrl.experiment import UsageError
from ocrl.nets import ActorCritic


# ------------------------------------------------------------------------------------------- GAE
def test_gae_is_the_discounted_sum_of_td_errors_inside_each_episode():
    torch.manual_seed(0)
    steps, envs, gamma, lam = 7, 3, 0.9, 0.8
    rewards, values = torch.randn(steps, envs), torch.randn(steps, envs)
    dones = (torch.rand(steps, envs) < 0.3).float()  # dones[t]: obs[t] starts a new episode
    next_value, next_done = torch.randn(envs), torch.tensor([0.0, 1.0, 0.0])
    adv, ret = gae(rewards, values[..., None], dones, next_value[:, None], next_done, gamma, lam)
    adv, ret = adv[..., 0], ret[..., 0]  # one value head
    # Written out: A_t = sum_l (gamma lam)^l delta_{t+l}, stopping after the step whose successor starts
    # a new episode; delta_t = r_t + gamma V(s_{t+1}) [s_{t+1} not a new start] - V(s_t).
    v_next = torch.cat([values[1:], next_value[None]])
    start_next = torch.cat([dones[1:], next_done[None]])
    for e in range(envs):
        for t in range(steps):
            total, weight = 0.0, 1.0
            for k in range(t, steps):
                delta = rewards[k, e] + gamma * v_next[k, e] * (1 - start_next[k, e]) - values[k, e]
                total += weight * float(delta)
                if start_next[k, e]:
                    break
                weight *= gamma * lam
            assert float(adv[t, e]) == pytest.approx(total, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(ret, adv + values)


# ---------------------------------------------------------------------------- the loss and update
def fixed_rollout(agent: ppo.PPO, n: int = 12, obs_dim: int = 3):
    torch.manual_seed(1)
    obs = torch.randn(n, obs_dim)
    with torch.no_grad():
        dist = agent.policy.distribution(obs)
        actions = dist.sample()
        logprobs = dist.log_prob(actions).sum(-1) + 0.3 * torch.randn(n)  # ratios away from 1
        values = agent.policy.value(obs)[:, 0] + 0.5 * torch.randn(n)  # the one head
    return {  # values, advantages and returns per value head: (n, 1)
        "obs": obs, "actions": actions, "logprobs": logprobs, "values": values[:, None],
        "advantages": torch.randn(n, 1), "returns": (values + torch.randn(n))[:, None],
    }  # fmt: skip


@pytest.mark.parametrize("clip_vloss", [True, False])
def test_update_losses_and_gradient_are_the_written_formula(clip_vloss):
    torch.manual_seed(0)
    args = ppo.Args(hidden=(8,), batch_size=12, update_epochs=1, clip_coef=0.2, ent_coef=0.05,
                    vf_coef=0.7, max_grad_norm=1e9, clip_vloss=clip_vloss)  # fmt: skip
    agent = ppo.PPO(args, 3, gym.spaces.Box(-1.0, 1.0, (2,)), torch.device("cpu"))
    r = fixed_rollout(agent)
    params = list(agent.policy.parameters())
    before = [p.detach().clone() for p in params]

    # The loss written plainly, on the parameters before the step (one minibatch = the whole rollout).
    mean = agent.policy.actor_mean(r["obs"])
    std = agent.policy.actor_logstd.exp().expand_as(mean)
    logp = (
        -0.5 * ((r["actions"] - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)
    ).sum(1)
    entropy = (0.5 + 0.5 * math.log(2 * math.pi) + std.log()).sum(1)
    value = agent.policy.critic(r["obs"])[:, 0]
    ratio = (logp - r["logprobs"]).exp()
    a = r["advantages"][:, 0]
    a = (a - a.mean()) / (a.std() + 1e-8)
    pg = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2)).mean()
    if clip_vloss:
        clipped = r["values"][:, 0] + (value - r["values"][:, 0]).clamp(-0.2, 0.2)
        v = (
            0.5
            * torch.maximum(
                (value - r["returns"][:, 0]) ** 2, (clipped - r["returns"][:, 0]) ** 2
            ).mean()
        )
    else:
        v = 0.5 * ((value - r["returns"][:, 0]) ** 2).mean()
    loss = pg - 0.05 * entropy.mean() + 0.7 * v
    expected_grads = torch.autograd.grad(loss, params)

    seen = {}
    real_step = agent.optimizer.step

    def recording_step(*a, **k):
        seen["grads"] = [p.grad.clone() for p in params]
        return real_step(*a, **k)

    agent.optimizer.step = recording_step
    metrics = agent.update(r)
    assert float(metrics["policy_loss"]) == pytest.approx(float(pg.detach()), rel=1e-5)
    assert float(metrics["value_loss"]) == pytest.approx(float(v.detach()), rel=1e-5)
    assert float(metrics["entropy"]) == pytest.approx(float(entropy.mean().detach()), rel=1e-5)
    for got, want in zip(seen["grads"], expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_gradient_norm_is_clipped_at_max_grad_norm():
    args = ppo.Args(hidden=(8,), batch_size=12, update_epochs=1, max_grad_norm=1e-3)
    agent = ppo.PPO(args, 3, gym.spaces.Box(-1.0, 1.0, (2,)), torch.device("cpu"))
    norms = []
    real_step = agent.optimizer.step

    def recording_step(*a, **k):
        norms.append(torch.cat([p.grad.flatten() for p in agent.policy.parameters()]).norm())
        return real_step(*a, **k)

    agent.optimizer.step = recording_step
    agent.update(fixed_rollout(agent))
    assert float(norms[0]) == pytest.approx(1e-3, rel=1e-3)


def test_epochs_and_minibatches_take_the_expected_number_of_steps():
    args = ppo.Args(hidden=(8,), batch_size=4, update_epochs=3)
    agent = ppo.PPO(args, 3, gym.spaces.Box(-1.0, 1.0, (2,)), torch.device("cpu"))
    calls = []
    real_step = agent.optimizer.step
    agent.optimizer.step = lambda *a, **k: (calls.append(1), real_step(*a, **k))[1]
    agent.update(fixed_rollout(agent))
    assert len(calls) == 3 * (12 // 4)


# ------------------------------------------------------------------------------------ normalisers
def test_running_mean_std_matches_the_pooled_statistics():
    rng = np.random.default_rng(0)
    rms = RunningMeanStd((2,))
    batches = [rng.normal(3.0, 2.0, size=(n, 2)) for n in (5, 17, 1, 40)]
    for b in batches:
        rms.update(b)
    pooled = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, pooled.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var, pooled.var(0), rtol=1e-4)
    state = rms.state_dict()
    other = RunningMeanStd((2,))
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.mean, rms.mean)
    assert other.count == rms.count


def test_evaluation_normalises_with_the_statistics_but_does_not_update_them():
    args = ppo.Args(hidden=(8,))
    agent = ppo.PPO(args, 3, gym.spaces.Box(-1.0, 1.0, (2,)), torch.device("cpu"))
    agent.obs_rms.update(np.random.default_rng(0).normal(5.0, 3.0, size=(100, 3)))
    count = agent.obs_rms.count
    obs = torch.full((2, 3), 5.0)
    got = agent.act_for_evaluation(obs)
    x = (obs.double().numpy() - agent.obs_rms.mean) / np.sqrt(agent.obs_rms.var + 1e-8)
    want = agent.policy.act(torch.as_tensor(np.clip(x, -10, 10), dtype=torch.float32))
    torch.testing.assert_close(got, want)
    assert agent.obs_rms.count == count


# ---------------------------------------------------------------------------- discrete action heads
def test_multidiscrete_log_prob_is_the_sum_of_one_categorical_per_sub_action():
    torch.manual_seed(0)
    space = gym.spaces.MultiDiscrete([2, 4, 3])
    policy = ActorCritic(5, space, (8,))
    obs = torch.randn(64, 5)
    dist = policy.distribution(obs)
    actions = dist.sample()
    assert actions.shape == (64, 3)
    assert (actions < torch.tensor([2, 4, 3])).all()  # the padded choices are never drawn
    flat = policy.actor_logits(obs)
    parts = torch.split(flat, [2, 4, 3], dim=-1)
    want = sum(
        torch.distributions.Categorical(logits=p).log_prob(actions[:, k])
        for k, p in enumerate(parts)
    )
    want_entropy = sum(torch.distributions.Categorical(logits=p).entropy() for p in parts)
    logp, entropy, _ = policy.evaluate(obs, actions)
    torch.testing.assert_close(logp, want)
    torch.testing.assert_close(entropy, want_entropy)
    greedy = policy.act(obs)
    torch.testing.assert_close(greedy[:, 1], parts[1].argmax(-1))


def test_discrete_greedy_action_has_the_env_shape():
    policy = ActorCritic(4, gym.spaces.Discrete(3), (8,))
    assert policy.act(torch.randn(5, 4)).shape == (5,)


# --------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize(
    "over, expected",
    [
        (dict(num_steps=10, batch_size=4), "--batch-size 4: must divide"),
        (dict(gae_lambda=1.5), "--gae-lambda 1.5"),
        (dict(clip_coef=0.0), "--clip-coef 0.0"),
        (dict(ent_coef=-1.0), "--ent-coef -1.0"),
        (dict(lr=float("nan")), "--lr nan"),
        (dict(target_kl=0.0), "--target-kl 0.0"),
    ],
)
def test_bad_values_are_refused(over, expected):
    with pytest.raises(UsageError, match=expected):
        ppo.check_ppo_args(ppo.Args(**over))


def test_an_env_without_flat_box_observations_is_refused(tmp_path):
    with pytest.raises(EnvError, match="flat Box observation"):
        ppo.main(ppo.Args(env_id="Blackjack-v1", run_dir=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


# -------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_cartpole_is_learned_with_cleanrls_discrete_settings(tmp_path):
    # Measured (1 thread, 50,176 steps, cleanrl-discrete): final returns 492 (seed 1), ... -> threshold 300.
    args = ppo.Args(**ppo.PRESETS["cleanrl-discrete"])
    args.total_steps, args.seed, args.progress = 50_000, 1, False
    args.run_dir = str(tmp_path / "run")
    metrics = ppo.main(args)
    assert metrics["return"] >= 300
