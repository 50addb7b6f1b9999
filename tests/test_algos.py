"""Smoke runs, CLI errors and resume of TD3+BC and SAC (tiny budgets; learning tests are in test_learning.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ocrl.algos import sac, td3_bc
from ocrl.data import load_checkpoint
from ocrl.envs import Evaluator

ROOT = Path(__file__).resolve().parents[1]


def tags(run_dir: str) -> set[str]:
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_td3_bc_smoke_writes_run_folder(hopper_random_file, tmp_path):
    args = td3_bc.Args(
        dataset=hopper_random_file, total_steps=200, eval_every=100, eval_episodes=2, log_every=50,
        run_dir=str(tmp_path / "run"), progress=False,
    )  # fmt: skip
    metrics = td3_bc.main(args)
    for key in ("normalized_score", "normalized_score_best", "return", "steps", "wall_time_s"):
        assert metrics[key] is not None, key
    assert metrics["steps"] == 200
    assert metrics["normalized_score_best"] >= metrics["normalized_score"]
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["steps"] == 200 and on_disk["normalized_score"] == pytest.approx(
        metrics["normalized_score"]
    )
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == hopper_random_file
    )
    logged = tags(str(tmp_path / "run"))
    assert {
        "eval/return",
        "eval/normalized_score",
        "losses/critic_loss",
        "losses/actor_loss",
        "charts/updates_per_s",
    } <= logged


def test_td3_bc_cli_unknown_dataset_exits_with_help():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / "td3_bc.py"), "--dataset", "does-not-exist"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "unknown dataset 'does-not-exist'" in proc.stderr
    assert "hopper-medium-v2" in proc.stderr  # says what a valid name looks like
    assert "Traceback" not in proc.stderr


def test_td3_bc_dataset_env_mismatch(hopper_random_file, tmp_path):
    args = td3_bc.Args(
        dataset=hopper_random_file,
        env_id="Pendulum-v1",
        total_steps=10,
        run_dir=str(tmp_path),
        progress=False,
    )
    with pytest.raises(ValueError, match="does not fit environment Pendulum-v1"):
        td3_bc.main(args)


def test_td3_bc_resume_after_interruption_matches_uninterrupted_run(
    hopper_random_file, tmp_path, monkeypatch
):
    base = td3_bc.Args(
        dataset=hopper_random_file, total_steps=240, eval_every=120, eval_episodes=1, log_every=60,
        save_model=True, progress=False, seed=3,
    )  # fmt: skip
    straight = td3_bc.main(replace(base, run_dir=str(tmp_path / "straight")))

    # Interrupt the second run at its second evaluation, after the checkpoint of step 120.
    calls = {"n": 0}
    real_call = Evaluator.__call__

    def interrupting(self, policy):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_call(self, policy)

    monkeypatch.setattr(Evaluator, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        td3_bc.main(replace(base, run_dir=str(tmp_path / "interrupted")))
    monkeypatch.setattr(Evaluator, "__call__", real_call)
    assert load_checkpoint(tmp_path / "interrupted")["step"] == 120
    assert not (tmp_path / "interrupted" / "metrics.json").exists()

    resumed = td3_bc.main(
        replace(
            td3_bc.Args(), resume=str(tmp_path / "interrupted"), total_steps=240, progress=False
        )
    )
    assert resumed["resumed_from"] == 120 and resumed["steps"] == 240
    a = load_checkpoint(tmp_path / "straight")
    b = load_checkpoint(tmp_path / "interrupted")
    for key in ("actor", "critic", "critic_target"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0, msg=f"{key}.{name}")
    assert resumed["return"] == pytest.approx(straight["return"])


def test_checkpoint_loads_weights_only(hopper_random_file, tmp_path):
    td3_bc.main(td3_bc.Args(dataset=hopper_random_file, total_steps=20, eval_every=20, eval_episodes=1,
                            save_model=True, run_dir=str(tmp_path), progress=False))  # fmt: skip
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 20 and "actor" in ckpt and "critic_opt" in ckpt
    assert not list(tmp_path.glob("*.tmp"))


def test_sac_smoke_and_resume_restores_buffer(tmp_path):
    base = sac.Args(
        env_id="Pendulum-v1", total_steps=300, learning_starts=100, eval_every=150, eval_episodes=2,
        log_every=50, batch_size=32, save_model=True, progress=False,
    )  # fmt: skip
    first = sac.main(replace(base, run_dir=str(tmp_path / "run")))
    assert (
        first["steps"] == 300 and first["return"] is not None and first["normalized_score"] is None
    )
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["buffer"]["size"] == 300 and ckpt["step"] == 300
    assert {"charts/episodic_return", "losses/critic_loss", "losses/alpha", "eval/return"} <= tags(
        str(tmp_path / "run")
    )
    resumed = sac.main(
        replace(sac.Args(), resume=str(tmp_path / "run"), total_steps=450, progress=False)
    )
    assert resumed["resumed_from"] == 300 and resumed["steps"] == 450
    assert load_checkpoint(tmp_path / "run")["buffer"]["size"] == 450


def test_sac_hopper_gets_normalized_score(tmp_path):
    metrics = sac.main(sac.Args(env_id="Hopper-v4", total_steps=120, learning_starts=60, eval_every=120,
                                eval_episodes=1, batch_size=16, run_dir=str(tmp_path), progress=False))  # fmt: skip
    assert metrics["normalized_score"] is not None
