"""The plumbing of a training loop, once for every algorithm: resume, checkpoints, loss logs, progress, final evaluation.

An algorithm file keeps its loop visible and calls one method for each of these:

    loop = TrainingLoop("td3_bc", dataset.name, args, agent.parts(), np_rng, normalizer=...,
                        policy=agent.actor)        # acts with agent.actor.act: policy.pt2 at the end
    for step in loop.steps():                      # continues from the checkpoint on --resume
        metrics = agent.update(buffer.sample(args.batch_size), ...)
        loop.log(metrics)                          # every --log-every steps: floats, finiteness, rate
        if loop.due(args.eval_every):
            loop.evaluate(evaluator, agent.actor.act)  # also the checkpoint with --save-model
    return loop.finish(evaluator, agent.actor.act, dataset=...)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ocrl.experiment.policy import POLICY_FILE, Acting
from ocrl.experiment.run import (
    CheckpointError,
    Run,
    UsageError,
    check_finite,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from ocrl.plugins import feature


def write_policy(
    run_dir: Path, acting: Any, evaluator: Any, info: dict[str, Any], onnx: bool = False
) -> Path | None:
    """`ocrl.experiment.policy.write_policy`, imported on first use; None (no file) in a copy made without it."""
    write = feature("policy")
    return None if write is None else write(run_dir, acting, evaluator, info, onnx=onnx)


class Agent:
    """Base of a file's networks, targets and optimisers; its checkpoint parts are the attributes that have a state."""

    def parts(self) -> dict[str, Any]:
        """Every attribute with a state_dict (modules, optimisers, buffers) or that is a tensor, by attribute name."""
        return {
            name: value
            for name, value in vars(self).items()
            if isinstance(value, torch.Tensor) or hasattr(value, "state_dict")
        }


class TensorPart:
    """A bare tensor (e.g. SAC's log-temperature) as a checkpoint part with state_dict/load_state_dict."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def state_dict(self) -> torch.Tensor:
        return self.tensor.detach().clone()

    def load_state_dict(self, state: torch.Tensor) -> None:
        with torch.no_grad():
            self.tensor.copy_(state)


def _as_parts(parts: Mapping[str, Any]) -> dict[str, Any]:
    return {k: TensorPart(v) if isinstance(v, torch.Tensor) else v for k, v in parts.items()}


def _all_finite(state: Any) -> bool:
    """True when every floating tensor in a (nested) state dict is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, Mapping):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_all_finite(v) for v in state)
    return not isinstance(state, float) or math.isfinite(state)


