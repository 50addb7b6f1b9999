"""TD3+BC gradient updates per second: ocrl's update (twin critics as one batched ensemble, sampling on the
device, no host synchronisation), eager, with the per-step `SeedLoops.log` plumbing, and
torch.compile'd, against a plain eager update written the way the original TD3+BC code does it (two
separate critic networks in one module, host-side numpy index sampling copied to the device every step, a
Python loop for the target updates, the actor loss back-propagated into the critic too). Rounds of the
variants are interleaved and the median is reported, so background load affects all of them alike."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ocrl.algos import td3_bc
from ocrl.experiment import SeedLoops

from .harness import TransitionArgs, replay_buffer, step_rates, synthetic, time_round


@dataclass
class Args(TransitionArgs):
    """TD3+BC updates/s, eager and compiled, against an original-style eager update."""

    updates: int = 300
    """updates per timed round"""
    rounds: int = 5
    """interleaved rounds per variant; the median is reported"""
    compile: bool = True
    """also time the torch.compile'd update"""


class _TwoCritics(nn.Module):
    """Two separate Q-networks in one module, as the original code's Critic class."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.q1 = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.q2 = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, obs, act):
        sa = torch.cat([obs, act], 1)
        return self.q1(sa), self.q2(sa)


class _BaselineActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, act_dim),
        )

    def forward(self, obs):
        return torch.tanh(self.net(obs))


def baseline_trainer(
    data: dict[str, np.ndarray], obs_dim: int, act_dim: int, batch: int, device: torch.device
) -> Callable[[int], None]:
    """An eager TD3+BC iteration in the original code's style; returns step(iteration)."""
    actor = _BaselineActor(obs_dim, act_dim).to(device)
    critic = _TwoCritics(obs_dim, act_dim).to(device)
    actor_t, critic_t = copy.deepcopy(actor), copy.deepcopy(critic)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=3e-4)
    n = len(data["rewards"])

    def step(it: int) -> None:
        idx = np.random.randint(0, n, size=batch)
        s = torch.FloatTensor(data["observations"][idx]).to(device)
        a = torch.FloatTensor(data["actions"][idx]).to(device)
        s2 = torch.FloatTensor(data["next_observations"][idx]).to(device)
        r = torch.FloatTensor(data["rewards"][idx]).reshape(-1, 1).to(device)
        not_done = torch.FloatTensor(1.0 - data["terminals"][idx]).reshape(-1, 1).to(device)
        with torch.no_grad():
            noise = (torch.randn_like(a) * 0.2).clamp(-0.5, 0.5)
            a2 = (actor_t(s2) + noise).clamp(-1.0, 1.0)
            tq1, tq2 = critic_t(s2, a2)
            target = r + not_done * 0.99 * torch.min(tq1, tq2)
        q1, q2 = critic(s, a)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()
        if it % 2 == 0:
            pi = actor(s)
            q = critic.q1(torch.cat([s, pi], 1))
            lmbda = 2.5 / q.abs().mean().detach()
            actor_loss = -lmbda * q.mean() + F.mse_loss(pi, a)
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            for p, tp in zip(critic.parameters(), critic_t.parameters(), strict=True):
                tp.data.copy_(0.005 * p.data + 0.995 * tp.data)
            for p, tp in zip(actor.parameters(), actor_t.parameters(), strict=True):
                tp.data.copy_(0.005 * p.data + 0.995 * tp.data)

    return step


def ocrl_trainer(
    data: dict[str, np.ndarray],
    obs_dim: int,
    act_dim: int,
    batch: int,
    device: torch.device,
    compiled: bool,
) -> Callable[[int], None]:
    """`TD3BC.update` of algos/td3_bc.py, on a device-resident buffer; returns step(iteration)."""
    buffer = replay_buffer(data, device)
    # The defaults match the baseline: hidden (256, 256), lr 3e-4, alpha 2.5, discount 0.99, tau 0.005.
    agent = td3_bc.TD3BC(td3_bc.Args(), obs_dim, act_dim, -1.0, 1.0, device)
    update = torch.compile(agent.update) if compiled else agent.update

    def step(it: int) -> None:
        update(buffer.sample_per_seed(batch, agent.streams), it % 2 == 0)

    return step


def ocrl_loop_trainer(
    data: dict[str, np.ndarray], obs_dim: int, act_dim: int, batch: int, device: torch.device
) -> Callable[[int], None]:
    """The same update with the plumbing every algorithm file now runs per step (`SeedLoops.log`)."""
    buffer = replay_buffer(data, device)
    args = td3_bc.Args(progress=False, run_dir=tempfile.mkdtemp(prefix="ocrl-bench-"))
    ocrl_agent = td3_bc.TD3BC(args, obs_dim, act_dim, -1.0, 1.0, device)
    loop = SeedLoops("bench", "synthetic", args, ocrl_agent.parts(), None)

    def step(it: int) -> None:
        loop.loops[0].step = it + 1  # what loop.steps() sets before each iteration
        batch_per_seed = buffer.sample_per_seed(batch, ocrl_agent.streams)
        loop.log(ocrl_agent.update(batch_per_seed, it % 2 == 0))

    return step


def main(args: Args) -> dict[str, float]:
    device = torch.device(args.device)
    data = synthetic(100_000, args.obs_dim, args.act_dim)
    sizes = (data, args.obs_dim, args.act_dim, args.batch_size, device)
    variants = {
        "baseline (original-style eager)": baseline_trainer(*sizes),
        "ocrl eager": ocrl_trainer(*sizes, compiled=False),
        "ocrl eager + SeedLoops.log": ocrl_loop_trainer(*sizes),
    }
    if args.compile:
        variants["ocrl compiled"] = ocrl_trainer(*sizes, compiled=True)
    for name, step in variants.items():  # warm-up (and compilation)
        t = time.perf_counter()
        time_round(step, 20, device)
        print(f"warm-up {name}: {time.perf_counter() - t:.1f}s")
    med = step_rates(variants, args.updates, args.rounds, device)
    base = med["baseline (original-style eager)"]
    print(f"\nTD3+BC updates/s on {device} (obs {args.obs_dim}, act {args.act_dim}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}; median of {args.rounds} interleaved rounds of {args.updates})")  # fmt: skip
    print("| variant | updates/s | ratio vs baseline | min per 1M updates |\n|---|---|---|---|")
    for name, rate in med.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {1e6 / rate / 60:.1f} |")
    return med
