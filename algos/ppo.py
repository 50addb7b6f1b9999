"""PPO: "Proximal Policy Optimization Algorithms" (Schulman, Wolski, Dhariwal, Radford & Klimov, 2017, arXiv 1707.06347).

On-policy actor-critic: every iteration collects num_steps x num_envs transitions with the current policy,
computes GAE(lambda) advantages from the critic V, and takes update_epochs passes of minibatch steps on

    ratio  = pi(a|s) / pi_old(a|s),   A_hat = (A - mean A) / (std A + 1e-8)       (per minibatch)
    L_clip = mean max(-A_hat ratio, -A_hat clip(ratio, 1 - eps, 1 + eps))
    L_V    = 1/2 mean max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)  (--clip-vloss)
    L      = L_clip - ent_coef * mean H[pi(.|s)] + vf_coef * L_V,      R = A + V_old,

    delta_t = r_t + gamma (1 - d_{t+1}) V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma lambda (1 - d_{t+1}) A_{t+1},

with the gradient norm clipped at max_grad_norm and Adam (eps 1e-5) at a learning rate annealed linearly
to 0 over the iterations. This is CleanRL's `ppo_continuous_action.py` (defaults, networks and order of
operations): separate 64-64 Tanh actor and critic with orthogonal initialisation (gain sqrt 2, policy head
0.01, value head 1), a state-independent log-std starting at 0, observations standardised by a running
mean/variance and clipped to +-10, rewards divided by the running std of the discounted return and clipped
to +-10, sampled actions clipped to the bounds only on the way to the environment. Discrete and
MultiDiscrete action spaces get one categorical per sub-action (the policy head emits their logits side
by side; `--preset cleanrl-discrete` is CleanRL's `ppo.py` for CartPole). done = terminated or truncated, so
a truncated episode is not bootstrapped (CleanRL); `--bootstrap-truncation` adds gamma V(final obs) to the
last reward as SB3 does.

Differences from CleanRL: one running normaliser for all env copies (CleanRL's wrappers keep one per copy;
the same for --num-envs 1), held in the checkpoint; the run ends after whole iterations, so total_steps is
rounded up to a multiple of num_envs x num_steps (CleanRL rounds down); `--batch-size` is the minibatch size
(CleanRL derives it from --num-minibatches 32: 2048 / 32 = 64). Evaluation follows ocrl's shared protocol:
deterministic policy (the mean, or each sub-action's most likely value) on observations normalised with the
statistics of that moment, 10 episodes every 5,000 environment steps; Hopper-v4, HalfCheetah-v4 and
Walker2d-v4 also get D4RL's normalised score.
`--precision bf16` runs the actor's and the critic's hidden layers in bf16 autocast, in the rollout and in the
update alike (the stored log-probs and the ratio's come from the same networks); their output layers, the log-std,
log-probs, GAE, the losses, weights, Adam's state and evaluation stay fp32.

    python algos/ppo.py --env-id Hopper-v4
    python algos/ppo.py --preset cleanrl-discrete --env-id CartPole-v1 --total-steps 100000
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ocrl.data import ObservationNormalizer, RunningMeanStd, VectorRollout, explained_variance
from ocrl.envs import Evaluator, make_vector_env, reference_scores
from ocrl.experiment import Acting, Agent, TrainingLoop, start_run
from ocrl.experiment.args import OnlineArgs, PrecisionArgs, RunArgs
from ocrl.experiment.flags import UsageError, check_args, run_cli
from ocrl.nets import ActorCritic, autocast

PRESETS: dict[str, dict] = {
    # CleanRL's ppo.py (discrete actions, CartPole-v1): 4 envs x 128 steps, 4 minibatches of 128, 4 epochs.
    "cleanrl-discrete": {
        "env_id": "CartPole-v1",
        "total_steps": 500_000,
        "lr": 2.5e-4,
        "num_envs": 4,
        "num_steps": 128,
        "batch_size": 128,
        "update_epochs": 4,
        "ent_coef": 0.01,
        "normalize_obs": False,
        "normalize_reward": False,
    },
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(RunArgs, PrecisionArgs, OnlineArgs):
    env_id: str = "HalfCheetah-v4"
    """Gymnasium environment id: a flat Box observation; Box, Discrete or MultiDiscrete actions"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """'cleanrl-discrete': CleanRL's ppo.py settings for discrete actions; explicit flags override it"""
    seed: int = 1
    """seed of torch, numpy, the training envs and the evaluation episodes"""
    total_steps: int = 1_000_000
    """environment steps over all env copies, rounded up to whole iterations of num_envs x num_steps"""
    num_envs: int = 1
    """parallel training environments"""
    num_steps: int = 2048
    """steps per env copy in each rollout"""
    batch_size: int = 64
    """transitions per minibatch (CleanRL: num_envs x num_steps / num_minibatches, 2048 / 32)"""
    update_epochs: int = 10
    """passes over each rollout"""
    lr: float = 3e-4
    """Adam learning rate (eps 1e-5) of the actor and critic"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over the iterations (CleanRL); SB3 keeps it constant"""
    discount: float = 0.99
    """discount factor gamma"""
    gae_lambda: float = 0.95
    """lambda of the generalised advantage estimate"""
    norm_adv: bool = True
    """standardise the advantages of each minibatch"""
    clip_coef: float = 0.2
    """clip range eps of the probability ratio (and of the value with --clip-vloss)"""
    clip_vloss: bool = True
    """clip the value loss around the rollout's values, as CleanRL does"""
    ent_coef: float = 0.0
    """weight of the entropy bonus"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    max_grad_norm: float = 0.5
    """clip of the global gradient norm"""
    target_kl: float | None = None
    """stop the epochs of an iteration once the approximate KL exceeds it (None: never)"""
    normalize_obs: bool = True
    """standardise observations by their running mean and variance, then clip to +-10"""
    normalize_reward: bool = True
    """divide rewards by the running std of the discounted return, then clip to +-10"""
    bootstrap_truncation: bool = False
    """add gamma V(final observation) to the last reward of a truncated episode (SB3); CleanRL does not"""
    hidden: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and of the critic (Tanh)"""
    log_every: int = 2_048
    """environment steps between loss logs (checked after each iteration)"""


