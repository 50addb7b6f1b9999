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

from ocrl.data import RunningMeanStd
from ocrl.envs import Evaluator, make_env, reference_scores
from ocrl.experiment import (
    Agent,
    TrainingLoop,
    UsageError,
    check_args,
    cli,
    friendly_errors,
    pick_device,
    resume_args,
    seed_everything,
)
from ocrl.nets import MLP, orthogonal_init

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
class Args:
    env_id: str = "HalfCheetah-v4"
    """Gymnasium environment id: a flat Box observation; Box, Discrete or MultiDiscrete actions"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """'cleanrl-discrete': CleanRL's ppo.py settings for discrete actions; explicit flags override it"""
    seed: int = 1
    """seed of torch, numpy, the training envs and the evaluation episodes"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    threads: int = 1
    """torch's CPU threads: 1 is fastest per run for these network sizes and keeps runs side by side from slowing
    each other 10-50x; 0 uses torch's default (all cores)"""
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
    """anneal the learning rate linearly to 0 over the iterations"""
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
    eval_every: int = 5_000
    """environment steps between evaluations (checked after each iteration)"""
    eval_episodes: int = 10
    """episodes per evaluation, run in parallel"""
    log_every: int = 2_048
    """environment steps between loss logs (checked after each iteration)"""
    save_model: bool = False
    """write checkpoint.pt (networks, optimiser, normalisers, RNG) at every evaluation and at the end"""
    resume: str | None = None
    """run folder to continue from its checkpoint.pt (the environments restart their episodes)"""
    run_dir: str | None = None
    """run folder; default runs/ppo__<env>__s<seed>__<time>"""
    overwrite: bool = False
    """empty --run-dir first when it holds a finished or stopped run (without it, such a folder is refused)"""
    progress: bool = True
    """show a progress bar"""


