"""On-policy data: a rollout buffer, collection from vector environments (reward normalisation, bootstrap on
truncation, episode logs), GAE over a head axis, Monte-Carlo returns and the training curve of episode returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch

from ocrl.data.running import ObservationNormalizer, RunningMeanStd


class Policy(Protocol):
    """What a rollout asks of the policy: pi(.|s) and the value heads V_e(s), (B, E)."""

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution: ...

    def value(self, obs: torch.Tensor) -> torch.Tensor: ...


class RolloutBuffer:
    """Named per-transition tensors, oldest first (a checkpoint part where it is kept across updates)."""

    def __init__(
        self, capacity: int, shapes: dict[str, tuple[int, ...]], device,
        dtypes: dict[str, torch.dtype] | None = None,
    ) -> None:  # fmt: skip
        dtypes = dtypes or {}
        self.data = {
            key: torch.zeros(capacity, *shape, device=device, dtype=dtypes.get(key, torch.float32))
            for key, shape in shapes.items()
        }
        self.n = 0

    def append(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add rows (the same number under every name); return views of everything stored."""
        k = next(iter(rows.values())).shape[0]
        for key, value in rows.items():
            self.data[key][self.n : self.n + k] = value
        self.n += k
        return {key: t[: self.n] for key, t in self.data.items()}

    def clear(self) -> None:
        """Forget every row (the storage stays)."""
        self.n = 0

    def drop_oldest(self, k: int) -> None:
        """Forget the k oldest rows."""
        for t in self.data.values():
            t[: self.n - k] = t[k : self.n].clone()
        self.n -= k

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"n": torch.tensor(self.n), **{k: t[: self.n].clone() for k, t in self.data.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.n = int(state["n"])
        for key, t in self.data.items():
            t[: self.n] = state[key]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
    next_done: torch.Tensor, discount: float, gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(advantages, returns), one GAE per head, of a rollout with values (T, N, E), next_value (N, E) and rewards,
    dones (T, N), next_done (N,) shared by the heads; dones[t] marks obs[t] as the first of a new episode."""
    rewards, dones, next_done = rewards[..., None], dones[..., None], next_done[..., None]
    advantages = torch.zeros_like(values)
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


def discounted_returns(
    rewards: torch.Tensor, terminals: torch.Tensor, gamma: float
) -> torch.Tensor:
    """R_t = r_t + gamma R_{t+1} over a flat buffer in time order, restarting after each terminal step."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running * (1.0 - terminals[t])
        returns[t] = running
    return returns


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Var[target - predicted] / Var[target]."""
    return 1 - (target - predicted).var() / target.var().clamp_min(1e-12)


class VectorRollout:
    """num_steps steps of every copy of a vector env per `collect`, with CleanRL's (and SB3's) handling:
    observations normalised on the way in, rewards divided by the running std of the discounted return
    (gymnasium's NormalizeReward), optionally gamma mean_e V_e(final obs) added at a truncation (SB3),
    sampled Box actions clipped only on the way to the env, and each finished episode logged."""

    def __init__(
        self, envs: gym.vector.VectorEnv, num_steps: int, obs_norm: ObservationNormalizer,
        return_rms: RunningMeanStd, device, *, seed: int, ensemble_size: int = 1,
        discount: float, gae_lambda: float, normalize_reward: bool, bootstrap_truncation: bool,
    ) -> None:  # fmt: skip
        self.envs, self.num_steps, self.device = envs, num_steps, device
        self.obs_norm, self.return_rms = obs_norm, return_rms
        self.discount, self.gae_lambda = discount, gae_lambda
        self.normalize_reward, self.bootstrap_truncation = normalize_reward, bootstrap_truncation
        space, n = envs.single_action_space, envs.num_envs
        self.continuous = isinstance(space, gym.spaces.Box)
        sub_actions = len(np.atleast_1d(space.nvec)) if hasattr(space, "nvec") else 1
        self.act_shape = space.shape if self.continuous else (sub_actions,)
        shapes = {"obs": envs.single_observation_space.shape, "actions": self.act_shape,
                  "logprobs": (), "rewards": (), "dones": (), "values": (ensemble_size,)}  # fmt: skip
        dtypes = {} if self.continuous else {"actions": torch.long}
        self.buffer = RolloutBuffer(num_steps * n, shapes, device, dtypes)
        raw_obs, _ = envs.reset(seed=[seed + i for i in range(n)])
        self.next_obs = obs_norm(raw_obs.astype(np.float64), update=True)
        self.next_done = torch.zeros(n, device=device)
        self.discounted_return = np.zeros(n)
        self.episode_return, self.episode_length = np.zeros(n), np.zeros(n, dtype=np.int64)

    def collect(
        self, policy: Policy, step: int, log: Callable[[int, dict], None]
    ) -> dict[str, torch.Tensor]:
        """Run `policy` (distribution(obs), value(obs) -> (B, E)) for a rollout from env step `step`; return it
        flattened to B = num_steps x num_envs rows with GAE advantages and returns per head (B, E)."""
        envs, device, n = self.envs, self.device, self.envs.num_envs
        space = envs.single_action_space
        self.buffer.clear()
        for t in range(self.num_steps):
            obs_t = torch.as_tensor(self.next_obs, device=device)
            with torch.no_grad():
                dist = policy.distribution(obs_t)
                action = dist.sample()
                logprob, value = dist.log_prob(action).sum(-1), policy.value(obs_t)
            env_action = action.cpu().numpy()
            if self.continuous:
                env_action = np.clip(env_action, space.low, space.high)
            elif isinstance(space, gym.spaces.Discrete):
                env_action = env_action.reshape(n)
            raw_next, reward, terminated, truncated, infos = envs.step(env_action)
            done = terminated | truncated
            self.episode_return += reward
            self.episode_length += 1
            for i in np.flatnonzero(done):
                log(step + (t + 1) * n, {"charts/episodic_return": self.episode_return[i],
                                         "charts/episodic_length": self.episode_length[i]})  # fmt: skip
                self.episode_return[i], self.episode_length[i] = 0.0, 0
            scaled = self.scaled_rewards(policy, reward, terminated, truncated, infos)
            self.buffer.append({
                "obs": obs_t, "actions": action.reshape(n, *self.act_shape), "logprobs": logprob,
                "rewards": torch.as_tensor(scaled, dtype=torch.float32, device=device),
                "dones": self.next_done, "values": value,
            })  # fmt: skip
            self.next_obs = self.obs_norm(raw_next.astype(np.float64), update=True)
            self.next_done = torch.as_tensor(done, dtype=torch.float32, device=device)

        with torch.no_grad():
            next_value = policy.value(torch.as_tensor(self.next_obs, device=device))
        flat = dict(self.buffer.data)
        rows = {
            k: flat[k].unflatten(0, (self.num_steps, n)) for k in ("rewards", "values", "dones")
        }
        advantages, returns = gae(
            rows["rewards"], rows["values"], rows["dones"], next_value, self.next_done,
            self.discount, self.gae_lambda,
        )  # fmt: skip
        del flat["rewards"], flat["dones"]
        return flat | {"advantages": advantages.flatten(0, 1), "returns": returns.flatten(0, 1)}

    def state_dict(self) -> dict:
        """What the next rollout continues from: the envs' states (`ocrl.envs.training.vector_env_state`), the
        normalised observation, the done flags, the running discounted return and the episode counters. The
        normalisers are the agent's parts."""
        from ocrl.envs.training import vector_env_state  # ocrl.envs imports ocrl.data

        return {
            "next_obs": torch.from_numpy(np.array(self.next_obs)),
            "next_done": self.next_done.cpu().clone(),
            "discounted_return": torch.from_numpy(self.discounted_return.copy()),
            "episode_return": torch.from_numpy(self.episode_return.copy()),
            "episode_length": torch.from_numpy(self.episode_length.copy()),
            **vector_env_state(self.envs),
        }

    def load_state_dict(self, state: dict) -> None:
        from ocrl.envs.training import load_vector_env_state

        # This run's reset: the start of a new episode for a copy saved as "restart".
        fresh = self.next_obs
        restarted = load_vector_env_state(self.envs, state)
        self.next_obs = state["next_obs"].numpy().copy()
        self.next_done = state["next_done"].to(self.device)
        self.discounted_return = state["discounted_return"].numpy().copy()
        self.episode_return = state["episode_return"].numpy().copy()
        self.episode_length = state["episode_length"].numpy().copy()
        for i in restarted:
            self.next_obs[i], self.next_done[i] = fresh[i], 0.0
            self.discounted_return[i], self.episode_return[i], self.episode_length[i] = 0.0, 0.0, 0

    def scaled_rewards(
        self, policy: Policy, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
        infos: dict,
    ) -> np.ndarray:  # fmt: skip
        """The rewards to learn from: normalised (--normalize-reward), plus the truncation bootstrap."""
        scaled = reward.astype(np.float64)
        if self.normalize_reward:
            # gymnasium's NormalizeReward: the running return resets on termination only.
            self.discounted_return = (
                self.discounted_return * self.discount * (1 - terminated) + reward
            )
            self.return_rms.update(self.discounted_return)
            scaled = np.clip(reward / np.sqrt(self.return_rms.var + 1e-8), -10.0, 10.0)
        if self.bootstrap_truncation and (truncated & ~terminated).any():
            cut = np.flatnonzero(truncated & ~terminated)
            final = np.stack([infos["final_obs"][i] for i in cut]).astype(np.float64)
            final_t = torch.as_tensor(self.obs_norm(final, update=False), device=self.device)
            with torch.no_grad():
                # SB3: the mean over the heads of V_e(final obs), the same for every head.
                scaled[cut] += self.discount * policy.value(final_t).mean(-1).cpu().numpy()
        return scaled


class EpisodeCurve:
    """The mean return of the episodes that ended in each window of env steps (a checkpoint part)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.window_means: list[float] = []
        self.pending: list[float] = []

    def add(self, returns: np.ndarray, step: int) -> None:
        """Record episodes that ended by env step `step`; close the window when `step` ends one."""
        self.pending.extend(float(r) for r in returns)
        if step % self.window == 0 and self.pending:
            self.window_means.append(float(np.mean(self.pending)))
            self.pending = []

    def summary(self, prefix: str) -> dict[str, float | None]:
        """The last, largest and summed window means as <prefix>_last, _max and _sum (None before any window)."""
        means = self.window_means
        return {
            f"{prefix}_last": means[-1] if means else None,
            f"{prefix}_max": max(means) if means else None,
            f"{prefix}_sum": float(np.sum(means)) if means else None,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "window_means": torch.tensor(self.window_means, dtype=torch.float64),
            "pending": torch.tensor(self.pending, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.window_means = state["window_means"].tolist()
        self.pending = state["pending"].tolist()
