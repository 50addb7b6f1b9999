"""TD3+BC: the update maths on a fixed batch, data/env errors and resume (the shared checks of every file are in test_conventions.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from formulas import (
    actor_layers,
    assert_critic_gradient,
    critic_member,
    mlp_forward,
    td3_critic_step,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ocrl.algos import td3_bc

ROOT = Path(__file__).resolve().parents[1]


def tags(run_dir: str) -> set[str]:
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_td3_bc_cli_unknown_dataset_exits_with_help():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / "td3_bc.py"), "--dataset", "does-not-exist"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "unknown dataset 'does-not-exist'" in proc.stderr
    assert "hopper-medium-v2" in proc.stderr  # says what a valid name looks like
    assert "Traceback" not in proc.stderr


def test_td3_bc_dataset_env_mismatch(hopper_random_file, tmp_path):
    args = td3_bc.Args(
        dataset=hopper_random_file,
        env_id="Pendulum-v1",
        total_steps=10,
        run_dir=str(tmp_path),
        progress=False,
    )
    with pytest.raises(ValueError, match="does not fit environment Pendulum-v1"):
        td3_bc.main(args)


def test_checkpoint_loads_weights_only(hopper_random_file, tmp_path):
    td3_bc.main(td3_bc.Args(dataset=hopper_random_file, total_steps=20, eval_every=20, eval_episodes=1,
                            save_model=True, run_dir=str(tmp_path), progress=False))  # fmt: skip
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 20 and "actor" in ckpt and "critic_opt" in ckpt
    assert not list(tmp_path.glob("*.tmp"))


def one_seed(batch):
    """A (B, ...) batch as the (N = 1, B, ...) minibatch of a seed-stacked update."""
    return td3_bc.Batch(*(t.unsqueeze(0) for t in batch))


def test_td3_bc_update_equals_the_two_network_formula(fixed_batch):
    torch.manual_seed(0)
    args = td3_bc.Args(hidden=(16, 16), alpha=2.5, discount=0.9, policy_noise=0.2, noise_clip=0.5)
    low, high = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
    agent = td3_bc.TD3BC(args, 3, 2, low, high, "cpu")
    batch = fixed_batch()
    # TD3's target, written plainly: smoothed target action, clipped double Q, (1 - d) bootstrap.
    expected, grads = td3_critic_step(agent, batch, low, high, 123, 0.9, 0.2, 0.5, stream=True)
    agent.streams.generators[0].manual_seed(123)  # the seed's noise comes from its own stream
    metrics = agent.update(one_seed(batch), update_actor=True)
    torch.testing.assert_close(metrics["critic_loss"][0], expected, rtol=1e-5, atol=1e-6)
    assert_critic_gradient(agent.critic, grads)  # the step followed that loss


def test_td3_bc_actor_loss_equals_the_formula(fixed_batch):
    torch.manual_seed(0)
    args = td3_bc.Args(hidden=(16, 16), alpha=2.5)
    agent = td3_bc.TD3BC(args, 3, 2, -1.0, 1.0, "cpu")
    s, a, *_ = batch = fixed_batch()
    pi_before = actor_layers(agent.actor)
    agent.update(one_seed(batch), update_actor=False)  # a critic step only: the actor must not move
    for (w, b), (w2, b2) in zip(pi_before, actor_layers(agent.actor), strict=True):
        assert torch.equal(w, w2) and torch.equal(b, b2)
    target_before = actor_layers(agent.actor_target)
    metrics = agent.update(one_seed(batch), update_actor=True)
    # The actor step uses Q1 of the critic after this iteration's critic step (the actor step leaves it).
    q1_after = critic_member(agent.critic, 0)
    pi = torch.tanh(mlp_forward(pi_before, s))
    q_pi = mlp_forward(q1_after, torch.cat([s, pi], 1)).squeeze(-1)
    lmbda = 2.5 / q_pi.abs().mean()
    expected = -lmbda * q_pi.mean() + ((pi - a) ** 2).mean()
    torch.testing.assert_close(metrics["actor_loss"][0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["lmbda"][0], lmbda, rtol=1e-5, atol=1e-7)
    # Polyak: target <- tau * online + (1 - tau) * target, after the actor step.
    for (wt, bt), (w, b), (wt2, bt2) in zip(
        target_before, actor_layers(agent.actor), actor_layers(agent.actor_target), strict=True
    ):
        torch.testing.assert_close(wt2, 0.005 * w + 0.995 * wt)
        torch.testing.assert_close(bt2, 0.005 * b + 0.995 * bt)


def test_normalize_reward_is_corls_modify_reward(hopper_random_file):
    # CORL: r * max_episode_steps / (max - min return), returns over the transition view, episodes cut
    # at a terminal or after max_episode_steps (1000 for Hopper-v4), the unfinished last one left out.
    from ocrl.data import load_dataset
    from ocrl.envs import load_offline_task

    transitions = load_dataset(hopper_random_file).transitions()
    returns, ep_ret, ep_len = [], 0.0, 0
    for r, d in zip(transitions.rewards, transitions.terminals, strict=True):
        ep_ret, ep_len = ep_ret + float(r), ep_len + 1
        if d or ep_len == 1000:
            returns.append(ep_ret)
            ep_ret, ep_len = 0.0, 0
    scale = 1000.0 / (max(returns) - min(returns))
    task = load_offline_task(hopper_random_file, normalize_reward=True)
    assert task.reward_scale == pytest.approx(scale, rel=1e-6)
    torch.testing.assert_close(
        task.buffer.rewards, torch.as_tensor(transitions.rewards) * scale, rtol=1e-5, atol=1e-6
    )
