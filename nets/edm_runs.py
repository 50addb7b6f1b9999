"""EDM model files in a run, one way for algos/diffusion.py and algos/pgd.py: their shared flag checks, loading
the model file a flag names (one-line errors), the trajectory model's flags, training PGD's trajectory model from a dataset into a model file,
and filling a synthetic set with a model's samples, each generation from its own seed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ocrl.data import OfflineDataset
from ocrl.data.replay import SyntheticSet
from ocrl.data.windows import trajectory_rows, trajectory_windows, windows_to_transitions
from ocrl.experiment import CheckpointError, Run, UsageError, check_finite, save_checkpoint
from ocrl.nets.edm_model import DiffusionModel, bf16_autocast, fit_model, model_state


@dataclass
class TrajectoryModelArgs:
    """The flags of PGD's trajectory model that algos/diffusion.py (--level trajectory) and algos/pgd.py
    (--diffusion-steps) train."""

    trajectory_length: int = 32
    """rows per trajectory window (PGD's repository default; its paper may have used 16)"""
    window_stride: int = 8
    """stride between training windows inside an episode"""
    unet_features: int = 1024
    """U-Net base width F (blocks of F, 2F, 4F channels; PGD's default, ~178M parameters)"""
    unet_blocks: int = 3
    """U-Net encoder blocks"""


def check_edm_flags(
    sample_steps: int, trajectory_length: int | None = None, unet_features: int | None = None
) -> None:
    """UsageError for a sampler of < 2 Heun steps, windows of < 2 rows or a U-Net width that is not a multiple
    of 8 of at least 16 (`None`: not checked)."""
    if sample_steps < 2:
        raise UsageError(f"--sample-steps {sample_steps}: the Heun sampler needs at least 2")
    if trajectory_length is not None and trajectory_length < 2:
        raise UsageError(f"--trajectory-length {trajectory_length}: a window needs >= 2 rows")
    if unet_features is not None and (unet_features % 8 or unet_features < 16):
        raise UsageError(f"--unet-features {unet_features}: a multiple of 8, at least 16")


def check_windows(dataset: OfflineDataset, length: int, stride: int, name: str) -> None:
    """UsageError when the dataset `name` has no training window of `length` rows (no episode that long)."""
    if len(trajectory_windows(dataset, length, stride)) == 0:
        raise UsageError(
            f"--trajectory-length {length}: no episode of '{name}' is that long; use shorter windows"
        )


def load_model_file(
    flag: str, path: str | None, device: torch.device, bf16: bool, fix: str, *,
    bad_fix: str | None = None, level: str | None = None, dims: tuple[int, int] | None = None,
) -> DiffusionModel:  # fmt: skip
    """The model of the model.pt that `flag` names (of `level` and obs/act `dims` when given); UsageError when
    it is not given or missing, CheckpointError (ending in `bad_fix`, default `fix`) when it is not one."""
    if path is None:
        raise UsageError(f"{flag}: required; {fix}")
    try:
        return DiffusionModel.load(path, device, bf16_autocast(bf16), level, dims)
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file; {fix}") from None
    except ValueError as e:
        raise CheckpointError(f"{flag} {path}: {e}; {bad_fix or fix}") from e


#: How to make the trajectory model algos/pgd.py loads (its error messages say it).
MAKE_TRAJECTORY_MODEL = "`python algos/diffusion.py --preset pgd-unguided --dataset <data>`"


def load_trajectory_model(
    path: str | None, device: torch.device, bf16: bool, dims: tuple[int, int] | None = None
) -> DiffusionModel:
    """The trajectory model of the model.pt --diffusion-model names (of obs/act `dims` when given)."""
    make = MAKE_TRAJECTORY_MODEL
    fix = f"{make} writes model.pt in its run folder, or train one here with --diffusion-steps N"
    return load_model_file(
        "--diffusion-model", path, device, bf16, fix, bad_fix=f"train one with {make}",
        level="trajectory", dims=dims,
    )  # fmt: skip


def train_trajectory_model(
    dataset: OfflineDataset, path: Path, device: torch.device, *, length: int, stride: int,
    features: int, blocks: int, steps: int, batch_size: int, lr: float, seed: int, log_every: int,
    bf16: bool, env_id: str, progress: bool = True, run: Run | None = None,
) -> DiffusionModel:  # fmt: skip
    """PGD's unguided model of the dataset's windows, trained as algos/diffusion.py --preset pgd-unguided
    trains it (U-Net of `features` and `blocks`, Adam(lr, 0.999), warm-up cosine, no clipping, plain EMA),
    written to `path`; a non-finite loss stops the `run`."""
    rows = torch.from_numpy(trajectory_rows(dataset, length, stride))
    unet = dict(
        channels=rows.shape[-1], features=features, num_blocks=blocks, groupnorm="per-timestep"
    )
    print(f"training the trajectory model on {len(rows)} windows of {length} rows")
    # Every channel z-scored, done included (PGD's); its own stream from `seed`: the caller's draws are the
    # same whether the model is trained or reloaded.
    trainer, normalizer = fit_model(
        rows, "unet", unet, device, steps=steps, batch_size=batch_size, log_every=log_every,
        seed=seed, on_log=lambda step, loss: check_finite(step, {"trajectory model loss": loss}, run),
        progress=progress, desc="trajectory model", lr=lr, total_steps=steps, adam_beta2=0.999,
        lr_schedule="warmup-cosine", grad_clip=0.0, ema_warmup="plain",
        autocast_dtype=bf16_autocast(bf16),
    )  # fmt: skip
    state = model_state(
        "unet", unet, trainer.ema, normalizer, "trajectory", dataset.obs_dim, dataset.act_dim,
        env_id=env_id, dataset=dataset.name, trajectory_length=length,
    )  # fmt: skip
    save_checkpoint(path, state)
    print(f"wrote the trajectory model to {path}")
    return DiffusionModel.from_state(state, device, bf16_autocast(bf16))


def regeneration_seed(seed: int, index: int) -> int:
    """The sampler's seed for generation `index` (0 = the initial set): independent of the run's other draws."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def fill_synthetic(
    synthetic: SyntheticSet, model: DiffusionModel, n: int, batch_size: int, steps: int,
    rows: int, *, seed: int, index: int, device: torch.device, obs_mean: torch.Tensor | None,
    obs_std: torch.Tensor | None, **sample_kwargs: Any,
) -> float:  # fmt: skip
    """Replace `synthetic` by the transitions of `n` windows of `rows` sampled from the trajectory `model`
    (`DiffusionModel.sample`'s keywords) with generation `index`'s seed; the seconds it took."""
    start = time.perf_counter()
    generator = torch.Generator(device).manual_seed(regeneration_seed(seed, index))
    windows = model.sample_n(
        n, batch_size, steps, rows, device=device, generator=generator, **sample_kwargs
    )
    synthetic.fill(windows_to_transitions(windows, model.obs_dim, model.act_dim), obs_mean, obs_std)
    return time.perf_counter() - start
