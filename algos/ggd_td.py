"""GGD-TD: "Generalized Gaussian Temporal Difference Error for Uncertainty-aware Reinforcement Learning"
(Kim, Lee, Cho, Han, Hwang, arXiv 2408.02295; code ait-lab/ggtde @ ea36916, an SB3 fork), SAC variant.

algos/sac.py with critics of 2 twins x E = 5 members (one batched ensemble). Every member outputs a mean
Q and a raw shape; beta = softplus(raw) + beta_eps is the shape of a generalised Gaussian (GGD, scale 1)
over the member's TD error, trained by the released risk-averse GGD loss. Per member e and sample i:

    y_e     = r + discount * (1 - terminal) * (min_twin Q'_{twin,e}(s', a') - alpha * log pi(a'|s')),  a' ~ pi(s')
    delta   = Q_e(s, a) - y_e
    L_GGD   = sum_e mean_i [ (|delta| * beta_e - log beta_e + lgamma(1 / beta_e)) * beta_e / sum_e' beta_e' ]
    L_reg   = sum_e mean_i [ w_i * l(Q_e(s_i, a_i), y_{i,e}) ],   w_i = (1/(s2_i + xi)) / sum_j 1/(s2_j + xi)
    L_Q     = 0.5 * sum_twin (L_value + lambda * L_reg)
    L_pi    = mean (alpha * log pi(a|s) - min_twin mean_e Q_{twin,e}(s, a)),                  a ~ pi(s)
    L_alpha = mean (-exp(log_alpha) * (log pi(a|s) + target_entropy)),  target_entropy = -|A|

with L_value the GGD NLL (--loss ggd), the variance head's Gaussian NLL (gaussian) or the MSE (mse);
s2_i the variance of sample i over the members (BIEV: of delta, MBBE-corrected; BIV: of Q times
discount^2), floored at 1e-6; l the MAE for the GGD loss (MSE otherwise); and xi >= 0 the shift that
keeps the effective batch size 1 / sum_i w_i^2 at least min(B - 1, --min-batch-size) (ocrl.nets.ggd).
Only the means feed the targets and the actor; beta shapes the critic loss alone.

The default is the released full method (`iev-ggd-sac`): --loss ggd with --reg auto (= biev for ggd,
none for the other losses); --loss mse is the released plain `sac` (the same networks, no regulariser),
--loss gaussian `gd-sac`, --reg biv the `iv-*` variants. Where the paper and the released code differ
the code is the default, with a flag for the other. docs/algos/ggd_td.md has the regulariser and the xi
solvers in full, these flags, the deviations from the released code and the ggd/* logs.

Two settings (--preset): sb3-faithful (the default), the released SB3 configuration (5 envs, one
gradient step per vector step, learning_starts 100, lr 3e-4 throughout, an actor step every update,
Tanh MLPs, sb3_contrib's TimeFeatureWrapper, 3M steps); cleanrl-default, only the critic loss swapped
into algos/sac.py's defaults. Truncated episodes bootstrap (only `terminated` ends the return).
Evaluation follows ocrl's shared protocol: deterministic (mean) actor, 10 episodes every 5,000
environment steps, episode seeds derived from --seed; Hopper-v4, HalfCheetah-v4 and Walker2d-v4 also
get D4RL's normalised score.
`--precision bf16` runs the networks' hidden layers in bf16 autocast in the update; their output layers (means,
raw shapes, actor mean and log-std), log pi, the TD targets, the GGD/Gaussian/MSE losses, the regulariser and its
xi solver, alpha, Polyak updates, weights, Adam's state, acting and evaluation stay fp32.
`--num-seeds N` trains seeds seed .. seed+N-1 at once: every network, target, optimiser and the log-temperature has
a leading seed axis (one batched matmul per layer), and each seed has its own training envs, replay buffer and
generator (weights, minibatches, the actor's noise), exactly those of its single-seed run, and its own losses; their
sum steps every seed with its own gradient. A single-seed run is N = 1 of the same code, so seed k alone and seed k
in a group are the same run to the bit (tests/test_seeds.py). Each seed's regulariser weights and ggd/* logs are
its own.

    python algos/ggd_td.py --env-id Hopper-v4 --total-steps 100000
    python algos/ggd_td.py --env-id Hopper-v4 --total-steps 100000 --loss mse   # plain SAC, the rest equal
    python algos/ggd_td.py --preset cleanrl-default --env-id HalfCheetah-v4 --beta-eps 1e-6
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ocrl.data import Batch
from ocrl.envs import Evaluator, SeedEnvs, TimeFeature, make_env, reference_scores
from ocrl.experiment import Agent, SeedLoops, start_run
from ocrl.experiment.args import OnlineArgs, PrecisionArgs, RunArgs, SeedsArgs, TargetArgs
from ocrl.experiment.flags import POSITIVE_FIELDS, UsageError, check_args, run_cli
from ocrl.nets import CriticEnsemble, FlatAdam, TanhGaussianActor, autocast, ggd, polyak_update
from ocrl.nets.seeds import SeedStreams, init_seeds

PRESETS: dict[str, dict] = {
    "sb3-faithful": {},  # the Args defaults
    "cleanrl-default": dict(num_envs=1, learning_starts=5_000, q_lr=1e-3, policy_freq=2,
                            activation="relu", time_feature=False, total_steps=1_000_000),
}  # fmt: skip
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(ggd.GGDArgs, TargetArgs, RunArgs, PrecisionArgs, SeedsArgs, OnlineArgs):
    env_id: str = "Hopper-v4"
    """Gymnasium environment id (flat Box observation and action spaces)"""
    preset: PresetName = "sb3-faithful"  # type: ignore[valid-type]
    """sb3-faithful: the released SB3 settings (the defaults); cleanrl-default: ocrl's CleanRL SAC with the GGD critic loss; explicit flags override either"""
    seed: int = 1
    """seed of the networks' weights, the minibatches and noise (one generator per seed), the training envs and their warm-up actions, and the evaluation episodes"""
    total_steps: int = 3_000_000
    """environment steps (over all env copies)"""
    num_envs: int = 5
    """parallel training environments (of each seed); one gradient update per vector step"""
    buffer_size: int = 1_000_000
    """replay buffer capacity"""
    batch_size: int = 256
    """transitions per update, sampled uniformly with replacement"""
    learning_starts: int = 100
    """uniformly random actions for this many steps; updates start after it"""
    policy_lr: float = 3e-4
    """Adam learning rate of the actor"""
    q_lr: float = 3e-4
    """Adam learning rate of the critics (and of the temperature)"""
    policy_freq: int = 1
    """the actor (and temperature) take policy_freq steps every policy_freq updates"""
    target_network_frequency: int = 1
    """updates between Polyak updates of the target critics"""
    alpha: float = 0.2
    """entropy temperature when --no-autotune"""
    autotune: bool = True
    """learn the temperature towards target entropy -|A| (log alpha starts at 0)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer widths of actor and critics"""
    activation: Literal["tanh", "relu"] = "tanh"
    """hidden activation of actor and critics (the released MlpPolicy: Tanh; CleanRL: ReLU)"""
    time_feature: bool = True
    """append 1 - t / max_episode_steps to the observations (sb3_contrib's TimeFeatureWrapper), in training and evaluation"""
    biv_source: Literal["online", "target"] = "online"
    """BIV variance of the online critics' Q(s, a) (released code) or of the target critics' Q'(s', a') (IV-RL)"""
    compile: bool = False
    """wrap the update in torch.compile (off by default on the CPU; not with --xi-solver nelder-mead)"""


