"""Running an experiment: the CLI with presets and checks, run folders, logs, checkpoints and the training-loop plumbing."""

from ocrl.experiment.args import OfflineDataArgs, PrecisionArgs, RunArgs, start_run
from ocrl.experiment.flags import POSITIVE_FIELDS, check_args, cli, friendly_errors
from ocrl.experiment.loop import Agent, SnapshotEvaluator, TrainingLoop
from ocrl.experiment.policy import (
    POLICY_FILE,
    POLICY_INFO,
    Acting,
    PolicyError,
    PolicyProgram,
    load_policy,
    write_policy,
)
from ocrl.experiment.run import (
    CheckpointError,
    Run,
    UsageError,
    check_finite,
    load_checkpoint,
    pick_device,
    restore_training_state,
    resume_args,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    training_state,
)
from ocrl.files import atomic_path, atomic_write_text

__all__ = [
    "POLICY_FILE",
    "POLICY_INFO",
    "POSITIVE_FIELDS",
    "Acting",
    "Agent",
    "CheckpointError",
    "PolicyError",
    "PolicyProgram",
    "OfflineDataArgs",
    "PrecisionArgs",
    "Run",
    "RunArgs",
    "SnapshotEvaluator",
    "TrainingLoop",
    "UsageError",
    "atomic_path",
    "atomic_write_text",
    "check_args",
    "check_finite",
    "cli",
    "friendly_errors",
    "load_checkpoint",
    "load_policy",
    "pick_device",
    "restore_training_state",
    "resume_args",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "start_run",
    "training_state",
    "write_policy",
]
