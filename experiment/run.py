"""Run folders: seeding, device choice, TensorBoard logs (and Weights & Biases with --track, through
`ocrl.experiment.tracking`), metrics and checkpoints (the command line is `ocrl.experiment.flags`)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ocrl.files import atomic_path, atomic_write_text
from ocrl.plugins import feature

ArgsT = TypeVar("ArgsT")

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"


class UsageError(ValueError):
    """A bad flag value; the message names the flag, the value and the fix."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names the file and the fix."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE))


def pick_device(device: str = "auto", threads: int | None = None) -> torch.device:
    """'auto' means CUDA when available, else CPU; anything else is passed to torch.device. `threads` (0: torch's
    default) sets torch's CPU thread count."""
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device}: asks for CUDA, but torch.cuda.is_available() is False; use --device cpu"
        )
    return dev


def seed_everything(seed: int, deterministic: bool = False) -> np.random.Generator:
    """Seed Python, NumPy and torch (all devices); return a NumPy generator for the run's own sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return np.random.default_rng(seed)


def rng_state(np_rng: np.random.Generator | None = None) -> dict:
    """Every random-number state a run depends on, in a form `torch.load(weights_only=True)` accepts."""
    state = {
        "torch": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
        "numpy_legacy": json.dumps(_jsonable(np.random.get_state())),
    }
    if np_rng is not None:
        state["numpy"] = json.dumps(np_rng.bit_generator.state)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, np_rng: np.random.Generator | None = None) -> None:
    """Restore what `rng_state` returned."""
    # map_location may have moved the states to the training device; generators take CPU byte tensors.
    torch.set_rng_state(state["torch"].cpu())
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    legacy = json.loads(state["numpy_legacy"])
    np.random.set_state((legacy[0], np.asarray(legacy[1], dtype=np.uint32), *legacy[2:]))
    if np_rng is not None and "numpy" in state:
        np_rng.bit_generator.state = json.loads(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save through a temporary file renamed into place, so a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict:
    """Load a checkpoint with `weights_only=True`, so a shared file cannot run code; `mmap` maps its tensors from
    the file instead of reading them into memory."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: --resume needs a run folder written with --save-model "
            f"(it holds {CHECKPOINT_FILE})"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable ocrl checkpoint ({type(err).__name__}): it is truncated, corrupt "
            "or not written by ocrl; resume from another run folder or start a new run"
        ) from None


def training_state(
    step: int, parts: Mapping[str, Any], np_rng: np.random.Generator | None, run: Run, **extra: Any
) -> dict:
    """A checkpoint dict: the state_dict of every module/optimiser/buffer in `parts`, RNG states, the step and run bookkeeping."""
    state = {name: part.state_dict() for name, part in parts.items()}
    state.update(step=step, rng=rng_state(np_rng), run=run.state_dict(), **extra)
    return state


