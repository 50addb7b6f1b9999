"""The policy file of a run: `policy.pt2`, a torch.export program of the deterministic acting function with
its observation normalisation and action clipping inside, and `policy.json`, what it was trained and scored on.

The program maps raw float32 observations (B, obs_dim), any B, to the actions the evaluator sends to the env,
so it loads with torch alone: ``torch.export.load("policy.pt2").module()(obs)``. `TrainingLoop(..., policy=)`
writes both files at the end of a run and with every checkpoint; `load_policy` reads them back. With
--export-onnx (`PolicyExportArgs`, ocrl.experiment.args) the same program is also written as `policy.onnx` for onnxruntime.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ocrl.experiment.run import CheckpointError
from ocrl.files import atomic_path, atomic_write_text, source_commit

POLICY_FILE = "policy.pt2"
POLICY_INFO = "policy.json"
ONNX_FILE = "policy.onnx"
FORMAT = 1
# policy.onnx is checked against policy.pt2 on this many observations; float actions must agree to
# ONNX_TOLERANCE (absolute; measured at most 3.6e-7 on tiny runs of every algorithm that exports, see
# docs/runs.md), integer ones (PDPPO's) exactly.
ONNX_BATCH = 64
ONNX_TOLERANCE = 1e-5


@dataclass
class Acting:
    """What an algorithm acts with at evaluation: `module.<method>` on observations that `obs_rms` (an
    `ObservationNormalizer`, e.g. PPO's) standardises first; a bare module means `Acting(module)`. Acting
    that is more than one module's method (EXPO's max-Q over samples) is a `function` of the evaluator's
    observations, exported as it is: a `stochastic` one draws from torch's global generator as in the run."""

    module: nn.Module | None = None
    obs_rms: Any = None
    method: str = "act"
    function: Callable[[torch.Tensor], torch.Tensor] | None = None
    stochastic: bool = False