class ActorCritic(nn.Module):
    """V(s), and pi(.|s): Normal(mean(s), exp(log_std)) for Box actions, one categorical per sub-action otherwise."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.critic = orthogonal_init(MLP(obs_dim, 1, hidden, nn.Tanh), 1.0)
        self.continuous = isinstance(action_space, gym.spaces.Box)
        self.single_discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.continuous:
            act_dim = action_space.shape[0]
            self.actor_mean = orthogonal_init(MLP(obs_dim, act_dim, hidden, nn.Tanh), 0.01)
            self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))
            return
        nvec = np.atleast_1d(
            np.asarray(getattr(action_space, "nvec", [getattr(action_space, "n", 0)]))
        )
        self.actor_logits = orthogonal_init(MLP(obs_dim, int(nvec.sum()), hidden, nn.Tanh), 0.01)
        # Sub-actions with fewer choices than the largest are padded with logits that are never sampled.
        width = int(nvec.max())
        index = torch.zeros(len(nvec), width, dtype=torch.long)
        valid = torch.arange(width)[None, :] < torch.as_tensor(nvec)[:, None]
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        for k, (start, n) in enumerate(zip(offsets, nvec, strict=True)):
            index[k, :n] = torch.arange(int(start), int(start + n))
        self.register_buffer("logit_index", index)
        self.register_buffer("logit_valid", valid)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        """pi(.|s): a Normal over (B, A), or a Categorical over (B, sub-actions, largest choice count)."""
        if self.continuous:
            mean = self.actor_mean(obs)
            return torch.distributions.Normal(mean, self.actor_logstd.expand_as(mean).exp())
        flat = self.actor_logits(obs)
        logits = flat[..., self.logit_index]
        logits = logits.masked_fill(~self.logit_valid, torch.finfo(logits.dtype).min)
        return torch.distributions.Categorical(logits=logits)

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log pi(a|s), H[pi(.|s)], V(s)), log-probabilities and entropies summed over the action's parts."""
        dist = self.distribution(obs)
        return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1), self.value(obs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action used at evaluation: the mean, or each sub-action's most likely value."""
        if self.continuous:
            return self.actor_mean(obs)
        action = self.distribution(obs).probs.argmax(-1)
        return action.squeeze(-1) if self.single_discrete else action


class PPO(Agent):
    """The actor-critic, its optimiser and the observation/return normalisers; `update` is one iteration's epochs."""

    def __init__(self, args: Args, obs_dim: int, action_space: gym.Space, device) -> None:
        self.args = args
        self.policy = ActorCritic(obs_dim, action_space, args.hidden).to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=args.lr, eps=1e-5)
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.return_rms = RunningMeanStd()

    def normalize_obs(self, obs: np.ndarray, update: bool) -> np.ndarray:
        """Standardise (and, in training, first update the statistics with) a batch of observations."""
        if not self.args.normalize_obs:
            return obs.astype(np.float32)
        if update:
            self.obs_rms.update(obs)
        x = (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + 1e-8)
        return np.clip(x, -10.0, 10.0).astype(np.float32)

    def act_for_evaluation(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluator's policy: raw observations, normalised with the current statistics (not updated)."""
        x = self.normalize_obs(obs.cpu().numpy().astype(np.float64), update=False)
        return self.policy.act(torch.as_tensor(x, device=obs.device))

    def update(self, rollout: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """update_epochs passes of clipped-surrogate minibatch steps over one rollout (flattened to B)."""
        args, policy = self.args, self.policy
        obs, actions, logprobs = rollout["obs"], rollout["actions"], rollout["logprobs"]
        advantages, returns, values = rollout["advantages"], rollout["returns"], rollout["values"]
        n = obs.shape[0]
        clipfracs = []
        for _ in range(args.update_epochs):
            order = torch.randperm(n, device=obs.device)
            for start in range(0, n, args.batch_size):
                mb = order[start : start + args.batch_size]
                new_logprob, entropy, new_value = policy.evaluate(obs[mb], actions[mb])
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
        explained_var = 1 - (returns - values).var() / returns.var().clamp_min(1e-12)
        return {
            "value_loss": v_loss.detach(), "policy_loss": pg_loss.detach(),
            "entropy": entropy_loss.detach(), "old_approx_kl": old_approx_kl,
            "approx_kl": approx_kl, "ppo/clipfrac": torch.stack(clipfracs).mean(),
            "ppo/explained_variance": explained_var,
        }  # fmt: skip


def gae(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
    next_done: torch.Tensor, discount: float, gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(advantages, returns) of a (T, N) rollout; dones[t] marks obs[t] as the first of a new episode."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    steps = rewards.shape[0]
    for t in reversed(range(steps)):
        if t == steps - 1:
            not_done, next_values = 1.0 - next_done, next_value
        else:
            not_done, next_values = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + discount * next_values * not_done - values[t]
        advantages[t] = last = delta + discount * gae_lambda * not_done * last
    return advantages, advantages + values


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
    args = resume_args(args) if args.resume else args
    check_ppo_args(args)
    device = pick_device(args.device, args.threads)
    np_rng = seed_everything(args.seed)

    envs = gym.vector.SyncVectorEnv(
        [lambda: make_env(args.env_id) for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    supported = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete)
    if not isinstance(act_space, supported) or len(obs_space.shape or ()) != 1:
        envs.close()
        raise UsageError(
            f"--env-id {args.env_id}: PPO needs a flat Box observation and Box, Discrete or "
            f"MultiDiscrete actions; this environment has {obs_space} and {act_space}"
        )
    obs_dim = obs_space.shape[0]
    continuous = isinstance(act_space, gym.spaces.Box)
    envs.action_space.seed(args.seed)

    agent = PPO(args, obs_dim, act_space, device)
    ref_min, ref_max = reference_scores(args.env_id)
    evaluator = Evaluator(
        args.env_id, args.eval_episodes, args.seed, ref_min_score=ref_min, ref_max_score=ref_max,
        device=device,
    )  # fmt: skip
    rollout_size = args.num_envs * args.num_steps
    loop = TrainingLoop(
        "ppo", args.env_id, args, agent.parts(), np_rng, rate_tag="charts/steps_per_s"
    )
    iterations = math.ceil(args.total_steps / rollout_size)
    n, steps = args.num_envs, args.num_steps
    act_shape = act_space.shape if continuous else (len(np.atleast_1d(act_space.nvec)) if isinstance(act_space, gym.spaces.MultiDiscrete) else 1,)  # fmt: skip
    rollout = {
        "obs": torch.zeros(steps, n, obs_dim, device=device),
        "actions": torch.zeros(
            steps, n, *act_shape, device=device, dtype=None if continuous else torch.long
        ),  # fmt: skip
        "logprobs": torch.zeros(steps, n, device=device),
        "rewards": torch.zeros(steps, n, device=device),
        "dones": torch.zeros(steps, n, device=device),
        "values": torch.zeros(steps, n, device=device),
    }
    raw_obs, _ = envs.reset(seed=[args.seed + i for i in range(n)])
    next_obs = agent.normalize_obs(raw_obs.astype(np.float64), update=True)
    next_done = torch.zeros(n, device=device)
    discounted_return = np.zeros(n)
    episode_return, episode_length = np.zeros(n), np.zeros(n, dtype=np.int64)

    for start in loop.steps(stride=rollout_size):
        if args.anneal_lr:
            iteration = (
                start // rollout_size
            )  # 0-based; CleanRL's frac = 1 - (iteration - 1) / num_iterations
            agent.optimizer.param_groups[0]["lr"] = (1.0 - iteration / iterations) * args.lr
        for t in range(steps):
            obs_t = torch.as_tensor(next_obs, device=device)
            rollout["obs"][t], rollout["dones"][t] = obs_t, next_done
            with torch.no_grad():
                dist = agent.policy.distribution(obs_t)
                action = dist.sample()
                rollout["logprobs"][t] = dist.log_prob(action).sum(-1)
                rollout["values"][t] = agent.policy.value(obs_t)
            rollout["actions"][t] = action.reshape(n, *act_shape)
            env_action = action.cpu().numpy()
            if continuous:
                env_action = np.clip(env_action, act_space.low, act_space.high)
            elif isinstance(act_space, gym.spaces.Discrete):
                env_action = env_action.reshape(n)
            raw_next, reward, terminated, truncated, infos = envs.step(env_action)
            done = terminated | truncated
            episode_return += reward
            episode_length += 1
            for i in np.flatnonzero(done):
                loop.run.log(start + (t + 1) * n, {"charts/episodic_return": episode_return[i],
                                                   "charts/episodic_length": episode_length[i]})  # fmt: skip
                episode_return[i], episode_length[i] = 0.0, 0
            scaled = reward.astype(np.float64)
            if args.normalize_reward:
                # gymnasium's NormalizeReward: the running return resets on termination only.
                discounted_return = discounted_return * args.discount * (1 - terminated) + reward
                agent.return_rms.update(discounted_return)
                scaled = np.clip(reward / np.sqrt(agent.return_rms.var + 1e-8), -10.0, 10.0)
            if args.bootstrap_truncation and (truncated & ~terminated).any():
                cut = np.flatnonzero(truncated & ~terminated)
                final = np.stack([infos["final_obs"][i] for i in cut]).astype(np.float64)
                final_t = torch.as_tensor(agent.normalize_obs(final, update=False), device=device)
                with torch.no_grad():
                    scaled[cut] += args.discount * agent.policy.value(final_t).cpu().numpy()
            rollout["rewards"][t] = torch.as_tensor(scaled, dtype=torch.float32, device=device)
            next_obs = agent.normalize_obs(raw_next.astype(np.float64), update=True)
            next_done = torch.as_tensor(done, dtype=torch.float32, device=device)

        with torch.no_grad():
            next_value = agent.policy.value(torch.as_tensor(next_obs, device=device))
        advantages, returns = gae(
            rollout["rewards"], rollout["values"], rollout["dones"], next_value, next_done,
            args.discount, args.gae_lambda,
        )  # fmt: skip
        flat = {
            "obs": rollout["obs"].reshape(-1, obs_dim),
            "actions": rollout["actions"].reshape(rollout_size, *act_shape),
            "logprobs": rollout["logprobs"].reshape(-1), "values": rollout["values"].reshape(-1),
            "advantages": advantages.reshape(-1), "returns": returns.reshape(-1),
        }  # fmt: skip
        metrics = agent.update(flat)
        metrics["charts/learning_rate"] = torch.tensor(agent.optimizer.param_groups[0]["lr"])
        loop.log(metrics)
        if loop.due(args.eval_every):
            loop.evaluate(evaluator, agent.act_for_evaluation)

    envs.close()
    return loop.finish(evaluator, agent.act_for_evaluation, env_id=args.env_id)


if __name__ == "__main__":
    with friendly_errors():
        main(cli(Args, PRESETS))
