"""The DDPM/VP chain of diffusion policies (EXPO's base policy, IDQL's DDPM): epsilon-prediction over actions
conditioned on the state, T small (10), the VP beta schedule, an ancestral sampler that clips to [-1, 1] after
every step, IDQL's LN-ResNet epsilon-network, and the optimisation of such a policy by imitation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ocrl.nets.core import full_precision
from ocrl.nets.diffusion_training import EMA, lr_factor


def vp_beta_schedule(steps: int, b_min: float = 0.1, b_max: float = 10.0) -> torch.Tensor:
    """beta_t = 1 - exp(-b_min / T - (b_max - b_min)(2t - 1) / (2 T^2)) for t = 1..T, float32 (T,)."""
    if steps < 1:
        raise ValueError(f"vp_beta_schedule: steps={steps} must be >= 1")
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    alpha = torch.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
    return (1.0 - alpha).to(torch.float32)


class LearnedFourierTime(nn.Module):
    """[cos(2 pi t W^T), sin(2 pi t W^T)] with a learnable W in R^{dim/2 x 1} ~ N(0, 0.2^2) (IDQL's time features);
    the phases in fp32 under autocast (bf16 keeps a phase near 30 only to the nearest 0.125 rad)."""

    def __init__(self, dim: int = 128, std: float = 0.2) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"LearnedFourierTime: dim={dim} must be even")
        self.kernel = nn.Parameter(torch.randn(dim // 2, 1) * std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = full_precision(torch.matmul, 2 * math.pi * t.reshape(-1, 1), self.kernel.T)
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
    `blocks` LN-ResNet blocks, swish, Linear(A). Xavier init on the trunk, Flax's lecun-normal inside the blocks.
    Under autocast the time phases and the output layer (the predicted noise) run in fp32."""

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
        # The final swish is IDQL's (CleanDiffuser#26).
        return full_precision(self.output, F.silu(h))


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
        x = _randn(batch, act_dim, device=obs.device, generator=generator)
        for t in range(self.steps - 1, -1, -1):
            time = torch.full((batch, 1), float(t), device=obs.device)
            eps = self.eps_net(x, obs, time)
            coef = (1.0 - self.alphas[t]) / (1.0 - self.alpha_hats[t]).sqrt()
            x = (x - coef * eps) / self.alphas[t].sqrt()
            # z is drawn at t = 0 too and multiplied by 0 there, as the original's scan does.
            z = _randn(batch, act_dim, device=obs.device, generator=generator)
            if t > 0:
                x = x + self.betas[t].sqrt() * self.temperature * z
            if self.clip:
                x = x.clamp(-1.0, 1.0)
        return x.clamp(-1.0, 1.0)


def imitation_training(
    model: DDPM, lr: float, weight_decay: float, decay_steps: int, ema_rate: float
) -> tuple[EMA, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """(EMA, optimiser, lr schedule) of a DDPM policy trained by imitation (EXPO's, IDQL's): an EMA of its weights
    (decay 1 - ema_rate at every update), AdamW, and the lr cosine-decayed to 0 over `decay_steps` updates."""
    ema = EMA(model, beta=1 - ema_rate, update_every=1, warmup="plain")
    optimizer = torch.optim.AdamW(model.parameters(), lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("cosine", decay_steps))
    return ema, optimizer, schedule


def _randn(*size: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    # torch.compile with a dynamic batch size (EXPO's --compile acts at batch 1 and backs up at 256) fails in
    # randn's generator overload, which takes no symbolic sizes: pass a generator only when there is one.
    if generator is None:
        return torch.randn(*size, device=device)
    return torch.randn(*size, device=device, generator=generator)