class TrainingLoop:
    """Resume, progress bar, interval loss logs with the finiteness check, evaluation, checkpoints and metrics.json
    (`checkpoint`: --resume's checkpoint when the caller has read it already)."""

    def __init__(
        self,
        algo: str,
        target: str,
        args: Any,
        parts: Mapping[str, Any],
        np_rng: np.random.Generator | None,
        *,
        normalizer: Mapping[str, np.ndarray | None] | None = None,
        rate_tag: str = "charts/updates_per_s",
        policy: Acting | torch.nn.Module | None = None,
        progress: bool | None = None,
        checkpoint: dict | None = None,
    ) -> None:
        self.args = args
        self.algo, self.policy = algo, policy
        self.total = int(args.total_steps)
        self.parts = _as_parts(parts)
        self.np_rng = np_rng
        self.normalizer = {
            k: torch.as_tensor(v) for k, v in (normalizer or {}).items() if v is not None
        }
        self.rate_tag = rate_tag
        self.step = 0
        ckpt = None
        if getattr(args, "resume", None):
            # Read and check the checkpoint before the run folder is touched: a bad file changes nothing.
            ckpt = (
                checkpoint if checkpoint is not None else load_checkpoint(Path(args.resume), "cpu")
            )
            self._check_normalizer(ckpt, Path(args.resume))
            self.step = restore_training_state(ckpt, self.parts, np_rng, None)
        # --overwrite empties a finished run's folder; a resumed run continues in its own.
        overwrite = getattr(args, "overwrite", False) and ckpt is None
        tracker_id = (ckpt["run"].get("tracker_id") or None) if ckpt is not None else None
        self.run = Run(algo, target, args.seed, args, args.run_dir, overwrite, tracker_id)
        if ckpt is not None:
            self.run.load_state_dict(ckpt["run"])
        self.resumed_from = self.step
        self._stride = 1
        self._latest: dict[str, torch.Tensor] = {}  # device tensors, read on the host at log steps
        self._sums: dict[str, torch.Tensor] = {}  # keys with a '/': interval means
        self._counts: dict[str, int] = {}
        self._tick, self._tick_step = time.perf_counter(), self.step
        self.pbar = tqdm(
            total=self.total,
            initial=self.step,
            desc=algo,
            disable=not (getattr(args, "progress", True) if progress is None else progress),
            dynamic_ncols=True,
        )

    def _check_normalizer(self, ckpt: dict, where: Path) -> None:
        saved = ckpt.get("normalizer", {})
        for name, value in self.normalizer.items():
            if name not in saved or not torch.allclose(saved[name], value, rtol=1e-5, atol=1e-6):
                raise CheckpointError(
                    f"--resume {where}: the data's '{name}' differs from the checkpoint's; resume "
                    "with the dataset and normalisation flags of the run that wrote it"
                )

    @property
    def dir(self) -> Path:
        """The run folder."""
        return self.run.dir

    @property
    def video_folder(self) -> Path | None:
        """With --capture-video, where the evaluator records its episodes (the run folder's videos/), else None."""
        return self.dir / "videos" if getattr(self.args, "capture_video", False) else None

    def steps(self, stride: int = 1) -> Iterator[int]:
        """Yield the count of steps done before each iteration (from the checkpoint's on --resume); `self.step` is the count after it."""
        self._stride = stride
        while self.step < self.total:
            start = self.step
            self.step = start + stride
            yield start
            self.pbar.update(stride)

    def due(self, every: int) -> bool:
        """Whether this iteration reaches a multiple of `every` steps, or is the last."""
        return self.step // every > (self.step - self._stride) // every or self.step >= self.total

    def log(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Keep an update's metrics; every --log-every steps write losses/<name> (latest) and '<group>/<name>' (interval means)."""
        for key, value in metrics.items():
            if "/" in key:
                self._sums[key] = self._sums[key] + value if key in self._sums else value
                self._counts[key] = self._counts.get(key, 0) + 1
            else:
                self._latest[key] = value
        if self.due(self.args.log_every):
            self.flush()

    def _host_values(self) -> dict[str, float]:
        values = {f"losses/{k}": float(v) for k, v in self._latest.items()}
        values.update({k: float(v) / self._counts[k] for k, v in self._sums.items()})
        return values

    def flush(self) -> None:
        """Write the kept metrics now (one host synchronisation), stopping the run if any is not finite."""
        if not (self._latest or self._sums):
            return
        values = self._host_values()
        check_finite(self.step, values, self.run)
        self._sums, self._counts = {}, {}
        now = time.perf_counter()
        values[self.rate_tag] = (self.step - self._tick_step) / max(now - self._tick, 1e-9)
        self._tick, self._tick_step = now, self.step
        self.run.log(self.step, values)

    def checkpoint(self) -> None:
        """Save every part, the RNG states and the normaliser atomically, only from finite losses and weights."""
        if self._latest or self._sums:
            check_finite(self.step, self._host_values(), self.run)
        state = training_state(
            self.step, self.parts, self.np_rng, self.run, normalizer=self.normalizer
        )
        bad = [name for name in self.parts if not _all_finite(state[name])]
        if bad:
            check_finite(self.step, {f"weights of {', '.join(bad)}": math.nan}, self.run)
        save_checkpoint(self.run.checkpoint_path, state)

    def evaluate(
        self, evaluator: Callable[[Any], dict], policy: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict:
        """Evaluate `policy`, log eval/*, show the score, and with --save-model write the checkpoint and policy
        file; with --capture-video the first episode goes to videos/step-<step>.mp4."""
        result = self._evaluate(evaluator, policy)
        self.pbar.set_postfix_str(self.run.log_eval(self.step, result))
        if getattr(self.args, "save_model", False):
            self.checkpoint()
            self.write_policy(evaluator, result)
        return result

    def _evaluate(self, evaluator: Any, policy: Callable[[Any], Any]) -> dict:
        if self.video_folder is None:
            return evaluator(policy)
        evaluator.record_video(self.video_folder)
        return evaluator(policy, video_name=f"step-{self.step:09d}")

    def write_policy(self, evaluator: Any, result: dict) -> None:
        """Write policy.pt2 and policy.json of the acting module given as `policy` (none without one)."""
        if self.policy is None or evaluator is None:
            return
        info = {
            "algorithm": self.algo,
            "dataset": getattr(self.args, "dataset", None),
            "seed": self.args.seed,
            "step": self.step,
            "eval": result,
        }
        # torch.export fails in many ways; the run's checkpoint and metrics stand without a policy file.
        try:
            onnx = getattr(self.args, "export_onnx", False)  # PolicyExportArgs
            write_policy(self.dir, self.policy, evaluator, info, onnx=onnx)
        except Exception as err:
            warnings.warn(
                f"{self.dir / POLICY_FILE} not written at step {self.step} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
                "the checkpoint and metrics are unaffected",
                RuntimeWarning,
                stacklevel=2,
            )

    def finish(self, evaluator: Any, policy: Callable[[Any], Any] | None, **extra: Any) -> dict:
        """Evaluate once if this run never did (a resumed finished run; not for evaluator None, a model with no
        policy), write the policy file, close everything, write metrics.json."""
        self.pbar.close()
        if evaluator is not None:
            if not self.run.last_eval:
                self.pbar.set_postfix_str(
                    self.run.log_eval(self.step, self._evaluate(evaluator, policy))
                )
            self.write_policy(evaluator, self.run.last_eval)
            evaluator.close()
        return self.run.finish(self.step, {"resumed_from": self.resumed_from, **extra})


class SeedLoops:
    """The TrainingLoops of the seeds of --num-seeds N driven as one: the same steps; each seed's metrics, evaluation,
    checkpoints and run folder its own. Seed k's loop runs with the flags of a single-seed run of seed + k (its
    --run-dir DIR/s<k>) on seed k's slice of every part (`nets.seeds.seed_parts`), so it writes that run's files.
    `evaluator(seed)` makes each seed's evaluator; `policy()` the actor a single-seed run builds, one per seed,
    refreshed from the stacked actor to act and to be exported (None for either: no evaluation, no policy file).
    `snapshots`: each seed's evaluator is a `SnapshotEvaluator` of its actor (--save-snapshots)."""

    def __init__(
        self, algo: str, target: str, args: Any, parts: Mapping[str, Any],
        np_rng: np.random.Generator | None, *, evaluator: Callable[[int], Any] | None = None,
        policy: Callable[[], torch.nn.Module] | None = None,
        normalizer: Mapping[str, np.ndarray | None] | None = None,
        rate_tag: str = "charts/updates_per_s", snapshots: bool = False,
    ) -> None:  # fmt: skip
        from ocrl.experiment.flags import seed_run_dirs
        from ocrl.nets.seeds import seed_parts

        n = self.num_seeds = args.num_seeds
        seeds = range(args.seed, args.seed + n)
        self.evaluators = [evaluator(seed) if evaluator else None for seed in seeds]
        policies = [policy() if policy else None for _ in seeds]
        run_dirs = seed_run_dirs(args.run_dir, n) or [None] * n
        resume = [run_dirs[k] if getattr(args, "resume", None) else None for k in range(n)]
        # Every seed's checkpoint read and at one step before any seed's folder is touched; memory-mapped, so that
        # N checkpoints (each with, say, PRDC's whole dataset) are not all held in memory at once.
        checkpoints = [load_checkpoint(Path(d), "cpu", mmap=True) if d else None for d in resume]
        steps = {int(c["step"]) for c in checkpoints if c is not None}
        if len(steps) > 1:
            raise UsageError(
                f"--resume {args.resume}: its seeds' checkpoints are at different steps ({sorted(steps)}); "
                f"resume the seeds one by one, --resume {args.resume}/s<k>"
            )
        self.loops = [
            TrainingLoop(
                algo, target,
                dataclasses.replace(args, seed=args.seed + k, num_seeds=1, run_dir=run_dirs[k], resume=resume[k]),
                seed_parts(dict(parts), k, n), np_rng, normalizer=normalizer, policy=policies[k],
                progress=getattr(args, "progress", True) and k == 0, checkpoint=checkpoints[k],
                rate_tag=rate_tag,
            )
            for k in range(n)
        ]  # fmt: skip
        if snapshots:
            self.evaluators = [
                SnapshotEvaluator(e, loop.policy, loop)
                for e, loop in zip(self.evaluators, self.loops, strict=True)
            ]

    @property
    def step(self) -> int:
        """Steps done, the same in every seed's loop."""
        return self.loops[0].step

    @property
    def runs(self) -> list[Run]:
        """Each seed's Run (its episode logs go there)."""
        return [loop.run for loop in self.loops]

    def steps(self, stride: int = 1) -> Iterator[int]:
        """Every loop's `steps`, in lockstep."""
        for step, *_ in zip(*(loop.steps(stride) for loop in self.loops), strict=True):
            yield step

    def due(self, every: int) -> bool:
        """`TrainingLoop.due`, the same for every seed."""
        return self.loops[0].due(every)

    def log(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Log each seed's entry of the (N,) metrics in its own loop."""
        for k, loop in enumerate(self.loops):
            loop.log({key: value[k] for key, value in metrics.items()})

    def _policy(self, k: int, actor: torch.nn.Module) -> Callable[[Any], Any]:
        from ocrl.nets.seeds import seed_member

        return seed_member(actor, self.loops[k].policy, k, self.num_seeds).act

    def evaluate(self, actor: torch.nn.Module) -> list[dict]:
        """`TrainingLoop.evaluate` of every seed with its evaluator and its slice of the stacked `actor`."""
        return [
            loop.evaluate(self.evaluators[k], self._policy(k, actor))
            for k, loop in enumerate(self.loops)
        ]

    def finish(self, actor: torch.nn.Module, **extra: Any) -> dict:
        """`TrainingLoop.finish` of every seed: its metrics (one seed), or {"seeds": [seed 0's, seed 1's, ...]}."""
        results = [
            loop.finish(self.evaluators[k], self._policy(k, actor), **extra)
            for k, loop in enumerate(self.loops)
        ]
        return results[0] if len(results) == 1 else {"seeds": results}


class SnapshotEvaluator:
    """An evaluator that also keeps the evaluated actor in the run's snapshots/ (actor_<step>.pt with its
    score, and a line of index.jsonl), e.g. for scripts/collect_dataset.py."""

    def __init__(self, evaluator: Any, actor: torch.nn.Module, loop: TrainingLoop) -> None:
        self.evaluator, self.actor, self.loop = evaluator, actor, loop
        self.folder = loop.dir / "snapshots"

    def __call__(self, policy: Callable[[torch.Tensor], torch.Tensor], **kwargs: Any) -> dict:
        result = self.evaluator(policy, **kwargs)
        step, name = self.loop.step, f"actor_{self.loop.step:09d}.pt"
        self.folder.mkdir(exist_ok=True)
        save_checkpoint(
            self.folder / name, {"actor": self.actor.state_dict(), "step": step, **result}
        )
        with open(self.folder / "index.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "file": name, **result}) + "\n")
        return result

    def record_video(self, folder: Path) -> None:
        """Record the first episode of every later evaluation (`Evaluator.record_video`)."""
        self.evaluator.record_video(folder)

    def close(self) -> None:
        self.evaluator.close()
