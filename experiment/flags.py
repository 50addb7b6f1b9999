"""The command line: parsing Args with presets, one-line errors for unknown flags and bad values,
`check_args` (counts, seeds, learning rates, optional extras, run folders, writable outputs) and `friendly_errors`."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import io
import math
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from ocrl.data.dataset import DatasetError
from ocrl.experiment.run import (
    CheckpointError,
    UsageError,
    _flag,
    _holds_run,
)
from ocrl.plugins import FEATURES

ArgsT = TypeVar("ArgsT")

#: Fields that must be positive wherever an Args dataclass has them.
POSITIVE_FIELDS = (
    "total_steps", "batch_size", "eval_every", "eval_episodes", "log_every", "num_envs",
    "buffer_size", "policy_freq", "num_seeds",
)  # fmt: skip


#: The largest --seed: NumPy's legacy generator, which every run seeds, takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Added below the Args docstring in --help; an exported algorithm (scripts/export.py) says here
#: what did not travel with it.
HELP_NOTE = ""


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
    check_extras(args)
    run_dir, num_seeds = getattr(args, "run_dir", None), getattr(args, "num_seeds", 1)
    for folder in seed_run_dirs(run_dir, num_seeds) if not getattr(args, "resume", None) else ():
        check_run_dir(folder, getattr(args, "overwrite", False))
    for name in ("run_dir", "out"):
        if getattr(args, name, None) is not None:
            check_writable(getattr(args, name), _flag(name))


#: Flags that need an optional extra: (flag field, modules it imports, the extra, the `FEATURES` entry that
#: does the work, what it is for).
EXTRAS = (
    ("track", "wandb", "track", "track", "Weights & Biases"),
    ("capture_video", "moviepy", "video", "video", "MoviePy, which writes the MP4s"),
    (
        "export_onnx",
        "onnx onnxscript onnxruntime",
        "onnx",
        "policy",
        "ONNX, its exporter and onnxruntime",
    ),
)


def check_extras(args: Any) -> None:
    """Raise UsageError when a flag that is on needs an optional extra that is not installed, or a
    feature a copy made by scripts/export.py was made without."""
    for flag_field, modules, extra, feature_name, what in EXTRAS:
        if not getattr(args, flag_field, False):
            continue
        if feature_name not in FEATURES:
            raise UsageError(
                f"{_flag(flag_field)}: this copy of the algorithm was exported without it; export "
                f"it again with scripts/export.py --features {feature_name}, or drop {_flag(flag_field)}"
            )
        missing = [m for m in modules.split() if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(
                f"{_flag(flag_field)}: needs {what} ({', '.join(missing)}), which is not installed; "
                f"pip install -e '.[{extra}]'"
            )


def seed_run_dirs(run_dir: str | None, num_seeds: int) -> list[str]:
    """The run folders of --run-dir for --num-seeds: the folder itself for one seed, <folder>/s<k> for several
    (none without --run-dir: each seed takes the default name, which holds its seed)."""
    if run_dir is None:
        return []
    return [run_dir] if num_seeds == 1 else [str(Path(run_dir) / f"s{k}") for k in range(num_seeds)]


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
            doc = args_cls.__doc__ or ""
            doc = "" if doc.startswith(f"{args_cls.__name__}(") else doc  # dataclass's stand-in
            description = f"{doc}\n\n{HELP_NOTE}".strip() if HELP_NOTE else None
            parsed = tyro.cli(args_cls, default=default, args=argv, description=description)
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


def run_cli(
    main: Callable[[ArgsT], Any],
    args_cls: type[ArgsT],
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """An algorithm file's `__main__`: `main(cli(args_cls, presets))`, a usage error becoming one line and exit 2."""
    with friendly_errors():
        main(cli(args_cls, presets))
