"""EDM diffusion (Karras et al. 2022): preconditioning, loss, sigma schedule, stochastic Heun sampler, denoisers, EMA;
and the DDPM/VP chain of diffusion policies (EXPO's base policy: VP betas, epsilon-loss, clipped sampler, LN-ResNet).

The denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) wraps a network F: the residual MLP of SynthER
(transitions) or the 1-D temporal U-Net of policy-guided diffusion (trajectory windows). The sigma maths always
runs in float32; only F may run under bf16 autocast (`EDMDenoiser(autocast_dtype=torch.bfloat16)`, CUDA).
The sampler precomputes sigma and gamma once as device tensors and never reads a tensor on the host, so a CUDA
run does not synchronise inside the loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

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


# ------------------------------------------------------------------------------- normaliser and EMA
class DiffusionNormalizer(nn.Module):
    """Per-dimension z-score (x - mean) / (std + eps); `skip` dimensions pass through (mean 0, std 1), and a
    constant dimension gets std 1."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.to(torch.float32).clone())
        self.register_buffer("std", std.to(torch.float32).clone())

    @classmethod
    def fit(
        cls, data: torch.Tensor, skip: tuple[int, ...] = (), eps: float = 1e-5
    ) -> DiffusionNormalizer:
        """Statistics over every leading axis of `data` (rows, or windows x time steps); last axis = dimensions."""
        flat = data.reshape(-1, data.shape[-1]).to(torch.float64)
        mean = flat.mean(dim=0)
        std = flat.std(dim=0)
        std = torch.where(std > 0, std + eps, torch.ones_like(std))
        if skip:
            mean[list(skip)] = 0.0
            std[list(skip)] = 1.0
        return cls(mean, std)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class EMA:
    """An exponential moving average of a module's weights, updated every `update_every` calls.

    "ema_pytorch" (SynthER, the default): the first call and every update up to `update_after_step` copy the
    weights; later updates use decay min(beta, 1 - (1 + e)^(-2/3)), e = calls - update_after_step - 1.
    "plain": decay `beta` from the first update (PGD's 0.995 every 10 steps).
    """

    def __init__(
        self,
        model: nn.Module,
        beta: float = 0.995,
        update_every: int = 10,
        warmup: Literal["ema_pytorch", "plain"] = "ema_pytorch",
        update_after_step: int = 100,
        power: float = 2.0 / 3.0,
    ) -> None:
        self.model = model
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.beta, self.update_every, self.warmup = beta, update_every, warmup
        self.update_after_step, self.power = update_after_step, power
        self.calls = 0

    def decay(self, calls: int) -> float:
        """The decay used by the update on call number `calls` (0-based); 0.0 means a copy."""
        if self.warmup == "plain":
            return self.beta
        if calls <= self.update_after_step:
            return 0.0
        epoch = calls - self.update_after_step
        return min(self.beta, 1.0 - (1.0 + epoch) ** -self.power)

    @torch.no_grad()
    def update(self) -> None:
        """Call once per optimiser step."""
        calls = self.calls
        self.calls += 1
        if calls != 0 and calls % self.update_every != 0:
            return
        decay = self.decay(calls)
        pairs = zip(self.ema_model.parameters(), self.model.parameters(), strict=True)
        for target, value in pairs:
            if decay == 0.0:
                target.copy_(value)
            else:
                target.lerp_(value, 1.0 - decay)
        for target, value in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
            target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"ema_model": self.ema_model.state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema_model.load_state_dict(state["ema_model"])
        self.calls = int(state["calls"])


