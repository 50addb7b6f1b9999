"""Weights & Biases for --track: the run's scalars and config beside TensorBoard, imported only when a
run asks for it (`ocrl.plugins.FEATURES`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ocrl.experiment.run import UsageError


class WandbTracker:
    """The run's scalars and config in Weights & Biases (--track), beside TensorBoard; WANDB_MODE=offline works
    without a network."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], run_id: str | None = None) -> None:
        import wandb

        try:
            self.run = self._init(wandb, run_dir, config, run_id)
        # wandb raises its own errors, and others, for a missing login or network.
        except Exception as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise UsageError(
                f"--track: Weights & Biases did not start ({reason}); log in with `wandb login`, "
                "or set WANDB_MODE=offline to write the run locally"
            ) from None
        # Every scalar is plotted against the environment/update step, whatever order tags arrive in (a
        # step= argument would drop values logged for an earlier step).
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    @staticmethod
    def _init(wandb: Any, run_dir: Path, config: Mapping[str, Any], run_id: str | None) -> Any:
        return wandb.init(
            project=config.get("wandb_project") or "ocrl",
            entity=config.get("wandb_entity"),
            group=config.get("wandb_group"),
            config=dict(config),
            name=run_dir.name,
            dir=str(run_dir),
            # A resumed run (--resume) continues the W&B run its checkpoint names.
            id=run_id,
            resume="allow" if run_id else None,
            reinit="finish_previous",
        )

    @property
    def id(self) -> str:
        return self.run.id

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log scalars at `step` (as the global_step metric)."""
        self.run.log({"global_step": step, **{k: float(v) for k, v in scalars.items()}})

    def finish(self, summary: Mapping[str, Any] | None = None, exit_code: int = 0) -> None:
        """Put the final metrics in the run's summary and close it."""
        for key, value in (summary or {}).items():
            if value is not None:
                self.run.summary[f"final/{key}"] = value
        self.run.finish(exit_code=exit_code)
