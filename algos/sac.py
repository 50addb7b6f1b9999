"""SAC: "Soft Actor-Critic Algorithms and Applications" (Haarnoja et al., 2018, arXiv 1812.05905).

Online continuous control with a squashed-Gaussian actor, twin Q-networks (one batched ensemble, the
same maths as two networks with one optimiser) with Polyak targets, and an automatically tuned entropy
temperature alpha = exp(log_alpha):

    y       = r + discount * (1 - terminal) * (min_j Q'_j(s', a') - alpha * log pi(a'|s')),  a' ~ pi(s')
    L_Q     = sum_j mean (Q_j(s, a) - y)^2
    L_pi    = mean (alpha * log pi(a|s) - min_j Q_j(s, a)),                                a ~ pi(s)
    L_alpha = mean (-exp(log_alpha) * (log pi(a|s) + target_entropy)),  target_entropy = -|A|

with a = tanh(u) * scale + bias, u ~ N(mu(s), sigma(s)), and

    log pi(a|s) = sum_i [log N(u_i; mu_i, sigma_i) - log(1 - tanh(u_i)^2) - log scale_i],

where log(1 - tanh(u)^2) is computed exactly, as 2 (log 2 - u - softplus(-2u)), which stays finite for
large |u| (nets.TanhGaussianActor). CleanRL's `sac_continuous_action.py` subtracts
log(scale * (1 - tanh(u)^2) + 1e-6) instead: the two differ only by that 1e-6 inside the logarithm.
The difference is negligible until tanh(u) saturates; there CleanRL's term stops near log 1e-6 per
dimension while the exact one keeps falling (about log 4 - 2|u|).

Defaults are CleanRL's: 5,000 uniformly random steps first, actor lr 3e-4, critic and temperature
lr 1e-3, batch 256, tau 0.005, log alpha starting at 0, log-std squashed into [-5, 2] by tanh, and the
actor and temperature taking `policy_freq` steps every `policy_freq` updates (one update per vector
step once learning starts). Truncated episodes bootstrap (only `terminated` ends the return).
Evaluation follows ocrl's shared protocol: deterministic (mean) actor, 10 episodes every 5,000
environment steps, episode seeds derived from --seed; Hopper-v4, HalfCheetah-v4 and Walker2d-v4 also
get D4RL's normalised score.
`--precision bf16` runs the networks' hidden layers in bf16 autocast in the update; their output layers (Q, mean,
log-std), log pi, the soft TD target, the losses, alpha, Polyak updates, weights, Adam's state, acting and evaluation stay fp32.
`--num-seeds N` trains seeds seed .. seed+N-1 at once: every network, target, optimiser and the log-temperature has
a leading seed axis (one batched matmul per layer), and each seed has its own training envs, replay buffer and
generator (weights, minibatches, the actor's noise), exactly those of its single-seed run, and its own losses; their
sum steps every seed with its own gradient. A single-seed run is N = 1 of the same code, so seed k alone and seed k
in a group are the same run to the bit (tests/test_seeds.py).

    python algos/sac.py --env-id Pendulum-v1 --total-steps 10000
    python algos/sac.py --env-id Hopper-v4
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from ocrl.data import Batch
from ocrl.envs import Evaluator, SeedEnvs, make_env, reference_scores
from ocrl.experiment import Agent, SeedLoops, start_run
from ocrl.experiment.args import OnlineArgs, PrecisionArgs, RunArgs, SeedsArgs, TargetArgs
from ocrl.experiment.flags import run_cli
from ocrl.nets import CriticEnsemble, FlatAdam, TanhGaussianActor, autocast, polyak_update
from ocrl.nets.seeds import SeedStreams, init_seeds


@dataclass
class Args(TargetArgs, RunArgs, PrecisionArgs, SeedsArgs, OnlineArgs):
    env_id: str = "Hopper-v4"
    """Gymnasium environment id (flat Box observation and action spaces)"""
    seed: int = 1
    """seed of the networks' weights, the minibatches and noise (one generator per seed), the training envs and their warm-up actions, and the evaluation episodes"""
    total_steps: int = 1_000_000
    """environment steps (over all env copies)"""
    num_envs: int = 1
    """parallel training environments (of each seed); one gradient update per vector step"""
    buffer_size: int = 1_000_000
    """replay buffer capacity"""
    batch_size: int = 256
    """transitions per update, sampled uniformly with replacement"""
    learning_starts: int = 5_000
    """uniformly random actions for this many steps; updates start after it"""
    policy_lr: float = 3e-4
    """Adam learning rate of the actor"""
    q_lr: float = 1e-3
    """Adam learning rate of the critics (and of the temperature)"""
    policy_freq: int = 2
    """the actor (and temperature) take policy_freq steps every policy_freq updates"""
    target_network_frequency: int = 1
    """updates between Polyak updates of the target critics"""
    alpha: float = 0.2
    """entropy temperature when --no-autotune"""
    autotune: bool = True
    """learn the temperature towards target entropy -|A| (log alpha starts at 0)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer widths of actor and critics"""
    save_snapshots: bool = False
    """also keep the actor of every evaluation in snapshots/ (each seed's folder) with its score (used by scripts/collect_dataset.py)"""
    compile: bool = False
    """wrap the update in torch.compile (off by default on the CPU)"""


