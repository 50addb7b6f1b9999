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

On CUDA the network runs in bf16 autocast with TF32 matmuls (`--no-bf16` for fp32) while the sigma maths stays
in fp32; `--compile` captures the sampler's denoiser call in CUDA graphs (torch.compile reduce-overhead). The
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
from ocrl.data.d4rl import write_d4rl_hdf5
from ocrl.data.minari_io import write_minari
from ocrl.data.offline import source_statistics_metadata
from ocrl.data.windows import trajectory_rows, windows_to_transitions
from ocrl.envs.dynamics import dynamics_error
from ocrl.envs.evaluation import EnvError, make_env, resolve_reference_scores
from ocrl.experiment import (
    Agent,
    CheckpointError,
    Run,
    TrainingLoop,
    UsageError,
    check_args,
    cli,
    friendly_errors,
    load_checkpoint,
    pick_device,
    resume_args,
    save_checkpoint,
    seed_everything,
)
from ocrl.nets.diffusion import (
    EMA,
    DiffusionNormalizer,
    EDMConfig,
    EDMDenoiser,
    build_network,
    denoiser_from_state,
    heun_sample,
    lr_factor,
    model_state,
)

PRESETS: dict[str, dict] = {
    # A CPU-sized SynthER: what the tests and docs/results/ use (trains in minutes on 2 cores).
    "cpu-small": {
        "width": 256,
        "depth": 4,
        "total_steps": 20_000,
        "num_samples": 100_000,
        "sample_batch_size": 10_000,
    },
    # PGD's unguided trajectory model (EmptyJackson/policy-guided-diffusion defaults).
    "pgd-unguided": {
        "level": "trajectory",
        "lr": 2e-3,
        "adam_beta2": 0.999,
        "lr_schedule": "warmup-cosine",
        "grad_clip": 0.0,
        "batch_size": 32,
        "ema_warmup": "plain",
        "sample_steps": 256,
        "euler_origin": "x_i",
        "num_samples": 1_000_000,
        "sample_batch_size": 8192,
    },
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args:
    dataset: str = "ocrl/hopper/medium-v0"
    """D4RL name (hopper-medium-v2), path to a D4RL .hdf5 file or Minari folder, or a Minari id; the default is shipped"""
    env_id: str | None = None
    """environment of the data (for the written file and the dynamics error); by default the one the dataset names"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """'cpu-small' (a CPU-sized SynthER) or 'pgd-unguided' (PGD's trajectory model); explicit flags override it"""
    seed: int = 0
    """seed of torch and numpy, and of the sampler's noise"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    threads: int = 1
    """torch's CPU threads: 1 is fastest per run for these network sizes and keeps runs side by side from slowing
    each other 10-50x; 0 uses torch's default (all cores)"""
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
    unet_features: int = 1024
    """U-Net base width F (blocks have F, 2F, 4F channels; PGD's default, ~178M parameters)"""
    unet_blocks: int = 3
    """U-Net encoder blocks"""
    groupnorm: Literal["per-timestep", "per-sequence"] = "per-timestep"
    """U-Net GroupNorm statistics: over each time step's channels (PGD, Flax on unbatched windows) or the sequence"""
    trajectory_length: int = 32
    """rows per trajectory window (PGD's default; its paper may have used 16)"""
    window_stride: int = 8
    """stride between training windows inside an episode"""
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
    bf16: bool = True
    """on CUDA, run the network in bf16 autocast with TF32 matmuls (sigma maths in fp32); ignored on the CPU"""
    compile: bool = False
    """capture the sampler's denoiser call (CUDA graphs with torch.compile reduce-overhead on CUDA)"""
    log_every: int = 1_000
    """steps between loss logs (the only host synchronisations of training)"""
    save_model: bool = False
    """write checkpoint.pt (atomically, for --resume) every log_every steps and at the end"""
    resume: str | None = None
    """run folder to continue training from its checkpoint.pt"""
    run_dir: str | None = None
    """run folder; default runs/diffusion__<dataset>__s<seed>__<time>"""
    overwrite: bool = False
    """empty --run-dir first when it holds a finished or stopped run (without it, such a folder is refused)"""
    progress: bool = True
    """show progress bars"""


# ------------------------------------------------------------------------------------ the data as x
@dataclass
class Layout:
    """Where each part of a generated row sits: obs, action, reward, next obs (transition) and terminal/done."""

    level: str
    obs_dim: int
    act_dim: int

    @property
    def channels(self) -> int:
        o, a = self.obs_dim, self.act_dim
        return 2 * o + a + 2 if self.level == "transition" else o + a + 2


def transition_rows(t: Transitions) -> np.ndarray:
    """SynthER's x = [s, a, r, s', terminal] for every TD transition of the dataset (qlearning_dataset's)."""
    return np.concatenate(
        [t.observations, t.actions, t.rewards[:, None], t.next_observations, t.terminals[:, None]],
        axis=1,
    ).astype(np.float32)


def model_rows(source: OfflineDataset, real: Transitions, layout: Layout, args: Args) -> np.ndarray:
    """The rows the model is fitted to: transition rows of `real`, or the source's trajectory windows."""
    if layout.level == "transition":
        return transition_rows(real)
    return trajectory_rows(source, args.trajectory_length, args.window_stride)


def decode(x: torch.Tensor, layout: Layout) -> dict[str, np.ndarray]:
    """Un-normalised samples back to transitions; terminal/done = 1[x > 0.5]; windows are cut after a done."""
    o, a = layout.obs_dim, layout.act_dim
    x = x.float().cpu()
    if layout.level == "transition":
        x = x.numpy()
        return {
            "observations": x[:, :o],
            "actions": x[:, o : o + a],
            "rewards": x[:, o + a],
            "next_observations": x[:, o + a + 1 : 2 * o + a + 1],
            "terminals": x[:, -1] > 0.5,
        }
    return {k: v.numpy() for k, v in windows_to_transitions(x, o, a).items()}


# ------------------------------------------------------------------------------------------ the model
def network_spec(args: Args, layout: Layout) -> tuple[str, dict]:
    """The denoiser network: SynthER's residual MLP for transitions, PGD's temporal U-Net for windows."""
    if layout.level == "transition":
        kwargs = dict(
            d_in=layout.channels, width=args.width, depth=args.depth, dim_t=args.dim_t,
            layer_norm=args.layer_norm,
        )  # fmt: skip
        return "resmlp", kwargs
    kwargs = dict(
        channels=layout.channels, features=args.unet_features, num_blocks=args.unet_blocks,
        groupnorm=args.groupnorm,
    )  # fmt: skip
    return "unet", kwargs


class Diffusion(Agent):
    """The denoiser, its optimiser and schedule, the EMA of its weights and the data normaliser."""

    def __init__(
        self, args: Args, network: torch.nn.Module, normalizer: DiffusionNormalizer, device
    ):
        self.args = args
        autocast = torch.bfloat16 if args.bf16 and device.type == "cuda" else None
        self.denoiser = EDMDenoiser(network.to(device), EDMConfig(), autocast_dtype=autocast)
        self.normalizer = normalizer.to(device)
        self.optimizer = torch.optim.AdamW(
            network.parameters(), lr=args.lr, betas=(0.9, args.adam_beta2), weight_decay=0.0
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(args.lr_schedule, args.total_steps)
        )
        self.ema = EMA(network, args.ema_decay, args.ema_every, args.ema_warmup)

    def update(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step of EDM's loss on a batch of normalised data; then the lr schedule and the EMA."""
        loss = self.denoiser.loss(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.denoiser.net.parameters()
        if self.args.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.args.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in params if p.grad is not None]
            )
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update()
        return {"denoiser_loss": loss.detach(), "diffusion/grad_norm": grad_norm}


def save_model(path: Path, agent: Diffusion, kind: str, kwargs: dict, layout: Layout, meta: dict):
    """model.pt: the EMA network, its constructor, the normaliser and the layout (what algos/pgd.py loads)."""
    state = model_state(
        kind, kwargs, agent.ema, agent.normalizer, layout.level, layout.obs_dim, layout.act_dim,
        **meta,
    )  # fmt: skip
    save_checkpoint(path, state)


def load_model(path: str, device: torch.device, bf16: bool):
    """(EMA denoiser, normaliser, layout, the file's dict) from a model.pt; CheckpointError when it is not one."""
    state = load_checkpoint(Path(path), "cpu")
    autocast = torch.bfloat16 if bf16 and device.type == "cuda" else None
    try:
        denoiser, normalizer = denoiser_from_state(state, device, autocast)
        layout = Layout(state["level"], int(state["obs_dim"]), int(state["act_dim"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"--model {path}: {e}; pass the model.pt that algos/diffusion.py wrote in its run folder"
        ) from e
    return denoiser, normalizer, layout, state


# ------------------------------------------------------------------------------------------ sampling
@torch.no_grad()
def generate(
    denoiser: EDMDenoiser, normalizer: DiffusionNormalizer, layout: Layout, args: Args,
    device: torch.device, data_range: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """`num_samples` transitions from the EMA denoiser, in batches of `sample_batch_size`, decoded."""
    net = denoiser
    if args.compile:
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        net = torch.compile(denoiser, mode=mode, dynamic=False)
    generator = torch.Generator(device).manual_seed(args.seed)
    per_sample = 1 if layout.level == "transition" else args.trajectory_length - 1
    batches = math.ceil(args.num_samples / (args.sample_batch_size * per_sample))
    shape = (args.sample_batch_size, layout.channels)
    if layout.level == "trajectory":
        shape = (args.sample_batch_size, args.trajectory_length, layout.channels)
    parts: list[dict[str, np.ndarray]] = []
    for _ in tqdm(range(batches), desc="sampling", disable=not args.progress):
        x = heun_sample(
            net, shape, args.sample_steps, denoiser.config, device=device, generator=generator,
            euler_origin=args.euler_origin, churn=args.churn,
        )  # fmt: skip
        x = normalizer.unnormalize(x)
        if data_range is not None:
            x = torch.maximum(torch.minimum(x, data_range[1]), data_range[0])
        parts.append(decode(x, layout))
    out = {k: np.concatenate([p[k] for p in parts])[: args.num_samples] for k in parts[0]}
    return {k: v.astype(bool if k == "terminals" else np.float32) for k, v in out.items()}


def sample_quality(real, synthetic, env_id: str, n: int, seed: int) -> dict[str, float]:
    """Terminal rates, per-dimension mean/std against the data, and the one-step dynamics error of the
    non-terminal transitions (real: the floor; normalised by the real next observations' std)."""
    real_next = real.next_observations
    scale = real_next.std(axis=0) + 1e-6
    report = {
        "terminal_rate_real": float(real.terminals.mean()),
        "terminal_rate_synthetic": float(synthetic["terminals"].mean()),
    }
    for key, r in (("observations", real.observations), ("actions", real.actions)):
        s = synthetic[key]
        std = r.std(axis=0) + 1e-6
        report[f"{key}_max_mean_gap_in_std"] = float(np.max(np.abs(s.mean(0) - r.mean(0)) / std))
        ratio = s.std(axis=0) / std
        report[f"{key}_std_ratio_min"], report[f"{key}_std_ratio_max"] = map(
            float, (ratio.min(), ratio.max())
        )
    report["reward_mean_real"] = float(real.rewards.mean())
    report["reward_mean_synthetic"] = float(synthetic["rewards"].mean())
    if n <= 0:
        return report
    # Only non-terminal transitions: after a terminal, qlearning_dataset's s' is the next episode's start
    # (the model learns that pairing too), which no simulator step reproduces.
    real_rows = real.terminals < 0.5
    syn_rows = ~synthetic["terminals"]
    sets = {
        "real": (real.observations, real.actions, real_next, real.rewards, real_rows),
        "synthetic": (
            synthetic["observations"], synthetic["actions"], synthetic["next_observations"],
            synthetic["rewards"], syn_rows,
        ),
    }  # fmt: skip
    try:
        for name, (obs, act, nxt, rew, rows) in sets.items():
            if not rows.any():
                continue
            err = dynamics_error(
                env_id, obs[rows], act[rows], nxt[rows], rewards=rew[rows], scale=scale,
                max_transitions=min(n, int(rows.sum())), seed=seed,
            )  # fmt: skip
            for k in ("normalized_mse", "normalized_mse_unclipped", "mse", "reward_mse"):
                if k in err:
                    report[f"dynamics_{k}_{name}"] = float(err[k])
    except EnvError as e:
        print(f"note: no dynamics error: {e}")
    return report


def write_dataset(
    path: Path, source: OfflineDataset, real: Transitions, env_id: str,
    samples: dict[str, np.ndarray], args: Args, provenance: dict,
) -> Path:  # fmt: skip
    """Write the synthetic transitions (+ the real ones `real` with --mix-real) as a D4RL file or a Minari folder."""
    if args.mix_real:
        samples = {
            "observations": np.concatenate([samples["observations"], real.observations]),
            "actions": np.concatenate([samples["actions"], real.actions]),
            "rewards": np.concatenate([samples["rewards"], real.rewards]),
            "next_observations": np.concatenate([samples["next_observations"], real.next_observations]),
            "terminals": np.concatenate([samples["terminals"], real.terminals > 0.5]),
        }  # fmt: skip
    env = make_env(env_id)
    max_steps = (env.spec.max_episode_steps if env.spec else None) or 1000
    env.close()
    lo, hi, _ = resolve_reference_scores(
        source.ref_min_score, source.ref_max_score, env_id, None, None
    )
    metadata = {**provenance, **source_statistics_metadata(real, max_steps)}
    name = f"{source.name}-synthetic" if source.name else "synthetic"
    dataset = OfflineDataset.from_transitions(
        samples["observations"], samples["actions"], samples["rewards"],
        samples["next_observations"], samples["terminals"], name=name, env_id=env_id,
        ref_min_score=lo, ref_max_score=hi, source=str(path), metadata=metadata,
    )  # fmt: skip
    if path.suffix in (".hdf5", ".h5"):
        write_d4rl_hdf5(dataset, path)
    else:
        write_minari(dataset, path.parent, path.name, algorithm_name="ocrl diffusion")
    return path


def check_diffusion_args(args: Args) -> None:
    counts = ("total_steps", "log_every", "width", "depth", "dim_t", "unet_features", "unet_blocks")
    counts += ("sample_steps", "num_samples", "sample_batch_size", "ema_every", "window_stride")
    # batch_size None is SynthER's rule, settled once the data size is known (main).
    check_args(args, counts + ("batch_size",) * (args.batch_size is not None))
    if args.sample_steps < 2:
        raise UsageError(f"--sample-steps {args.sample_steps}: the Heun sampler needs at least 2")
    if args.trajectory_length < 2:
        raise UsageError(f"--trajectory-length {args.trajectory_length}: a window needs >= 2 rows")
    if not 0.0 <= args.ema_decay < 1.0:
        raise UsageError(f"--ema-decay {args.ema_decay}: must lie in [0, 1)")
    if args.grad_clip < 0 or args.quality_samples < 0:
        raise UsageError("--grad-clip and --quality-samples must be >= 0")
    if args.unet_features % 8 or args.unet_features < 16:
        raise UsageError(f"--unet-features {args.unet_features}: a multiple of 8, at least 16")
    if args.out is not None and Path(args.out).exists():
        raise UsageError(
            f"--out {args.out}: exists already; pick a new path (nothing is overwritten)"
        )


def main(args: Args) -> dict:
    args = resume_args(args) if args.resume else args
    check_diffusion_args(args)
    device = pick_device(args.device, args.threads)
    if device.type == "cuda" and args.bf16:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    np_rng = seed_everything(args.seed)
    source = load_dataset(args.dataset)
    env_id = args.env_id or source.env_id
    if env_id is None:
        raise UsageError(f"dataset '{args.dataset}' names no environment; pass --env-id")
    real = source.transitions()

    if args.model is not None:
        denoiser, normalizer, layout, saved = load_model(args.model, device, args.bf16)
        if (layout.obs_dim, layout.act_dim) != (source.obs_dim, source.act_dim):
            raise UsageError(
                f"--model {args.model} was trained on obs/act dims {layout.obs_dim}/{layout.act_dim}, "
                f"dataset '{args.dataset}' has {source.obs_dim}/{source.act_dim}; pass its dataset"
            )
        args.level = layout.level
        args.trajectory_length = int(saved.get("trajectory_length", args.trajectory_length))
        run = Run("diffusion", source.name, args.seed, args, args.run_dir, args.overwrite)
        run_dir, model_path, steps = run.dir, Path(args.model), 0
        rows = None
    else:
        layout = Layout(args.level, source.obs_dim, source.act_dim)
        rows = model_rows(source, real, layout, args)
        # SynthER leaves the terminal dimension raw; PGD z-scores every channel, done included.
        skip = (layout.channels - 1,) if layout.level == "transition" else ()
        if args.batch_size is None:
            args.batch_size = 1024 if len(rows) >= 800_000 else 256
        normalizer = DiffusionNormalizer.fit(torch.from_numpy(rows), skip)
        data = normalizer.normalize(torch.from_numpy(rows)).to(device)
        kind, kwargs = network_spec(args, layout)
        agent = Diffusion(args, build_network(kind, kwargs), normalizer, device)
        print(
            f"{layout.level} diffusion on {len(rows)} {'rows' if layout.level == 'transition' else 'windows'}"
            f" of {layout.channels} channels; {kind} with "
            f"{sum(p.numel() for p in agent.denoiser.parameters()) / 1e6:.2f}M parameters"
        )
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
        run_dir, steps = loop.dir, loop.step
        model_path = run_dir / "model.pt"
        meta = {
            "env_id": env_id,
            "dataset": source.name,
            "trajectory_length": args.trajectory_length,
        }
        save_model(model_path, agent, kind, kwargs, layout, meta)
        denoiser = EDMDenoiser(agent.ema.ema_model, EDMConfig(), agent.denoiser.autocast_dtype)

    data_range = None
    if args.clamp:
        rows = model_rows(source, real, layout, args) if rows is None else rows
        flat = torch.from_numpy(rows).reshape(-1, layout.channels)
        data_range = (flat.min(0).values.to(device), flat.max(0).values.to(device))
    start = time.perf_counter()
    samples = generate(denoiser, normalizer, layout, args, device, data_range)
    sample_seconds = time.perf_counter() - start
    print(f"sampled {len(samples['rewards'])} transitions in {sample_seconds:.1f} s")

    out = Path(args.out) if args.out else run_dir / "synthetic.hdf5"
    provenance = {
        "ocrl_generator": "ocrl algos/diffusion.py",
        "ocrl_source_dataset": source.name,
        "ocrl_source_path": source.source,
        "ocrl_level": layout.level,
        "ocrl_diffusion_model": str(model_path),
        "ocrl_train_steps": steps,
        "ocrl_sample_steps": args.sample_steps,
        "ocrl_seed": args.seed,
        "ocrl_num_synthetic": len(samples["rewards"]),
        "ocrl_num_real": len(real) if args.mix_real else 0,
    }
    write_dataset(out, source, real, env_id, samples, args, provenance)
    print(f"wrote {out}")
    quality = sample_quality(real, samples, env_id, args.quality_samples, args.seed)
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
    with friendly_errors():
        main(cli(Args, PRESETS))