class PolicyProgram(nn.Module):
    """Raw observations -> the evaluator's standardisation -> the algorithm's own normaliser -> acting -> clipping
    to the env's action bounds: exactly what `Evaluator` computes around a policy, as one module."""

    def __init__(
        self,
        acting: Acting,
        obs_mean: torch.Tensor | None = None,
        obs_std: torch.Tensor | None = None,
        action_low: np.ndarray | None = None,
        action_high: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        # A CPU copy: the file is device-free and training goes on with the original. A function reads
        # the agent's own networks (on the CPU: write_policy checks), which the export copies.
        self.function = acting.function
        if self.function is None:
            self.actor = copy.deepcopy(acting.module).cpu().requires_grad_(False)
        self.method = acting.method
        self.standardise = obs_mean is not None
        if self.standardise:
            self.register_buffer("obs_mean", torch.as_tensor(obs_mean).float().cpu().clone())
            self.register_buffer("obs_std", torch.as_tensor(obs_std).float().cpu().clone())
        rms = acting.obs_rms
        # ObservationNormalizer computes in float64 then casts: the same operations here give the same bits.
        self.running = rms is not None and rms.enabled
        if self.running:
            self.register_buffer("rms_mean", torch.as_tensor(np.array(rms.mean, np.float64)))
            self.register_buffer("rms_std", torch.as_tensor(np.sqrt(rms.var + 1e-8)))
            self.rms_clip = float(rms.clip)
        self.clip = action_low is not None
        if self.clip:
            self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs
        if self.standardise:
            x = (x - self.obs_mean) / self.obs_std
        if self.running:
            x = ((x.double() - self.rms_mean) / self.rms_std).clamp(-self.rms_clip, self.rms_clip)
            x = x.float()
        if self.function is not None:
            action = self.function(x)
        else:
            action = getattr(self.actor, self.method)(x)
        if self.clip:
            action = torch.clamp(action, self.action_low, self.action_high)
        return action


def _space(space: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(space).__name__, "shape": list(space.shape or ())}
    info["dtype"] = str(np.dtype(space.dtype)) if space.dtype is not None else None
    for bound in ("low", "high"):
        value = getattr(space, bound, None)
        if value is not None and np.all(np.isfinite(value)):
            info[bound] = np.asarray(value, dtype=np.float64).tolist()
    for count in ("n", "nvec"):
        if getattr(space, count, None) is not None:
            info[count] = np.asarray(getattr(space, count)).tolist()
    return info


def export_program(
    program: nn.Module, obs_dim: int, prune: bool = True
) -> torch.export.ExportedProgram:
    """torch.export `program` for float32 observations (B, obs_dim) with B dynamic; `prune` drops unused sampling."""
    example = torch.zeros(2, obs_dim, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        exported = torch.export.export(program, (example,), dynamic_shapes={"obs": {0: batch}})
    # Acting often returns one output of a forward that also samples (SAC's mean action): drop the unused
    # sampling, so calling the program neither costs it nor draws from the caller's random stream. A
    # stochastic program keeps every draw, so that it draws the run's numbers from the same seed.
    if not prune:
        return exported
    try:
        exported.graph_module.graph.eliminate_dead_code(is_impure_node=_mutates)
    except TypeError:  # torch < 2.6 has no is_impure_node: the program keeps its unused sampling
        return exported
    exported.graph_module.recompile()
    return exported


def _mutates(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op in ("placeholder", "output") or (schema is not None and schema.is_mutable)


def write_onnx(
    run_dir: str | Path, exported: torch.export.ExportedProgram, obs_dim: int, stochastic: bool
) -> dict[str, Any] | None:
    """Write policy.onnx from `exported` when onnxruntime gives its actions on a batch; else warn, write none
    (and remove an older one, which would not match policy.pt2). Returns what policy.json records of it."""
    path = Path(run_dir) / ONNX_FILE
    try:
        if stochastic:
            raise ValueError(
                "the acting program samples from torch's generator, whose draws ONNX cannot repeat; "
                f"{POLICY_FILE} holds it"
            )
        diff = _save_onnx(exported, obs_dim, path)
    except Exception as err:  # the exporter fails in many ways; policy.pt2 stands without it
        path.unlink(missing_ok=True)
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        warnings.warn(
            f"{path} not written ({type(err).__name__}: {reason})", RuntimeWarning, stacklevel=3
        )
        return None
    return {"file": ONNX_FILE, "checked_batch": ONNX_BATCH, "max_abs_diff": diff}


def _save_onnx(exported: torch.export.ExportedProgram, obs_dim: int, path: Path) -> float:
    import onnxruntime

    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it lists the torchvision ops it skips, at every export
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                exported, dynamo=True, input_names=["obs"], output_names=["action"], verbose=False
            )
    finally:
        exporter_log.setLevel(level)
    obs = np.random.default_rng(0).standard_normal((ONNX_BATCH, obs_dim)).astype(np.float32) * 3
    with torch.no_grad():
        want = exported.module()(torch.from_numpy(obs)).numpy()
    with atomic_path(path, suffix=".onnx") as tmp:
        program.save(tmp, external_data=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(tmp), options, ["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: obs})[0]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(
                f"onnxruntime gives {got.dtype}{got.shape}, torch {want.dtype}{want.shape}"
            )
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
        exact = not np.issubdtype(want.dtype, np.floating)
        if diff > (0.0 if exact else ONNX_TOLERANCE):
            raise ValueError(f"onnxruntime's actions differ from torch's by up to {diff:.3g}")
    return diff


def write_policy(
    run_dir: str | Path,
    acting: Acting | nn.Module,
    evaluator: Any,
    info: dict[str, Any],
    onnx: bool = False,
) -> Path:
    """Write policy.pt2 (the acting program around `evaluator`'s normalisation and action bounds) and
    policy.json (`info` plus the env, spaces, evaluation seeds and reference scores) into `run_dir`;
    with `onnx`, also policy.onnx (`write_onnx`)."""
    acting = acting if isinstance(acting, Acting) else Acting(acting)
    evaluator = getattr(evaluator, "evaluator", evaluator)  # a SnapshotEvaluator's inner one
    if acting.function is not None and evaluator.device.type != "cpu":
        raise ValueError(
            f"an acting function is exported from CPU runs only (this run acts on {evaluator.device})"
        )
    program = PolicyProgram(
        acting, evaluator.obs_mean, evaluator.obs_std, evaluator.action_low, evaluator.action_high
    )
    obs_space = evaluator.envs.single_observation_space
    obs_dim = int(obs_space.shape[0])
    exported = export_program(program, obs_dim, prune=not acting.stochastic)
    run_dir = Path(run_dir)
    with atomic_path(run_dir / POLICY_FILE, suffix=".pt2") as tmp:
        torch.export.save(exported, tmp)
    onnx_info = None
    if onnx:
        onnx_info = write_onnx(run_dir, exported, obs_dim, acting.stochastic)
    else:  # one from an earlier write (a resumed run) would not match the new policy.pt2
        (run_dir / ONNX_FILE).unlink(missing_ok=True)
    from ocrl.envs.evaluation import TimeFeature

    first_env = evaluator.envs.envs[0]
    env_kwargs = getattr(evaluator, "env_kwargs", {})
    # Settings JSON cannot hold (a lot-sizing instance object) are named, so evaluate.py can refuse.
    unrecorded = [k for k, v in env_kwargs.items() if not _json_ok(v)]
    meta = {
        "format": FORMAT,
        **info,
        "env_id": evaluator.env_id,
        "env_kwargs": {k: v for k, v in env_kwargs.items() if k not in unrecorded},
        "env_kwargs_unrecorded": unrecorded,
        "time_feature": isinstance(first_env, TimeFeature),
        "stochastic": acting.stochastic,
        "onnx": onnx_info,
        "observation_space": _space(obs_space),
        "action_space": _space(evaluator.envs.single_action_space),
        "eval_episodes": evaluator.num_episodes,
        "eval_seeds": list(evaluator.seeds),
        "ref_min_score": evaluator.ref_min_score,
        "ref_max_score": evaluator.ref_max_score,
        "source_commit": source_commit(),
        "torch": torch.__version__,
    }
    atomic_write_text(run_dir / POLICY_INFO, json.dumps(meta, indent=2, default=str))
    return run_dir / POLICY_FILE


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


class PolicyError(CheckpointError):
    """A folder without a readable policy file; the message names the folder and the fix."""


def load_policy(run_dir: str | Path) -> Callable[[Any], Any]:
    """The policy of a run folder as a callable: numpy (B, obs_dim) or (obs_dim,) in -> numpy out, torch in -> torch out."""
    run_dir = Path(run_dir)
    path = run_dir / POLICY_FILE if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise PolicyError(
            f"no {POLICY_FILE} in {run_dir}: pass a run folder of an algorithm that acts (it writes "
            f"{POLICY_FILE} at the end of the run)"
        )
    try:
        module = torch.export.load(str(path)).module()
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise PolicyError(
            f"{path} is not a readable torch.export program ({type(err).__name__}); "
            "rerun the training or pass another run folder"
        ) from None

    def policy(obs: Any) -> Any:
        is_torch = isinstance(obs, torch.Tensor)
        x = obs if is_torch else torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        single = x.ndim == 1
        with torch.no_grad():
            out = module(x.float()[None] if single else x.float())
        out = out[0] if single else out
        return out if is_torch else out.numpy()

    policy.module = module  # type: ignore[attr-defined]
    return policy
