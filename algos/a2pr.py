"""A2PR: "Adaptive Advantage-Guided Policy Regularization for Offline Reinforcement Learning" (Liu et al., ICML 2024, arXiv 2405.19909).

TD3+BC with a state-value network V and a conditional VAE (the "augmented behaviour policy") trained only on
dataset actions with positive advantage A(s, x) = Q1(s, x) - V(s). The actor's behaviour-cloning target is
chosen per sample between the dataset action a and the VAE's reconstruction of the policy action,
a~ = VAE(s, pi(s)), whichever has the higher advantage; the BC weight is mask when either candidate has a
positive advantage and 0 when neither has:

    V:    L_V   = mean (V(s) - min(y_online, y))^2,   y = r + g nd min Q_targ(s', a'),  y_online the same with Q
    VAE:  L_VAE = mean w_v 1[A(s,a) > eps_A] (VAE(s,a) - a)^2 + 0.5 KL(q(z|s,a) || N(0, I))
    pi:   a* = a~ if A(s,a~) >= A(s,a) else a,    w = mask (1[A(s,a~) >= eps_A] OR 1[A(s,a) > eps_A])
          L_pi = -lambda mean Q1(s, pi(s)) + mean w (pi(s) - a*)^2,   lambda = alpha / mean |Q1(s, pi(s))|

a~ carries gradient (the BC term back-propagates through the VAE; only pi is stepped). Actor 3 x 256, critics
and V 4 x 256, VAE 750-wide with latent 2 |A| and Adam lr 1e-3; the critic and targets are TD3+BC's.

Defaults reproduce the released code (ltlhuuu/A2PR @ f92a2a4): eps_A = 0, and its update order critic -> V ->
VAE -> actor, where the VAE mask and the actor use V(s) computed *before* V's step (one step stale) and Q1 of
the *updated* critic; the BC weight adds two bool tensors, a logical OR in PyTorch, so w is mask or 0.
`--preset` selects the per-dataset (alpha, vae_weight, mask, discount) of the authors' READMEs and scripts
(PRESETS; the code's own default is mask 0.5, discount 0.99); halfcheetah/walker2d-random, expert and
AntMaze have none published.

Where paper and code differ, and what the flags select:
* Advantage threshold: the code fixes eps_A = 0; the paper's eps_A > 0 has no value in our reference, so
  `--adv-threshold` takes any (default 0), in both indicators with the code's tie rules (`>` a, `>=` a~).
* V loss: `--value-loss expectile` is the code's unused expectile loss (weight `--expectile` 0.8 where
  target - V(s) > 0, else 0.2; the sign convention is IQL's, our choice, since the code never calls it).
* Update order: `--value-timing fresh` recomputes V(s) after its step; the paper's Algorithm 1 order is not
  pinned down by our reference and is not implemented. `--detach-vae-target` is an ablation (not the paper's).
Cost per update vs TD3+BC (measured, batch 256): ~8x on one CPU thread (the 750-wide VAE runs twice per
actor step), ~3.3x on an H100 (both launch-bound there).
Evaluation: ocrl's shared protocol (10 episodes every 5,000 updates, as the original; episode seeds from --seed).
`--precision bf16` runs the networks' hidden layers in bf16 autocast; their output layers (Q, V, pi, the VAE's
mean, log-std and decoder), the targets, advantages, losses, KL, Polyak updates, weights and Adam's state stay fp32.
`--num-seeds N` trains seeds seed .. seed+N-1 at once, as td3_bc: every network (V and the VAE too) and tensor has a
leading seed axis, each seed draws its weights, minibatches, smoothing noise and VAE noise from its own generator,
and its losses, advantages and lambda are its own; seed k alone and seed k in a group train the same networks.

    python algos/a2pr.py --total-steps 20000            # shipped hopper data, ~30 min on a 2-core CPU
    python algos/a2pr.py --dataset hopper-medium-v2 --preset hopper-medium-v2
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
from ocrl.nets import (
    MLP,
    ConditionalVAE,
    CriticEnsemble,
    DeterministicActor,
    FlatAdam,
    autocast,
    polyak_update,
)
from ocrl.nets.seeds import SeedStreams, init_seeds


def _setting(alpha: float, vae_weight: float, mask: float, discount: float) -> dict:
    return {"alpha": alpha, "vae_weight": vae_weight, "mask": mask, "discount": discount}


PRESETS: dict[str, dict] = {
    # (alpha, vae_weight, mask, discount) from the authors' README (HEAD), initial README, READMEv0 and
    # run.sh; READMEv0 was a working note, so its rows are the best available, not certified.
    "hopper-random-v2": _setting(2.5, 1.5, 1.5, 0.995),  # initial README, READMEv0
    "hopper-medium-v2": _setting(2.5, 1.0, 0.4, 0.995),  # README (HEAD), run.sh
    "hopper-medium-replay-v2": _setting(2.5, 1.5, 0.5, 0.99),  # READMEv0
    "hopper-medium-expert-v2": _setting(2.5, 1.0, 4.0, 0.99),  # READMEv0
    "halfcheetah-medium-v2": _setting(40.0, 1.0, 1.0, 0.99),  # README (HEAD)
    "halfcheetah-medium-replay-v2": _setting(40.0, 1.5, 0.8, 0.995),  # READMEv0
    # READMEv0; mask 10.0 before c1fe2a8
    "halfcheetah-medium-expert-v2": _setting(40.0, 1.0, 15.0, 0.99),
    "walker2d-medium-v2": _setting(2.5, 1.5, 1.0, 0.99),  # README (HEAD)
    "walker2d-medium-replay-v2": _setting(2.5, 1.5, 1.2, 0.995),  # READMEv0 (1.5 also noted)
    "walker2d-medium-expert-v2": _setting(2.5, 1.0, 0.8, 0.99),  # READMEv0 (0.995 also tried)
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(TargetArgs, RunArgs, PrecisionArgs, SeedsArgs, OfflineArgs):
    preset: PresetName | None = None  # type: ignore[valid-type]
    """per-dataset alpha / vae_weight / mask / discount of the authors' READMEs (hopper-medium-v2: 2.5/1.0/0.4/0.995, halfcheetah-*: alpha 40; random-other, expert and AntMaze are unpublished). Explicit flags override them; --dataset alone changes none"""
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
    value_lr: float = 3e-4
    """Adam learning rate of the value network V"""
    vae_lr: float = 1e-3
    """Adam learning rate of the VAE (the code passes none: Adam's default 1e-3)"""
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    """hidden layer widths of the actor (A2PR: 3 x 256; TD3+BC: 2 x 256)"""
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """hidden layer widths of each critic and of V (A2PR: 4 x 256; TD3+BC: 2 x 256)"""
    vae_hidden: tuple[int, ...] = (750, 750)
    """hidden layer widths of the VAE's encoder and decoder"""
    latent_dim: int | None = None
    """VAE latent size; default 2 x action dim, as the code"""
    policy_noise: float = 0.2
    """std of the target-policy smoothing noise, times the action scale"""
    noise_clip: float = 0.5
    """clip of the target-policy smoothing noise, times the action scale"""
    policy_freq: int = 2
    """actor and target updates happen every policy_freq critic updates"""
    alpha: float = 2.5
    """weight of the Q term against the BC term (lambda = alpha / mean|Q|)"""
    mask: float = 0.5
    """BC weight w = mask * (1[A(s,a~) >= eps_A] OR 1[A(s,a) > eps_A]), in {0, mask} (the code's default 0.5)"""
    vae_weight: float = 1.0
    """weight of the VAE's masked reconstruction loss"""
    adv_threshold: float = 0.0
    """eps_A: the advantage above which a sample counts as positive; the code's 0 (the paper's value is not pinned down here)"""
    value_loss: Literal["mse-min-target", "expectile"] = "mse-min-target"
    """V's loss: the code's MSE to min(y_online, y), or the code's unused expectile loss on the same target"""
    expectile: float = 0.8
    """expectile of --value-loss expectile"""
    value_timing: Literal["stale", "fresh"] = "stale"
    """V(s) used by the VAE mask and the actor: 'stale' = from before V's step (the code), 'fresh' = recomputed after it"""
    detach_vae_target: bool = False
    """stop the BC gradient through a~ = VAE(s, pi(s)) (an ablation; the code back-propagates through it)"""
    normalize_obs: bool = True
    """standardise observations with the mean and std (+1e-3) of the training transitions"""
    truncated_last: Literal["drop", "keep"] = "drop"
    """'drop' reproduces D4RL's qlearning_dataset; 'keep' also trains on timeout transitions using stored next observations"""
    compile: bool = False
    """wrap the update in torch.compile (off by default: on a CPU compile time dominates short runs)"""


