"""--export-onnx: policy.onnx acts as policy.pt2 and the run's evaluator under onnxruntime, for any batch size;
none (a warning) for a stochastic program or one that disagrees. Without the extra: tests/test_tracking.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_conventions import ALGOS
from test_policy import capture_finish, evaluate, evaluator_actions

from ocrl.experiment import policy as policy_module
from ocrl.experiment.policy import ONNX_TOLERANCE


def need_extra() -> None:
    """Skip without the optional extra `onnx` (the exporter needs onnx and onnxscript, the check onnxruntime)."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module, reason="the optional extra `onnx` is not installed")


def onnx_run(name: str, data: str, run_dir: Path, monkeypatch, **over) -> tuple[object, object]:
    """A tiny run of algorithm `name` with --export-onnx: the evaluator and policy it finished with."""
    module = importlib.import_module(f"ocrl.algos.{name}")
    flags = {k: (data if v == "{data}" else v) for k, v in ALGOS[name][0].items()}
    flags.update(eval_episodes=2, run_dir=str(run_dir), progress=False, **over)
    args = module.Args(export_onnx=True, **flags)
    seen = capture_finish(monkeypatch)
    module.main(args)
    return seen["evaluator"], seen["policy"]


def onnx_actions(path: Path, obs: np.ndarray) -> np.ndarray:
    """policy.onnx's actions, as the README loads it."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"obs": obs})[0]


@pytest.mark.parametrize("name", ["td3_bc", "sac", "ppo"])
def test_onnx_policy_acts_as_the_run(name, hopper_random_file, tmp_path, monkeypatch):
    need_extra()
    run_dir = tmp_path / "run"
    evaluator, policy = onnx_run(name, hopper_random_file, run_dir, monkeypatch)
    info = json.loads((run_dir / "policy.json").read_text())
    assert info["onnx"]["file"] == "policy.onnx"
    assert 0 <= info["onnx"]["max_abs_diff"] <= ONNX_TOLERANCE
    obs_dim = info["observation_space"]["shape"][0]
    program = torch.export.load(str(run_dir / "policy.pt2")).module()
    for batch in (1, 7, 300):  # the batch size is dynamic, as policy.pt2's
        obs = (np.random.default_rng(batch).standard_normal((batch, obs_dim)) * 3).astype(
            np.float32
        )
        got = onnx_actions(run_dir / "policy.onnx", obs)
        expected = evaluator_actions(evaluator, policy, obs)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        diff = np.abs(got - expected).max()
        print(f"{name}: batch {batch}, max |onnx - evaluator| = {diff:.3g}")
        assert diff <= ONNX_TOLERANCE
        with torch.no_grad():
            assert np.abs(got - program(torch.from_numpy(obs)).numpy()).max() <= ONNX_TOLERANCE
    # scripts/evaluate.py --onnx: the run's last evaluation, up to the rounding differences
    result = evaluate.main(evaluate.Args(str(run_dir), progress=False, onnx=True))
    print(f"{name}: evaluate --onnx {result['return']!r}, the run {info['eval']['return']!r}")
    assert result["policy_file"] == "policy.onnx"
    assert result["return"] == pytest.approx(info["eval"]["return"], rel=1e-6)
    if name == "td3_bc":  # policy.pt2 rewritten without --export-onnx: the older policy.onnx goes
        policy_module.write_policy(run_dir, policy.__self__, evaluator, {})
        assert (run_dir / "policy.pt2").is_file() and not (run_dir / "policy.onnx").exists()


def test_expo_writes_no_onnx_file_and_warns(hopper_random_file, tmp_path, monkeypatch):
    need_extra()
    run_dir = tmp_path / "run"
    with pytest.warns(
        RuntimeWarning, match="policy.onnx not written.*samples from torch's generator"
    ):
        onnx_run("expo", hopper_random_file, run_dir, monkeypatch)
    assert (run_dir / "policy.pt2").is_file() and not (run_dir / "policy.onnx").exists()
    assert json.loads((run_dir / "policy.json").read_text())["onnx"] is None


def test_a_disagreeing_onnx_file_is_not_written(tmp_path, monkeypatch):
    need_extra()
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    program = policy_module.PolicyProgram(policy_module.Acting(net, method="forward"))
    exported = policy_module.export_program(program, 3)
    assert policy_module.write_onnx(tmp_path, exported, 3, stochastic=False)["max_abs_diff"] < 1e-5
    assert (tmp_path / "policy.onnx").is_file()
    # A tolerance no float meets: the file goes, with its stale predecessor, and a warning says why.
    monkeypatch.setattr(policy_module, "ONNX_TOLERANCE", -1.0)
    with pytest.warns(RuntimeWarning, match="policy.onnx not written.*differ from torch's"):
        assert policy_module.write_onnx(tmp_path, exported, 3, stochastic=False) is None
    assert not (tmp_path / "policy.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left either