# ------------------------------------------------------------------------------------------- training
def lr_factor(schedule: str, total: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at step s: 'cosine' to 0 (SynthER), 'warmup-cosine' (PGD: 10% linear warm-up
    from 0.1, then cosine to 0) or 'constant'; a LambdaLR lambda."""

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        warmup = max(1, total // 10)
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return 0.5 * (
            1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup))
        )

    return factor


# --------------------------------------------------------------------------- a saved generative model
def build_network(kind: str, kwargs: dict[str, Any]) -> nn.Module:
    """The denoiser network F named by `kind` ('resmlp' or 'unet') with its constructor arguments."""
    if kind == "resmlp":
        return ResidualMLPDenoiser(**kwargs)
    if kind == "unet":
        return TemporalUNet(**kwargs)
    raise ValueError(f"unknown denoiser network '{kind}': expected 'resmlp' or 'unet'")


#: The "format" of the model.pt that algos/diffusion.py writes (and algos/pgd.py reads).
MODEL_FORMAT = "ocrl-diffusion-1"


def model_state(
    network: str, network_kwargs: dict[str, Any], ema: EMA, normalizer: DiffusionNormalizer,
    level: str, obs_dim: int, act_dim: int, **meta: Any,
) -> dict[str, Any]:  # fmt: skip
    """The model.pt dict (format MODEL_FORMAT) of an EMA network, its constructor, normaliser and row layout."""
    return {
        "format": MODEL_FORMAT,
        "network": network,
        "network_kwargs": network_kwargs,
        "ema": ema.ema_model.state_dict(),
        "normalizer": normalizer.state_dict(),
        "level": level,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        **meta,
    }


def denoiser_from_state(
    state: dict[str, Any], device: torch.device | str, autocast_dtype: torch.dtype | None = None
) -> tuple[EDMDenoiser, DiffusionNormalizer]:
    """The EMA denoiser (eval, frozen) and normaliser of a model.pt dict; ValueError naming what is wrong."""
    if state.get("format") != MODEL_FORMAT:
        raise ValueError(f"not a diffusion model file (no format '{MODEL_FORMAT}')")
    try:
        # Loading draws no random numbers from the caller's stream.
        with torch.random.fork_rng(devices=[]):
            network = build_network(state["network"], state["network_kwargs"])
        network.load_state_dict(state["ema"])
        normalizer = DiffusionNormalizer(state["normalizer"]["mean"], state["normalizer"]["std"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"the file is damaged ({type(e).__name__}: {e})") from e
    network.to(device).eval().requires_grad_(False)
    return EDMDenoiser(network, EDMConfig(), autocast_dtype), normalizer.to(device)


# ------------------------------------------------------------------ DDPM / VP chain for diffusion policies
# EXPO's base policy (IDQL's DDPM): epsilon-prediction over actions conditioned on the state, T small (10),
# the VP beta schedule, and an ancestral sampler that clips to [-1, 1] after every step.
def vp_beta_schedule(steps: int, b_min: float = 0.1, b_max: float = 10.0) -> torch.Tensor:
    """beta_t = 1 - exp(-b_min / T - (b_max - b_min)(2t - 1) / (2 T^2)) for t = 1..T, float32 (T,)."""
    if steps < 1:
        raise ValueError(f"vp_beta_schedule: steps={steps} must be >= 1")
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    alpha = torch.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
    return (1.0 - alpha).to(torch.float32)


class LearnedFourierTime(nn.Module):
    """[cos(2 pi t W^T), sin(2 pi t W^T)] with a learnable W in R^{dim/2 x 1} ~ N(0, 0.2^2) (IDQL's time features)."""

    def __init__(self, dim: int = 128, std: float = 0.2) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"LearnedFourierTime: dim={dim} must be even")
        self.kernel = nn.Parameter(torch.randn(dim // 2, 1) * std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t.reshape(-1, 1) @ self.kernel.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class LNResNetBlock(nn.Module):
    """h + Linear(w)(swish(Linear(4w)(LayerNorm(Dropout(h))))) (IDQL's MLPResNetBlock with LayerNorm)."""

    def __init__(self, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(F.silu(self.up(self.norm(self.dropout(h)))))


def _xavier_(layer: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _lecun_normal_(layer: nn.Linear) -> nn.Linear:
    # Flax's default Dense init: truncated normal with variance 1 / fan_in, zero bias.
    std = 1.0 / math.sqrt(layer.in_features) / 0.87962566103423978
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)
    return layer


class LNResNetEpsNet(nn.Module):
    """EXPO's epsilon-network eps(x_t, s, t): Fourier time -> MLP(2d, swish, 2d) cond; concat(x, s, cond) -> Linear(w),
    `blocks` LN-ResNet blocks, swish, Linear(A). Xavier init on the trunk, Flax's lecun-normal inside the blocks."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        width: int = 256,
        blocks: int = 3,
        time_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.time = LearnedFourierTime(time_dim)
        self.cond = nn.Sequential(
            _xavier_(nn.Linear(time_dim, 2 * time_dim)),
            nn.SiLU(),
            _xavier_(nn.Linear(2 * time_dim, 2 * time_dim)),
        )
        self.input = _xavier_(nn.Linear(act_dim + obs_dim + 2 * time_dim, width))
        self.blocks = nn.ModuleList(LNResNetBlock(width, dropout) for _ in range(blocks))
        for block in self.blocks:
            _lecun_normal_(block.up), _lecun_normal_(block.down)
        self.output = _xavier_(nn.Linear(width, act_dim))

    def forward(self, x: torch.Tensor, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = self.cond(self.time(t))
        h = self.input(torch.cat([x, obs, cond], dim=-1))
        for block in self.blocks:
            h = block(h)
        return self.output(F.silu(h))  # the final swish is IDQL's (CleanDiffuser#26)


class DDPM(nn.Module):
    """A state-conditioned DDPM over actions in [-1, 1]: VP-schedule buffers, the epsilon-loss and the clipped sampler."""

    def __init__(
        self,
        eps_net: nn.Module,
        act_dim: int,
        steps: int = 10,
        clip: bool = True,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.eps_net, self.act_dim, self.steps = eps_net, act_dim, steps
        self.clip, self.temperature = clip, temperature
        betas = vp_beta_schedule(steps)
        alphas = 1.0 - betas
        self.register_buffer("betas", betas)
        self.register_buffer("alphas", alphas)
        self.register_buffer("alpha_hats", torch.cumprod(alphas.double(), 0).float())

    def forward(self, x: torch.Tensor, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps_net(x, obs, t)

    def loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """E ||eps - eps(sqrt(ahat_t) a + sqrt(1 - ahat_t) eps, s, t)||^2: summed over dims, mean over the batch; t ~ U{0..T-1}."""
        return self.sample_losses(obs, actions, t, noise).mean()

    def sample_losses(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The epsilon-loss of each row (B,), summed over action dims (`loss` is their mean)."""
        batch = actions.shape[0]
        if t is None:
            t = torch.randint(0, self.steps, (batch,), device=actions.device)
        if noise is None:
            noise = torch.randn_like(actions)
        a_hat = self.alpha_hats[t].unsqueeze(1)
        noisy = a_hat.sqrt() * actions + (1.0 - a_hat).sqrt() * noise
        eps = self.eps_net(noisy, obs, t.to(actions.dtype).unsqueeze(1))
        return (eps - noise).square().sum(-1)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling from x_T ~ N(0, I), one action per row of `obs`; no host reads inside the loop."""
        batch, act_dim = obs.shape[0], self.act_dim
        x = torch.randn(batch, act_dim, device=obs.device, generator=generator)
        for t in range(self.steps - 1, -1, -1):
            time = torch.full((batch, 1), float(t), device=obs.device)
            eps = self.eps_net(x, obs, time)
            coef = (1.0 - self.alphas[t]) / (1.0 - self.alpha_hats[t]).sqrt()
            x = (x - coef * eps) / self.alphas[t].sqrt()
            # z is drawn at t = 0 too and multiplied by 0 there, as the original's scan does.
            z = torch.randn(batch, act_dim, device=obs.device, generator=generator)
            if t > 0:
                x = x + self.betas[t].sqrt() * self.temperature * z
            if self.clip:
                x = x.clamp(-1.0, 1.0)
        return x.clamp(-1.0, 1.0)
