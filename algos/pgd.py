"""PGD: "Policy-Guided Diffusion" (Jackson, Matthews, Lu, Ellis, Whiteson & Foerster, RLC 2024, arXiv 2404.06356).

A trajectory diffusion model of the offline data (the behaviour distribution) is sampled with the gradient of
the *target* policy's action log-likelihood added to the action channels, which moves the synthetic
trajectories on-policy; an offline agent (TD3+BC or IQL) trains on a mix of synthetic and real transitions.
Before EDM step k = 0..N-1 of the stochastic Heun sampler, in the model's normalised space:

    lambda_k = coef * [(1 - k/N) + c_cos * sin(pi (k+1) / N)]  for k < N - 1,   lambda_{N-1} = 0
    g        = d/d a~  sum_t log pi( tanh(unnormalise(a~_t)) | s_t ),   s_t = unnormalise(x_k[t, obs]) (constant)
    g        <- g / ||g||_F + 1e-8   (--normalize-action-guidance; the norm is over one trajectory's L x A block)
    x_k[:, :, act] <- x_k[:, :, act] + lambda_k * g

then the usual churn + Heun step runs from the shifted x_k. The initial synthetic set is unguided; every
--synth-dataset-lifetime updates it is regenerated with guidance from the current actor. Each batch holds
--synth-batch-size synthetic transitions and the rest real (240 + 16). The agent is PGD's IQL (--agent, the
code's default) or TD3+BC, whose targets move by --tau at the start of every update; the model is
--diffusion-model (`python algos/diffusion.py --preset pgd-unguided`'s model.pt), or --diffusion-steps N trains
it here first. Defaults are the released code's (EmptyJackson/policy-guided-diffusion @ 9da606c) but for five
deviations; --guidance-coef 0 (the default) is the unguided baseline, --synth-batch-size 0 the real-data one.
Log pi, the agents' losses, the deviations, results and commands: docs/algos/pgd.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ocrl.data import Batch
from ocrl.data.replay import SyntheticSet, mixed_batch
from ocrl.envs import OfflineTask, load_offline_task
from ocrl.experiment import Agent, TrainingLoop, start_run
from ocrl.experiment.args import OfflineArgs, RunArgs, TargetArgs
from ocrl.experiment.flags import UsageError, check_args, run_cli
from ocrl.nets import (
    MLP,
    CriticEnsemble,
    DeterministicActor,
    GaussianActor,
    edm_runs,  # the trajectory model: its flags, loading, training and sampling
    polyak_update,
)
from ocrl.nets.diffusion import DiffusionModel as TrajectoryModel  # at level 'trajectory'

PRESETS: dict[str, dict] = {
    # A CPU-sized run: fewer regenerated trajectories and Heun steps (a deviation: PGD samples 8192 x 256),
    # and the model --diffusion-steps trains: docs/results/pgd.md's 16-row windows, F 64, 2 blocks.
    "cpu-small": dict(num_synth_trajectories=1024, sample_batch_size=256, sample_steps=32,
                      synth_dataset_lifetime=10_000, trajectory_length=16, unet_features=64,
                      unet_blocks=2),
}  # fmt: skip
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(TargetArgs, RunArgs, OfflineArgs, edm_runs.TrajectoryTrainingArgs):
    preset: PresetName | None = None  # type: ignore[valid-type]
    """'cpu-small': 1,024 trajectories and 32 Heun steps per regeneration (and a 16-row, F 64, 2-block model with --diffusion-steps); explicit flags override it"""
    diffusion_model: str | None = None
    """model.pt of `python algos/diffusion.py --preset pgd-unguided --dataset <data>`; or give --diffusion-steps"""
    agent: Literal["td3_bc", "iql"] = "iql"
    """offline agent trained on the mixed batches (PGD's versions of their losses; the code's default is iql)"""
    seed: int = 0
    """seed of torch, numpy, the evaluation episodes and the sampler's noise"""
    total_steps: int = 1_000_000
    """agent updates (PGD: 1M)"""
    batch_size: int = 256
    """transitions per update: synthetic plus real"""
    synth_batch_size: int = 240
    """synthetic transitions per update; the other batch_size - synth_batch_size are real (PGD: 240 of 256); 0 = real data only, nothing generated"""
    synth_dataset_lifetime: int = 10_000
    """updates between regenerations of the synthetic set (guided by the current actor; never at step 0)"""
    num_synth_trajectories: int = 8192
    """trajectories per (re)generation (PGD: 32 workers x 256 rollouts)"""
    sample_batch_size: int = 256
    """trajectories per sampler call"""
    num_rollout_steps: int | None = None
    """transitions per sampled trajectory (rows - 1); default the model's trajectory_length - 1 (PGD's code: 128)"""
    sample_steps: int = 256
    """Heun steps N of the sampler (PGD's diffusion_timesteps)"""
    euler_origin: Literal["x_hat", "x_i"] = "x_i"
    """Euler predictor from the churned x_hat (EDM) or from x_i (PGD's code)"""
    churn: bool = True
    """stochastic sampler (EDM Algorithm 2); --no-churn is deterministic Heun"""
    guidance_coef: float = 0.0
    """lambda scale `coef` of policy guidance; 0 is the unguided baseline (PGD's policy_guidance_coeff)"""
    guidance_cosine_coef: float = 0.3
    """c_cos of the schedule lambda_k = coef [(1 - k/N) + c_cos sin(pi (k+1)/N)]"""
    normalize_action_guidance: bool = False
    """g / ||g||_F + 1e-8 per trajectory (PGD's --normalize_action_guidance, off by default there too)"""
    guidance_norm_eps_in_denominator: bool = False
    """with --normalize-action-guidance: g / (||g||_F + 1e-8) instead of the code's g / ||g||_F + 1e-8"""
    denoised_guidance: bool = False
    """evaluate the policy at D(x_k; sigma_k) (one extra network call per step) instead of x_k"""
    tanh_jacobian: bool = False
    """IQL guidance: add the tanh change of variables sum log(1 - tanh(u)^2) (PGD's code has none)"""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """the U-Net's matmuls: 'bf16' autocast (sigma maths in fp32), 'fp32', or 'auto': bf16 on CUDA, fp32 on the CPU"""
    lr: float = 3e-4
    """Adam learning rate of every network (eps 1e-5, constant; PGD's default since 3 Jul 2024)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer widths of the actor, the critics and V (ReLU)"""
    alpha: float = 2.5
    """TD3+BC: weight of the Q term against behaviour cloning (lambda = alpha / mean|Q|)"""
    policy_noise: float = 0.2
    """TD3+BC: std of the target-policy smoothing noise, times the action scale"""
    noise_clip: float = 0.5
    """TD3+BC: clip of the target-policy smoothing noise, times the action scale"""
    critic_updates: int = 2
    """TD3+BC: critic steps per update, after the actor step (PGD's num_critic_updates_per_step)"""
    beta: float = 3.0
    """IQL: inverse temperature of the advantage weights exp(beta A)"""
    expectile: float = 0.7
    """IQL: expectile tau of V's asymmetric loss, in (0, 1)"""
    max_weight: float = 100.0
    """IQL: clip of the advantage weights (EXP_ADV_MAX)"""
    normalize_obs: bool = True
    """standardise observations (real and synthetic) with the real transitions' mean and std (+1e-3)"""


