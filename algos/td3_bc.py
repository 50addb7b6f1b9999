"""TD3+BC: "A Minimalist Approach to Offline Reinforcement Learning" (Fujimoto & Gu, 2021, arXiv 2106.06860).

TD3 trained on a fixed dataset, with a behaviour-cloning term in the actor loss:

    L_pi = -lambda * mean Q1(s, pi(s)) + mean (pi(s) - a)^2,   lambda = alpha / mean |Q1(s, pi(s))|

Transitions follow D4RL's `qlearning_dataset` (timeout rows dropped, done = terminal only) and observations
are standardised with the mean and std (+1e-3) of those training transitions, as the reference code. The critic is TD3's: twin Q-networks (here one batched
ensemble, which is the same maths as two networks with one optimiser), clipped target-policy noise, the
minimum of the two targets, and an actor/target update every `policy_freq` critic steps.

Defaults reproduce the paper and its reference code (sfujim/TD3_BC): alpha 2.5, 1M updates, batch 256.
The paper and the code agree on every setting used here. Evaluation follows ocrl's shared protocol:
deterministic actor, 10 episodes every 5,000 updates, episode seeds derived from --seed.
`--precision bf16` runs the networks' hidden layers in bf16 autocast; their output layers (Q, pi), the TD
target, the losses, lambda, the Polyak updates, the weights, Adam's state and evaluation stay fp32.
`--num-seeds N` trains seeds seed .. seed+N-1 at once: every network and tensor has a leading seed axis (one
batched matmul per layer), each seed draws its weights, minibatches and noise from its own generator, and its loss
is its own (lambda per seed); their sum steps every seed's weights with that seed's gradient alone. A single-seed
run is N = 1 of the same code, so seed k alone and seed k in a group train the same networks.

    python algos/td3_bc.py --total-steps 20000           # shipped hopper data, a few CPU-minutes
    python algos/td3_bc.py --dataset hopper-medium-v2 --preset hopper-medium-v2
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from ocrl.data import Batch
from ocrl.envs import load_offline_task
from ocrl.experiment import Agent, SeedLoops, start_run
from ocrl.experiment.args import OfflineArgs, PrecisionArgs, RunArgs, SeedsArgs, TargetArgs
from ocrl.experiment.flags import run_cli
from ocrl.nets import CriticEnsemble, DeterministicActor, FlatAdam, autocast, polyak_update
from ocrl.nets.seeds import SeedStreams, init_seeds

_LOCOMOTION = [
    f"{domain}-{kind}-v2"
    for domain in ("halfcheetah", "hopper", "walker2d")
    for kind in ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
]
PRESETS: dict[str, dict] = {
    # The paper uses one setting for every Gym-MuJoCo dataset (CORL's per-dataset YAMLs agree).
    **{
        name: {"alpha": 2.5, "normalize_obs": True, "normalize_reward": False}
        for name in _LOCOMOTION
    },
    # Control for PRDC / A2PR, which use alpha = 40 on halfcheetah.
    "halfcheetah-alpha40": {"alpha": 40.0, "normalize_obs": True, "normalize_reward": False},
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(TargetArgs, RunArgs, PrecisionArgs, SeedsArgs, OfflineArgs):
    preset: PresetName | None = None  # type: ignore[valid-type]
    """per-dataset hyperparameters from the paper; explicit flags override them; --dataset alone changes none"""
    seed: int = 0
    """seed of the networks' weights, the minibatches and noise (one generator per seed) and the evaluation episodes"""
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
    """actor and target updates happen every policy_freq critic updates"""
    alpha: float = 2.5
    """weight of the Q term against behaviour cloning (lambda = alpha / mean|Q|)"""
    normalize_obs: bool = True
    """standardise observations with the mean and std (+1e-3) of the training transitions"""
    normalize_reward: bool = False
    """scale rewards by max_episode_steps / (max - min return) over the training transitions, CORL's modify_reward"""
    truncated_last: Literal["drop", "keep"] = "drop"
    """'drop' reproduces D4RL's qlearning_dataset; 'keep' also trains on timeout transitions using stored next observations"""
    compile: bool = False
    """wrap the update in torch.compile (off by default: on a CPU compile time dominates short runs)"""


class TD3BC(Agent):
    """The actor, the twin critics, their targets and optimisers of --num-seeds seeds, stacked on a leading seed
    axis; `update` is one TD3+BC iteration of every seed on (N, B, ...) minibatches."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, action_low, action_high, device):
        self.args, n = args, args.num_seeds
        self.streams = SeedStreams(range(args.seed, args.seed + n), device)
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
        """A critic step, and on actor iterations an actor step and the target updates; (N,) metrics."""
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
                q_pi = critic.member(obs, pi, 0)  # (N, B)
            lmbda = args.alpha / q_pi.abs().mean(dim=1).detach()
            bc_mse = (pi - actions).square().mean(dim=(1, 2))
            actor_loss = -lmbda * q_pi.mean(dim=1) + bc_mse
            actor_params = list(actor.parameters())
            # Gradients for the actor only: the critic's weight gradients are not needed here.
            grads = torch.autograd.grad(actor_loss.sum(), actor_params)
            for p, g in zip(actor_params, grads, strict=True):
                p.grad = g
            self.actor_opt.step()
            polyak_update(self.critic_target.parameters(), critic.parameters(), args.tau)
            polyak_update(self.actor_target.parameters(), actor.parameters(), args.tau)
            metrics.update(
                actor_loss=actor_loss.detach(), bc_mse=bc_mse.detach(), lmbda=lmbda.detach()
            )
        return metrics


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args)
    if args.preset in _LOCOMOTION and args.preset != args.dataset:
        print(
            f"note: hyperparameters of preset '{args.preset}' applied to dataset '{args.dataset}'"
        )
    task = load_offline_task(
        args.dataset, args.env_id, device=device, normalize_obs=args.normalize_obs,
        normalize_reward=args.normalize_reward, truncated_last=args.truncated_last,
        ref_min_score=args.ref_min_score, ref_max_score=args.ref_max_score,
    )  # fmt: skip
    agent = TD3BC(args, task.obs_dim, task.act_dim, task.action_low, task.action_high, device)
    update = torch.compile(agent.update) if args.compile else agent.update
    loop = SeedLoops(
        "td3_bc", task.dataset.name, args, agent.parts(), np_rng, normalizer=task.normalizer,
        evaluator=lambda seed: task.evaluator(args.eval_episodes, seed, device),
        # Each seed's actor as a single-seed run builds it: what it evaluates with and exports as policy.pt2.
        policy=lambda: DeterministicActor(
            task.obs_dim, task.act_dim, args.hidden, task.action_low, task.action_high
        ).to(device),
    )  # fmt: skip

    for step in loop.steps():
        batch = task.buffer.sample_per_seed(args.batch_size, agent.streams)
        loop.log(update(batch, update_actor=step % args.policy_freq == 0))
        if loop.due(args.eval_every):
            loop.evaluate(agent.actor)

    return loop.finish(agent.actor, dataset=task.dataset.name, env_id=task.env_id)


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
