"""An EDM model of offline data, trained, saved, loaded and sampled one way (algos/diffusion.py and algos/pgd.py).

This is numerical machinery of the generative family, not a method: the training step of EDM's loss (AdamW under
an lr schedule, optional gradient clipping, an EMA of the weights), the model file (`MODEL_FORMAT`: the EMA
network, its constructor, the normaliser and the row layout) and batched sampling with the stochastic Heun
sampler. What the samples are for (a dataset file, PGD's guided regeneration) stays in the algorithm files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from ocrl.nets.diffusion_training import EMA, DiffusionNormalizer, lr_factor
from ocrl.nets.edm import (
    EDMConfig,
    EDMDenoiser,
    PreStepHook,
    ResidualMLPDenoiser,
    TemporalUNet,
    heun_sample,
)


class EDMTrainer:
    """EDM's denoiser training: AdamW (no weight decay) under an lr schedule, the gradient norm clipped at
    `grad_clip` (0 = none) and an EMA of the weights (what is sampled and saved); checkpoint parts as attributes."""

    def __init__(
        self,
        network: nn.Module,
        *,
        lr: float,
        total_steps: int,
        adam_beta2: float = 0.99,
        lr_schedule: str = "cosine",
        grad_clip: float = 1.0,
        ema_decay: float = 0.995,
        ema_every: int = 10,
        ema_warmup: Literal["ema_pytorch", "plain"] = "ema_pytorch",
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.denoiser = EDMDenoiser(network, EDMConfig(), autocast_dtype=autocast_dtype)
        self.optimizer = torch.optim.AdamW(
            network.parameters(), lr=lr, betas=(0.9, adam_beta2), weight_decay=0.0
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(lr_schedule, total_steps)
        )
        self.ema = EMA(network, ema_decay, ema_every, ema_warmup)
        self.grad_clip = grad_clip

    def update(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step of EDM's loss on a batch of normalised data; then the lr schedule and the EMA."""
        loss = self.denoiser.loss(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.denoiser.net.parameters()
        if self.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in params if p.grad is not None]
            )
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update()
        return {"denoiser_loss": loss.detach(), "diffusion/grad_norm": grad_norm}

    def fit(
        self, data: torch.Tensor, steps: int, batch_size: int, log_every: int,
        on_log: Callable[[int, float], None], progress: bool = True, desc: str = "denoiser",
    ) -> None:  # fmt: skip
        """`steps` updates on batches of `data` drawn with replacement; `on_log(step, mean loss)` every `log_every` steps and at the last."""
        losses = []
        bar = tqdm(range(steps), desc=desc, disable=not progress)
        for step in bar:
            batch = data[torch.randint(len(data), (batch_size,), device=data.device)]
            losses.append(self.update(batch)["denoiser_loss"])
            if (step + 1) % log_every == 0 or step + 1 == steps:
                mean_loss = torch.stack(losses).mean().item()  # the only host read per interval
                on_log(step + 1, mean_loss)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                losses.clear()

    def ema_denoiser(self) -> EDMDenoiser:
        """The denoiser on the EMA weights (the one to sample from)."""
        return EDMDenoiser(self.ema.ema_model, self.denoiser.config, self.denoiser.autocast_dtype)


def bf16_autocast(bf16: bool) -> torch.dtype | None:
    """The denoiser's autocast dtype: bf16 when asked (CUDA, or a CPU with AMX/AVX512-BF16), else none (fp32);
    `nets.uses_bf16` turns a --precision and a device into `bf16`."""
    return torch.bfloat16 if bf16 else None


def build_network(kind: str, kwargs: dict[str, Any]) -> nn.Module:
    """The denoiser network F named by `kind` ('resmlp' or 'unet') with its constructor arguments."""
    if kind == "resmlp":
        return ResidualMLPDenoiser(**kwargs)
    if kind == "unet":
        return TemporalUNet(**kwargs)
    raise ValueError(f"unknown denoiser network '{kind}': expected 'resmlp' or 'unet'")