class SAC(Agent):
    """The actor, the twin critics, their targets, the log-temperatures and the optimisers of --num-seeds seeds,
    stacked on a leading seed axis; `update` is one SAC iteration of every seed on (N, B, ...) minibatches."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, action_low, action_high, device):
        self.args, n, self.act_dim = args, args.num_seeds, act_dim
        self.streams = SeedStreams(range(args.seed, args.seed + n), device)
        self.actor = TanhGaussianActor(obs_dim, act_dim, args.hidden, action_low, action_high,
                                       num_seeds=n)  # fmt: skip
        self.critic = CriticEnsemble(obs_dim, act_dim, args.hidden, num_critics=2, num_seeds=n)
        init_seeds(self.actor, self.streams), init_seeds(self.critic, self.streams)
        self.actor.to(device), self.critic.to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # FlatAdam: torch's fused Adam over one padded buffer, whose digits do not depend on N.
        self.actor_opt = FlatAdam(self.actor.parameters(), lr=args.policy_lr)
        self.critic_opt = FlatAdam(self.critic.parameters(), lr=args.q_lr)
        self.target_entropy = -float(act_dim)
        log_alpha = 0.0 if args.autotune else float(np.log(args.alpha))
        # One log-temperature per seed: seed k's checkpoint holds row k, a single-seed run's scalar.
        self.log_alpha = torch.full((n,), log_alpha, device=device, requires_grad=args.autotune)
        self.alpha_opt = FlatAdam([self.log_alpha], lr=args.q_lr) if args.autotune else None

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The actor's (action, log pi, mean action) on (N, ..., obs), each seed's noise from its own stream."""
        return self.actor(obs, self.streams.randn((*obs.shape[1:-1], self.act_dim)))

    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions sampled from the actor for (N, num_envs, obs) observations (acting during training)."""
        return self.sample(obs)[0]

    def update(
        self, batch: Batch, actor_steps: int, update_target: bool = True
    ) -> dict[str, torch.Tensor]:
        """A critic step, then `actor_steps` actor (and temperature) steps on the same observations, then the
        Polyak update of the target critics when `update_target`; (N,) metrics."""
        args, actor, critic = self.args, self.actor, self.critic
        obs, actions, rewards, next_obs, terminals = batch  # (N, B, ...): one minibatch per seed
        alpha = self.log_alpha.exp().detach().unsqueeze(1)  # (N, 1)
        with torch.no_grad(), autocast(args.precision, obs.device):
            next_actions, next_log_prob, _ = self.sample(next_obs)
            next_q = self.critic_target(next_obs, next_actions)  # (2, N, B)
            soft_next = next_q.min(dim=0).values - alpha * next_log_prob
            target = rewards + args.discount * (1.0 - terminals) * soft_next
        with autocast(args.precision, obs.device):
            q = critic(obs, actions)  # (2, N, B)
        critic_loss = ((q - target) ** 2).mean(dim=2).sum(dim=0)  # each seed's: (N,)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # the seeds' gradients do not mix
        self.critic_opt.step()
        metrics = {
            "critic_loss": critic_loss.detach(), "q_mean": q.detach().mean(dim=(0, 2)), "alpha": alpha[:, 0],
        }  # fmt: skip

        actor_params = list(actor.parameters())
        for _ in range(actor_steps):
            with autocast(args.precision, obs.device):
                pi, log_prob, _ = self.sample(obs)
                q_pi = critic(obs, pi).min(dim=0).values
            actor_loss = (alpha * log_prob - q_pi).mean(dim=1)
            # Gradients for the actor only: the critic's weight gradients are not needed here.
            grads = torch.autograd.grad(actor_loss.sum(), actor_params)
            for p, g in zip(actor_params, grads, strict=True):
                p.grad = g
            self.actor_opt.step()
            metrics.update(actor_loss=actor_loss.detach(), entropy=-log_prob.detach().mean(dim=1))
            if self.alpha_opt is not None:
                with torch.no_grad(), autocast(args.precision, obs.device):
                    _, log_prob, _ = self.sample(obs)
                log_alpha = self.log_alpha.unsqueeze(1)
                alpha_loss = (-log_alpha.exp() * (log_prob + self.target_entropy)).mean(dim=1)
                self.alpha_opt.zero_grad(set_to_none=True)
                alpha_loss.sum().backward()
                self.alpha_opt.step()
                alpha = self.log_alpha.exp().detach().unsqueeze(1)
                metrics["alpha_loss"] = alpha_loss.detach()
        if update_target:
            polyak_update(self.critic_target.parameters(), critic.parameters(), args.tau)
        return metrics


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args)

    # Per seed, its single-seed run's SAME_STEP autoreset vector env and replay buffer; the envs' observation and
    # episode counters (envs.obs, envs.episode_return, envs.episode_length) are a checkpoint part, so --resume
    # continues the episodes.
    seeds = SeedEnvs(lambda: make_env(args.env_id), args, "SAC", device)
    obs_dim, act_dim, space = seeds.obs_dim, seeds.act_dim, seeds.action_space
    agent = SAC(args, obs_dim, act_dim, space.low, space.high, device)
    update = torch.compile(agent.update) if args.compile else agent.update
    ref_min, ref_max = reference_scores(args.env_id)
    loop = SeedLoops(
        "sac", args.env_id, args, agent.parts() | seeds.parts(), np_rng,
        rate_tag="charts/steps_per_s", snapshots=args.save_snapshots,
        evaluator=lambda seed: Evaluator(
            args.env_id, args.eval_episodes, seed, ref_min_score=ref_min, ref_max_score=ref_max,
            device=device,
        ),
        # Each seed's actor as a single-seed run builds it: what it evaluates with and exports as policy.pt2.
        policy=lambda: TanhGaussianActor(obs_dim, act_dim, args.hidden, space.low, space.high).to(device),
    )  # fmt: skip
    # The untrained actor first: scripts/collect_dataset.py uses it for the "random" data.
    if args.save_snapshots and loop.step == 0:
        loop.evaluate(agent.actor)
    for step in loop.steps(stride=args.num_envs):
        seeds.step(agent.explore if step >= args.learning_starts else None, loop.runs, step)

        if loop.step > args.learning_starts:
            # Updates so far, this one included (one per vector step after learning_starts); derived
            # from the step count, so a resumed run keeps the schedule of an uninterrupted one.
            updates = loop.step // args.num_envs - args.learning_starts // args.num_envs
            actor_steps = args.policy_freq if updates % args.policy_freq == 0 else 0
            batch = seeds.sample(args.batch_size, agent.streams)
            loop.log(update(batch, actor_steps, updates % args.target_network_frequency == 0))
        if loop.due(args.eval_every):
            loop.evaluate(agent.actor)

    seeds.close()
    return loop.finish(agent.actor, env_id=args.env_id)


if __name__ == "__main__":
    run_cli(main, Args)
