"""EDM diffusion (Karras et al. 2022): preconditioning, loss, sigma schedule, stochastic Heun sampler and the denoisers.

The denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) wraps a network F: the residual MLP of SynthER
(transitions) or the 1-D temporal U-Net of policy-guided diffusion (trajectory windows). The sigma maths always
runs in float32; only F may run under bf16 autocast (`EDMDenoiser(autocast_dtype=torch.bfloat16)`, CUDA).
The sampler precomputes sigma and gamma once as device tensors and never reads a tensor on the host, so a CUDA
run does not synchronise inside the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EDMConfig:
    """EDM's constants; the defaults are both SynthER's and PGD's (sigma_data 1, churn 80 in [0.05, 50])."""

    sigma_data: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    s_churn: float = 80.0
    s_tmin: float = 0.05
    s_tmax: float = 50.0
    s_noise: float = 1.003


def preconditioning(
    sigma: torch.Tensor, sigma_data: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM's Table 1 for noise levels `sigma`."""
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1.0 / var.sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, so that lambda c_out^2 = 1."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sigma_schedule(
    steps: int, config: EDMConfig = EDMConfig(), device: torch.device | str = "cpu"
) -> torch.Tensor:
    """EDM eq. 5: `steps` levels from sigma_max down to sigma_min (rho-spaced), then a trailing 0; float32."""
    if steps < 2:
        raise ValueError(f"sigma_schedule: steps={steps}; the Heun sampler needs at least 2")
    i = torch.arange(steps, dtype=torch.float64)
    inv_rho = 1.0 / config.rho
    lo, hi = config.sigma_min**inv_rho, config.sigma_max**inv_rho
    sigmas = (hi + i / (steps - 1) * (lo - hi)) ** config.rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)


def churn_gammas(sigmas: torch.Tensor, config: EDMConfig = EDMConfig()) -> torch.Tensor:
    """gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma_i <= S_tmax, else 0 (one per step)."""
    steps = sigmas.numel() - 1
    gamma = min(config.s_churn / steps, math.sqrt(2.0) - 1.0)
    inside = (sigmas[:-1] >= config.s_tmin) & (sigmas[:-1] <= config.s_tmax)
    return torch.where(inside, gamma, 0.0).to(torch.float32)


class EDMDenoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise), with one sigma per sample (x is (B, ...))."""

    def __init__(
        self,
        net: nn.Module,
        config: EDMConfig = EDMConfig(),
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.autocast_dtype = autocast_dtype

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(torch.float32).reshape(-1)
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.config.sigma_data)
        shape = (-1,) + (1,) * (x.dim() - 1)
        net_in = c_in.view(shape) * x
        if self.autocast_dtype is not None:
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                out = self.net(net_in, c_noise)
            out = out.float()
        else:
            out = self.net(net_in, c_noise)
        return c_skip.view(shape) * x + c_out.view(shape) * out

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """EDM's loss: ln sigma ~ N(P_mean, P_std) per sample, lambda(sigma) times the mean squared error over
        a sample's entries, averaged over the batch (SynthER per transition, PGD per trajectory)."""
        cfg = self.config
        batch = x.shape[0]
        log_sigma = torch.randn(batch, device=x.device, generator=generator)
        sigma = (cfg.p_mean + cfg.p_std * log_sigma).exp()
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        shape = (-1,) + (1,) * (x.dim() - 1)
        denoised = self(x + sigma.view(shape) * noise, sigma)
        per_sample = (denoised - x).square().reshape(batch, -1).mean(dim=1)
        return (loss_weight(sigma, cfg.sigma_data) * per_sample).mean()


#: A pre-step hook: (step index k, x_k, sigma_k) -> the x_k the EDM step starts from (PGD's guidance shift).
PreStepHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def heun_sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    steps: int,
    config: EDMConfig = EDMConfig(),
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    pre_step: PreStepHook | None = None,
    euler_origin: Literal["x_hat", "x_i"] = "x_hat",
    churn: bool = True,
) -> torch.Tensor:
    """EDM Algorithm 2 (stochastic Heun, 2N - 1 network calls) from x_0 = sigma_max * eps; returns x_N in model space.

    `pre_step(k, x_k, sigma_k)` may shift x_k before step k (it runs with gradients enabled, for guidance).
    `euler_origin="x_hat"` is the textbook Euler predictor from the churned x_hat; "x_i" starts it from the
    un-churned x_i as PGD's code does (the Heun combination starts from x_hat in both). `churn=False` is the
    deterministic Heun sampler.
    """
    device = torch.device(device)
    sigmas = sigma_schedule(steps, config, device)
    gammas = churn_gammas(sigmas, config) if churn else torch.zeros(steps, device=device)
    batch = shape[0]
    ones = torch.ones(batch, device=device)
    x = sigmas[0] * torch.randn(shape, device=device, generator=generator)
    for k in range(steps):
        sigma, sigma_next, gamma = sigmas[k], sigmas[k + 1], gammas[k]
        if pre_step is not None:
            with torch.enable_grad():
                x = pre_step(k, x, sigma).detach()
        sigma_hat = sigma * (1.0 + gamma)
        eps = torch.randn(shape, device=device, generator=generator)
        x_hat = x + (sigma_hat.square() - sigma.square()).clamp_min(0).sqrt() * config.s_noise * eps
        d = (x_hat - denoiser(x_hat, sigma_hat * ones)) / sigma_hat
        origin = x_hat if euler_origin == "x_hat" else x
        x_next = origin + (sigma_next - sigma_hat) * d
        if k < steps - 1:  # sigma_{N} = 0 only at the last step: a structural test, no host read
            d_next = (x_next - denoiser(x_next, sigma_next * ones)) / sigma_next
            x_next = x_hat + 0.5 * (sigma_next - sigma_hat) * (d + d_next)
        x = x_next
    return x