class GGDSAC(Agent):
    """The actor, the twin critics of E GGD members each, their targets, the log-temperatures and the optimisers of
    --num-seeds seeds, stacked on a leading seed axis; `update` is one GGD-SAC iteration of every seed."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, action_low, action_high, device):
        self.args, n, self.act_dim = args, args.num_seeds, act_dim
        self.streams = SeedStreams(range(args.seed, args.seed + n), device)
        activation = nn.Tanh if args.activation == "tanh" else nn.ReLU
        self.actor = TanhGaussianActor(obs_dim, act_dim, args.hidden, action_low, action_high,
                                       activation=activation, num_seeds=n)  # fmt: skip
        # 2 twins x E members, each outputting a mean Q and a raw shape.
        self.critic = CriticEnsemble(obs_dim, act_dim, args.hidden, 2 * args.ensemble_size,
                                     activation=activation, out_dim=2, num_seeds=n)  # fmt: skip
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
        self.reg = ggd.resolved_reg(args.reg, args.loss)
        self.reg_loss = ggd.resolved_reg_loss(args.reg_loss, args.loss)
        self.min_ess = float(min(args.batch_size - 1, args.min_batch_size))
        self.seen: dict[str, torch.Tensor] = {}  # the last update's intermediates, for diagnostics

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The actor's (action, log pi, mean action) on (N, ..., obs), each seed's noise from its own stream."""
        return self.actor(obs, self.streams.randn((*obs.shape[1:-1], self.act_dim)))

    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions sampled from the actor for (N, num_envs, obs) observations (acting during training)."""
        return self.sample(obs)[0]

    def q_and_raw(self, critic: CriticEnsemble, obs: torch.Tensor, action: torch.Tensor):
        """The members' means and raw shapes, each (N seeds, 2 twins, E, B)."""
        # (2 E, N, B, 2) -> (N, 2 E, B, 2): each seed's block laid out as a single-seed run's (2 E, B, 2), so that
        # its reductions and gradients, forward and backward, take the same steps whatever N is.
        out = critic(obs, action).movedim(1, 0).contiguous()
        out = out.view(out.shape[0], 2, self.args.ensemble_size, *out.shape[2:])
        return out[..., 0], out[..., 1]

    def value_loss(self, delta: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Per seed and twin (N, twins): the value loss of --loss over the members' TD errors delta and raw shapes
        (N, twins, E, B)."""
        args = self.args
        if args.loss == "mse":
            return delta.pow(2).mean(-1).sum(-1)
        if args.loss == "gaussian":
            var = F.softplus(raw)
            self.seen.update(param=var.detach())
            nll = F.gaussian_nll_loss(delta, torch.zeros_like(delta), var, reduction="none")
            return nll.mean(-1).sum(-1)
        beta = F.softplus(raw) + args.beta_eps
        loss, terms = ggd.ggd_nll(delta, beta, args.ggd_form, args.detach_ra_weight)
        self.seen.update(param=beta.detach(), nonfinite=~torch.isfinite(terms))
        return loss

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
            next_q, _ = self.q_and_raw(self.critic_target, next_obs, next_actions)  # (N, 2, E, B)
            # Per member: the min over the twins; the same a' for every member.
            soft_next = (
                next_q.min(dim=1, keepdim=True).values - (alpha * next_log_prob)[:, None, None]
            )
            not_done = (1.0 - terminals)[:, None, None]
            target = rewards[:, None, None] + args.discount * not_done * soft_next  # (N, 1, E, B)
        with autocast(args.precision, obs.device):
            q, raw = self.q_and_raw(critic, obs, actions)
        delta = q - target
        value_loss = self.value_loss(delta, raw)  # (N, 2 twins)
        reg_loss = torch.zeros_like(value_loss)
        if self.reg != "none":  # BIEV/BIV on the members' means
            reg_loss, kept = ggd.inverse_variance_regulariser(
                q, target, self.reg, biev_mbbe=args.biev_mbbe, discount=args.discount,
                min_ess=self.min_ess, solver=args.xi_solver, loss=self.reg_loss,
                scale=args.reg_scale, spread=next_q if args.biv_source == "target" else None,
            )  # fmt: skip
            self.seen.update(kept)
        critic_loss = 0.5 * (value_loss + args.uncertainty_temperature * reg_loss).sum(-1)  # (N,)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()  # the seeds' gradients do not mix
        self.critic_opt.step()
        self.seen.update(td_var=delta.detach().var(dim=-2, correction=0))
        metrics = {
            "critic_loss": critic_loss.detach(), "value_loss": 0.5 * value_loss.detach().sum(-1),
            "reg_loss": 0.5 * reg_loss.detach().sum(-1), "q_mean": q.detach().mean(dim=(1, 2, 3)),
            "alpha": alpha[:, 0],
        }  # fmt: skip

        actor_params = list(actor.parameters())
        for _ in range(actor_steps):
            with autocast(args.precision, obs.device):
                pi, log_prob, _ = self.sample(obs)
                q_pi = self.q_and_raw(critic, obs, pi)[0].mean(dim=2).min(dim=1).values  # (N, B)
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

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """The reference's checks for the last update as ggd/* logs (shape statistics, non-finite terms, xi, ESS)."""
        return ggd.ggd_diagnostics(
            "beta" if self.args.loss == "ggd" else "var", **self.seen, seeds=True
        )


def check_ggd_args(args: Args) -> None:
    """This file's flag checks, after ocrl's check_args: counts, ranges and what the regulariser needs."""
    counts = ("ensemble_size", "min_batch_size", "target_network_frequency")
    check_args(args, POSITIVE_FIELDS + counts, non_negative=("uncertainty_temperature",))
    if args.beta_eps < 0:
        raise UsageError(
            f"--beta-eps {args.beta_eps}: must be >= 0 (0: the released code; 1e-6: a floor)"
        )
    reg = ggd.resolved_reg(args.reg, args.loss)
    sizes = (args.ensemble_size, args.batch_size)
    if problem := ggd.regulariser_misfit(reg, args.biev_mbbe, *sizes, members="members"):
        raise UsageError(problem)
    if args.compile and args.xi_solver == "nelder-mead":
        raise UsageError(
            "--compile: the Nelder-Mead solver runs on the host; use --xi-solver bisection"
        )


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check_ggd_args)

    wrap = TimeFeature if args.time_feature else (lambda env: env)
    # Per seed, its single-seed run's SAME_STEP autoreset vector env and replay buffer; the envs' observation and
    # episode counters (envs.obs, envs.episode_return, envs.episode_length) are a checkpoint part, so --resume
    # continues the episodes.
    seeds = SeedEnvs(lambda: wrap(make_env(args.env_id)), args, "SAC", device)
    obs_dim, act_dim, space = seeds.obs_dim, seeds.act_dim, seeds.action_space
    agent = GGDSAC(args, obs_dim, act_dim, space.low, space.high, device)
    update = torch.compile(agent.update) if args.compile else agent.update
    ref_min, ref_max = reference_scores(args.env_id)
    activation = nn.Tanh if args.activation == "tanh" else nn.ReLU
    loop = SeedLoops(
        "ggd_td", args.env_id, args, agent.parts() | seeds.parts(), np_rng, rate_tag="charts/steps_per_s",
        evaluator=lambda seed: Evaluator(
            args.env_id, args.eval_episodes, seed, ref_min_score=ref_min, ref_max_score=ref_max,
            device=device, env_wrapper=wrap if args.time_feature else None,
        ),
        # Each seed's actor as a single-seed run builds it: what it evaluates with and exports as policy.pt2.
        policy=lambda: TanhGaussianActor(obs_dim, act_dim, args.hidden, space.low, space.high,
                                         activation=activation).to(device),
    )  # fmt: skip
    for step in loop.steps(stride=args.num_envs):
        seeds.step(agent.explore if step >= args.learning_starts else None, loop.runs, step)

        if loop.step > args.learning_starts:
            # Updates so far, this one included (one per vector step after learning_starts); derived
            # from the step count, so a resumed run keeps the schedule of an uninterrupted one.
            updates = loop.step // args.num_envs - args.learning_starts // args.num_envs
            actor_steps = args.policy_freq if updates % args.policy_freq == 0 else 0
            batch = seeds.sample(args.batch_size, agent.streams)
            metrics = update(batch, actor_steps, updates % args.target_network_frequency == 0)
            loop.log(metrics | agent.diagnostics())
        if loop.due(args.eval_every):
            loop.evaluate(agent.actor)

    seeds.close()
    return loop.finish(agent.actor, env_id=args.env_id)


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