def select_target(
    adv_data: torch.Tensor,
    adv_vae: torch.Tensor,
    data_action: torch.Tensor,
    vae_action: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the BC target with the higher advantage (ties go to the VAE action) and the bool 'VAE chosen' (..., B)."""
    use_vae = adv_vae >= adv_data
    return torch.where(use_vae.unsqueeze(-1), vae_action, data_action), use_vae


def bc_weights(
    adv_data: torch.Tensor, adv_vae: torch.Tensor, mask: float, threshold: float = 0.0
) -> torch.Tensor:
    """w = mask * (1[A(s,a~) >= eps_A] OR 1[A(s,a) > eps_A]) in {0, mask}: note the two tie rules."""
    # The released code adds two bool tensors, which PyTorch evaluates as a logical OR (never 2 mask).
    return mask * torch.logical_or(adv_vae >= threshold, adv_data > threshold).float()


class A2PR(Agent):
    """TD3+BC's networks plus V and the VAE, with their optimisers, of --num-seeds seeds stacked on a leading seed
    axis; `update` is one A2PR iteration of every seed on (N, B, ...) minibatches."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, action_low, action_high, device):
        self.args, n = args, args.num_seeds
        self.streams = SeedStreams(range(args.seed, args.seed + n), device)
        self.actor = DeterministicActor(obs_dim, act_dim, args.actor_hidden, action_low, action_high, num_seeds=n)  # fmt: skip
        self.critic = CriticEnsemble(obs_dim, act_dim, args.critic_hidden, num_critics=2, num_seeds=n)  # fmt: skip
        self.value = MLP(obs_dim, 1, args.critic_hidden, num_seeds=n)
        self.vae = ConditionalVAE(obs_dim, act_dim, args.latent_dim, args.vae_hidden, action_low, action_high, num_seeds=n)  # fmt: skip
        for net in (self.actor, self.critic, self.value, self.vae):
            init_seeds(net, self.streams).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # FlatAdam: torch's fused Adam over one padded buffer, whose digits do not depend on N.
        self.actor_opt = FlatAdam(self.actor.parameters(), lr=args.actor_lr)
        self.critic_opt = FlatAdam(self.critic.parameters(), lr=args.critic_lr)
        self.value_opt = FlatAdam(self.value.parameters(), lr=args.value_lr)
        self.vae_opt = FlatAdam(self.vae.parameters(), lr=args.vae_lr)
        self.seen: dict[str, torch.Tensor] = {}  # the last update's intermediates, for diagnostics

    def update(self, batch: Batch, update_actor: bool) -> dict[str, torch.Tensor]:
        """In the code's order: TD3's critic step, V, the VAE, and on actor iterations the actor and targets; (N,)
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

        # V regresses onto min(online, target) Bellman targets of the dataset action, with the updated critic.
        with autocast(args.precision, obs.device):
            v = self.value(obs).squeeze(-1)  # (N, B)
            with torch.no_grad():
                online_q = critic(next_obs, next_actions).min(dim=0).values
                online = torch.addcmul(rewards, 1.0 - terminals, online_q, value=args.discount)
                value_target = torch.min(online, target)
        if args.value_loss == "expectile":
            diff = value_target - v
            weight = torch.where(diff > 0, args.expectile, 1.0 - args.expectile)
            value_loss = (weight * diff.square()).mean(dim=1)
        else:
            value_loss = (v - value_target).square().mean(dim=1)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.sum().backward()
        self.value_opt.step()
        if args.value_timing == "fresh":
            with torch.no_grad(), autocast(args.precision, obs.device):
                v_s = self.value(obs).squeeze(-1)
        else:
            v_s = v.detach()  # the code's one-step-stale V(s)

        # The VAE learns positive-advantage dataset actions (reconstruction masked; KL on every sample).
        with torch.no_grad(), autocast(args.precision, obs.device):
            q_data = critic.member(obs, actions, 0)
            adv_data = q_data - v_s
            positive = (adv_data > args.adv_threshold).float()  # the VAE's reconstruction mask
        latent = (obs.shape[1], self.vae.latent_dim)  # a seed's reparameterisation noise
        with autocast(args.precision, obs.device):
            recon, mean, std = self.vae(obs, actions, self.streams.randn(latent))
        masked = args.vae_weight * positive.unsqueeze(-1) * (recon - actions).square()
        recon_loss = masked.mean(dim=(1, 2))
        kl = -0.5 * (1.0 + torch.log(std.square()) - mean.square() - std.square()).mean(dim=(1, 2))
        vae_loss = recon_loss + 0.5 * kl
        self.vae_opt.zero_grad(set_to_none=True)
        vae_loss.sum().backward()
        self.vae_opt.step()
        metrics.update(value_loss=value_loss.detach(), vae_loss=vae_loss.detach())
        self.seen = dict(v_s=v_s, value_target=value_target, q_data=q_data, adv_data=adv_data,
                         positive=positive, recon_loss=recon_loss.detach(), kl=kl.detach())  # fmt: skip

        if update_actor:
            # The BC target is chosen per sample by advantage between a and a~ = VAE(s, pi(s)).
            with autocast(args.precision, obs.device):
                pi = actor(obs)
                q_pi = critic.member(obs, pi, 0)  # (N, B)
                lmbda = args.alpha / q_pi.abs().mean(dim=1).detach()
                vae_action = self.vae(obs, pi, self.streams.randn(latent))[0]
                if args.detach_vae_target:
                    vae_action = vae_action.detach()
                with torch.no_grad():
                    adv_vae = critic.member(obs, vae_action.detach(), 0) - v_s
            bc_target, use_vae = select_target(adv_data, adv_vae, actions, vae_action)
            weight = bc_weights(adv_data, adv_vae, args.mask, args.adv_threshold)
            bc_loss = (weight.unsqueeze(-1) * (pi - bc_target).square()).mean(dim=(1, 2))
            actor_loss = -lmbda * q_pi.mean(dim=1) + bc_loss
            actor_params = list(actor.parameters())
            # Gradients for the actor only (the code's VAE and critic gradients are zeroed before use).
            grads = torch.autograd.grad(actor_loss.sum(), actor_params)
            for p, g in zip(actor_params, grads, strict=True):
                p.grad = g
            self.actor_opt.step()
            polyak_update(self.critic_target.parameters(), critic.parameters(), args.tau)
            polyak_update(self.actor_target.parameters(), actor.parameters(), args.tau)
            metrics.update(
                actor_loss=actor_loss.detach(), bc_loss=bc_loss.detach(), lmbda=lmbda.detach()
            )
            self.seen.update(adv_vae=adv_vae, use_vae=use_vae, weight=weight, pi=pi.detach(),
                             vae_action=vae_action.detach(), q_pi_abs=q_pi.abs().mean(dim=1).detach())  # fmt: skip
        return metrics

    @torch.no_grad()
    def diagnostics(self) -> dict[str, torch.Tensor]:
        """The reference's checklist for the last update: advantages, V, targets, weights, VAE losses; (N,) each."""
        seen = self.seen
        stats = {
            "a2pr/positive_adv_fraction": seen["positive"].mean(dim=1), "a2pr/v_mean": seen["v_s"].mean(dim=1),
            "a2pr/q_data_mean": seen["q_data"].mean(dim=1), "a2pr/v_target_mean": seen["value_target"].mean(dim=1),
            "a2pr/adv_data_mean": seen["adv_data"].mean(dim=1), "a2pr/vae_recon_loss": seen["recon_loss"],
            "a2pr/vae_kl": seen["kl"],
        }  # fmt: skip
        if "use_vae" in seen:
            stats.update({
                "a2pr/vae_target_fraction": seen["use_vae"].float().mean(dim=1),
                "a2pr/weight_zero_fraction": (seen["weight"] == 0).float().mean(dim=1),
                "a2pr/adv_vae_mean": seen["adv_vae"].mean(dim=1), "a2pr/q_pi_abs_mean": seen["q_pi_abs"],
                "a2pr/vae_policy_distance": (seen["vae_action"] - seen["pi"]).norm(dim=2).mean(dim=1),
            })  # fmt: skip
        return stats


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args)
    if args.preset is not None and args.preset != args.dataset:
        print(f"note: hyperparameters of preset '{args.preset}' applied to dataset '{args.dataset}'")  # fmt: skip
    task = load_offline_task(
        args.dataset, args.env_id, device=device, normalize_obs=args.normalize_obs,
        truncated_last=args.truncated_last,
        ref_min_score=args.ref_min_score, ref_max_score=args.ref_max_score,
    )  # fmt: skip
    agent = A2PR(args, task.obs_dim, task.act_dim, task.action_low, task.action_high, device)
    update = torch.compile(agent.update) if args.compile else agent.update
    loop = SeedLoops(
        "a2pr", task.dataset.name, args, agent.parts(), np_rng, normalizer=task.normalizer,
        evaluator=lambda seed: task.evaluator(args.eval_episodes, seed, device),
        # Each seed's actor as a single-seed run builds it: what it evaluates with and exports as policy.pt2.
        policy=lambda: DeterministicActor(
            task.obs_dim, task.act_dim, args.actor_hidden, task.action_low, task.action_high
        ).to(device),
    )  # fmt: skip

    for step in loop.steps():
        batch = task.buffer.sample_per_seed(args.batch_size, agent.streams)
        metrics = update(batch, update_actor=step % args.policy_freq == 0)
        loop.log(metrics | agent.diagnostics())
        if loop.due(args.eval_every):
            loop.evaluate(agent.actor)

    return loop.finish(agent.actor, dataset=task.dataset.name, env_id=task.env_id)


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