# ------------------------------------------------------------------------------------------- agents
class TD3BC(Agent):
    """PGD's TD3+BC: targets first, one actor step, then `critic_updates` steps of the twin critics."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, action_low, action_high, device):
        self.args = args
        self.actor = DeterministicActor(obs_dim, act_dim, args.hidden, action_low, action_high)
        self.critic = CriticEnsemble(obs_dim, act_dim, args.hidden, num_critics=2)
        self.actor.to(device), self.critic.to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # One Adam for the two critics is two Adams: each critic's loss reaches only its own weights.
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=args.lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=args.lr, eps=1e-5)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        args, actor, critic = self.args, self.actor, self.critic
        obs, actions, rewards, next_obs, terminals = batch
        # Targets at the start of the step (a copy at step 0: the deepcopy, then a no-op lerp).
        polyak_update(self.critic_target.parameters(), critic.parameters(), args.tau)
        polyak_update(self.actor_target.parameters(), actor.parameters(), args.tau)

        pi = actor(obs)
        q_pi = critic.member(obs, pi, 0)
        lmbda = args.alpha / (q_pi.abs().mean().detach() + 1e-7)
        bc_mse = (pi - actions).square().mean()
        actor_loss = -lmbda * q_pi.mean() + bc_mse
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(
            inputs=list(actor.parameters())
        )  # the critic's gradients stay untouched
        self.actor_opt.step()

        scale, bias, clip = actor.action_scale, actor.action_bias, args.noise_clip
        for _ in range(args.critic_updates):
            with torch.no_grad():
                noise = torch.randn_like(actions).mul_(args.policy_noise).clamp_(-clip, clip)
                next_actions = torch.clamp(
                    self.actor_target(next_obs) + noise * scale, bias - scale, bias + scale
                )
                target_q = self.critic_target(next_obs, next_actions).min(dim=0).values
                target = rewards + args.discount * (1.0 - terminals) * target_q
            q = critic(obs, actions)  # (2, B)
            # Each critic's mean squared error; their sum steps both (the gradients do not mix).
            critic_loss = (q - target).square().mean(dim=1).sum()
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_opt.step()
        return {
            "critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
            "bc_mse": bc_mse.detach(), "q_mean": q.detach().mean(), "lmbda": lmbda.detach(),
        }  # fmt: skip


class IQL(Agent):
    """PGD's IQL: target Qs first, V's expectile step, the critics' step, the advantage-weighted actor step."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, action_low, action_high, device):
        self.args = args
        self.actor = GaussianActor(obs_dim, act_dim, args.hidden, action_low, action_high)
        self.critic = CriticEnsemble(obs_dim, act_dim, args.hidden, num_critics=2)
        self.value = MLP(obs_dim, 1, args.hidden)
        self.actor.to(device), self.critic.to(device), self.value.to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=args.lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=args.lr, eps=1e-5)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=args.lr, eps=1e-5)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        args = self.args
        obs, actions, rewards, next_obs, terminals = batch
        polyak_update(self.critic_target.parameters(), self.critic.parameters(), args.tau)
        with torch.no_grad():
            target_q = self.critic_target(obs, actions).min(dim=0).values
            next_v = self.value(next_obs).squeeze(-1)

        v = self.value(obs).squeeze(-1)
        adv = target_q - v
        value_loss = (torch.abs(args.expectile - (adv < 0).float()) * adv.square()).mean()
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_opt.step()

        target = rewards + args.discount * (1.0 - terminals) * next_v
        q = self.critic(obs, actions)  # (2, B)
        critic_loss = (q - target).square().mean()  # PGD: the mean over both critics and the batch
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        weight = torch.exp(args.beta * adv.detach()).clamp(max=args.max_weight)
        actor_loss = (weight * -self.actor.log_prob(obs, actions)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        return {
            "value_loss": value_loss.detach(), "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(), "pgd/v_mean": v.detach().mean(),
            "pgd/weight_clip_fraction": (weight >= args.max_weight).float().mean(),
        }  # fmt: skip


# ------------------------------------------------------------------------------------------ guidance
def guidance_schedule(coef: float, cosine_coef: float, steps: int) -> list[float]:
    """lambda_k = coef [(1 - k/N) + c_cos sin(pi (k+1)/N)] for k < N - 1, and 0 at the last step."""
    lambdas = [
        coef * ((1.0 - k / steps) + cosine_coef * math.sin(math.pi * (k + 1) / steps))
        for k in range(steps - 1)
    ]
    return [*lambdas, 0.0]


def policy_log_prob(agent: str, actor: nn.Module, obs: torch.Tensor, actions: torch.Tensor):
    """log pi(a | s) summed over action dimensions: TD3+BC's Normal(mu(s), 1) (PGD's det_guidance), IQL's actor."""
    if agent == "td3_bc":
        return (-0.5 * (actions - actor(obs)).square() - 0.5 * math.log(2 * math.pi)).sum(-1)
    return actor.log_prob(obs, actions)


class Guidance:
    """The sampler's pre-step hook: x_k[:, :, act] += lambda_k g, g the gradient of the target policy's log pi."""

    def __init__(
        self, args: Args, model: TrajectoryModel, actor: nn.Module, obs_stats: tuple
    ) -> None:
        self.args, self.model, self.actor = args, model, actor
        self.obs_mean, self.obs_std = (
            obs_stats  # the agent's observation normaliser, or (None, None)
        )
        self.lambdas = guidance_schedule(
            args.guidance_coef, args.guidance_cosine_coef, args.sample_steps
        )

    def log_likelihood(self, traj: torch.Tensor, act_model: torch.Tensor) -> torch.Tensor:
        """sum_t log pi(tanh(unnormalise(a~_t)) | s_t) per trajectory, s_t from `traj` (model space)."""
        m, o, a = self.model, self.model.obs_dim, self.model.act_dim
        obs = traj[..., :o] * m.normalizer.std[:o] + m.normalizer.mean[:o]
        if self.obs_mean is not None:
            obs = (obs - self.obs_mean) / self.obs_std  # as the agent sees states
        u = act_model * m.normalizer.std[o : o + a] + m.normalizer.mean[o : o + a]
        actions = torch.tanh(u)
        logp = policy_log_prob(self.args.agent, self.actor, obs, actions)
        if self.args.tanh_jacobian and self.args.agent == "iql":
            logp = logp + torch.log1p(-actions.square() + 1e-6).sum(-1)
        return logp.sum(-1)

    def gradient(self, traj: torch.Tensor) -> torch.Tensor:
        """g = d log-likelihood / d a~ (states constant), normalised per trajectory with the flag."""
        o, a = self.model.obs_dim, self.model.act_dim
        traj = traj.detach()
        act = traj[..., o : o + a].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.log_likelihood(traj, act).sum(), act)
        if self.args.normalize_action_guidance:
            norm = g.flatten(1).norm(dim=1).view(-1, 1, 1)
            if self.args.guidance_norm_eps_in_denominator:
                g = g / (norm + 1e-8)
            else:
                # PGD's precedence: the epsilon is added after the division. A trajectory whose every
                # tanh is saturated (|u| > ~9 at sigma ~ 80) has g = 0 exactly: 0/0 is NaN in the code,
                # here g/||g|| counts as 0 (a shift of 1e-8).
                g = g / norm.clamp_min(torch.finfo(g.dtype).tiny) + 1e-8
        return g

    def __call__(self, k: int, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        lam = self.lambdas[k]
        if lam == 0.0:
            return x
        traj = x
        if self.args.denoised_guidance:
            with torch.no_grad():
                traj = self.model.denoiser(x, sigma.expand(x.shape[0]))
        o, a = self.model.obs_dim, self.model.act_dim
        x = x.clone()
        x[..., o : o + a] += lam * self.gradient(traj)
        return x


def check_pgd_args(args: Args) -> None:
    counts = ("total_steps", "batch_size", "eval_every", "eval_episodes", "log_every", "critic_updates")  # fmt: skip
    counts += ("synth_dataset_lifetime", "num_synth_trajectories", "sample_batch_size")
    counts += ("num_rollout_steps",) * (args.num_rollout_steps is not None)
    check_args(args, counts + edm_runs.training_counts(args))  # and every float finite, lr > 0
    edm_runs.check_model_source(args, args.diffusion_model, args.sample_steps)
    if not 0 <= args.synth_batch_size <= args.batch_size:
        raise UsageError(
            f"--synth-batch-size {args.synth_batch_size}: must lie in [0, --batch-size "
            f"{args.batch_size}] (PGD: 240 of 256)"
        )
    if not 0.0 < args.expectile < 1.0:
        raise UsageError(f"--expectile {args.expectile}: must lie in (0, 1); PGD uses 0.7")
    if not args.max_weight > 0:
        raise UsageError(f"--max-weight {args.max_weight}: must be positive")
    if args.synth_batch_size == args.batch_size:
        print("note: --synth-batch-size = --batch-size trains on synthetic data only (IQL's V and Q may diverge)")  # fmt: skip


def given_model(args: Args, task: OfflineTask, device: torch.device) -> TrajectoryModel | None:
    """The --diffusion-model, its dims checked; None when --diffusion-steps trains one (its windows checked)."""
    if args.diffusion_steps == 0:
        dims = (task.obs_dim, task.act_dim)
        return edm_runs.load_trajectory_model(args.diffusion_model, device, args.precision, dims)
    if args.synth_batch_size > 0:  # checked before the run folder is made
        edm_runs.check_windows(
            task.dataset, args.trajectory_length, args.window_stride, args.dataset
        )
    return None


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check_pgd_args)
    task = load_offline_task(
        args.dataset, args.env_id, device=device, normalize_obs=args.normalize_obs,
        ref_min_score=args.ref_min_score, ref_max_score=args.ref_max_score,
    )  # fmt: skip
    model = given_model(args, task, device)
    agent_cls = TD3BC if args.agent == "td3_bc" else IQL
    agent = agent_cls(args, task.obs_dim, task.act_dim, task.action_low, task.action_high, device)
    # A checkpoint part: a resumed run continues on the same synthetic set.
    synthetic = agent.synthetic = SyntheticSet(device)
    obs_mean, obs_std = task.obs_stats(device)
    evaluator = task.evaluator(args.eval_episodes, args.seed, device)
    loop = TrainingLoop(
        "pgd", task.dataset.name, args, agent.parts(), np_rng, normalizer=task.normalizer,
        policy=agent.actor,
    )  # fmt: skip
    # --synth-batch-size 0 (the real-data baseline with PGD's agent) generates nothing.
    use_synthetic, model_path = args.synth_batch_size > 0, args.diffusion_model
    if model is None and use_synthetic:  # --diffusion-steps trains it once; a resume reloads it
        model_path = loop.dir / "model.pt"
        model = edm_runs.train_trajectory_model(
            args, task.dataset, model_path, device, task.env_id, loop.run
        )
    rows = None if model is None else (args.num_rollout_steps or model.trajectory_length - 1) + 1

    def generate(index: int, guided: bool) -> float:
        guided = guided and args.guidance_coef != 0.0
        guide = Guidance(args, model, agent.actor, (obs_mean, obs_std)) if guided else None
        return edm_runs.fill_synthetic(
            synthetic, model, args.num_synth_trajectories, args.sample_batch_size,
            args.sample_steps, rows, seed=args.seed, index=index, device=device,
            obs_mean=obs_mean, obs_std=obs_std, pre_step=guide, euler_origin=args.euler_origin,
            churn=args.churn,
        )  # fmt: skip

    # The initial set is unguided; a resumed run has restored its set from the checkpoint.
    if loop.step == 0 and use_synthetic:
        seconds = generate(0, guided=False)
        print(f"generated {len(synthetic.buffer)} synthetic transitions in {seconds:.1f} s")
    regen_seconds = []
    for step in loop.steps():
        if use_synthetic and step > 0 and step % args.synth_dataset_lifetime == 0:
            synthetic.regenerations += 1
            regen_seconds.append(generate(synthetic.regenerations, guided=True))
        batch = mixed_batch(task.buffer, synthetic.buffer, args.batch_size, args.synth_batch_size)
        loop.log(agent.update(batch))
        if loop.due(args.eval_every):
            loop.evaluate(evaluator, agent.actor.act)

    return loop.finish(
        evaluator, agent.actor.act, dataset=task.dataset.name, env_id=task.env_id, agent=args.agent,
        diffusion_model=None if model_path is None else str(model_path),
        regenerations=synthetic.regenerations, synthetic_transitions=len(synthetic.buffer) if synthetic.buffer is not None else 0,
        regeneration_seconds_mean=float(np.mean(regen_seconds)) if regen_seconds else None,
    )  # fmt: skip


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
