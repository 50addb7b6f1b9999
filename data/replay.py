"""A replay buffer kept as tensors on the training device, sampled without host synchronisation; a set of
generated transitions replaced wholesale, and batches mixing generated and real transitions."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """A minibatch of transitions; `terminals` is 1.0 only for true terminations (never for timeouts)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor


def _as_tensor(
    x: np.ndarray | torch.Tensor, device: torch.device, dtype=torch.float32
) -> torch.Tensor:
    return torch.as_tensor(x, dtype=dtype).to(device, non_blocking=True)


class ReplayBuffer:
    """Fixed-capacity ring buffer of (s, a, r, s', terminated, truncated) on one device."""

    def __init__(
        self, obs_dim: int, act_dim: int, capacity: int, device: str | torch.device = "cpu"
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"ReplayBuffer capacity must be positive, got {capacity}")
        self.device = torch.device(device)
        self.capacity = capacity
        self.observations = torch.zeros(capacity, obs_dim, device=self.device)
        self.actions = torch.zeros(capacity, act_dim, device=self.device)
        self.rewards = torch.zeros(capacity, device=self.device)
        self.next_observations = torch.zeros(capacity, obs_dim, device=self.device)
        self.terminals = torch.zeros(capacity, device=self.device)
        self.timeouts = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.ptr = 0
        self.size = 0

    @classmethod
    def from_arrays(
        cls,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_observations: np.ndarray,
        terminals: np.ndarray,
        device: str | torch.device = "cpu",
    ) -> ReplayBuffer:
        """A full buffer holding an offline dataset's transitions; on the CPU float32 arrays are not copied."""
        n = len(observations)
        for name, arr in [
            ("actions", actions),
            ("rewards", rewards),
            ("next_observations", next_observations),
            ("terminals", terminals),
        ]:
            if len(arr) != n:
                raise ValueError(
                    f"ReplayBuffer.from_arrays: '{name}' has {len(arr)} rows, observations has {n}"
                )
        buf = cls.__new__(cls)
        buf.device = torch.device(device)
        buf.capacity = buf.size = n
        buf.ptr = 0
        buf.observations = _as_tensor(observations, buf.device)
        buf.actions = _as_tensor(actions, buf.device)
        buf.rewards = _as_tensor(rewards, buf.device).reshape(n)
        buf.next_observations = _as_tensor(next_observations, buf.device)
        buf.terminals = _as_tensor(terminals, buf.device).reshape(n)
        buf.timeouts = torch.zeros(n, dtype=torch.bool, device=buf.device)
        return buf

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray | torch.Tensor,
        action: np.ndarray | torch.Tensor,
        reward: np.ndarray | torch.Tensor,
        next_obs: np.ndarray | torch.Tensor,
        terminated: np.ndarray | torch.Tensor,
        truncated: np.ndarray | torch.Tensor,
    ) -> None:
        """Append a batch of n transitions (leading axis n, e.g. one per vector-env copy)."""
        obs_t = _as_tensor(obs, self.device).reshape(-1, self.observations.shape[1])
        n = obs_t.shape[0]
        idx = (torch.arange(n) + self.ptr) % self.capacity
        idx = idx.to(self.device)
        self.observations[idx] = obs_t
        self.actions[idx] = _as_tensor(action, self.device).reshape(n, -1)
        self.rewards[idx] = _as_tensor(reward, self.device).reshape(n)
        self.next_observations[idx] = _as_tensor(next_obs, self.device).reshape(n, -1)
        self.terminals[idx] = _as_tensor(terminated, self.device).reshape(n)
        self.timeouts[idx] = _as_tensor(truncated, self.device, torch.bool).reshape(n)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform sample with replacement; indices are drawn on the buffer's device."""
        return self.gather(self.sample_indices(batch_size, generator))

    def sample_indices(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform row indices with replacement, drawn on the buffer's device."""
        return torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)

    def sample_per_seed(self, batch_size: int, streams: Any) -> Batch:
        """One uniform minibatch per seed, its indices from that seed's stream (`nets.seeds.SeedStreams`):
        (N, batch_size, ...) tensors."""
        return self.gather(streams.randint(self.size, (batch_size,)))

    def gather(self, idx: torch.Tensor) -> Batch:
        """The transitions at row indices `idx`."""
        return Batch(
            self.observations[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_observations[idx],
            self.terminals[idx],
        )

    def state_dict(self) -> dict:
        """The filled part of the buffer plus its pointer, for checkpoints."""
        n = self.size
        return {
            "observations": self.observations[:n].cpu(),
            "actions": self.actions[:n].cpu(),
            "rewards": self.rewards[:n].cpu(),
            "next_observations": self.next_observations[:n].cpu(),
            "terminals": self.terminals[:n].cpu(),
            "timeouts": self.timeouts[:n].cpu(),
            "ptr": self.ptr,
            "size": n,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved into a buffer of at least the same capacity."""
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(
                f"checkpointed buffer holds {n} transitions, more than this buffer's capacity {self.capacity}"
            )
        for name in [
            "observations",
            "actions",
            "rewards",
            "next_observations",
            "terminals",
            "timeouts",
        ]:
            getattr(self, name)[:n] = state[name].to(self.device)
        self.ptr, self.size = int(state["ptr"]), n


class SyntheticSet:
    """Generated transitions replaced wholesale at each (re)generation, observations as the agent sees them
    (`fill` standardises them with the given statistics); None before the first; a checkpoint part."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffer: ReplayBuffer | None = None
        self.regenerations = 0  # generations after the initial one

    def fill(
        self,
        t: dict[str, torch.Tensor],
        obs_mean: torch.Tensor | None,
        obs_std: torch.Tensor | None,
    ) -> None:
        """Replace the set by the transitions `t` (dict of observations, actions, ... tensors)."""
        obs, next_obs = t["observations"], t["next_observations"]
        if obs_mean is not None:
            obs, next_obs = (obs - obs_mean) / obs_std, (next_obs - obs_mean) / obs_std
        self.buffer = ReplayBuffer.from_arrays(
            obs, t["actions"], t["rewards"], next_obs, t["terminals"], device=self.device
        )

    def state_dict(self) -> dict:
        buffer = None if self.buffer is None else self.buffer.state_dict()
        return {"buffer": buffer, "regenerations": self.regenerations}

    def load_state_dict(self, state: dict) -> None:
        b = state["buffer"]
        self.regenerations = int(state["regenerations"])
        if b is None:
            self.buffer = None
            return
        self.buffer = ReplayBuffer.from_arrays(
            b["observations"], b["actions"], b["rewards"], b["next_observations"],
            b["terminals"], device=self.device,
        )  # fmt: skip


def mixed_batch(
    real: ReplayBuffer, synthetic: ReplayBuffer | None, batch_size: int, n_synth: int
) -> Batch:
    """n_synth uniform synthetic transitions followed by batch_size - n_synth uniform real ones."""
    if n_synth == 0:
        return real.sample(batch_size)
    s, r = synthetic.sample(n_synth), real.sample(batch_size - n_synth)
    return Batch(*(torch.cat([a, b]) for a, b in zip(s, r, strict=True)))


def mixed_minibatches(
    offline: ReplayBuffer, online: ReplayBuffer, batch_size: int, utd: int, bias: float = 0.0
) -> list[Batch]:
    """G minibatches of batch_size from one draw of G * batch_size / 2 offline and online rows, interleaved
    (offline at even rows, online at odd), as RLPD's combine() and its slicing into minibatches; `bias`
    is added to every reward (the buffers keep the environment's)."""
    half = batch_size // 2
    off, on = offline.sample(half * utd), online.sample(half * utd)
    if bias:
        off, on = off._replace(rewards=off.rewards + bias), on._replace(rewards=on.rewards + bias)
    rows = [
        torch.stack([x, y], dim=1).reshape(utd, batch_size, *x.shape[1:])
        for x, y in zip(off, on, strict=True)
    ]
    return [Batch(*(r[g] for r in rows)) for g in range(utd)]
