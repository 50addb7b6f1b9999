"""Running mean and variance of a stream of batches, and the observation normaliser built on them (on-policy algorithms)."""

from __future__ import annotations

import numpy as np
import torch


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al.'s parallel update, gymnasium's initial count 1e-4)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.as_tensor(self.mean), "var": torch.as_tensor(self.var),
            "count": torch.tensor(self.count, dtype=torch.float64),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean, self.var = state["mean"].numpy().copy(), state["var"].numpy().copy()
        self.count = float(state["count"])


class ObservationNormalizer(RunningMeanStd):
    """Observations standardised by their running mean and variance, then clipped to +-clip (gymnasium's
    NormalizeObservation, float32 out); when not `enabled`, only cast to float32."""

    def __init__(self, shape: tuple[int, ...], enabled: bool = True, clip: float = 10.0) -> None:
        super().__init__(shape)
        self.enabled, self.clip = enabled, clip

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        """Standardise a batch (float64 in), with `update` first folding it into the statistics."""
        if not self.enabled:
            return obs.astype(np.float32)
        if update:
            self.update(obs)
        x = (obs - self.mean) / np.sqrt(self.var + 1e-8)
        return np.clip(x, -self.clip, self.clip).astype(np.float32)