class PPO(Agent):
    """The actor-critic, its optimiser and the observation/return normalisers; `update` is one iteration's epochs."""

    def __init__(self, args: Args, obs_dim: int, action_space: gym.Space, device) -> None:
        self.args = args
        self.policy = ActorCritic(obs_dim, action_space, args.hidden).to(device)  # one value head
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=args.lr, eps=1e-5)
        self.obs_rms = ObservationNormalizer((obs_dim,), enabled=args.normalize_obs)
        self.return_rms = RunningMeanStd()

    def act_for_evaluation(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluator's policy: raw observations, normalised with the current statistics (not updated)."""
        x = self.obs_rms(obs.cpu().numpy().astype(np.float64), update=False)
        return self.policy.act(torch.as_tensor(x, device=obs.device))

    def update(self, rollout: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """update_epochs passes of clipped-surrogate minibatch steps over one rollout (flattened to B)."""
        args, policy = self.args, self.policy
        obs, actions, logprobs = rollout["obs"], rollout["actions"], rollout["logprobs"]
        advantages, returns, values = rollout["advantages"], rollout["returns"], rollout["values"]
        advantages, returns, values = advantages[:, 0], returns[:, 0], values[:, 0]  # the one head
        n = obs.shape[0]
        clipfracs = []
        for _ in range(args.update_epochs):
            order = torch.randperm(n, device=obs.device)
            for start in range(0, n, args.batch_size):
                mb = order[start : start + args.batch_size]
                with autocast(args.precision, obs.device):
                    new_logprob, entropy, heads = policy.evaluate(obs[mb], actions[mb])
                new_value = heads[:, 0, 0]  # (b,)
                logratio = new_logprob - logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())
                mb_adv = advantages[mb]
                if args.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(
                    -mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                ).mean()
                if args.clip_vloss:
                    v_unclipped = (new_value - returns[mb]).square()
                    v_clipped = values[mb] + (new_value - values[mb]).clamp(
                        -args.clip_coef, args.clip_coef
                    )
                    v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - returns[mb]).square()).mean()
                else:
                    v_loss = 0.5 * (new_value - returns[mb]).square().mean()
                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + args.vf_coef * v_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                self.optimizer.step()
            if args.target_kl is not None and float(approx_kl) > args.target_kl:
                break
        explained_var = explained_variance(values, returns)
        return {
            "value_loss": v_loss.detach(), "policy_loss": pg_loss.detach(),
            "entropy": entropy_loss.detach(), "old_approx_kl": old_approx_kl,
            "approx_kl": approx_kl, "ppo/clipfrac": torch.stack(clipfracs).mean(),
            "ppo/explained_variance": explained_var,
        }  # fmt: skip


