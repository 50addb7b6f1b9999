"""PRDC: "Policy Regularization with Dataset Constraint for Offline Reinforcement Learning" (Ran et al., ICML 2023, arXiv 2306.06569).

TD3+BC with one change: the behaviour-cloning target of the actor is not the batch's own dataset action but
the action of the dataset transition nearest to (beta * s, pi(s)) in the joint space [beta * state, action]:

    (s_hat, a_hat) = argmin over (s', a') in D of || (beta s) (+) pi(s) - (beta s') (+) a' ||     (exact 1-NN)
    L_pi = -lambda * mean Q1(s, pi(s)) + mean (pi(s) - a_hat)^2,   lambda = alpha / mean |Q1(s, pi(s))|

a_hat is a constant (the argmin is not differentiated); only the action distance is penalised, since the
state part does not depend on pi. beta trades state against action distance: as beta -> infinity the
neighbour is the query's own transition and PRDC is TD3+BC; as beta -> 0 it is the closest action anywhere.
The critic (twin Q, target smoothing, clipped double-Q, policy_freq 2, tau 0.005), the networks and the
state standardisation are TD3+BC's. The point set is the whole dataset (every transition), built once.

Defaults reproduce the paper's code (LAMDA-RL/PRDC @ 9f38464) with its README's per-domain settings, which
`--preset` selects (the code's own default beta is 1.0; every published command uses 2.0, as here):

    halfcheetah-*           alpha 40   beta 2
    hopper-*, walker2d-*    alpha 2.5  beta 2
    antmaze-*               alpha 7.5  beta 7.5, training reward r' = 10000 r - 1

Where paper code and paper differ:
* AntMaze reward shaping: the released code applied 10000 x - 1 to next_state instead of the reward until
  upstream's fix (5c8aaf8, July 2023). Default: the fixed version (shape the reward);
  --antmaze-shaping-bug reproduces the bug (which does not learn).
* Evaluation: default ocrl's shared protocol (10 episodes every 5,000 updates, episode seeds from --seed);
  --eval-protocol prdc is the original schedule (50 episodes every 1,000 updates). The original seeds its
  evaluation env with seed + 100 and defaults to seed 1024; ocrl derives the episode seeds from --seed (0).
* Search: the original queries scipy's KD-tree on the CPU. Every backend here is exact too (the same
  neighbours up to ties). --nn-backend auto is a chunked brute force on the GPU under CUDA and, on the CPU,
  "adaptive": it times a single-thread KD-tree, an all-core KD-tree and a brute force as it goes and runs
  the fastest (far queries, early in training, favour brute force; near ones a single-thread KD-tree).
  --nn-backend kdtree is the original's path; --kdtree-eps > 0 (approximate) is off by default.
`--precision bf16` runs the networks' hidden layers in bf16 autocast; their output layers, the TD target, the
neighbour search, the losses, lambda, the Polyak updates, the weights, Adam's state and evaluation stay fp32.
`--num-seeds N` trains seeds seed .. seed+N-1 at once, as td3_bc: every network and tensor has a leading seed axis,
each seed draws its weights, minibatches and noise from its own generator, and its losses (lambda, the dataset
constraint) are its own. The search index is the dataset's, shared: it answers every seed's queries in one call, each
row's neighbour its own (exact, whatever the other rows), so seed k alone and seed k in a group train the same networks.

    python algos/prdc.py --total-steps 20000                       # shipped hopper data, CPU-minutes
    python algos/prdc.py --dataset hopper-medium-v2 --preset hopper
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Literal

import torch

from ocrl.data import Batch, ReplayBuffer
from ocrl.envs import load_offline_task
from ocrl.experiment import Agent, SeedLoops, start_run
from ocrl.experiment.args import OfflineArgs, PrecisionArgs, RunArgs, SeedsArgs, TargetArgs
from ocrl.experiment.flags import check_args, run_cli
from ocrl.nets import (
    CriticEnsemble,
    DeterministicActor,
    FlatAdam,
    NearestNeighbors,
    autocast,
    polyak_update,
)
from ocrl.nets.seeds import SeedStreams, init_seeds

_DOMAIN = {
    "halfcheetah": {"alpha": 40.0, "beta": 2.0, "k": 1, "reward_scale": 1.0, "reward_shift": 0.0},
    "hopper": {"alpha": 2.5, "beta": 2.0, "k": 1, "reward_scale": 1.0, "reward_shift": 0.0},
    "walker2d": {"alpha": 2.5, "beta": 2.0, "k": 1, "reward_scale": 1.0, "reward_shift": 0.0},
    "antmaze": {"alpha": 7.5, "beta": 7.5, "k": 1, "reward_scale": 10000.0, "reward_shift": -1.0},
}
_KINDS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
_MAZES = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")
PRESETS: dict[str, dict] = {
    **_DOMAIN,
    **{
        f"{domain}-{kind}-v2": _DOMAIN[domain]
        for domain in ("halfcheetah", "hopper", "walker2d")
        for kind in _KINDS
    },
    **{f"antmaze-{maze}-v2": _DOMAIN["antmaze"] for maze in _MAZES},
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
_EVAL_PROTOCOLS = {"ocrl": (5_000, 10), "prdc": (1_000, 50)}


@dataclass
class Args(TargetArgs, RunArgs, PrecisionArgs, SeedsArgs, OfflineArgs):
    preset: PresetName | None = None  # type: ignore[valid-type]
    """per-domain settings of the paper's README (a domain name or a D4RL dataset name): halfcheetah-*: alpha 40, beta 2; hopper-*, walker2d-*: alpha 2.5, beta 2; antmaze-*: alpha 7.5, beta 7.5, reward 10000 r - 1. Explicit flags override them; --dataset alone changes none"""
    seed: int = 0
    """seed of the networks' weights, the minibatches and noise (one generator per seed) and the evaluation episodes (the original's default is 1024)"""
    total_steps: int = 1_000_000
    """gradient updates (critic steps); the paper trains for 1M"""
    batch_size: int = 256
    """transitions per update, sampled uniformly with replacement"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer widths of actor and critics"""
    policy_noise: float = 0.2
    """std of the target-policy smoothing noise, times the action scale"""
    noise_clip: float = 0.5
    """clip of the target-policy smoothing noise, times the action scale"""
    policy_freq: int = 2
    """actor and target updates (and nearest-neighbour searches) happen every policy_freq critic updates"""
    alpha: float = 2.5
    """weight of the Q term against the dataset constraint (lambda = alpha / mean|Q|)"""
    beta: float = 2.0
    """weight of the (standardised) state in the joint search space [beta * s, a]"""
    k: int = 1
    """the k-th nearest neighbour is the target (every published run uses 1)"""
    nn_backend: Literal["auto", "kdtree", "brute", "adaptive"] = "auto"
    """exact search: auto = brute force on CUDA, adaptive (fastest of KD-tree and brute force, timed) on the CPU; kdtree = the original's"""
    kdtree_eps: float = 0.0
    """approximate KD-tree search (scipy's eps, for every KD-tree query); 0 = exact, as the paper"""
    reward_scale: float = 1.0
    """training reward r' = reward_scale * r + reward_shift (antmaze preset: 10000)"""
    reward_shift: float = 0.0
    """training reward r' = reward_scale * r + reward_shift (antmaze preset: -1)"""
    antmaze_shaping_bug: bool = False
    """reproduce the original's bug: apply the reward scale/shift to the next state instead of the reward"""
    normalize_obs: bool = True
    """standardise observations with the mean and std (+1e-3) of the training transitions"""
    truncated_last: Literal["drop", "keep"] = "drop"
    """'drop' reproduces D4RL's qlearning_dataset; 'keep' also trains on timeout transitions using stored next observations"""
    eval_protocol: Literal["ocrl", "prdc"] = "ocrl"
    """'ocrl': 10 episodes every 5,000 updates (the shared protocol); 'prdc': the original's 50 every 1,000"""
    eval_every: int | None = None
    """updates between evaluations; default from --eval-protocol"""
    eval_episodes: int | None = None
    """episodes per evaluation, run in parallel; default from --eval-protocol"""
    compile: bool = False
    """wrap the update in torch.compile (off by default: on a CPU compile time dominates short runs)"""


