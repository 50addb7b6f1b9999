"""The run plumbing: run folders, config.json, permissions, --resume notes and finite-only checkpoints."""

from __future__ import annotations

import dataclasses
import math
import os
import stat

import numpy as np
import pytest
import torch

from ocrl.experiment import Run, TrainingLoop, load_checkpoint, resume_args, save_checkpoint


@dataclasses.dataclass
class ToyArgs:
    seed: int = 0
    total_steps: int = 30
    log_every: int = 20
    eval_every: int = 5
    save_model: bool = True
    resume: str | None = None
    run_dir: str | None = None
    progress: bool = False
    lr: float = 0.1


class ToyEvaluator:
    def __call__(self, policy) -> dict:
        return {"return": 1.0, "normalized_score": None}

    def close(self) -> None:
        pass


def test_runs_started_in_the_same_second_never_share_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20261130-080000")
    first = Run("algo", "data", 0, ToyArgs())
    second = Run("algo", "data", 0, ToyArgs())
    assert first.dir != second.dir and first.dir.is_dir() and second.dir.is_dir()
    assert second.dir.name == first.dir.name + "-2"
    first.close(), second.close()


def test_config_is_rewritten_in_a_reused_run_dir_and_files_are_world_readable(tmp_path):
    old = os.umask(0o022)
    try:
        Run("algo", "data", 0, ToyArgs(lr=0.1), str(tmp_path)).close()
        run = Run("algo", "data", 0, ToyArgs(lr=0.5), str(tmp_path))
        assert '"lr": 0.5' in (tmp_path / "config.json").read_text()
        save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
        run.log_eval(1, {"return": 2.0, "normalized_score": None})
        run.finish(1)
    finally:
        os.umask(old)
    for name in ("config.json", "checkpoint.pt", "metrics.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_resume_says_which_flags_it_ignores(tmp_path, capsys):
    Run("algo", "data", 0, ToyArgs(lr=0.1), str(tmp_path)).close()
    args = resume_args(ToyArgs(resume=str(tmp_path), lr=0.3, total_steps=60))
    assert args.lr == 0.1 and args.total_steps == 60
    out = capsys.readouterr().out
    assert "ignoring --lr 0.3" in out and "--total-steps" in out.split("only")[1]


@pytest.mark.parametrize("logged_loss_is_finite", [True, False])
def test_checkpoints_are_written_only_from_finite_weights(tmp_path, logged_loss_is_finite):
    # --eval-every 5 --log-every 20 --save-model: the weights turn NaN at step 8, between two log steps.
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    args = ToyArgs(run_dir=str(tmp_path))
    loop = TrainingLoop("toy", "data", args, {"net": net}, np.random.default_rng(0))
    with pytest.raises(FloatingPointError, match=r"diverged at step 10: non-finite .*") as err:
        for step in loop.steps():
            if step == 7:
                with torch.no_grad():
                    net.weight.fill_(math.nan)
            # A loss that stays finite: the weights themselves must be checked before saving.
            loop.log(
                {
                    "loss": torch.tensor(
                        step if logged_loss_is_finite else float(net.weight.detach().sum())
                    )
                }
            )
            if loop.due(args.eval_every):
                loop.evaluate(ToyEvaluator(), net)
    assert "last good checkpoint" in str(err.value)
    assert ("weights of net" in str(err.value)) == logged_loss_is_finite
    saved = load_checkpoint(tmp_path)
    assert saved["step"] == 5 and torch.isfinite(saved["net"]["weight"]).all()


def test_an_unknown_flag_is_one_line_with_the_closest_name(capsys):
    from dataclasses import dataclass

    from ocrl.experiment import cli

    @dataclass
    class Args:
        batch_size: int = 4
        """a count"""
        progress: bool = True
        """a switch"""

    assert cli(Args, argv=["--batch_size", "8", "--no-progress"]) == Args(8, False)
    with pytest.raises(SystemExit) as info:
        cli(Args, argv=["--batch-sise", "8"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert (
        err
        == "error: unknown flag --batch-sise; did you mean --batch-size? (--help lists every flag)"
    )


def test_check_args_refuses_a_negative_non_negative_field(tmp_path):
    from ocrl.experiment import UsageError, check_args

    args = ToyArgs(run_dir=str(tmp_path / "run"))
    check_args(args, non_negative=("seed", "total_steps"))
    args.total_steps = -1
    check_args(args, positive=(), non_negative=("seed",))
    with pytest.raises(UsageError, match="^--total-steps -1: must be >= 0$"):
        check_args(args, positive=(), non_negative=("seed", "total_steps"))


def test_snapshot_evaluator_keeps_every_evaluated_actor(tmp_path):
    import json

    from ocrl.experiment import SnapshotEvaluator

    actor = torch.nn.Linear(2, 1)
    loop = TrainingLoop("toy", "toy", ToyArgs(run_dir=str(tmp_path / "run")), {}, None)
    evaluator = SnapshotEvaluator(ToyEvaluator(), actor, loop)
    for step in loop.steps(stride=10):
        with torch.no_grad():
            actor.weight.fill_(step)
        if loop.due(20):
            loop.evaluate(evaluator, actor)
    index = [json.loads(line) for line in (loop.dir / "snapshots" / "index.jsonl").open()]
    assert [(s["step"], s["file"], s["return"]) for s in index] == [
        (20, "actor_000000020.pt", 1.0), (30, "actor_000000030.pt", 1.0),
    ]  # fmt: skip
    saved = load_checkpoint(loop.dir / "snapshots" / "actor_000000020.pt")
    assert saved["step"] == 20 and saved["return"] == 1.0
    assert float(saved["actor"]["weight"][0, 0]) == 10.0  # the weights at the evaluation
    evaluator.close()
