"""Diffusion: an EDM model of an offline dataset that writes synthetic experience (SynthER, Lu, Ball, Teh &
Parker-Holder, "Synthetic Experience Replay", NeurIPS 2023, arXiv 2303.06614; EDM, Karras et al., arXiv 2206.00364).

A denoiser D(x; sigma) = c_skip x + c_out F(c_in x, 1/4 ln sigma) is fitted to normalised data x with EDM's loss

    ln sigma ~ N(-1.2, 1.2^2),   L = E[ lambda(sigma) * mean_j (D(x + sigma n; sigma)_j - x_j)^2 ],
    lambda(sigma) = (sigma^2 + 1) / sigma^2,

and sampled from x_0 = 80 eps with EDM's stochastic Heun sampler (128 steps, churn 80 in sigma in [0.05, 50]) on
the EMA weights. Two levels:

- `--level transition` (SynthER, the default): x = [s, a, r, s', terminal] per transition, a residual MLP F
  (width 2048, 6 blocks, no LayerNorm), per-dimension z-score with the terminal left raw and read back as
  1[x > 0.5]; AdamW 3e-4 with betas (0.9, 0.99), a cosine schedule over 100k steps, gradient norm clipped at 1,
  batch 256 (1024 from 800k transitions, SynthER's rule), EMA 0.995 every 10 steps with ema_pytorch's warm-up.
- `--level trajectory` (`--preset pgd-unguided`, the unguided baseline of policy-guided diffusion): x = windows
  of consecutive rows [s, arctanh(a), r, done] that never cross an episode end (`ocrl.data.windows`), a 1-D
  temporal U-Net F, every channel z-scored; a window of L rows gives L - 1 transitions, cut after a done.

The samples are written as a dataset file (D4RL HDF5 by default, a Minari folder for `--out` without .hdf5) of
independent transitions, with the source env, reference scores, the source data's observation statistics and
return range (SynthER normalises with the real data's) and the provenance in its metadata, so that
`python algos/td3_bc.py --dataset <file>` (or iql, prdc, a2pr) trains on it unchanged. SynthER's offline agents
train on synthetic data only (the default); `--mix-real` also writes the real transitions, as CleanDiffuser's
port does. `model.pt` in the run folder holds the EMA denoiser and its normaliser (what `algos/pgd.py` loads);
`--model` samples from such a file without training.

Differences from the released code: batches are drawn uniformly with replacement (SynthER shuffles epochs);
samples are not clamped (SynthER's standard normaliser), `--clamp` clips them to the data's range as an ablation.
The run reports the sample quality: terminal rate, per-dimension mean/std against the data, and the one-step
dynamics error of a MuJoCo reset to the generated state beside the same number on real data (the floor).

By default (`--precision auto`) the network runs in bf16 autocast with TF32 matmuls on CUDA and in fp32 on the
CPU; `--precision bf16` is bf16 on the CPU too (AMX/AVX512-BF16), `--precision fp32` fp32 everywhere. The sigma
maths, the loss, EMA, weights and Adam's state stay fp32 (ocrl.nets.edm); `--compile` captures the sampler's denoiser call in CUDA graphs (torch.compile reduce-overhead). The
sampler keeps sigma and gamma on the device and never reads them on the host. That CUDA path has not yet run on
a GPU (`python -m scripts.bench diffusion --device cuda` measures it); the CPU path computes the same maths.

    python algos/diffusion.py --dataset hopper-medium-replay-v2                       # SynthER's setting (GPU)
    python algos/diffusion.py --preset cpu-small --dataset ocrl/hopper/medium-v0     # minutes on a CPU
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from ocrl.data import OfflineDataset, Transitions, load_dataset
from ocrl.data.windows import (
    rows_to_transitions,
    trajectory_rows,
    transition_rows,
    windows_to_transitions,
)
from ocrl.envs.synthetic import synthetic_quality, write_synthetic_dataset
from ocrl.experiment import Agent, Run, TrainingLoop, save_checkpoint, start_run
from ocrl.experiment.args import CheckpointArgs, RunArgs
from ocrl.experiment.flags import UsageError, check_args, run_cli
from ocrl.nets import uses_bf16
from ocrl.nets.diffusion import (
    DiffusionModel,
    DiffusionNormalizer,
    EDMTrainer,
    bf16_autocast,
    build_network,
    model_state,
)
from ocrl.nets.edm_runs import TrajectoryModelArgs, check_edm_flags, load_model_file

# fmt: off
PRESETS: dict[str, dict] = {
    # A CPU-sized SynthER: what the tests and docs/results/ use (trains in minutes on 2 cores).
    "cpu-small": dict(
        width=256, depth=4, total_steps=20_000, num_samples=100_000, sample_batch_size=10_000
    ),
    # PGD's unguided trajectory model (EmptyJackson/policy-guided-diffusion defaults).
    "pgd-unguided": dict(
        level="trajectory", lr=2e-3, adam_beta2=0.999, lr_schedule="warmup-cosine", grad_clip=0.0,
        batch_size=32, ema_warmup="plain", sample_steps=256, euler_origin="x_i",
        num_samples=1_000_000, sample_batch_size=8192,
    ),
}
# fmt: on
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(RunArgs, TrajectoryModelArgs, CheckpointArgs):
    dataset: str = "ocrl/hopper/medium-v0"
    """D4RL name (hopper-medium-v2), path to a D4RL .hdf5 file or Minari folder, or a Minari id; the default is shipped"""
    env_id: str | None = None
    """environment of the data (for the written file and the dynamics error); by default the one the dataset names"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """'cpu-small' (a CPU-sized SynthER) or 'pgd-unguided' (PGD's trajectory model); explicit flags override it"""
    seed: int = 0
    """seed of torch and numpy, and of the sampler's noise"""
    level: Literal["transition", "trajectory"] = "transition"
    """'transition': rows [s, a, r, s', terminal] (SynthER); 'trajectory': windows of [s, arctanh a, r, done] (PGD)"""
    width: int = 2048
    """residual-MLP width (SynthER: 2048 offline, 1024 for some datasets and online)"""
    depth: int = 6
    """residual blocks of the MLP"""
    dim_t: int = 128
    """width of the MLP's time embedding and input projection"""
    layer_norm: bool = False
    """LayerNorm in the residual blocks (SynthER's offline config has none)"""
    groupnorm: Literal["per-timestep", "per-sequence"] = "per-timestep"
    """U-Net GroupNorm statistics: over each time step's channels (PGD, Flax on unbatched windows) or the sequence"""
    total_steps: int = 100_000
    """gradient steps of the denoiser"""
    batch_size: int | None = None
    """samples per step; default SynthER's rule (256, or 1024 from 800k transitions); PGD: 32 windows"""
    lr: float = 3e-4
    """peak learning rate of AdamW (no weight decay)"""
    adam_beta2: float = 0.99
    """AdamW's beta2 (SynthER 0.99; PGD's optax Adam 0.999)"""
    lr_schedule: Literal["cosine", "warmup-cosine", "constant"] = "cosine"
    """'cosine' to 0 over total_steps (SynthER); 'warmup-cosine' from 0.1 lr up over 10% then to 0 (PGD)"""
    grad_clip: float = 1.0
    """gradient-norm clip (0 = none; PGD has none)"""
    ema_decay: float = 0.995
    """EMA decay of the sampled weights"""
    ema_every: int = 10
    """steps between EMA updates"""
    ema_warmup: Literal["ema_pytorch", "plain"] = "ema_pytorch"
    """'ema_pytorch': copy for 100 steps, then decay min(0.995, 1 - (1 + e)^-2/3) (SynthER); 'plain': 0.995 (PGD)"""
    sample_steps: int = 128
    """Heun steps N of the sampler (2N - 1 network calls per sample); SynthER 128, PGD 256"""
    euler_origin: Literal["x_hat", "x_i"] = "x_hat"
    """Euler predictor from the churned x_hat (EDM, SynthER) or from x_i (PGD's code)"""
    churn: bool = True
    """stochastic sampler (EDM Algorithm 2); --no-churn is deterministic Heun"""
    num_samples: int = 5_000_000
    """synthetic transitions to write (SynthER: 5M)"""
    sample_batch_size: int = 100_000
    """transitions (or windows) sampled per batch"""
    clamp: bool = False
    """clip every generated dimension to the data's [min, max] (an ablation; SynthER does not clamp)"""
    mix_real: bool = False
    """also write the real transitions (CleanDiffuser's real + synthetic); SynthER trains on synthetic only"""
    out: str | None = None
    """dataset to write: a .hdf5 path (D4RL layout) or a Minari folder <root>/<name>-vN; default <run>/synthetic.hdf5"""
    model: str | None = None
    """sample from this saved model.pt (an earlier run's) instead of training one"""
    quality_samples: int = 10_000
    """transitions (real and synthetic each) for the dynamics-error report; 0 skips it"""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """the network's matmuls: 'bf16' autocast (sigma maths, loss, weights and Adam in fp32; on CUDA with TF32), 'fp32', or 'auto': bf16 on CUDA, fp32 on the CPU"""
    compile: bool = False
    """capture the sampler's denoiser call (CUDA graphs with torch.compile reduce-overhead on CUDA)"""
    log_every: int = 1_000
    """steps between loss logs (the only host synchronisations of training)"""


# ------------------------------------------------------------------------------------ the data as x
def model_rows(source: OfflineDataset, real: Transitions, args: Args) -> np.ndarray:
    """The rows the model is fitted to: SynthER's transition rows of `real`, or PGD's windows of the source."""
    if args.level == "transition":
        return transition_rows(real)
    return trajectory_rows(source, args.trajectory_length, args.window_stride)


# ------------------------------------------------------------------------------------------ the model
def network_spec(args: Args, channels: int) -> tuple[str, dict]:
    """The denoiser network: SynthER's residual MLP for transitions, PGD's temporal U-Net for windows."""
    if args.level == "transition":
        kwargs = dict(
            d_in=channels, width=args.width, depth=args.depth, dim_t=args.dim_t,
            layer_norm=args.layer_norm,
        )  # fmt: skip
        return "resmlp", kwargs
    kwargs = dict(
        channels=channels, features=args.unet_features, num_blocks=args.unet_blocks,
        groupnorm=args.groupnorm,
    )  # fmt: skip
    return "unet", kwargs


class Diffusion(EDMTrainer, Agent):
    """EDM's training step (ocrl.nets.edm_model's, which algos/pgd.py uses too) and the data normaliser."""

    def __init__(
        self, args: Args, network: torch.nn.Module, normalizer: DiffusionNormalizer, device
    ):
        super().__init__(
            network.to(device), lr=args.lr, total_steps=args.total_steps,
            adam_beta2=args.adam_beta2, lr_schedule=args.lr_schedule, grad_clip=args.grad_clip,
            ema_decay=args.ema_decay, ema_every=args.ema_every, ema_warmup=args.ema_warmup,
            autocast_dtype=bf16_autocast(uses_bf16(args.precision, device)),
        )  # fmt: skip
        self.normalizer = normalizer.to(device)


def train(args: Args, source: OfflineDataset, real: Transitions, device, np_rng):
    """Fit the denoiser to the source's rows; (the EMA model, the training loop, the rows, model.pt's path)."""
    rows = model_rows(source, real, args)
    channels = rows.shape[-1]
    # SynthER leaves the terminal dimension raw; PGD z-scores every channel, done included.
    skip = (channels - 1,) if args.level == "transition" else ()
    if args.batch_size is None:
        args.batch_size = 1024 if len(rows) >= 800_000 else 256
    normalizer = DiffusionNormalizer.fit(torch.from_numpy(rows), skip)
    data = normalizer.normalize(torch.from_numpy(rows)).to(device)
    kind, kwargs = network_spec(args, channels)
    agent = Diffusion(args, build_network(kind, kwargs), normalizer, device)
    what = "rows" if args.level == "transition" else "windows"
    params = sum(p.numel() for p in agent.denoiser.parameters()) / 1e6
    print(f"{args.level} diffusion on {len(rows)} {what} of {channels} channels; {kind} with {params:.2f}M parameters")  # fmt: skip
    loop = TrainingLoop(
        "diffusion", source.name, args, agent.parts(), np_rng,
        normalizer={"mean": normalizer.mean.cpu().numpy(), "std": normalizer.std.cpu().numpy()},
        rate_tag="charts/steps_per_s",
    )  # fmt: skip
    for _ in loop.steps():
        batch = data[torch.randint(len(data), (args.batch_size,), device=device)]
        loop.log(agent.update(batch))
        if args.save_model and loop.due(args.log_every):
            loop.checkpoint()
    o, a, length = source.obs_dim, source.act_dim, args.trajectory_length
    state = model_state(
        kind, kwargs, agent.ema, agent.normalizer, args.level, o, a,
        env_id=args.env_id or source.env_id, dataset=source.name, trajectory_length=length,
    )  # fmt: skip
    path = loop.dir / "model.pt"
    save_checkpoint(path, state)
    model = DiffusionModel(agent.ema_denoiser(), agent.normalizer, o, a, length, args.level)
    return model, loop, rows, path


# ------------------------------------------------------------------------------------------ sampling
@torch.no_grad()
def generate(
    model: DiffusionModel, args: Args, device: torch.device,
    data_range: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """`num_samples` transitions from the EMA denoiser, in batches of `sample_batch_size`, decoded."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    net = torch.compile(model.denoiser, mode=mode, dynamic=False) if args.compile else None
    generator = torch.Generator(device).manual_seed(args.seed)
    rows = args.trajectory_length if model.level == "trajectory" else None
    batches = math.ceil(args.num_samples / (args.sample_batch_size * (rows - 1 if rows else 1)))
    draws = model.sample(
        [args.sample_batch_size] * batches, args.sample_steps, rows, device=device,
        generator=generator, euler_origin=args.euler_origin, churn=args.churn, denoiser=net,
    )  # fmt: skip
    # Back to transitions: terminal/done = 1[x > 0.5]; windows are cut after a done.
    split = rows_to_transitions if model.level == "transition" else windows_to_transitions
    parts: list[dict[str, np.ndarray]] = []
    for x in tqdm(draws, total=batches, desc="sampling", disable=not args.progress):
        if data_range is not None:
            x = torch.maximum(torch.minimum(x, data_range[1]), data_range[0])
        t = split(x.float().cpu(), model.obs_dim, model.act_dim)
        parts.append({k: v.numpy() for k, v in t.items()})
    out = {k: np.concatenate([p[k] for p in parts])[: args.num_samples] for k in parts[0]}
    return {k: v.astype(bool if k == "terminals" else np.float32) for k, v in out.items()}


def check_diffusion_args(args: Args) -> None:
    counts = ("total_steps", "log_every", "width", "depth", "dim_t", "unet_features", "unet_blocks")
    counts += ("sample_steps", "num_samples", "sample_batch_size", "ema_every", "window_stride")
    # batch_size None is SynthER's rule, settled once the data size is known (main).
    check_args(args, counts + ("batch_size",) * (args.batch_size is not None))
    check_edm_flags(args.sample_steps, args.trajectory_length, args.unet_features)
    if not 0.0 <= args.ema_decay < 1.0:
        raise UsageError(f"--ema-decay {args.ema_decay}: must lie in [0, 1)")
    if args.grad_clip < 0 or args.quality_samples < 0:
        raise UsageError("--grad-clip and --quality-samples must be >= 0")
    if args.out is not None and Path(args.out).exists():
        raise UsageError(
            f"--out {args.out}: exists already; pick a new path (nothing is overwritten)"
        )


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check_diffusion_args)
    if device.type == "cuda" and uses_bf16(args.precision, device):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    source = load_dataset(args.dataset)
    env_id = args.env_id or source.env_id
    if env_id is None:
        raise UsageError(f"dataset '{args.dataset}' names no environment; pass --env-id")
    real = source.transitions()

    if args.model is not None:  # sample from a saved model
        fix = "pass the model.pt that algos/diffusion.py wrote in its run folder (of this dataset)"
        dims = (source.obs_dim, source.act_dim)
        model = load_model_file(
            "--model", args.model, device, uses_bf16(args.precision, device), fix, dims=dims
        )
        args.level = model.level
        args.trajectory_length = model.trajectory_length or args.trajectory_length
        run = Run("diffusion", source.name, args.seed, args, args.run_dir, args.overwrite)
        run_dir, model_path, steps, rows = run.dir, Path(args.model), 0, None
    else:
        model, loop, rows, model_path = train(args, source, real, device, np_rng)
        run_dir, steps = loop.dir, loop.step

    data_range = None
    if args.clamp:
        rows = model_rows(source, real, args) if rows is None else rows
        flat = torch.from_numpy(rows).reshape(-1, model.channels)
        data_range = (flat.min(0).values.to(device), flat.max(0).values.to(device))
    start = time.perf_counter()
    samples = generate(model, args, device, data_range)
    sample_seconds = time.perf_counter() - start
    print(f"sampled {len(samples['rewards'])} transitions in {sample_seconds:.1f} s")

    out = Path(args.out) if args.out else run_dir / "synthetic.hdf5"
    provenance = {
        "ocrl_generator": "ocrl algos/diffusion.py",
        "ocrl_source_dataset": source.name,
        "ocrl_source_path": source.source,
        "ocrl_level": model.level,
        "ocrl_diffusion_model": str(model_path),
        "ocrl_train_steps": steps,
        "ocrl_sample_steps": args.sample_steps,
        "ocrl_seed": args.seed,
        "ocrl_num_synthetic": len(samples["rewards"]),
        "ocrl_num_real": len(real) if args.mix_real else 0,
    }
    write_synthetic_dataset(out, source, real, env_id, samples, provenance, args.mix_real)
    print(f"wrote {out}")
    quality = synthetic_quality(real, samples, env_id, args.quality_samples, args.seed)
    for key, value in quality.items():
        print(f"  {key}: {value:.4g}")
    extra = {
        "dataset": source.name, "env_id": env_id, "synthetic_dataset": str(out),
        "model": str(model_path), "num_synthetic": len(samples["rewards"]),
        "sample_seconds": sample_seconds,
        "samples_per_s": len(samples["rewards"]) / max(sample_seconds, 1e-9), **quality,
    }  # fmt: skip
    if args.model is not None:
        return run.finish(steps, extra)
    return loop.finish(None, None, **extra)


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
