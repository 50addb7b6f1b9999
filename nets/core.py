"""MLPs, critic ensembles evaluated in one batched matmul, deterministic / Gaussian / tanh-Gaussian actors, the optimiser step."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ocrl.nets.flat import pack_parameters, packed


def uses_bf16(precision: Literal["auto", "fp32", "bf16"], device: torch.device | str) -> bool:
    """Whether `precision` runs the matmuls in bf16 on `device`: 'bf16' yes, 'fp32' no, 'auto' on CUDA only."""
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def autocast(
    precision: Literal["auto", "fp32", "bf16"], device: torch.device | str
) -> contextlib.AbstractContextManager:
    """bf16 autocast of the matmuls on `device` (CPU AMX/AVX512-BF16 or CUDA) when `uses_bf16`; else nothing."""
    if not uses_bf16(precision, device):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, torch.bfloat16)


def full_precision(layer, x: torch.Tensor, *args) -> torch.Tensor:
    """`layer(x, *args)` in fp32 even under autocast: an output head (Q-values, means, log-stds) keeps fp32's
    digits, which bf16 (3 significant) would lose, for the cost of one narrow matmul."""
    if not torch.is_autocast_enabled(x.device.type):
        return layer(x, *args)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float(), *args)


class SeedLinear(nn.Module):
    """`num_seeds` independent nn.Linear layers, (N, B, in) -> (N, B, out) as one batched matmul; seed k's weight (out, in)
    and bias (out,) are an nn.Linear's."""

    def __init__(self, in_dim: int, out_dim: int, num_seeds: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(num_seeds, out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(num_seeds, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One output column as a product and a sum: a batched matmul's digits for it depend on N.
        if self.out_dim == 1:
            return (x * self.weight).sum(-1, keepdim=True) + self.bias.unsqueeze(1)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, seeds={self.weight.shape[0]}"


class MLP(nn.Sequential):
    """Linear layers with an activation between them and optional LayerNorm before each activation; the last
    linear layer runs in fp32 under autocast unless `fp32_head` is off (a trunk whose output feeds more layers);
    with `num_seeds` every linear layer is a SeedLinear, (N, B, in) -> (N, B, out)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: type[nn.Module] = nn.ReLU,
        layer_norm: bool = False,
        output_activation: type[nn.Module] | None = None,
        fp32_head: bool = True,
        num_seeds: int | None = None,
    ) -> None:
        if num_seeds is not None and layer_norm:
            raise ValueError("MLP: a seed-stacked MLP has no LayerNorm")

        def linear(i: int, o: int) -> nn.Module:
            return nn.Linear(i, o) if num_seeds is None else SeedLinear(i, o, num_seeds)

        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(linear(width, h))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            # In place where possible: the pre-activation is not needed for the backward pass.
            layers.append(activation(inplace=True) if activation is nn.ReLU else activation())
            width = h
        layers.append(linear(width, out_dim))
        head_index = len(layers) - 1 if fp32_head else -1
        if output_activation is not None:
            layers.append(output_activation())
        super().__init__(*layers)
        self.head_index = head_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self):
            x = full_precision(layer, x) if i == self.head_index else layer(x)
        return x


def orthogonal_init(mlp: MLP, head_gain: float) -> MLP:
    """CleanRL's initialisation: orthogonal weights (gain sqrt 2, the last layer head_gain), zero biases."""
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    for layer in linears:
        gain = head_gain if layer is linears[-1] else math.sqrt(2)
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return mlp


def xavier_init(mlp: nn.Sequential) -> nn.Sequential:
    """Xavier-uniform weights (each ensemble member's on its own) and zero biases on every linear layer."""
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, EnsembleLinear):
            # Flax's xavier_uniform of each member's (in, out) kernel.
            bound = math.sqrt(6.0 / (layer.in_dim + layer.out_dim))
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.zeros_(layer.bias)
    return mlp


class EnsembleLinear(nn.Module):
    """`num_members` independent linear layers applied as one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, in_dim: int, out_dim: int, num_members: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.num_members = in_dim, out_dim, num_members
        self.weight = nn.Parameter(torch.empty(num_members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(num_members, 1, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same distribution as nn.Linear's default, drawn independently for every member.
        bound = 1.0 / math.sqrt(self.in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 2-D input is shared by all members: expand is a view, not E copies. baddbmm fuses the bias add.
        if x.dim() == 2:
            x = x.expand(self.num_members, *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)

    def forward_member(self, x: torch.Tensor, index: int | slice) -> torch.Tensor:
        """Apply member `index` alone to a (B, in) input, or the members of a slice to a (k, B, in) input (for
        out_dim 1 as a product and a sum, whose digits, unlike a batched matmul's, do not depend on k)."""
        if isinstance(index, slice) and self.out_dim == 1:
            return (x * self.weight[index].transpose(1, 2)).sum(-1, keepdim=True) + self.bias[index]
        if isinstance(index, slice):
            return torch.baddbmm(self.bias[index], x, self.weight[index])
        return torch.addmm(self.bias[index], x, self.weight[index])

    def forward_members(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Apply the members `index` (k,) alone to a (k, B, in) input: (k, B, out), their weights gathered."""
        return torch.baddbmm(self.bias[index], x, self.weight[index])

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, out={self.out_dim}, members={self.num_members}"


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the feature axis with a separate affine transform per ensemble member."""

    def __init__(self, dim: int, num_members: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias

    def forward_member(self, x: torch.Tensor, index: int | slice) -> torch.Tensor:
        """Normalise with member `index`'s affine transform alone (a slice: those members' on a (k, B, dim) input)."""
        if isinstance(index, slice):
            return (
                F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight[index] + self.bias[index]
            )
        return F.layer_norm(x, x.shape[-1:], self.weight[index, 0], self.bias[index, 0], self.eps)

    def forward_members(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Normalise a (k, B, dim) input with the affine transforms of the members `index` (k,)."""
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight[index] + self.bias[index]


class CriticEnsemble(nn.Module):
    """E independent Q(s, a) MLPs computed together; `forward` returns Q-values of shape (E, B) (with out_dim > 1: (E, B, out_dim)),
    the output layer in fp32 under autocast. With `num_seeds` N, E critics per seed (E N members, member-major):
    (N, B, ·) inputs give (E, N, B) Q-values."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        num_critics: int = 2,
        layer_norm: bool = False,
        activation: type[nn.Module] = nn.ReLU,
        layer_norm_eps: float = 1e-5,
        out_dim: int = 1,
        num_seeds: int | None = None,
    ) -> None:
        super().__init__()
        self.num_critics, self.num_seeds = num_critics, num_seeds
        members = num_critics * (num_seeds or 1)
        layers: list[nn.Module] = []
        width = obs_dim + act_dim
        for h in hidden:
            layers.append(EnsembleLinear(width, h, members))
            if layer_norm:
                layers.append(EnsembleLayerNorm(h, members, layer_norm_eps))
            layers.append(activation(inplace=True) if activation is nn.ReLU else activation())
            width = h
        layers.append(EnsembleLinear(width, out_dim, members))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        *body, head = self.net
        x = torch.cat([obs, action], dim=-1)
        if (
            self.num_seeds is not None
        ):  # (N, B, d) -> every critic of every seed, member-major: (E N, B, d)
            x = x.repeat(self.num_critics, 1, 1)
        for layer in body:
            x = layer(x)
        q = full_precision(head, x).squeeze(-1)
        return q if self.num_seeds is None else q.unflatten(0, (self.num_critics, self.num_seeds))

    def member(self, obs: torch.Tensor, action: torch.Tensor, index: int = 0) -> torch.Tensor:
        """Q-values (B,) of one member only, e.g. TD3's Q1 in the actor loss, without computing the others (with
        seeds: member `index` of every seed, (N, B))."""
        *body, head = self.net
        x = torch.cat([obs, action], dim=-1)
        if self.num_seeds is not None:
            index = slice(index * self.num_seeds, (index + 1) * self.num_seeds)
        for layer in body:
            if isinstance(layer, (EnsembleLinear, EnsembleLayerNorm)):
                x = layer.forward_member(x, index)
            else:
                x = layer(x)
        return full_precision(head.forward_member, x, index).squeeze(-1)

    def members(self, obs: torch.Tensor, action: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Q-values (k, B) of the members `index` (k,) only, e.g. a random REDQ/RLPD subset of the critics."""
        *body, head = self.net
        x = torch.cat([obs, action], dim=-1).expand(index.numel(), -1, -1)
        for layer in body:
            if isinstance(layer, (EnsembleLinear, EnsembleLayerNorm)):
                x = layer.forward_members(x, index)
            else:
                x = layer(x)
        return full_precision(head.forward_members, x, index).squeeze(-1)


def _action_bounds(
    act_dim: int,
    low: float | Sequence[float] | torch.Tensor,
    high: float | Sequence[float] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    low_t = torch.as_tensor(low, dtype=torch.float32).expand(act_dim)
    high_t = torch.as_tensor(high, dtype=torch.float32).expand(act_dim)
    if not torch.all(high_t > low_t):
        raise ValueError(f"action bounds must satisfy high > low, got low={low_t}, high={high_t}")
    return (high_t - low_t) / 2.0, (high_t + low_t) / 2.0


class DeterministicActor(nn.Module):
    """s -> MLP -> tanh, rescaled to the action bounds (TD3's actor); with `num_seeds`, (N, B, obs) -> (N, B, act)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        action_low: float | Sequence[float] = -1.0,
        action_high: float | Sequence[float] = 1.0,
        layer_norm: bool = False,
        num_seeds: int | None = None,
    ) -> None:
        super().__init__()
        self.net = MLP(obs_dim, act_dim, hidden, layer_norm=layer_norm, num_seeds=num_seeds)
        scale, bias = _action_bounds(act_dim, action_low, action_high)
        self.register_buffer("action_scale", scale)
        self.register_buffer("action_bias", bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.action_scale + self.action_bias

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The action used at evaluation time."""
        return self(obs)


class GaussianActor(DeterministicActor):
    """Normal(DeterministicActor(s), exp(clip(log_std, -20, 2))) with one state-independent log-std vector (PGD's
    IQL actor); `log_prob` is the density of the squashed action itself, without a tanh Jacobian."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        action_low: float | Sequence[float] = -1.0,
        action_high: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__(obs_dim, act_dim, hidden, action_low, action_high)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """sum_j log Normal(a_j; mean_j(s), std_j) over the last axis (the leading axes are kept)."""
        log_std = self.log_std.clamp(-20.0, 2.0)
        z = (actions - self(obs)) / log_std.exp()
        return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class TanhGaussianActor(nn.Module):
    """Squashed Gaussian policy (SAC): returns a sampled action, its log-probability and the mean action; `activation` is the trunk's (SB3's zoo SAC: Tanh).
    Mean and log-std heads run in fp32 under autocast, so the log-probability does too. `noise` (the standard normal
    draws, shaped as the action) replaces torch's global generator; with `num_seeds`, (N, B, obs) -> (N, B, act)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        action_low: float | Sequence[float] = -1.0,
        action_high: float | Sequence[float] = 1.0,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        activation: type[nn.Module] = nn.ReLU,
        num_seeds: int | None = None,
    ) -> None:
        super().__init__()
        self.trunk = MLP(
            obs_dim,
            hidden[-1],
            hidden[:-1],
            activation,
            output_activation=activation,
            fp32_head=False,
            num_seeds=num_seeds,
        )
        head = nn.Linear if num_seeds is None else partial(SeedLinear, num_seeds=num_seeds)
        self.mean = head(hidden[-1], act_dim)
        self.log_std = head(hidden[-1], act_dim)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        scale, bias = _action_bounds(act_dim, action_low, action_high)
        self.register_buffer("action_scale", scale)
        self.register_buffer("action_bias", bias)

    def forward(
        self, obs: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        mean = full_precision(self.mean, h)
        # tanh keeps log-std in range with a smooth gradient (CleanRL's parameterisation).
        log_std = torch.tanh(full_precision(self.log_std, h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        std = log_std.exp()
        pre_tanh = mean + std * (torch.randn_like(mean) if noise is None else noise)
        gauss_log_prob = (
            -0.5 * ((pre_tanh - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        ).sum(-1)
        # log(1 - tanh(x)^2) in a form that stays finite for large |x|.
        log_det = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        log_prob = gauss_log_prob - log_det - torch.log(self.action_scale).sum()
        return self._squash(pre_tanh), log_prob, self._squash(mean)

    def _squash(self, pre_tanh: torch.Tensor) -> torch.Tensor:
        return torch.tanh(pre_tanh) * self.action_scale + self.action_bias

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic (mean) action used at evaluation time (no draw)."""
        return self._squash(full_precision(self.mean, self.trunk(obs)))


class TanhNormalPolicy(nn.Module):
    """RLPD's TanhNormal: MLP (Dense, Dropout, ReLU) -> mean and log-std heads, log-std clipped to [-20, 2];
    returns (scale * tanh(u), log-probability of it, scale * tanh(mean)). Xavier-uniform init, zero biases."""

    def __init__(
        self,
        in_dim: int,
        act_dim: int,
        hidden: tuple[int, ...],
        scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = (in_dim, *hidden)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.mean = nn.Linear(widths[-1], act_dim)
        self.log_std = nn.Linear(widths[-1], act_dim)
        for layer in [*self.layers, self.mean, self.log_std]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.scale, self.dropout = scale, dropout

    def forward(
        self, x: torch.Tensor, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            x = F.relu(F.dropout(layer(x), self.dropout, training=train and self.dropout > 0))
        mean = full_precision(self.mean, x)
        log_std = full_precision(self.log_std, x).clamp(-20.0, 2.0)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        # log N(u; mean, std) from the noise itself: (u - mean) / std would lose digits when std << |mean|.
        gauss = (-0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log(1 - tanh(u)^2), finite for large |u|; then the scale's change of variables.
        log_det = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        log_prob = gauss - log_det - u.shape[-1] * math.log(self.scale)
        return self.scale * torch.tanh(u), log_prob, self.scale * torch.tanh(mean)


# Eager under torch.compile (--compile): inductor fails on `packed`'s storage views (torch 2.13); it is one lerp.
@torch.compiler.disable
@torch.no_grad()
def polyak_update(
    target: Iterable[torch.Tensor], online: Iterable[torch.Tensor], tau: float
) -> None:
    """target <- (1 - tau) * target + tau * online: one operation when `online` is packed in one buffer (`FlatAdam`),
    whose layout the target then takes, else fused over all tensors."""
    target, online = list(target), list(online)
    online_buffer = packed(online)
    if online_buffer is None or [t.shape for t in target] != [o.shape for o in online]:
        torch._foreach_lerp_(target, online, tau)
        return
    pack_parameters(target).lerp_(online_buffer, tau)


def gradient_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    own_only: bool = False,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """Backpropagate `loss` and step `optimizer`, then `scheduler`; `own_only` computes the gradients of the
    optimizer's parameters only (an actor loss through the critics leaves their weights' gradients alone)."""
    if own_only:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
    else:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def compile_with_cuda_graphs(fn: Callable, device: torch.device | str) -> Callable:
    """torch.compile(fn), in reduce-overhead mode on CUDA: its CUDA graphs replay a call's many small kernel
    launches (e.g. a T-step diffusion chain) as one."""
    return torch.compile(
        fn, mode="reduce-overhead" if torch.device(device).type == "cuda" else None
    )