class SearchTimer:
    """Time spent in the nearest-neighbour search, read on the host only at log steps (CUDA events on GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.seconds, self.calls, self._t = 0.0, 0, 0.0

    def start(self) -> None:
        if self.cuda:
            self.events.append(
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            )
            self.events[-1][0].record()
        else:
            self._t = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.events[-1][1].record()
        else:
            self.seconds += time.perf_counter() - self._t
        self.calls += 1

    def read_ms(self) -> float:
        """Mean milliseconds per search since the last read (synchronises CUDA)."""
        if self.cuda and self.events:
            self.events[-1][1].synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self.events) / 1e3
            self.events.clear()
        ms = 1e3 * self.seconds / max(self.calls, 1)
        self.seconds, self.calls = 0.0, 0
        return ms


class PRDC(Agent):
    """TD3+BC's networks and optimisers of --num-seeds seeds, stacked on a leading seed axis, plus the dataset's
    search index (shared); `update` is one PRDC iteration of every seed on (N, B, ...) minibatches."""

    def __init__(self, args: Args, buffer: ReplayBuffer, action_low, action_high, device):
        self.args, self.buffer, n = args, buffer, args.num_seeds
        self.streams = SeedStreams(range(args.seed, args.seed + n), device)
        obs_dim, act_dim = buffer.observations.shape[1], buffer.actions.shape[1]
        # The search space [beta * s, a] over every transition of the dataset, built once.
        points = torch.cat([args.beta * buffer.observations, buffer.actions], dim=1)
        self.index = NearestNeighbors(points, args.nn_backend, kdtree_eps=args.kdtree_eps)
        self.timer = SearchTimer(torch.device(device))
        self.neighbours: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.actor = DeterministicActor(
            obs_dim, act_dim, args.hidden, action_low, action_high, num_seeds=n
        )
        self.critic = CriticEnsemble(obs_dim, act_dim, args.hidden, num_critics=2, num_seeds=n)
        init_seeds(self.actor, self.streams), init_seeds(self.critic, self.streams)
        self.actor.to(device), self.critic.to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # FlatAdam: torch's fused Adam over one padded buffer, whose digits do not depend on N.
        self.actor_opt = FlatAdam(self.actor.parameters(), lr=args.actor_lr)
        self.critic_opt = FlatAdam(self.critic.parameters(), lr=args.critic_lr)

    def update(self, batch: Batch, update_actor: bool) -> dict[str, torch.Tensor]:
        """TD3+BC's critic step; on actor iterations the dataset-constrained actor step and the targets; (N,)
        metrics."""
        args, actor, critic = self.args, self.actor, self.critic
        obs, actions, rewards, next_obs, terminals = batch  # (N, B, ...): one minibatch per seed
        scale = actor.action_scale
        with torch.no_grad(), autocast(args.precision, obs.device):
            noise = (
                self.streams.randn(actions.shape[1:])
                .mul_(args.policy_noise)
                .clamp_(-args.noise_clip, args.noise_clip)
            )
            low, high = actor.action_bias - scale, actor.action_bias + scale
            next_actions = torch.clamp(
                self.actor_target(next_obs).addcmul_(noise, scale), low, high
            )
            target_q = self.critic_target(next_obs, next_actions).min(dim=0).values  # (N, B)
            target = torch.addcmul(rewards, 1.0 - terminals, target_q, value=args.discount)

        with autocast(args.precision, obs.device):
            q = critic(obs, actions)  # (2, N, B)
        # Each seed's loss: the sum over its two critics of each one's mean squared TD error.
        critic_loss = (q - target).square().mean(dim=2).sum(dim=0)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # the seeds' gradients do not mix
        self.critic_opt.step()
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean(dim=(0, 2))}

        if update_actor:
            with autocast(args.precision, obs.device):
                pi = actor(obs)
            # The dataset constraint: the action of the nearest transition to (beta * s, pi(s)), a constant.
            # Every seed's rows in one search: a row's neighbour does not depend on the other rows.
            query = torch.cat([args.beta * obs, pi.detach()], dim=2).flatten(0, 1)  # (N B, d)
            self.timer.start()
            nn_idx, nn_dist = self.index.query(query, k=args.k)
            self.timer.stop()
            nn_idx, nn_dist = nn_idx[:, -1].view(obs.shape[:2]), nn_dist[:, -1].view(obs.shape[:2])
            self.neighbours = (nn_idx, nn_dist, pi.detach())
            with autocast(args.precision, obs.device):
                q_pi = critic.member(obs, pi, 0)  # (N, B)
            lmbda = args.alpha / q_pi.abs().mean(dim=1).detach()
            dc_mse = (pi - self.buffer.actions[nn_idx]).square().mean(dim=(1, 2))
            actor_loss = -lmbda * q_pi.mean(dim=1) + dc_mse
            actor_params = list(actor.parameters())
            # Gradients for the actor only: the critic's weight gradients are not needed here.
            grads = torch.autograd.grad(actor_loss.sum(), actor_params)
            for p, g in zip(actor_params, grads, strict=True):
                p.grad = g
            self.actor_opt.step()
            polyak_update(self.critic_target.parameters(), critic.parameters(), args.tau)
            polyak_update(self.actor_target.parameters(), actor.parameters(), args.tau)
            metrics.update(
                actor_loss=actor_loss.detach(), dc_mse=dc_mse.detach(), lmbda=lmbda.detach()
            )
        return metrics

    @torch.no_grad()
    def search_diagnostics(self, batch: Batch, batch_idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Where the last actor step's neighbours lie: own transition or not, and their distances; (N,) each."""
        nn_idx, nn_dist, pi = self.neighbours  # (N, B), (N, B), (N, B, act)
        obs, actions = batch.observations, batch.actions
        return {
            "prdc/nn_self_fraction": (nn_idx == batch_idx).float().mean(dim=1),
            "prdc/nn_distance": nn_dist.mean(dim=1),
            "prdc/nn_state_distance": (
                self.args.beta * (self.buffer.observations[nn_idx] - obs).norm(dim=2).mean(dim=1)
            ),
            "prdc/nn_action_distance": (self.buffer.actions[nn_idx] - pi).norm(dim=2).mean(dim=1),
            "prdc/own_action_distance": (actions - pi).norm(dim=2).mean(dim=1),
        }


