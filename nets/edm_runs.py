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
from ocrl.nets.core import uses_bf16
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


@dataclass
class TrajectoryTrainingArgs(TrajectoryModelArgs):
    """The trajectory model's flags and those of training it inside algos/pgd.py (--diffusion-steps)."""

    diffusion_steps: int = 0
    """> 0: first train the trajectory model (--trajectory-length, --window-stride, --unet-*) for this many steps here, instead of --diffusion-model"""
    diffusion_lr: float = 2e-3
    """with --diffusion-steps: peak Adam learning rate of the denoiser (warm-up cosine schedule)"""
    diffusion_batch_size: int = 32
    """with --diffusion-steps: windows per denoiser step"""


def training_counts(args: TrajectoryTrainingArgs) -> tuple[str, ...]:
    """The flags `check_args` must find positive when --diffusion-steps trains the model (none otherwise)."""
    counts = (
        "diffusion_steps",
        "unet_features",
        "unet_blocks",
        "window_stride",
        "diffusion_batch_size",
    )
    return counts if args.diffusion_steps != 0 else ()


def check_model_source(args: TrajectoryTrainingArgs, model: str | None, sample_steps: int) -> None:
    """UsageError when both a model file and --diffusion-steps are given, or for a bad sampler or U-Net flag."""
    training = args.diffusion_steps != 0
    if training and model is not None:
        raise UsageError(
            f"--diffusion-model {model} and --diffusion-steps {args.diffusion_steps}: give one "
            "(load a model, or train one here)"
        )
    check_edm_flags(sample_steps, *(args.trajectory_length, args.unet_features) * training)


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
    path: str | None, device: torch.device, precision: str, dims: tuple[int, int] | None = None
) -> DiffusionModel:
    """The trajectory model of the model.pt --diffusion-model names (of obs/act `dims` when given), its network
    run at `precision` (`nets.uses_bf16`)."""
    make = MAKE_TRAJECTORY_MODEL
    fix = f"{make} writes model.pt in its run folder, or train one here with --diffusion-steps N"
    return load_model_file(
        "--diffusion-model", path, device, uses_bf16(precision, device), fix, bad_fix=f"train one with {make}",
        level="trajectory", dims=dims,
    )  # fmt: skip


def train_trajectory_model(
    args: Any, dataset: OfflineDataset, path: Path, device: torch.device, env_id: str,
    run: Run | None = None,
) -> DiffusionModel:  # fmt: skip
    """PGD's unguided model of the dataset's windows, trained as algos/diffusion.py --preset pgd-unguided
    trains it (Adam(--diffusion-lr, 0.999), warm-up cosine, no clipping, plain EMA) with the
    `TrajectoryTrainingArgs` flags of `args` and its seed, log_every, precision and progress; written to
    `path`; a non-finite loss stops the `run`. A `path` that exists (a resumed run's) is loaded, not trained."""
    if path.exists():
        return load_trajectory_model(str(path), device, args.precision)
    length, stride, steps = args.trajectory_length, args.window_stride, args.diffusion_steps
    features, blocks, bf16 = args.unet_features, args.unet_blocks, uses_bf16(args.precision, device)
    rows = torch.from_numpy(trajectory_rows(dataset, length, stride))
    unet = dict(
        channels=rows.shape[-1], features=features, num_blocks=blocks, groupnorm="per-timestep"
    )
    print(f"training the trajectory model on {len(rows)} windows of {length} rows")
    # Every channel z-scored, done included (PGD's); its own stream from `seed`: the caller's draws are the
    # same whether the model is trained or reloaded.
    trainer, normalizer = fit_model(
        rows, "unet", unet, device, steps=steps, batch_size=args.diffusion_batch_size,
        log_every=args.log_every, seed=args.seed, progress=args.progress,
        on_log=lambda step, loss: check_finite(step, {"trajectory model loss": loss}, run),
        desc="trajectory model", lr=args.diffusion_lr, total_steps=steps, adam_beta2=0.999,
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
