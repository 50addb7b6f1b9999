"""Run folders: command-line parsing with presets and checks, seeding, device choice, TensorBoard logs, metrics and checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from ocrl.data.offline import DatasetError, atomic_path

ArgsT = TypeVar("ArgsT")

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"


class UsageError(ValueError):
    """A bad flag value; the message names the flag, the value and the fix."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run; the message names the file and the fix."""


#: Fields that must be positive wherever an Args dataclass has them.
POSITIVE_FIELDS = (
    "total_steps", "batch_size", "eval_every", "eval_episodes", "log_every", "num_envs",
    "buffer_size", "policy_freq",
)  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: The largest --seed: NumPy's legacy generator, which every run seeds, takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _is_learning_rate(name: str) -> bool:
    return name == "lr" or name.endswith("_lr") or name.startswith("lr_")


def check_args(
    args: Any, positive: Sequence[str] = POSITIVE_FIELDS, non_negative: Sequence[str] = ()
) -> None:
    """Raise UsageError for a bad value (count <= 0, a `non_negative` field < 0, seed out of range, learning rate
    <= 0, NaN, a run folder in use, an output that cannot be written) before anything is written."""
    fields = {f.name: f for f in dataclasses.fields(args)}
    for name in positive:
        if name not in fields:
            continue
        value = getattr(args, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            default = fields[name].default
            hint = f" (the default is {default})" if isinstance(default, int) else ""
            raise UsageError(f"{_flag(name)} {value}: must be a positive whole number{hint}")
    for name in non_negative:
        if getattr(args, name) < 0:
            raise UsageError(f"{_flag(name)} {getattr(args, name)}: must be >= 0")
    seed = getattr(args, "seed", 0)
    if "seed" in fields and not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise UsageError(f"--seed {seed}: must be a whole number from 0 to {MAX_SEED}")
    for name in fields:
        value = getattr(args, name)
        if not isinstance(value, float):
            continue
        if not math.isfinite(value):
            raise UsageError(f"{_flag(name)} {value}: must be a finite number")
        if _is_learning_rate(name) and value <= 0:
            raise UsageError(f"{_flag(name)} {value}: a learning rate must be > 0 (e.g. 3e-4)")
    for name in ("discount", "tau"):
        if name in fields and not 0.0 <= getattr(args, name) <= 1.0:
            raise UsageError(f"{_flag(name)} {getattr(args, name)}: must lie in [0, 1]")
    if "threads" in fields and (not isinstance(args.threads, int) or args.threads < 0):
        raise UsageError(
            f"--threads {args.threads}: must be a whole number >= 0 (0: torch's default, all cores)"
        )
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None and not getattr(args, "resume", None):
        check_run_dir(run_dir, getattr(args, "overwrite", False))
    for name in ("run_dir", "out"):
        if getattr(args, name, None) is not None:
            check_writable(getattr(args, name), _flag(name))


def _holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE))