def fit_model(
    rows: torch.Tensor, network: str, network_kwargs: dict[str, Any], device: torch.device, *,
    steps: int, batch_size: int, log_every: int, on_log: Callable[[int, float], None],
    seed: int | None = None, progress: bool = True, desc: str = "denoiser", **trainer_kwargs: Any,
) -> tuple[EDMTrainer, DiffusionNormalizer]:  # fmt: skip
    """A new `network` fitted to `rows` z-scored (every channel) with `steps` EDMTrainer updates (`fit`); with
    `seed`, its initial weights and batches come from their own stream, leaving the caller's untouched."""
    normalizer = DiffusionNormalizer.fit(rows).to(device)
    data = normalizer.normalize(rows.to(device))
    with torch.random.fork_rng(
        devices=[device] if device.type == "cuda" else [], enabled=seed is not None
    ):
        if seed is not None:
            torch.manual_seed(seed)
        trainer = EDMTrainer(build_network(network, network_kwargs).to(device), **trainer_kwargs)
        trainer.fit(data, steps, batch_size, log_every, on_log, progress, desc)
    return trainer, normalizer


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


@dataclass
class DiffusionModel:
    """A loaded model file: the EMA denoiser, its normaliser and the row layout; `level` 'trajectory' is windows
    of `trajectory_length` rows [s, arctanh a, r, done], 'transition' rows [s, a, r, s', terminal]."""

    denoiser: EDMDenoiser
    normalizer: DiffusionNormalizer
    obs_dim: int
    act_dim: int
    trajectory_length: int | None
    level: str = "trajectory"

    @property
    def channels(self) -> int:
        """Dimensions of one generated row."""
        return self.normalizer.mean.numel()

    @classmethod
    def from_state(
        cls, state: dict[str, Any], device: torch.device | str, autocast_dtype: torch.dtype | None
    ) -> DiffusionModel:
        """The model of a model.pt dict; ValueError, KeyError or TypeError naming what is wrong."""
        denoiser, normalizer = denoiser_from_state(state, device, autocast_dtype)
        level = state["level"]
        # A trajectory model samples windows of its training length; a transition model may not record one.
        length = (
            state["trajectory_length"] if level == "trajectory" else state.get("trajectory_length")
        )
        return cls(
            denoiser, normalizer, int(state["obs_dim"]), int(state["act_dim"]),
            None if length is None else int(length), level,
        )  # fmt: skip

    @classmethod
    def load(
        cls, path: str | Path, device: torch.device | str, autocast_dtype: torch.dtype | None = None,
        level: str | None = None, dims: tuple[int, int] | None = None,
    ) -> DiffusionModel:  # fmt: skip
        """The model of a model.pt file, of `level` and (obs_dim, act_dim) `dims` when given;
        FileNotFoundError, or ValueError naming what is wrong."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated or foreign files
            raise ValueError(
                f"not a diffusion model file (unreadable: {type(e).__name__})"
            ) from None
        if not isinstance(state, dict):
            raise ValueError("not a diffusion model file")
        if level is not None and state.get("level") != level:
            raise ValueError(f"not a {level} diffusion model (level {state.get('level')!r})")
        try:
            model = cls.from_state(state, device, autocast_dtype)
        except (KeyError, TypeError) as e:
            raise ValueError(f"the file is damaged ({type(e).__name__}: {e})") from e
        if dims is not None and (model.obs_dim, model.act_dim) != tuple(dims):
            raise ValueError(
                f"trained on obs/act dims {model.obs_dim}/{model.act_dim}, the data has {dims[0]}/{dims[1]}"
            )
        return model

    def sample(
        self, sizes: Iterable[int], steps: int, rows: int | None = None, *,
        device: torch.device | str, generator: torch.Generator | None = None,
        pre_step: PreStepHook | None = None, euler_origin: Literal["x_hat", "x_i"] = "x_hat",
        churn: bool = True, denoiser: nn.Module | None = None,
    ) -> Iterator[torch.Tensor]:  # fmt: skip
        """Un-normalised samples, one batch per entry of `sizes`: (n, channels) rows, or (n, rows, channels)
        windows when `rows` is given; `denoiser` replaces the model's network call (e.g. a compiled one)."""
        net = self.denoiser if denoiser is None else denoiser
        for n in sizes:
            shape = (n, self.channels) if rows is None else (n, rows, self.channels)
            x = heun_sample(
                net, shape, steps, self.denoiser.config, device=device, generator=generator,
                pre_step=pre_step, euler_origin=euler_origin, churn=churn,
            )  # fmt: skip
            yield self.normalizer.unnormalize(x)

    def sample_n(
        self, n: int, batch_size: int, steps: int, rows: int | None = None, *,
        device: torch.device | str, **sample_kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        """`n` un-normalised samples drawn `batch_size` at a time (`sample`'s keywords), concatenated."""
        sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
        return torch.cat(list(self.sample(sizes, steps, rows, device=device, **sample_kwargs)))
