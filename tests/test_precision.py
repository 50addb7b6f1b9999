"""--precision: bf16 autocast changes the networks' matmuls and nothing that accumulates (weights, Adam's state,
output heads), fp32 changes nothing; which files carry the flag. The bf16 learning runs are in the learning tests."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import pytest
import torch
from torch import nn

from ocrl.algos import a2pr, expo, ggd_ppo, ggd_td, iql, pdppo, ppo, prdc, sac, td3_bc
from ocrl.data import Batch, ReplayBuffer
from ocrl.experiment import PrecisionArgs
from ocrl.nets import CriticEnsemble, TanhGaussianActor, autocast, uses_bf16
from ocrl.nets.core import EnsembleLinear
from ocrl.nets.ddpm import DDPM, LNResNetEpsNet

OBS, ACT, B = 5, 2, 64


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 2 - 1,
        torch.randn(B, generator=g) * 50, torch.randn(B, OBS, generator=g),
        (torch.rand(B, generator=g) < 0.1).float(),
    )  # fmt: skip


def test_autocast_helper():
    assert (
        not uses_bf16("fp32", "cpu") and uses_bf16("bf16", "cpu") and not uses_bf16("auto", "cpu")
    )
    assert uses_bf16("auto", "cuda") and not uses_bf16("fp32", "cuda")
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_bf16_runs_the_hidden_matmuls_in_bf16_and_the_head_in_fp32():
    torch.manual_seed(0)
    critic = CriticEnsemble(OBS, ACT, (64, 64), num_critics=2)
    obs, act = torch.randn(B, OBS), torch.rand(B, ACT)
    seen: list[torch.dtype] = []
    critic.net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    q32 = critic(obs, act)
    with autocast("fp32", "cpu"):
        assert torch.equal(critic(obs, act), q32)  # fp32 is the plain forward pass, bit for bit
    with autocast("bf16", "cpu"):
        q16 = critic(obs, act)
        q16_member = critic.member(obs, act, 1)
        q16_members = critic.members(obs, act, torch.tensor([1, 0]))
    assert seen == [torch.float32, torch.float32, torch.bfloat16]
    # The output layer ran in fp32: the Q-values carry digits that bf16 cannot hold ...
    assert q16.dtype == torch.float32 and not torch.equal(q16.bfloat16().float(), q16)
    # ... and they differ from fp32's by bf16's rounding of the hidden layers, not more.
    assert not torch.equal(q16, q32)
    torch.testing.assert_close(q16, q32, rtol=0.05, atol=0.02)
    assert q16_member.dtype == q16_members.dtype == torch.float32
    # addmm and baddbmm may round the bf16 hidden layers differently: bf16's tolerance.
    torch.testing.assert_close(q16_member, q16[1], rtol=0.02, atol=0.01)
    torch.testing.assert_close(q16_members, q16.flip(0), rtol=0.02, atol=0.01)
    actor = TanhGaussianActor(OBS, ACT, (64, 64))
    with autocast("bf16", "cpu"):
        _, log_prob, mean = actor(obs)
    assert log_prob.dtype == mean.dtype == torch.float32


def test_bf16_eps_net_keeps_the_time_phases_and_the_predicted_noise_fp32():
    torch.manual_seed(0)
    ddpm = DDPM(LNResNetEpsNet(OBS, ACT, width=32, blocks=1, time_dim=16), ACT, steps=10)
    x, obs, t = torch.randn(B, ACT), torch.randn(B, OBS), torch.full((B, 1), 9.0)
    seen: dict[str, torch.dtype] = {}
    for name in ("input", "time"):
        getattr(ddpm.eps_net, name).register_forward_hook(
            lambda m, i, o, n=name: seen.update({n: o.dtype})
        )
    eps32 = ddpm(x, obs, t)
    with autocast("bf16", "cpu"):
        eps16 = ddpm(x, obs, t)
        sample = ddpm.sample(obs)
    assert seen == {"time": torch.float32, "input": torch.bfloat16}  # phases fp32, the trunk bf16
    assert eps16.dtype == sample.dtype == torch.float32 and not torch.equal(eps16, eps32)
    torch.testing.assert_close(eps16, eps32, rtol=0.05, atol=0.05)
    assert sample.abs().max() <= 1.0


def critic_net(agent) -> nn.Module:
    """The critic whose update the tests follow (PPO's sits in its actor-critic)."""
    return agent.critic if hasattr(agent, "critic") else agent.policy.critic


def ppo_rollout(agent, b: Batch) -> dict[str, torch.Tensor]:
    """b's observations and actions as a rollout, with the policy's log-probs and values (in its precision, as
    main's rollouts), and returns that differ from the values by b's rewards and an offset per value head."""
    with torch.no_grad(), autocast(agent.args.precision, "cpu"):
        logprobs, _, heads = agent.policy.evaluate(b.observations, b.actions)
    values = heads[..., 0]  # (B, E)
    spread = torch.arange(values.shape[1]) * b.next_observations[:, :1]  # an offset per head
    returns = values + (b.rewards[:, None] + spread) / 50
    return {"obs": b.observations, "actions": b.actions, "logprobs": logprobs, "values": values,
            "returns": returns, "advantages": returns - values}  # fmt: skip


def pdppo_buffer(agent, b: Batch) -> dict[str, torch.Tensor]:
    """b as PDPPO's stored transitions: 2 machines choosing among 3, log-probs and values from the networks
    (in their precision, as collect_episodes)."""
    obs, post_obs = b.observations, b.next_observations
    actions = ((b.actions + 1) * 1.5).long().clamp(max=2)  # (B, 2)
    with torch.no_grad(), autocast(agent.args.precision, "cpu"):
        logprobs = agent.actor.distribution(obs).log_prob(actions)
        values, post_values = agent.critic(obs).squeeze(-1), agent.critic_post(post_obs).squeeze(-1)
    return {"obs": obs, "post_obs": post_obs, "actions": actions, "logprobs": logprobs, "values": values,
            "post_values": post_values, "rewards": b.rewards, "pre_rewards": 0.7 * b.rewards,
            "post_rewards": 0.3 * b.rewards, "terminals": b.terminals}  # fmt: skip


def agent_and_update(name: str, precision: str):
    """A tiny agent of algorithm `name` and a function that runs one of its updates on a fixed batch."""
    low, high = -torch.ones(ACT), torch.ones(ACT)
    common = dict(precision=precision, batch_size=B)
    if name == "td3_bc":
        agent = td3_bc.TD3BC(td3_bc.Args(hidden=(32, 32), **common), OBS, ACT, low, high, "cpu")
        # One seed of the seed-stacked update: (1, B, ...) minibatches.
        return agent, lambda b: agent.update(td3_bc.Batch(*(t[None] for t in b)), update_actor=True)
    if name == "prdc":
        buf = ReplayBuffer.from_arrays(*[x.numpy() for x in batch(1)])
        args = prdc.Args(hidden=(32, 32), nn_backend="brute", **common)
        agent = prdc.PRDC(args, buf, low, high, "cpu")
        return agent, lambda b: agent.update(prdc.Batch(*(t[None] for t in b)), update_actor=True)
    if name == "a2pr":
        args = a2pr.Args(actor_hidden=(32,), critic_hidden=(32,), vae_hidden=(32, 32), **common)
        agent = a2pr.A2PR(args, OBS, ACT, low, high, "cpu")
        return agent, lambda b: agent.update(a2pr.Batch(*(t[None] for t in b)), update_actor=True)
    if name == "iql":
        agent = iql.IQL(iql.Args(hidden=(32, 32), **common), OBS, ACT, low, high, "cpu")
        return agent, lambda b: agent.update(iql.Batch(*(t[None] for t in b)))
    if name == "sac":
        agent = sac.SAC(sac.Args(hidden=(32, 32), **common), OBS, ACT, low, high, "cpu")
        return agent, lambda b: agent.update(sac.Batch(*(t[None] for t in b)), actor_steps=2)
    if name in ("ppo", "ggd_ppo"):
        module, space = ppo if name == "ppo" else ggd_ppo, gym.spaces.Box(-1.0, 1.0, (ACT,))
        args = module.Args(hidden=(32, 32), update_epochs=2, **common)
        agent = (module.PPO if name == "ppo" else module.GGDPPO)(args, OBS, space, "cpu")
        return agent, lambda b: agent.update(ppo_rollout(agent, b))
    if name == "pdppo":
        agent = pdppo.PDPPO(
            pdppo.Args(hidden=16, k_epochs=2, precision=precision), OBS, 2, 3, "cpu"
        )
        return agent, lambda b: agent.update(pdppo_buffer(agent, b))
    if name == "expo":
        args = expo.Args(hidden=(16, 16), num_qs=4, diffusion_width=16, diffusion_blocks=1,
                         time_dim=8, n_samples=2, n_edit_samples=2, **common)  # fmt: skip
        agent = expo.EXPO(args, OBS, ACT, "cpu")
        return agent, lambda b: agent.update([b, b])
    args = ggd_td.Args(hidden=(32, 32), **common)
    agent = ggd_td.GGDSAC(args, OBS, ACT, low, high, "cpu")
    return agent, lambda b: agent.update(ggd_td.Batch(*(t[None] for t in b)), actor_steps=2)


MLP_FILES = ["td3_bc", "prdc", "a2pr", "iql", "sac", "ggd_td", "ppo", "ggd_ppo", "pdppo", "expo"]


@pytest.mark.parametrize("name", MLP_FILES)
def test_bf16_update_keeps_weights_and_optimiser_state_fp32(name):
    torch.manual_seed(0)
    agent, update = agent_and_update(name, "bf16")
    critic = critic_net(agent)
    before = {k: p.detach().clone() for k, p in critic.named_parameters()}
    hidden: list[torch.dtype] = []
    first = next(m for m in critic.modules() if isinstance(m, (nn.Linear, EnsembleLinear)))
    first.register_forward_hook(lambda m, i, o: hidden.append(o.dtype))
    for seed in range(3):
        metrics = update(batch(seed))
    assert hidden and set(hidden) == {torch.bfloat16}  # the update's critic passes ran in bf16
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values()), metrics
    assert any(not torch.equal(p, before[k]) for k, p in critic.named_parameters())
    optimisers = [v for v in vars(agent).values() if isinstance(v, torch.optim.Optimizer)]
    assert optimisers
    for opt in optimisers:
        for group in opt.param_groups:
            for p in group["params"]:
                assert p.dtype == torch.float32
                assert p.grad is None or p.grad.dtype == torch.float32
                for t in opt.state[p].values():
                    if torch.is_tensor(t) and t.is_floating_point():
                        assert t.dtype == torch.float32
    for module in [getattr(v, "ema_model", v) for v in vars(agent).values()]:  # EXPO's EMA too
        if isinstance(module, torch.nn.Module):
            assert all(t.dtype == torch.float32 for t in module.state_dict().values()), module


