"""Conditional VAE over actions given states (BCQ's generative model; A2PR's augmented behaviour policy)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ocrl.nets.core import MLP, SeedLinear, _action_bounds, full_precision


class ConditionalVAE(nn.Module):
    """q(z | s, a) and p(a | s, z): an MLP encoder with mean / log-std heads, an MLP decoder with a tanh output;
    with `num_seeds` every linear layer is a SeedLinear, (N, B, ·) -> (N, B, ·)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        latent_dim: int | None = None,
        hidden: Sequence[int] = (750, 750),
        action_low: float | Sequence[float] = -1.0,
        action_high: float | Sequence[float] = 1.0,
        log_std_min: float = -4.0,
        log_std_max: float = 15.0,
        prior_clip: float = 0.5,
        num_seeds: int | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim = 2 * act_dim if latent_dim is None else latent_dim
        self.encoder = MLP(
            obs_dim + act_dim,
            hidden[-1],
            hidden[:-1],
            output_activation=nn.ReLU,
            fp32_head=False,
            num_seeds=num_seeds,
        )

        def head() -> nn.Module:
            if num_seeds is None:
                return nn.Linear(hidden[-1], self.latent_dim)
            return SeedLinear(hidden[-1], self.latent_dim, num_seeds)

        self.mean, self.log_std = head(), head()
        self.decoder = MLP(obs_dim + self.latent_dim, act_dim, hidden, num_seeds=num_seeds)
        self.log_std_min, self.log_std_max, self.prior_clip = log_std_min, log_std_max, prior_clip
        scale, bias = _action_bounds(act_dim, action_low, action_high)
        self.register_buffer("action_scale", scale)
        self.register_buffer("action_bias", bias)

    def encode(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of q(z | s, a); the log-std is clamped to [log_std_min, log_std_max]."""
        h = self.encoder(torch.cat([obs, action], dim=-1))
        log_std = full_precision(self.log_std, h).clamp(self.log_std_min, self.log_std_max)
        return full_precision(self.mean, h), log_std.exp()

    def decode(self, obs: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """An action for each state; without z, z ~ N(0, I) clipped to [-prior_clip, prior_clip] (BCQ's prior)."""
        if z is None:
            z = torch.randn(*obs.shape[:-1], self.latent_dim, device=obs.device, dtype=obs.dtype)
            z = z.clamp(-self.prior_clip, self.prior_clip)
        out = torch.tanh(self.decoder(torch.cat([obs, z], dim=-1)))
        return out * self.action_scale + self.action_bias

    def forward(
        self, obs: torch.Tensor, action: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction with a reparameterised z = mean + std * noise ~ q(z | s, a) (noise: N(0, I) draws of
        the mean's shape, drawn here if not given), and q's mean and std."""
        mean, std = self.encode(obs, action)
        z = mean + std * (torch.randn_like(std) if noise is None else noise)
        return self.decode(obs, z), mean, std