def check_ppo_args(args: Args) -> None:
    check_args(args, ("total_steps", "num_envs", "num_steps", "batch_size", "update_epochs",
                      "eval_every", "eval_episodes", "log_every"))  # fmt: skip
    rollout = args.num_envs * args.num_steps
    if rollout % args.batch_size:
        raise UsageError(
            f"--batch-size {args.batch_size}: must divide num_envs x num_steps = {rollout} "
            "(whole minibatches, as CleanRL's --num-minibatches)"
        )
    if not 0.0 <= args.gae_lambda <= 1.0:
        raise UsageError(f"--gae-lambda {args.gae_lambda}: must lie in [0, 1]")
    for name in ("lr", "clip_coef", "max_grad_norm"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be a positive number")
    for name in ("ent_coef", "vf_coef"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be a number >= 0")
    if args.target_kl is not None and not args.target_kl > 0:
        raise UsageError(f"--target-kl {args.target_kl}: must be positive (or omitted)")


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check_ppo_args)

    envs = make_vector_env(args.env_id, args.num_envs, args.seed, "PPO",
                           (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete))  # fmt: skip
    obs_dim = envs.single_observation_space.shape[0]
    agent = PPO(args, obs_dim, envs.single_action_space, device)
    ref_min, ref_max = reference_scores(args.env_id)
    evaluator = Evaluator(
        args.env_id, args.eval_episodes, args.seed, ref_min_score=ref_min, ref_max_score=ref_max,
        device=device,
    )  # fmt: skip
    rollout_size = args.num_envs * args.num_steps
    rollout = VectorRollout(
        envs, args.num_steps, agent.obs_rms, agent.return_rms, device, seed=args.seed,
        discount=args.discount, gae_lambda=args.gae_lambda, normalize_reward=args.normalize_reward,
        bootstrap_truncation=args.bootstrap_truncation,
    )  # fmt: skip
    loop = TrainingLoop(
        "ppo", args.env_id, args, agent.parts() | {"rollout": rollout}, np_rng,
        rate_tag="charts/steps_per_s", policy=Acting(agent.policy, agent.obs_rms),
    )  # fmt: skip
    iterations = math.ceil(args.total_steps / rollout_size)

    for start in loop.steps(stride=rollout_size):
        if args.anneal_lr:
            # 0-based here; CleanRL's frac = 1 - (iteration - 1) / num_iterations
            iteration = start // rollout_size
            agent.optimizer.param_groups[0]["lr"] = (1.0 - iteration / iterations) * args.lr
        # One autocast for the whole rollout: it casts the weights to bf16 once (no update happens inside).
        with autocast(args.precision, device):
            batch = rollout.collect(agent.policy, start, loop.run.log)
        metrics = agent.update(batch)
        metrics["charts/learning_rate"] = torch.tensor(agent.optimizer.param_groups[0]["lr"])
        loop.log(metrics)
        if loop.due(args.eval_every):
            loop.evaluate(evaluator, agent.act_for_evaluation)

    envs.close()
    return loop.finish(evaluator, agent.act_for_evaluation, env_id=args.env_id)


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