@pytest.mark.parametrize("name", MLP_FILES)
def test_precision_changes_the_update_and_fp32_is_the_default(name):
    assert dataclasses.fields(PrecisionArgs)[0].default == "fp32"
    results = {}
    for precision in ("fp32", "bf16", "fp32"):
        torch.manual_seed(0)
        agent, update = agent_and_update(name, precision)
        torch.manual_seed(1)
        update(batch())
        results.setdefault(precision, []).append(torch.cat([p.detach().flatten() for p in critic_net(agent).parameters()]))  # fmt: skip
    assert torch.equal(
        *results["fp32"]
    )  # deterministic, so the difference below is the precision's
    assert not torch.equal(results["fp32"][0], results["bf16"][0])


def test_only_the_files_that_honour_it_carry_the_flag():
    from ocrl.algos import diffusion, hdpo, pgd

    for module in (td3_bc, prdc, a2pr, iql, sac, ggd_td, ppo, ggd_ppo, pdppo, expo):
        assert issubclass(module.Args, PrecisionArgs), module.__name__
    # HDPO's gradient runs back through its policy into the simulated inventory over the whole horizon.
    assert "precision" not in {f.name for f in dataclasses.fields(hdpo.Args)}
    for module in (diffusion, pgd):  # 'auto': bf16 on CUDA as their former --bf16, fp32 on the CPU
        field = {f.name: f for f in dataclasses.fields(module.Args)}["precision"]
        assert field.default == "auto" and "bf16" not in {
            f.name for f in dataclasses.fields(module.Args)
        }
