"""Training utilities of the diffusion models (EDM and DDPM): a per-dimension normaliser of the data, an EMA of
a network's weights (ema_pytorch's warm-up or plain) and the learning-rate schedules."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn


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
