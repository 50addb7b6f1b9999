"""CleanRL's on-policy actor-critic: a Tanh critic MLP with E value heads and a Gaussian or categorical policy."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ocrl.nets.core import MLP, orthogonal_init


class ActorCritic(nn.Module):
    """E value heads (value_dims numbers each, the first the mean V_e(s)) on one critic MLP, and pi(.|s):
    Normal(mean(s), exp(log_std)) for Box actions, one categorical per sub-action otherwise."""

    def __init__(
        self, obs_dim: int, action_space: gym.Space, hidden: tuple[int, ...],
        ensemble_size: int = 1, value_dims: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        # E separate Linear(hidden, value_dims) heads as one Linear(hidden, E x value_dims).
        self.ensemble_size = ensemble_size
        self.critic = orthogonal_init(
            MLP(obs_dim, ensemble_size * value_dims, hidden, nn.Tanh), 1.0
        )
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

    def heads(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, E, value_dims): per head the mean V_e(s) and any further outputs (e.g. a raw shape)."""
        return self.critic(obs).unflatten(-1, (self.ensemble_size, -1))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """The heads' means V_e(s), (B, E)."""
        return self.heads(obs)[..., 0]

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        """pi(.|s): a Normal over (B, A), or a Categorical over (B, sub-actions, largest choice count)."""
        if self.continuous:
            mean = self.actor_mean(obs)
            return torch.distributions.Normal(mean, self.actor_logstd.expand_as(mean).exp())
        flat = self.actor_logits(obs)
        logits = flat[..., self.logit_index]
        logits = logits.masked_fill(~self.logit_valid, torch.finfo(logits.dtype).min)
        # No argument validation: it is a data-dependent check that torch.export cannot trace (policy.pt2).
        return torch.distributions.Categorical(logits=logits, validate_args=False)

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log pi(a|s), H[pi(.|s)], heads(s)), log-probabilities and entropies summed over the action's parts."""
        dist = self.distribution(obs)
        return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1), self.heads(obs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action used at evaluation: the mean, or each sub-action's most likely value."""
        if self.continuous:
            return self.actor_mean(obs)
        action = self.distribution(obs).probs.argmax(-1)
        return action.squeeze(-1) if self.single_discrete else action
