"""PDPPO: "A Reinforcement Learning Method for Environments with Stochastic Variables: Post-Decision Proximal Policy
Optimization with Dual Critic Networks" (Felizardo, Fadda, Brandimarte, Del-Moral-Hernandez & Nascimento, IJCNN 2025,
arXiv 2504.05150), on stochastic multi-item lot sizing (`ocrl.envs.lot_sizing`).

PPO with two critics: V on the pre-decision state s_t (the inventory) and V^x on the post-decision state s^x_t,
the deterministic state after the action and before the random demand. In the released code (leokan92/pdppo,
agents/PDPPO.py + PDPPOAgent.py @ bf3f368) each critic fits its own reward stream with Monte-Carlo returns that
restart at every episode end:

    R^x_t = sum_k gamma^(k-t) r^x_k,     r^x = -setup cost                     (post-decision critic V^x)
    R_t   = sum_k gamma^(k-t) r^pre_k,   r^pre = r - r^x = -(holding + lost sales)   (pre-decision critic V)
    A_t   = max(R_t - V_old(s_t), R^x_t - V^x_old(s^x_t))      (element-wise; V_old as stored when collected)

and K = 40 full-batch epochs of, per machine m (one categorical per machine over "idle" and the I items),

    ratio = exp(log pi(a_tm | s_t) - log pi_old(a_tm | s_t))
    L_pi  = mean_tm[-min(ratio A_t, clip(ratio, 1 +- 0.2) A_t) - 0.001 H_tm] + 0.7 (L_V + L_Vx).detach()
    L_V   = MSE(V(s_t), R_t),   L_Vx = MSE(V^x(s^x_t), R^x_t)

each stepped by its own Adam (actor 5.5e-4, critics 1e-3); gamma = 0.9. The policy acts every period of
100-period episodes and is updated every 400 steps (4 episodes) on every stored transition, with the log-probs
and values stored when they were collected; after an update the oldest 400 are dropped once more than
5 x 400 are stored, so from the sixth update on each update sees the last 2,400 transitions (the reference page
says the last <= 2,000: the code drops after updating). Networks: actor Linear(I, 128)-ReLU-Linear(128, 128)-ReLU-
Linear(128, M (I + 1)) (Kaiming-uniform head, zero bias; the rest PyTorch's default), critics 128-128 Tanh
(Xavier-uniform, zero biases). The observation is the inventory (raw); the setups are hidden.

Faithful by default, including the released code's bug: its actor optimiser holds only the head, so the two
hidden actor layers never train (in its PPO too); `--train-actor-trunk` trains them. `--critic single` is the
released PPO baseline (agents/PPO.py @ ff58990): one critic on the total return, A = R - V_old, one Adam with
the actor head at 5.5e-4 and the critic at 1e-3 on mean[-min(surr) + 0.7 MSE(V, R) - 0.001 H]. `--preset early`
is the earlier PDPPO (PDPPO.py @ a760530, PDPPOAgent.py @ 4b36c77): both critics fit the total return
(normalised per update), A = R - min(V(s), V^x(s^x)), L = -clip + 0.5 MSE(min(V, V^x), R) - 0.012 H with one Adam
(weight decay 1e-3, gradient norm clipped at 1), gamma 0.99, K = 60, updates every 4,000 steps on that rollout
only, the setups observed.

The 400 steps of an update are 4 episodes run side by side (the released code runs them one after the other
with the same policy: the same data distribution), seeded from (--seed, update index) so that a resumed run
replays the episodes of an uninterrupted one. What the paper reports is the training curve: every 4,000
steps, the mean return of the 40 episodes that ended in them (`pdppo/episode_return`); metrics.json holds its
last, its maximum and its sum (the paper's "max" and "cumulative" rewards). Evaluation (ocrl's protocol: each
machine's most likely choice, 10 episodes) is logged beside it. `--precision bf16` runs the actor's and the critics'
hidden layers in bf16 autocast, when collecting and in the update; their output layers (logits, V, V^x), log-probs,
returns, advantages, the losses, weights, Adam's state and evaluation stay fp32.

    python algos/pdppo.py --instance 25x10 --instance-dir <folder of the published JSON files>
    python algos/pdppo.py --instance 25x10 --instance-dir <folder> --critic single       # the released PPO
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ocrl.data import EpisodeCurve, RolloutBuffer, discounted_returns, explained_variance
from ocrl.envs import Evaluator
from ocrl.envs.lot_sizing import PUBLISHED, LotSizingVectorEnv, instance_from_flag
from ocrl.experiment import Agent, TrainingLoop, start_run
from ocrl.experiment.args import CheckpointArgs, PolicyExportArgs, PrecisionArgs, RunArgs
from ocrl.experiment.flags import UsageError, check_args, run_cli
from ocrl.nets import MLP, autocast, full_precision, xavier_init

PRESETS: dict[str, dict] = {
    # The earlier PDPPO (a760530 / 4b36c77): one return for both critics, the min-value advantage.
    "early": {
        "variant": "early",
        "discount": 0.99,
        "k_epochs": 60,
        "ent_coef": 0.012,
        "update_every": 4000,
        "replay_rollouts": 0,
        "obs": "inventory+setup",
    },
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(RunArgs, PrecisionArgs, PolicyExportArgs, CheckpointArgs):
    instance: str = "25x10"
    """published setting (15x5, 20x10, 25x10, 25x15; its JSON from --instance-dir or $OCRL_LOT_SIZING_DIR), a path to an instance JSON, or 'generated' (--n-items x --n-machines, --instance-seed)"""
    instance_dir: str | None = None
    """folder of the published instance files (leokan92/pdppo's code/Lot-sizing/cfg_env)"""
    n_items: int = 15
    """items of a generated instance"""
    n_machines: int = 5
    """machines of a generated instance"""
    instance_seed: int = 0
    """seed of a generated instance"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """'early': the earlier PDPPO (total-return critics, min-value advantage, its hyperparameters)"""
    critic: Literal["dual", "single"] = "dual"
    """'dual': PDPPO's pre- and post-decision critics; 'single': the released PPO baseline"""
    variant: Literal["final", "early"] = "final"
    """'final': each critic on its own reward stream, A = max of the two; 'early': see --preset early"""
    train_actor_trunk: bool = False
    """train the actor's hidden layers too (the released code trains only its head: a bug)"""
    obs: Literal["inventory", "inventory+setup"] = "inventory"
    """what the policy observes: the inventory (the final code) or the inventory and the setups (early code)"""
    seed: int = 0
    """seed of torch, numpy, the episodes and the evaluation (the released runs are unseeded)"""
    device: str = "cpu"
    """'cpu' (the networks are small), 'auto', 'cuda' or 'cuda:N'"""
    total_steps: int = 1_000_000
    """environment steps (the paper: 10,000 episodes of 100 periods)"""
    update_every: int = 400
    """environment steps per update (whole episodes, run side by side)"""
    replay_rollouts: int = 5
    """after an update, drop the oldest update_every transitions once more than this many rollouts are stored (0: keep none)"""
    k_epochs: int = 40
    """full-batch epochs per update"""
    clip_coef: float = 0.2
    """clip range eps of the probability ratio"""
    discount: float = 0.9
    """discount factor gamma of the Monte-Carlo returns"""
    lr_actor: float = 5.5e-4
    """Adam learning rate of the actor"""
    lr_critic: float = 1e-3
    """Adam learning rate of the critics"""
    ent_coef: float = 0.001
    """weight of the entropy bonus"""
    vf_coef: float = 0.7
    """value-loss weight (dual: inside a .detach(), no effect, as released; single: trains the critic)"""
    hidden: int = 128
    """width of the two hidden layers of the actor and the critics"""
    eval_every: int = 50_000
    """environment steps between evaluations (checked after each update)"""
    eval_episodes: int = 10
    """episodes per evaluation, run in parallel"""
    log_every: int = 4_000
    """environment steps between logs (the released code's 40 episodes)"""


class MachineActor(nn.Module):
    """fc1-ReLU-fc2-ReLU-head; the head's M (I + 1) logits are one categorical per machine."""

    def __init__(self, obs_dim: int, n_machines: int, n_choices: int, hidden: int) -> None:
        super().__init__()
        self.n_machines, self.n_choices = n_machines, n_choices
        self.fc1 = nn.Linear(obs_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_machines * n_choices)
        nn.init.kaiming_uniform_(self.head.weight, nonlinearity="relu")
        nn.init.zeros_(self.head.bias)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Categorical:
        x = F.relu(self.fc2(F.relu(self.fc1(obs))))
        logits = full_precision(self.head, x).view(*obs.shape[:-1], self.n_machines, self.n_choices)
        return torch.distributions.Categorical(logits=logits, validate_args=False)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Each machine's most likely choice (evaluation)."""
        return self.distribution(obs).probs.argmax(-1)


class PDPPO(Agent):
    """The actor, the critic(s) and their optimisers; `update` is one update of K full-batch epochs."""

    def __init__(self, args: Args, obs_dim: int, n_machines: int, n_choices: int, device) -> None:
        self.args = args
        self.actor = MachineActor(obs_dim, n_machines, n_choices, args.hidden).to(device)
        self.critic = xavier_init(MLP(obs_dim, 1, (args.hidden,) * 2, nn.Tanh)).to(device)
        if args.critic == "dual" or args.variant == "early":  # V^x on the post-decision state
            self.critic_post = xavier_init(MLP(obs_dim, 1, (args.hidden,) * 2, nn.Tanh)).to(device)
        if not args.train_actor_trunk:  # the released optimiser holds only the head
            self.actor.fc1.requires_grad_(False)
            self.actor.fc2.requires_grad_(False)
        actor_params = [p for p in self.actor.parameters() if p.requires_grad]
        if args.variant == "early":
            groups = [
                {"params": actor_params, "lr": args.lr_actor},
                {"params": [*self.critic.parameters(), *self.critic_post.parameters()], "lr": args.lr_critic},
            ]  # fmt: skip
            self.optimizer = torch.optim.Adam(groups, weight_decay=1e-3)
        elif args.critic == "single":
            groups = [{"params": actor_params, "lr": args.lr_actor},
                      {"params": self.critic.parameters(), "lr": args.lr_critic}]  # fmt: skip
            self.optimizer = torch.optim.Adam(groups)
        else:
            self.actor_opt = torch.optim.Adam(actor_params, lr=args.lr_actor)
            self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=args.lr_critic)
            self.critic_post_opt = torch.optim.Adam(
                self.critic_post.parameters(), lr=args.lr_critic
            )

    def surrogate(self, buf: dict[str, torch.Tensor], advantages: torch.Tensor):
        """(mean clipped surrogate loss, mean entropy) per machine and step, and the clip fraction."""
        with autocast(self.args.precision, buf["obs"].device):
            dist = self.actor.distribution(buf["obs"])
        ratio = (dist.log_prob(buf["actions"]) - buf["logprobs"]).exp()  # (B, M)
        adv = advantages[:, None]
        clipped = ratio.clamp(1 - self.args.clip_coef, 1 + self.args.clip_coef)
        surrogate = -torch.min(ratio * adv, clipped * adv)
        clipfrac = ((ratio - 1).abs() > self.args.clip_coef).float().mean()
        return surrogate, dist.entropy(), clipfrac

    def update(self, buf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = self.args
        if args.variant == "early":
            return self._update_early(buf)
        if args.critic == "single":
            returns = discounted_returns(buf["rewards"], buf["terminals"], args.discount)
            advantages = returns - buf["values"]
            for _ in range(args.k_epochs):
                surrogate, entropy, clipfrac = self.surrogate(buf, advantages)
                with autocast(args.precision, returns.device):
                    value = self.critic(buf["obs"]).squeeze(-1)
                value_loss = F.mse_loss(value, returns)
                loss = (surrogate + args.vf_coef * value_loss - args.ent_coef * entropy).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            return {
                "policy_loss": surrogate.mean().detach(), "value_loss": value_loss.detach(),
                "entropy": entropy.mean().detach(), "pdppo/clipfrac": clipfrac,
                "pdppo/explained_variance": explained_variance(buf["values"], returns),
            }  # fmt: skip

        returns = discounted_returns(buf["pre_rewards"], buf["terminals"], args.discount)
        post_returns = discounted_returns(buf["post_rewards"], buf["terminals"], args.discount)
        adv_pre = returns - buf["values"]
        adv_post = post_returns - buf["post_values"]
        advantages = torch.max(adv_pre, adv_post)
        for _ in range(args.k_epochs):
            surrogate, entropy, clipfrac = self.surrogate(buf, advantages)
            with autocast(args.precision, returns.device):
                value, post_value = self.critic(buf["obs"]), self.critic_post(buf["post_obs"])
            value_loss = F.mse_loss(value.squeeze(-1), returns)
            post_value_loss = F.mse_loss(post_value.squeeze(-1), post_returns)
            actor_loss = (surrogate - args.ent_coef * entropy).mean() + args.vf_coef * (
                value_loss.detach() + post_value_loss.detach()
            )
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            self.critic_opt.zero_grad(set_to_none=True)
            value_loss.backward()
            self.critic_opt.step()
            self.critic_post_opt.zero_grad(set_to_none=True)
            post_value_loss.backward()
            self.critic_post_opt.step()
        return {
            "policy_loss": surrogate.mean().detach(), "value_loss": value_loss.detach(),
            "post_value_loss": post_value_loss.detach(), "entropy": entropy.mean().detach(),
            "pdppo/clipfrac": clipfrac,
            "pdppo/post_advantage_fraction": (adv_post > adv_pre).float().mean(),
            "pdppo/explained_variance": explained_variance(buf["values"], returns),
            "pdppo/explained_variance_post": explained_variance(buf["post_values"], post_returns),
        }  # fmt: skip

    def _update_early(self, buf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = self.args
        returns = discounted_returns(buf["rewards"], buf["terminals"], args.discount)
        returns = (returns - returns.mean()) / (returns.std() + 1e-7)
        values = torch.min(buf["values"], buf["post_values"])
        advantages = returns - values
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for _ in range(args.k_epochs):
            surrogate, entropy, clipfrac = self.surrogate(buf, advantages)
            with autocast(args.precision, returns.device):
                value, post_value = self.critic(buf["obs"]), self.critic_post(buf["post_obs"])
            v = torch.min(value, post_value).squeeze(-1)
            value_loss = F.mse_loss(v, returns)
            loss = surrogate.mean() + 0.5 * value_loss - args.ent_coef * entropy.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            self.optimizer.step()
        return {
            "policy_loss": surrogate.mean().detach(), "value_loss": value_loss.detach(),
            "entropy": entropy.mean().detach(), "pdppo/clipfrac": clipfrac,
            "pdppo/post_advantage_fraction": (buf["post_values"] < buf["values"]).float().mean(),
        }  # fmt: skip


def collect_episodes(envs, agent: PDPPO, horizon: int, seed: int, device):
    """(transitions, returns) of whole episodes from fresh starts (reset with `seed`), with the log-probs and values
    when collected, episode after episode (as the released code stores them)."""
    obs, _ = envs.reset(seed=seed)
    steps, episode_return = [], np.zeros(envs.num_envs)
    as_t = partial(torch.as_tensor, dtype=torch.float32, device=device)
    for _ in range(horizon):
        obs_t = torch.as_tensor(obs, device=device)
        with torch.no_grad(), autocast(agent.args.precision, device):
            dist = agent.actor.distribution(obs_t)
            action = dist.sample()
            obs, reward, terminated, _, info = envs.step(action.cpu().numpy())
            post_obs = torch.as_tensor(info["post_obs"], device=device)
            zeros = torch.zeros(len(obs), 1, device=device)  # --critic single: no V^x
            post_values = agent.critic_post(post_obs) if hasattr(agent, "critic_post") else zeros
            steps.append({
                "obs": obs_t, "post_obs": post_obs, "actions": action, "logprobs": dist.log_prob(action),
                "values": agent.critic(obs_t).squeeze(-1), "post_values": post_values.squeeze(-1),
                "rewards": as_t(reward), "pre_rewards": as_t(info["pre_reward"]),
                "post_rewards": as_t(info["post_reward"]), "terminals": as_t(terminated),
            })  # fmt: skip
        episode_return += reward
    fresh = {k: torch.stack([s[k] for s in steps], dim=1).flatten(0, 1) for k in steps[0]}
    return fresh, episode_return


def check_pdppo_args(args: Args) -> None:
    check_args(args, ("total_steps", "update_every", "k_epochs", "hidden", "eval_every",
                      "eval_episodes", "log_every", "n_items", "n_machines"))  # fmt: skip
    if args.replay_rollouts < 0:
        raise UsageError(f"--replay-rollouts {args.replay_rollouts}: must be >= 0")
    if not args.clip_coef > 0:  # the learning rates: check_args
        raise UsageError(f"--clip-coef {args.clip_coef}: must be a positive number")
    for name in ("ent_coef", "vf_coef"):  # finite: check_args
        value = getattr(args, name)
        if value < 0:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be a number >= 0")
    if args.variant == "early" and args.critic == "single":
        raise UsageError("--variant early has two critics; drop --critic single")


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check_pdppo_args)
    instance = instance_from_flag(
        args.instance, args.instance_dir, args.n_items, args.n_machines, args.instance_seed
    )
    horizon = instance.horizon
    if args.update_every % horizon:
        raise UsageError(
            f"--update-every {args.update_every}: must be whole episodes of {horizon} periods"
        )
    n_envs = args.update_every // horizon
    envs = LotSizingVectorEnv(n_envs, instance=instance, obs=args.obs)
    obs_dim = envs.single_observation_space.shape[0]
    n_machines, n_choices = instance.n_machines, instance.n_items + 1

    agent = PDPPO(args, obs_dim, n_machines, n_choices, device)
    curve = EpisodeCurve(window=4000)  # the paper's training curve: 40 episodes a point
    shapes = {"obs": (obs_dim,), "post_obs": (obs_dim,), "actions": (n_machines,),
              "logprobs": (n_machines,), "values": (), "post_values": (), "rewards": (),
              "pre_rewards": (), "post_rewards": (), "terminals": ()}  # fmt: skip
    stored = RolloutBuffer(
        (args.replay_rollouts + 1) * args.update_every, shapes, device, {"actions": torch.long}
    )
    agent.curve, agent.stored = curve, stored  # checkpoint parts
    name = args.instance if args.instance in PUBLISHED else Path(args.instance).stem
    evaluator = Evaluator(
        "ocrl/LotSizing-v0", args.eval_episodes, args.seed, device=device,
        env_kwargs={"instance": instance, "obs": args.obs},
    )  # fmt: skip
    loop = TrainingLoop(
        f"pdppo_{args.critic}", f"lotsizing-{name}", args, agent.parts(), np_rng,
        policy=agent.actor,
    )  # fmt: skip

    for start in loop.steps(stride=args.update_every):
        # Every rollout is whole episodes from fresh starts, seeded by its index: a resumed run sees the
        # episodes an uninterrupted one would.
        index = start // args.update_every
        seed = int(np.random.SeedSequence([args.seed, index]).generate_state(1)[0])
        fresh, episode_return = collect_episodes(envs, agent, horizon, seed, device)
        metrics = agent.update(stored.append(fresh))
        if stored.n > args.replay_rollouts * args.update_every:  # the released buffer_size_mul
            stored.drop_oldest(args.update_every)
        curve.add(episode_return, loop.step)
        metrics["pdppo/episode_return"] = torch.tensor(float(episode_return.mean()))
        loop.log(metrics)
        if loop.due(args.eval_every):
            loop.evaluate(evaluator, agent.actor.act)

    return loop.finish(
        evaluator, agent.actor.act, instance=name, critic=args.critic, variant=args.variant,
        **curve.summary("train_return"),
    )  # fmt: skip


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