def check_run_dir(run_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse a --run-dir that is a file or holds a run (reused only by --resume, or emptied first with --overwrite)."""
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--run-dir {folder}: is a file, not a folder; pick a new folder")
    # Other files (a sweep's stdout.log, say) may share the folder; only a run's own files are refused.
    if not folder.is_dir() or not _holds_run(folder):
        return
    if not overwrite:
        raise UsageError(
            f"--run-dir {folder}: holds a run already; continue it with --resume {folder}, "
            "start over in it with --overwrite (deletes what is there), or pick a new folder"
        )


def check_writable(path: str | Path, flag: str) -> None:
    """Raise UsageError unless a file can be created at `path` (or inside it, for a folder), checked with a probe file that is removed."""
    target = Path(path)
    probe_dir = target if target.is_dir() else target.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(f"{probe_dir} is not a folder")
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".ocrl-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(
            f"{flag} {path}: cannot be written ({reason} in {probe_dir}); choose a writable place"
        ) from None


def _union_members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _value_rule(tp: Any) -> tuple[Callable[[str], bool], str, tuple[str, ...]] | None:
    """(accepts one value, what is accepted, named choices) for a field type; None where tyro alone knows."""
    tests: list[Callable[[str], bool]] = []
    words: list[str] = []
    choices: list[str] = []
    for member in _union_members(tp):
        if member is type(None):
            choices.append("None")
        elif typing.get_origin(member) is Literal:
            choices += [str(c) for c in typing.get_args(member)]
        elif member is int:
            tests.append(lambda v: _parses(int, v))
            words.append("a whole number")
        elif member is float:
            tests.append(lambda v: _parses(float, v))
            words.append("a number")
        elif member in (str, Path):
            return None
        elif typing.get_origin(member) in (tuple, list):
            inner = [a for a in typing.get_args(member) if a is not Ellipsis]
            if inner and all(a is int for a in inner):
                tests.append(lambda v: _parses(int, v))
                words.append("whole numbers")
            elif inner and all(a is float for a in inner):
                tests.append(lambda v: _parses(float, v))
                words.append("numbers")
            else:
                return None
        else:
            return None
    if choices and not words:
        words.append("one of " + ", ".join(choices))
    elif choices:
        words.append(" or ".join(choices))
    return (lambda v: v in choices or any(t(v) for t in tests)), " or ".join(words), tuple(choices)


def _parses(kind: type, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def check_flag_values(args_cls: type, argv: Sequence[str]) -> None:
    """Exit 2 with one line naming the flag, the value and what it accepts, before tyro prints its box."""
    hints = typing.get_type_hints(args_cls)
    by_flag = {f.name.replace("_", "-"): f.name for f in dataclasses.fields(args_cls)}
    argv = list(argv)
    for i, token in enumerate(argv):
        if not token.startswith("--") or token == "--":
            continue
        flag, has_value, inline = token[2:].partition("=")
        name = by_flag.get(flag.replace("_", "-"))
        if name is None or hints[name] is bool:
            continue
        values = [inline] if has_value else []
        if not has_value:
            for later in argv[i + 1 :]:
                if later.startswith("--"):
                    break
                values.append(later)
        rule = _value_rule(hints[name])
        if not values:
            _usage_exit(f"--{flag} needs a value" + (f": {rule[1]}" if rule else ""))
        if rule is None:
            continue
        accepts, what, choices = rule
        for value in values:
            if accepts(value):
                continue
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            _usage_exit(f"--{flag} {value}: expected {what}{hint}")


def _usage_exit(message: str) -> typing.NoReturn:
    print(f"error: {message} (--help lists every flag)", file=sys.stderr)
    raise SystemExit(2)


def check_flag_names(args_cls: type, argv: Sequence[str]) -> None:
    """Exit 2 with one line (and the closest flag) on an unknown --flag, before tyro prints its box."""
    names = {f.name.replace("_", "-") for f in dataclasses.fields(args_cls)} | {"help"}
    for token in argv:
        if not token.startswith("--") or token == "--":
            continue
        name = token[2:].split("=", 1)[0].replace("_", "-")
        if name in names or (name.startswith("no-") and name[3:] in names):
            continue
        close = difflib.get_close_matches(name, sorted(names), n=1)
        hint = f"; did you mean --{close[0]}?" if close else ""
        print(f"error: unknown flag --{name}{hint} (--help lists every flag)", file=sys.stderr)
        raise SystemExit(2)


def cli(
    args_cls: type[ArgsT],
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    argv: Sequence[str] | None = None,
) -> ArgsT:
    """Parse `args_cls` with tyro; `--preset NAME` replaces the defaults with a preset and explicit flags still win."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    check_flag_names(args_cls, argv)
    presets = presets or {}
    default = args_cls()
    name = None
    for i, token in enumerate(argv):
        if token == "--preset" and i + 1 < len(argv):
            name = argv[i + 1]
        elif token.startswith("--preset="):
            name = token.split("=", 1)[1]
    if name is not None and name not in ("None",):
        if name not in presets:
            known = ", ".join(sorted(presets)) or "(none)"
            close = difflib.get_close_matches(name, sorted(presets), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            _usage_exit(f"--preset {name}: expected one of {known}{hint}")
        default = dataclasses.replace(default, **presets[name])
    check_flag_values(args_cls, argv)
    # tyro reports what the checks above do not foresee in a boxed message on stderr: keep it to one line.
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parsed = tyro.cli(args_cls, default=default, args=argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            _usage_exit(_one_line(captured.getvalue()) or "could not parse the flags")
        raise
    sys.stderr.write(captured.getvalue())
    return parsed


def _one_line(boxed: str) -> str:
    """The message of a tyro error box, without the frame, the help text and the line breaks."""
    lines = []
    for raw in boxed.splitlines():
        line = raw.strip().strip("╭╮╰╯│").strip()
        if line and set(line) <= set("─ "):
            if lines:
                break
            continue
        if line.startswith("─") and lines:
            break
        line = line.strip("─ ").strip()
        if line:
            lines.append(line)
    return " ".join(" ".join(lines).split())


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """For `__main__` blocks: bad input (flag, dataset, file, checkpoint) or divergence exits 2 with one clear line."""
    try:
        yield
    except (
        UsageError,
        CheckpointError,
        DatasetError,
        FileNotFoundError,
        PermissionError,
        FloatingPointError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file through a temporary file in the same folder, renamed into place."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save through a temporary file renamed into place, so a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True`, so a shared file cannot run code."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: --resume needs a run folder written with --save-model "
            f"(it holds {CHECKPOINT_FILE})"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
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
            f"checkpoint does not fit this run ({detail[:160]}): was it written by another algorithm "
            "or with other network sizes? Resume with the flags of the run that wrote it"
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
    """The arguments a resumed run continues with: its saved config.json, except the fields named in `keep`; says which flags it ignores."""
    run_dir = Path(args.resume)  # type: ignore[attr-defined]
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
    ) -> None:
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
        self.writer.close()


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