def with_eval_protocol(args: Args) -> Args:
    """--eval-every and --eval-episodes, where not given, from --eval-protocol."""
    every, episodes = _EVAL_PROTOCOLS[args.eval_protocol]
    every = every if args.eval_every is None else args.eval_every
    episodes = episodes if args.eval_episodes is None else args.eval_episodes
    return replace(args, eval_every=every, eval_episodes=episodes)


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check=lambda a: check_args(with_eval_protocol(a)))
    args = with_eval_protocol(args)
    if args.preset is not None and args.preset not in _DOMAIN and args.preset != args.dataset:
        print(
            f"note: hyperparameters of preset '{args.preset}' applied to dataset '{args.dataset}'"
        )
    task = load_offline_task(
        args.dataset, args.env_id, device=device, normalize_obs=args.normalize_obs,
        truncated_last=args.truncated_last,
        ref_min_score=args.ref_min_score, ref_max_score=args.ref_max_score,
    )  # fmt: skip
    if args.reward_scale != 1.0 or args.reward_shift != 0.0:
        shaped = task.buffer.next_observations if args.antmaze_shaping_bug else task.buffer.rewards
        shaped *= args.reward_scale
        shaped += args.reward_shift
    agent = PRDC(args, task.buffer, task.action_low, task.action_high, device)
    update = torch.compile(agent.update) if args.compile else agent.update
    loop = SeedLoops(
        "prdc", task.dataset.name, args, agent.parts(), np_rng, normalizer=task.normalizer,
        evaluator=lambda seed: task.evaluator(args.eval_episodes, seed, device),
        # Each seed's actor as a single-seed run builds it: what it evaluates with and exports as policy.pt2.
        policy=lambda: DeterministicActor(
            task.obs_dim, task.act_dim, args.hidden, task.action_low, task.action_high
        ).to(device),
    )  # fmt: skip

    for step in loop.steps():
        # sample_per_seed's draw, its indices kept for the diagnostics: (N, B)
        batch_idx = agent.streams.randint(task.buffer.size, (args.batch_size,))
        batch = task.buffer.gather(batch_idx)
        metrics = update(batch, update_actor=step % args.policy_freq == 0)
        if "dc_mse" in metrics:
            metrics |= agent.search_diagnostics(batch, batch_idx)
        if loop.due(args.log_every):
            # One search answers every seed's queries: its time is the group's.
            metrics["prdc/search_ms"] = torch.full((args.num_seeds,), agent.timer.read_ms())
        loop.log(metrics)
        if loop.due(args.eval_every):
            loop.evaluate(agent.actor)

    return loop.finish(
        agent.actor, dataset=task.dataset.name, env_id=task.env_id,
        nn_backend=agent.index.backend,
    )  # fmt: skip


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
