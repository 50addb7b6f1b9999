"""The flags every algorithm shares, as dataclasses an `Args` extends, and `start_run`, the first line of every main().

An algorithm's own `Args` holds its method's hyperparameters and the flags whose meaning is its own (seed,
total_steps, what one evaluation or log interval counts); these hold the run plumbing, identical everywhere, and
`TargetArgs`, the bootstrapped target's discount and Polyak rate, the same in every file with target networks.
A field an `Args` declares again keeps its place here and takes the new default and docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from ocrl.experiment.flags import check_args
from ocrl.experiment.run import pick_device, resume_args, seed_everything

ArgsT = TypeVar("ArgsT")


@dataclass
class PolicyExportArgs:
    """The policy-file flags of every algorithm that writes policy.pt2."""

    export_onnx: bool = False
    """also write policy.onnx, the policy.pt2 program for onnxruntime, checked against it on a batch (optional extra `onnx`); not for a stochastic acting program (EXPO's), whose draws ONNX cannot repeat"""


@dataclass
class CheckpointArgs:
    """Checkpoints and --resume: the same two flags in every algorithm that can continue a run."""

    save_model: bool = False
    """write checkpoint.pt (atomically; all that --resume needs: networks, optimisers, RNG and the run's buffers, normalisers, synthetic data or training envs) at every evaluation (without evaluations: every log interval) and at the end"""
    resume: str | None = None
    """run folder to continue from its checkpoint.pt, bit for bit (its config.json is reused, except total_steps and device; training envs continue their episodes on Gymnasium MuJoCo and classic-control tasks, others restart)"""


@dataclass
class OfflineArgs(PolicyExportArgs, CheckpointArgs):
    """An offline algorithm's data, its evaluation and its checkpoints; its steps are gradient updates."""

    dataset: str = "ocrl/hopper/medium-v0"
    """D4RL name (hopper-medium-v2), path to a D4RL .hdf5 file or Minari folder, or a Minari id; the default is shipped"""
    env_id: str | None = None
    """evaluation environment; by default the one the dataset names (D4RL tasks evaluate on Gymnasium -v4)"""
    ref_min_score: float | None = None
    """return of a random policy for the normalised score; default: the dataset's, else D4RL's for its domain"""
    ref_max_score: float | None = None
    """return of an expert policy for the normalised score (give both or neither)"""
    eval_every: int = 5_000
    """updates between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation, run in parallel"""
    log_every: int = 1_000
    """updates between loss logs (the only host synchronisations of the loop)"""


@dataclass
class OnlineArgs(PolicyExportArgs, CheckpointArgs):
    """An online algorithm's evaluation, logging, videos and checkpoints; its steps are environment steps."""

    eval_every: int = 5_000
    """environment steps between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation, run in parallel"""
    log_every: int = 1_000
    """environment steps between loss logs"""
    capture_video: bool = False
    """record the first episode of every evaluation as videos/step-<step>.mp4 in the run folder (optional extra `video`)"""


@dataclass
class TargetArgs:
    """The bootstrapped target's two numbers, the same in every algorithm with Polyak-averaged target networks (which
    networks have targets, and when they move, its docstring says)."""

    discount: float = 0.99
    """discount factor gamma"""
    tau: float = 0.005
    """Polyak rate of the target networks: target <- tau * online + (1 - tau) * target"""


@dataclass
class PrecisionArgs:
    """The networks' matmul precision, for the algorithms that honour it (their docstrings say what stays fp32)."""

    precision: Literal["fp32", "bf16"] = "fp32"
    """'bf16': the networks' forward passes under bf16 autocast (CPU AMX/AVX512-BF16 or CUDA), weights, optimiser state, output heads, targets and losses in fp32; 'fp32': everything in fp32"""


@dataclass
class SeedsArgs:
    """Several seeds in one process, for the algorithms that stack their networks on a seed axis."""

    num_seeds: int = 1
    """train seeds seed .. seed+N-1 in one process, every network stacked on a seed axis (batched matmuls), each seed with its own minibatches, noise and evaluation episodes; seed k writes the run folder a single-seed run of it writes (with --run-dir DIR: DIR/s<k>); --resume DIR continues all the group's seeds"""


@dataclass
class RunArgs:
    """Device, run folder, progress and tracking: the same flags in every algorithm."""

    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    threads: int = 1
    """torch's CPU threads: 1 is fastest per run for these network sizes and keeps runs side by side from slowing each other 10-50x; 0 uses torch's default (all cores)"""
    run_dir: str | None = None
    """run folder; default runs/<algorithm>__<dataset, env or instance>__s<seed>__<time>"""
    overwrite: bool = False
    """empty --run-dir first when it holds a finished or stopped run (without it, such a folder is refused)"""
    progress: bool = True
    """show a progress bar"""
    track: bool = False
    """also log the scalars and the config to Weights & Biases (optional extra `track`; WANDB_MODE=offline needs no network)"""
    wandb_project: str = "ocrl"
    """Weights & Biases project of --track"""
    wandb_entity: str | None = None
    """Weights & Biases team or user of --track (default: your own)"""
    wandb_group: str | None = None
    """Weights & Biases group of --track, e.g. one per sweep"""


def start_run(
    args: ArgsT, check: Callable[[Any], None] = check_args
) -> tuple[ArgsT, torch.device, np.random.Generator]:
    """--resume's saved flags, `check` (one-line errors before anything is written), the device and threads, then
    the seeds: (args, device, the run's NumPy generator)."""
    args = resume_args(args) if getattr(args, "resume", None) else args
    check(args)
    device = pick_device(args.device, args.threads)  # type: ignore[attr-defined]
    return args, device, seed_everything(args.seed)  # type: ignore[attr-defined]