def restore_training_state(
    ckpt: dict, parts: Mapping[str, Any], np_rng: np.random.Generator | None, run: Run | None
) -> int:
    """Load what `training_state` saved back into `parts`, the RNGs and the run; return the step to continue from."""
    try:
        for name, part in parts.items():
            part.load_state_dict(ckpt[name])
        set_rng_state(ckpt["rng"], np_rng)
        if run is not None:
            run.load_state_dict(ckpt["run"])
        return int(ckpt["step"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        detail = (
            f"no '{err.args[0]}' entry" if isinstance(err, KeyError) else str(err).splitlines()[0]
        )
        raise CheckpointError(
            f"checkpoint does not fit this run ({detail[:160]}): was it written by another algorithm, "
            "with other network sizes, or by an older ocrl (online runs save their environments since "
            "2026-12)? Resume with the flags of the run that wrote it, or start a new run"
        ) from None


def resume_args(
    args: ArgsT,
    keep: Sequence[str] = (
        "total_steps",
        "resume",
        "device",
        "threads",
        "compile",
        "progress",
        "overwrite",
    ),
) -> ArgsT:
    """The arguments a resumed run continues with: its saved config.json, except the fields named in `keep`; says which flags it ignores.
    A --num-seeds group's folder (s0, s1, ... each a seed's run) continues as the group of its seed folders."""
    run_dir = Path(args.resume)  # type: ignore[attr-defined]
    if members := seed_group(run_dir):
        return _group_args(args, run_dir, members, keep)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a run folder?")
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(
            f"--resume {run_dir}: {CONFIG_FILE} is not valid JSON; the run folder is damaged"
        ) from None
    defaults = type(args)()  # type: ignore[operator]
    fields = {f.name for f in dataclasses.fields(args)}  # type: ignore[arg-type]
    updates = {k: v for k, v in saved.items() if k in fields and k not in keep}
    for k, v in updates.items():
        if isinstance(getattr(args, k), tuple) and isinstance(v, list):
            updates[k] = tuple(v)
    ignored = [
        f"{_flag(k)} {getattr(args, k)}"
        for k, v in updates.items()
        if k != "run_dir" and getattr(args, k) != getattr(defaults, k) and getattr(args, k) != v
    ]
    if ignored:
        print(
            f"note: --resume {run_dir} continues with its saved config.json; ignoring "
            f"{', '.join(ignored)} (only {', '.join(_flag(k) for k in keep if k != 'resume')} may change)"
        )
    updates["run_dir"] = str(run_dir)
    return dataclasses.replace(args, **updates)  # type: ignore[type-var]


def seed_group(folder: Path) -> list[Path]:
    """The seed folders s0, s1, ... of a --num-seeds group's --run-dir, or [] when `folder` is a run or empty."""
    members: list[Path] = []
    if not (folder / CONFIG_FILE).is_file():
        while (folder / f"s{len(members)}" / CONFIG_FILE).is_file():
            members.append(folder / f"s{len(members)}")
    return members


def _group_args(args: ArgsT, run_dir: Path, members: list[Path], keep: Sequence[str]) -> ArgsT:
    """resume_args of a group: seed 0's saved flags, with as many seeds as it has folders; every seed's flags must
    be seed 0's but for its seed (seed 0's + k) and folder."""
    if not hasattr(args, "num_seeds"):
        raise UsageError(
            f"--resume {run_dir}: holds a group of seeds (s0, s1, ...); resume one, --resume {members[0]}"
        )
    first = resume_args(dataclasses.replace(args, resume=str(members[0])), (*keep, "num_seeds"))  # type: ignore[type-var]

    def own(config: dict) -> dict:  # the flags every seed of a group shares
        return {k: v for k, v in config.items() if k not in (*keep, "seed", "run_dir")}

    try:
        saved = [json.loads((m / CONFIG_FILE).read_text()) for m in members]
    except json.JSONDecodeError:
        raise CheckpointError(
            f"--resume {run_dir}: a seed's {CONFIG_FILE} is not valid JSON; the group is damaged"
        ) from None
    shared = [own(config) for config in saved]
    for k, config in enumerate(saved):
        if shared[k] != shared[0] or config.get("seed") != saved[0].get("seed", 0) + k:
            differ = sorted(
                key for key in {*shared[k], *shared[0]} if shared[k].get(key) != shared[0].get(key)
            )
            raise UsageError(
                f"--resume {run_dir}: {members[k].name} is not seed {k} of s0's group (differs in "
                f"{', '.join(differ) or 'seed'}); resume its seeds one by one, --resume {run_dir}/s<k>"
            )
    asked = args.num_seeds  # type: ignore[attr-defined]
    if asked not in (1, len(members)):
        print(
            f"note: --resume {run_dir} continues its {len(members)} seeds; ignoring --num-seeds {asked}"
        )
    return dataclasses.replace(
        first, num_seeds=len(members), run_dir=str(run_dir), resume=str(run_dir)
    )  # type: ignore[type-var]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def _new_folder(base: Path) -> Path:
    """Create and return `base`, or `base-2`, `base-3`, ... when another run took it (mkdir is atomic)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder name beside {base}")


class Run:
    """One run folder: config.json, TensorBoard events, evaluation bookkeeping and metrics.json at the end."""

    def __init__(
        self,
        algo: str,
        target: str,
        seed: int,
        config: Any,
        run_dir: str | None = None,
        overwrite: bool = False,
        tracker_id: str | None = None,
    ) -> None:
        """`config.track` also logs to Weights & Biases; `tracker_id` continues that W&B run (--resume)."""
        from torch.utils.tensorboard import SummaryWriter

        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.dir = _new_folder(Path("runs") / f"{algo}__{_slug(target)}__s{seed}__{stamp}")
        else:
            self.dir = Path(run_dir)
            if overwrite and self.dir.is_dir() and _holds_run(self.dir):
                for entry in self.dir.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            self.dir.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()}
        # Started before the run's own files are written, so a W&B that cannot start leaves no run behind.
        # ocrl.experiment.tracking's WandbTracker, imported only for --track.
        track = feature("track") if cfg.get("track") else None
        self.tracker = track(self.dir, cfg, tracker_id) if track is not None else None
        # Rewritten at every start, so a reused --run-dir describes the run that is in it now.
        atomic_write_text(self.dir / CONFIG_FILE, json.dumps(cfg, indent=2, default=str))
        print(f"run folder: {self.dir} (tensorboard --logdir {self.dir})")
        self.writer = SummaryWriter(str(self.dir))
        table = "\n".join(f"|{k}|{v}|" for k, v in cfg.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.started = time.time()
        self.elapsed_before = 0.0
        self.last_eval: dict[str, float] = {}
        self.best_score = -math.inf
        self.best_return = -math.inf

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT_FILE

    @property
    def wall_time(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Write scalars (already on the host) under their tag names."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)
        if self.tracker is not None:
            self.tracker.log(step, scalars)

    def log_eval(self, step: int, result: Mapping[str, float | None]) -> str:
        """Log an evaluation (`return`, `normalized_score`, ...) as eval/* and track the best; return a short summary."""
        self.last_eval = dict(result)
        self.log(step, {f"eval/{k}": v for k, v in result.items() if v is not None})
        score = result.get("normalized_score")
        if score is not None:
            self.best_score = max(self.best_score, float(score))
        self.best_return = max(self.best_return, float(result["return"]))
        if score is not None:
            return f"score={float(score):.1f}"
        return f"return={float(result['return']):.1f}"

    def state_dict(self) -> dict:
        return {
            "wall_time": self.wall_time,
            "best_score": self.best_score,
            "best_return": self.best_return,
            "last_eval": json.dumps(self.last_eval),
            "tracker_id": self.tracker.id if self.tracker is not None else "",
        }

    def load_state_dict(self, state: dict) -> None:
        self.elapsed_before = float(state["wall_time"])
        self.started = time.time()
        self.best_score = float(state["best_score"])
        self.best_return = float(state["best_return"])
        self.last_eval = json.loads(state["last_eval"])

    def finish(self, steps: int, extra: Mapping[str, Any] | None = None) -> dict:
        """Write metrics.json (which marks the run finished), close the logs and return the metrics."""
        score = self.last_eval.get("normalized_score")
        metrics = {
            "normalized_score": score,
            "normalized_score_best": self.best_score if score is not None else None,
            "return": self.last_eval.get("return"),
            "return_best": self.best_return if self.last_eval else None,
            "steps": steps,
            "wall_time_s": round(self.wall_time, 2),
            "run_dir": str(self.dir),
        }
        metrics.update(extra or {})
        atomic_write_text(self.dir / METRICS_FILE, json.dumps(metrics, indent=2))
        self.writer.close()
        if self.tracker is not None:
            self.tracker.finish(metrics)
            self.tracker = None
        shown = (
            f"normalized score {score:.1f} (best {self.best_score:.1f}), "
            if score is not None
            else ""
        )
        if metrics["return"] is not None:
            shown += f"return {metrics['return']:.1f}; "
        print(
            f"finished {steps} steps in {metrics['wall_time_s']:.0f}s: {shown}"
            f"logs and metrics.json in {self.dir} (tensorboard --logdir {self.dir})"
        )
        return metrics

    def close(self) -> None:
        """Close the logs of a run that stops early (divergence); a tracked W&B run is marked failed."""
        self.writer.close()
        if self.tracker is not None:
            self.tracker.finish(exit_code=1)
            self.tracker = None


def check_finite(step: int, values: Mapping[str, float], run: Run | None = None) -> None:
    """Stop a diverging run with a message naming the loss, the step and the last good checkpoint."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        where = ""
        if run is not None and run.checkpoint_path.exists():
            where = f" The last good checkpoint is {run.checkpoint_path}."
        if run is not None:
            run.close()
        raise FloatingPointError(
            f"training diverged at step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}.{where} "
            "Lower the learning rate, check the data for outliers, or change the seed."
        )


def __getattr__(name: str):
    # WandbTracker moved to ocrl.experiment.tracking (imported only for --track); this keeps
    # `from ocrl.experiment.run import WandbTracker` working.
    if name == "WandbTracker":
        from ocrl.experiment.tracking import WandbTracker

        return WandbTracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
