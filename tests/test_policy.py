"""The policy file: policy.pt2 loads with torch alone and acts as the run's evaluator does; scripts/evaluate.py
reproduces the run's last evaluation; ocrl.load_policy; bad input; --video writes MP4s."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_conventions import ALGOS
from test_pgd import tiny_args as pgd_args
from test_pgd import tiny_model  # noqa: F401 (a fixture)

import ocrl
from ocrl.experiment import loop as loop_module

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = ROOT / "scripts" / "evaluate.py"
_spec = importlib.util.spec_from_file_location("evaluate_script", EVALUATE)
evaluate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = evaluate  # dataclasses look their module up there
_spec.loader.exec_module(evaluate)
# Every algorithm whose acting is one deterministic function of the observation.
EXPORTS = ["td3_bc", "prdc", "a2pr", "iql", "sac", "ggd_td", "ppo", "ggd_ppo"]

# Loads the program where `import ocrl` fails (and says so), and writes its actions.
STANDALONE = textwrap.dedent(
    """
    import sys
    sys.modules["ocrl"] = None  # no ocrl, whatever sys.path holds
    try:
        import ocrl
        raise SystemExit("ocrl is importable")
    except ImportError:
        pass
    import torch
    program = torch.export.load(sys.argv[1]).module()
    if len(sys.argv) > 4:  # a stochastic program draws from torch's global generator
        torch.manual_seed(int(sys.argv[4]))
    torch.save(program(torch.load(sys.argv[2])).detach(), sys.argv[3])
    """
)


def capture_finish(monkeypatch) -> dict:
    """A dict that gets the evaluator and policy the run finishes with."""
    seen = {}
    finish = loop_module.TrainingLoop.finish

    def keep(self, evaluator, policy, **extra):
        seen.update(evaluator=evaluator, policy=policy)
        return finish(self, evaluator, policy, **extra)

    monkeypatch.setattr(loop_module.TrainingLoop, "finish", keep)
    return seen


def tiny_run(
    name: str, data: str, run_dir: Path, monkeypatch, **over
) -> tuple[dict, object, object]:
    """A tiny run of algorithm `name`: its metrics, and the evaluator and policy that it finished with."""
    module = importlib.import_module(f"ocrl.algos.{name}")
    flags = {k: (data if v == "{data}" else v) for k, v in ALGOS[name][0].items()}
    flags.update(eval_episodes=2, run_dir=str(run_dir), progress=False, **over)
    seen = capture_finish(monkeypatch)
    metrics = module.main(dataclasses.replace(module.Args(), **flags))
    return metrics, seen["evaluator"], seen["policy"]


def evaluator_actions(evaluator, policy, obs: np.ndarray) -> np.ndarray:
    """What Evaluator.__call__ sends to the env for observations `obs`."""
    with torch.no_grad():
        action = policy(evaluator.normalize_obs(obs)).cpu().numpy()
    if evaluator.action_low is not None:
        action = np.clip(action, evaluator.action_low, evaluator.action_high)
    return action


def assert_standalone_actions(
    run_dir: Path, obs: np.ndarray, expected: np.ndarray, tmp_path: Path, seed: int | None = None
):
    """policy.pt2, loaded with torch alone in a process where ocrl cannot be imported, gives `expected`."""
    (tmp_path / "standalone.py").write_text(STANDALONE)
    torch.save(torch.from_numpy(obs), tmp_path / "obs.pt")
    seeded = [] if seed is None else [str(seed)]
    proc = subprocess.run(
        [sys.executable, "standalone.py", str(run_dir / "policy.pt2"), "obs.pt", "out.pt", *seeded],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(torch.load(tmp_path / "out.pt").numpy(), expected)


@pytest.mark.parametrize("name", EXPORTS)
def test_policy_file_acts_as_the_run_and_evaluate_reproduces_it(
    name, hopper_random_file, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    metrics, evaluator, policy = tiny_run(name, hopper_random_file, run_dir, monkeypatch)
    info = json.loads((run_dir / "policy.json").read_text())
    assert info["algorithm"] == name and info["step"] == metrics["steps"]
    assert info["eval"]["return"] == metrics["return"]
    obs_dim = info["observation_space"]["shape"][0]
    obs = (np.random.default_rng(0).standard_normal((7, obs_dim)) * 3).astype(np.float32)
    expected = evaluator_actions(evaluator, policy, obs)

    assert_standalone_actions(run_dir, obs, expected, tmp_path)

    # ocrl.load_policy: numpy in, numpy out; torch in, torch out; one observation too
    loaded = ocrl.load_policy(run_dir)
    np.testing.assert_array_equal(loaded(obs), expected)
    assert torch.equal(loaded(torch.from_numpy(obs)), torch.from_numpy(expected))
    assert loaded(obs[0]).shape == expected[0].shape

    # the run's last evaluation, episode for episode
    result = evaluate.main(evaluate.Args(str(run_dir), progress=False))
    assert result["return"] == metrics["return"]
    assert result["normalized_score"] == metrics["normalized_score"]
    assert json.loads((run_dir / "eval.json").read_text())["return"] == metrics["return"]


@pytest.fixture(scope="module")
def finished_td3_bc(hopper_random_file, tmp_path_factory) -> Path:
    from ocrl.algos import td3_bc

    run_dir = tmp_path_factory.mktemp("td3_bc")
    td3_bc.main(td3_bc.Args(dataset=hopper_random_file, total_steps=20, eval_every=20,
                            eval_episodes=2, hidden=(8, 8), run_dir=str(run_dir), progress=False))  # fmt: skip
    return run_dir


def run_evaluate(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EVALUATE), *argv, "--no-progress"], capture_output=True, text=True,
        timeout=300, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty", "holds no policy.pt2"),
        ("missing", "is not a folder"),
        ("Pendulum-v1", "do not fit the policy's"),
        ("Hoper-v4", "not a registered Gymnasium id"),
        ("--onnx", "holds no policy.onnx; train with --export-onnx"),
    ],
)
def test_evaluate_bad_input_is_one_line_exit_2(case, expected, finished_td3_bc, tmp_path):
    if case == "empty":
        argv = [str(tmp_path)]
    elif case == "missing":
        argv = [str(tmp_path / "nope")]
    elif case == "--onnx":
        argv = [str(finished_td3_bc), "--onnx"]
    else:
        argv = [str(finished_td3_bc), "--env-id", case]
    proc = run_evaluate(*argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_other_seed_and_env_version(finished_td3_bc):
    run = json.loads((finished_td3_bc / "metrics.json").read_text())
    other_seed = evaluate.main(
        evaluate.Args(str(finished_td3_bc), seed=5, episodes=3, progress=False)
    )
    assert other_seed["episodes"] == 3 and other_seed["return"] != run["return"]
    v5 = evaluate.main(evaluate.Args(str(finished_td3_bc), env_id="Hopper-v5", progress=False))
    assert v5["env_id"] == "Hopper-v5" and v5["normalized_score"] is not None


def test_policy_file_written_with_each_checkpoint(hopper_random_file, tmp_path, monkeypatch):
    written = []
    write = loop_module.write_policy
    monkeypatch.setattr(
        loop_module, "write_policy", lambda *a, **k: written.append(a[3]["step"]) or write(*a, **k)
    )
    tiny_run("td3_bc", hopper_random_file, tmp_path / "run", monkeypatch, save_model=True)
    assert written == [20, 40, 40]  # each evaluation's checkpoint, and the end of the run


def test_evaluate_video_writes_mp4s(finished_td3_bc, tmp_path):
    pytest.importorskip("moviepy")
    imageio = pytest.importorskip("imageio")
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    proc = run_evaluate(str(finished_td3_bc), "--video", str(tmp_path / "videos"), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["seed-100-episode-0.mp4", "seed-101-episode-0.mp4"]
    length = json.loads((finished_td3_bc / "policy.json").read_text())["eval"]["episode_length"]
    reader = imageio.get_reader(videos[0])
    # the reset frame and one per step; Hopper renders 480x480
    assert reader.count_frames() == int(length) + 1
    assert reader.get_meta_data()["size"] == (480, 480)


@pytest.mark.parametrize("name", ["ppo", "ggd_ppo"])
def test_discrete_actions_export(name, tmp_path, monkeypatch):
    # Categorical's argument validation is a data-dependent check torch.export cannot trace: the policy
    # file must be written whether or not another test turned validation off process-wide.
    module = importlib.import_module(f"ocrl.algos.{name}")
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", True)
    seen = capture_finish(monkeypatch)
    run_dir = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed export only warns
        module.main(module.Args(env_id="CartPole-v1", total_steps=128, num_steps=64, batch_size=32,
                                update_epochs=1, eval_every=128, log_every=64, hidden=(16, 16),
                                eval_episodes=2, run_dir=str(run_dir), progress=False))  # fmt: skip
    obs_dim = json.loads((run_dir / "policy.json").read_text())["observation_space"]["shape"][0]
    obs = np.random.default_rng(2).standard_normal((9, obs_dim)).astype(np.float32)
    expected = evaluator_actions(seen["evaluator"], seen["policy"], obs)
    assert expected.dtype == np.int64 and expected.shape == (9,)
    assert_standalone_actions(run_dir, obs, expected, tmp_path)


def test_pdppo_exports_its_discrete_heads(tmp_path, monkeypatch):
    from ocrl.algos import pdppo

    seen = capture_finish(monkeypatch)
    run_dir = tmp_path / "run"
    pdppo.main(pdppo.Args(instance="generated", n_items=4, n_machines=3, total_steps=400,
                          update_every=200, k_epochs=1, hidden=16, eval_every=400, eval_episodes=2,
                          run_dir=str(run_dir), progress=False))  # fmt: skip
    info = json.loads((run_dir / "policy.json").read_text())
    assert info["action_space"]["type"] == "MultiDiscrete" and info["env_kwargs_unrecorded"] == [
        "instance"
    ]
    obs_dim = info["observation_space"]["shape"][0]
    obs = (np.random.default_rng(1).standard_normal((9, obs_dim)) * 3).astype(np.float32)
    expected = evaluator_actions(seen["evaluator"], seen["policy"], obs)
    assert expected.dtype == np.int64 and expected.shape == (9, 3)
    assert len(np.unique(expected)) > 1  # the heads do choose, so the comparison means something
    assert_standalone_actions(run_dir, obs, expected, tmp_path)
    # Its env needs the instance object, which policy.json cannot hold: evaluate.py says so.
    with pytest.raises(evaluate.InputError, match="cannot rebuild its env"):
        evaluate.main(evaluate.Args(str(run_dir), progress=False))


def test_a_failed_export_warns_and_the_run_finishes(hopper_random_file, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(loop_module, "write_policy", fail)
    with pytest.warns(RuntimeWarning, match="policy.pt2 not written at step 40.*cannot trace this"):
        metrics, _, _ = tiny_run("td3_bc", hopper_random_file, tmp_path / "run", monkeypatch)
    assert (tmp_path / "run" / "metrics.json").is_file() and metrics["steps"] == 40
    assert not (tmp_path / "run" / "policy.pt2").exists()


def test_import_ocrl_stays_cheap():
    code = "import sys, ocrl; assert callable(ocrl.load_policy); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_expo_exports_its_stochastic_acting(hopper_random_file, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    metrics, evaluator, policy = tiny_run("expo", hopper_random_file, run_dir, monkeypatch)
    info = json.loads((run_dir / "policy.json").read_text())
    assert info["algorithm"] == "expo" and info["stochastic"] is True
    obs_dim = info["observation_space"]["shape"][0]
    obs = (np.random.default_rng(2).standard_normal((6, obs_dim)) * 3).astype(np.float32)
    torch.manual_seed(7)
    expected = evaluator_actions(evaluator, policy, obs)
    torch.manual_seed(8)
    assert not np.array_equal(evaluator_actions(evaluator, policy, obs), expected)  # it samples
    # From the same seed the program draws the agent's numbers: the same max-Q choice, bit for bit.
    assert_standalone_actions(run_dir, obs, expected, tmp_path, seed=7)
    result = evaluate.main(evaluate.Args(str(run_dir), progress=False))
    assert np.isfinite(result["return"]) and result["episodes"] == 2


def test_rlpd_exports_its_mean_action_and_evaluate_reproduces_it(
    hopper_random_file, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    metrics, evaluator, policy = tiny_run(
        "expo", hopper_random_file, run_dir, monkeypatch, policy="gaussian"
    )
    info = json.loads((run_dir / "policy.json").read_text())
    assert info["algorithm"] == "rlpd" and info["stochastic"] is False
    obs = (np.random.default_rng(3).standard_normal((5, 11)) * 3).astype(np.float32)
    assert_standalone_actions(run_dir, obs, evaluator_actions(evaluator, policy, obs), tmp_path)
    assert evaluate.main(evaluate.Args(str(run_dir), progress=False))["return"] == metrics["return"]


@pytest.mark.parametrize("agent", ["td3_bc", "iql"])
def test_pgd_exports_its_agent(agent, hopper_random_file, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    from ocrl.algos import pgd

    seen = capture_finish(monkeypatch)
    run_dir = tmp_path / "run"
    metrics = pgd.main(pgd_args(hopper_random_file, tiny_model, agent=agent, run_dir=str(run_dir)))
    obs = (np.random.default_rng(4).standard_normal((5, 11)) * 3).astype(np.float32)
    expected = evaluator_actions(seen["evaluator"], seen["policy"], obs)
    assert_standalone_actions(run_dir, obs, expected, tmp_path)
    assert evaluate.main(evaluate.Args(str(run_dir), progress=False))["return"] == metrics["return"]