# ---------------------------------------------------------------------------------------- denoisers
class RandomFourierTime(nn.Module):
    """[u, sin(2 pi w u), cos(2 pi w u)] with `dim / 2` frozen N(0, 1) frequencies w (SynthER's time features)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"RandomFourierTime: dim={dim} must be even")
        self.register_buffer("weights", torch.randn(dim // 2))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u = u.reshape(-1, 1)
        freqs = u * self.weights.view(1, -1) * (2 * math.pi)
        return torch.cat([u, freqs.sin(), freqs.cos()], dim=-1)


class ResidualMLPDenoiser(nn.Module):
    """SynthER's F: Linear(d_in, dim_t)(x) + time embedding, Linear(dim_t, width), `depth` pre-activation
    residual blocks h + Linear(ReLU(LN?(h))), then Linear(width, d_in)(ReLU(h))."""

    def __init__(
        self,
        d_in: int,
        width: int = 2048,
        depth: int = 6,
        dim_t: int = 128,
        layer_norm: bool = False,
        fourier_dim: int = 16,
    ) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(
            RandomFourierTime(fourier_dim),
            nn.Linear(fourier_dim + 1, dim_t),
            nn.SiLU(),
            nn.Linear(dim_t, dim_t),
        )
        self.proj = nn.Linear(d_in, dim_t)
        self.input_layer = nn.Linear(dim_t, width)
        self.norms = nn.ModuleList(
            nn.LayerNorm(width) if layer_norm else nn.Identity() for _ in range(depth)
        )
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width) if layer_norm else nn.Identity()
        self.output_layer = nn.Linear(width, d_in)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(self.proj(x) + self.time_mlp(c_noise))
        for norm, block in zip(self.norms, self.blocks, strict=True):
            h = h + block(F.relu(norm(h)))
        return self.output_layer(F.relu(self.final_norm(h)))


class _TimestepGroupNorm(nn.Module):
    """GroupNorm over the channels of each time step (Flax on PGD's unbatched sequences) or over the sequence."""

    def __init__(self, groups: int, channels: int, per_timestep: bool) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.per_timestep = per_timestep

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, L)
        if not self.per_timestep:
            return self.norm(x)
        b, c, length = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * length, c))
        return y.reshape(b, length, c).transpose(1, 2)


class _ConvBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel: int, time_dim: int | None, norm: Callable
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(cin, cout, kernel, padding="same" if kernel % 2 else 0)
        self.time = nn.Linear(time_dim, cout) if time_dim is not None else None
        self.norm = norm(cout)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.kernel % 2 == 0:  # 'SAME' for an even kernel pads (0, k - 1), as Flax does
            x = F.pad(x, (0, self.kernel - 1))
        x = self.conv(x)
        if self.time is not None:
            x = x + self.time(t).unsqueeze(-1)
        return F.relu(self.norm(x))


class TemporalUNet(nn.Module):
    """PGD's 1-D U-Net F on (B, L, C) windows: encoder blocks of width features * 2^i with max-pooling,
    decoder blocks with nearest upsampling and skip concatenation, sinusoidal time embedding."""

    def __init__(
        self,
        channels: int,
        features: int = 1024,
        num_blocks: int = 3,
        groups: int = 8,
        groupnorm: Literal["per-timestep", "per-sequence"] = "per-timestep",
    ) -> None:
        super().__init__()
        if features % 8 or features // 8 < 2:
            raise ValueError(f"TemporalUNet: features={features} must be a multiple of 8, >= 16")
        per_timestep = groupnorm == "per-timestep"

        def norm(c: int) -> nn.Module:
            return _TimestepGroupNorm(groups, c, per_timestep)

        half = features // 8
        self.register_buffer(
            "freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(2 * half, features), nn.SiLU(), nn.Linear(features, features)
        )
        widths = [features * 2**i for i in range(num_blocks)]
        self.encoder = nn.ModuleList()
        cin = channels
        for w in widths:
            self.encoder.append(
                nn.ModuleList(
                    [_ConvBlock(cin, w, 3, features, norm), _ConvBlock(w, w, 3, None, norm)]
                )
            )
            cin = w
        self.decoder = nn.ModuleList()
        for i in range(num_blocks - 2, -1, -1):
            w = widths[i]
            self.decoder.append(
                nn.ModuleList(
                    [
                        _ConvBlock(cin, w, 2, features, norm),
                        _ConvBlock(2 * w, w, 3, None, norm),
                        _ConvBlock(w, w, 3, None, norm),
                    ]
                )
            )
            cin = w
        self.output = nn.Conv1d(cin, channels, 1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        args = c_noise.reshape(-1, 1) * self.freqs.view(1, -1)
        t = F.silu(self.time_mlp(torch.cat([args.sin(), args.cos()], dim=-1)))
        h = x.transpose(1, 2)  # (B, C, L) for Conv1d
        skips = []
        for i, (first, second) in enumerate(self.encoder):
            h = second(first(h, t))
            skips.append(h)
            if i < len(self.encoder) - 1:
                h = F.max_pool1d(h, 2)
        for (up, mix, out), skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-1], mode="nearest")
            h = mix(torch.cat([up(h, t), skip], dim=1))
            h = out(h)
        return self.output(h).transpose(1, 2)
