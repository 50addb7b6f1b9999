"""Shared fixtures: small datasets in the exact on-disk formats, made here without any network."""

from __future__ import annotations

import pytest
import torch

from ocrl.data import Batch, OfflineDataset
from ocrl.data.collect import rollout
from ocrl.data.d4rl import D4RL_REF_SCORES, write_d4rl_hdf5
from ocrl.envs import make_env


def random_rollouts(env_id: str, num_steps: int, seed: int = 0) -> OfflineDataset:
    """num_steps rows of uniformly random actions, with D4RL's terminal/timeout flags."""
    env = make_env(env_id, max_episode_steps=200)
    env.action_space.seed(seed)
    rows = rollout(env, lambda obs: env.action_space.sample(), num_steps, seed)
    env.close()
    lo, hi = D4RL_REF_SCORES["hopper"] if env_id == "Hopper-v4" else (None, None)
    return OfflineDataset(
        **rows, name=f"random-{env_id}", env_id=env_id, ref_min_score=lo, ref_max_score=hi
    )


@pytest.fixture(scope="session")
def hopper_random_file(tmp_path_factory) -> str:
    """A 2,000-row random-policy Hopper-v4 dataset as a D4RL HDF5 file."""
    path = tmp_path_factory.mktemp("d4rl") / "hopper_random_small.hdf5"
    write_d4rl_hdf5(random_rollouts("Hopper-v4", 2000), path)
    return str(path)


@pytest.fixture
def fixed_batch():
    """A function (obs_dim, act_dim, b) -> the same random Batch every time, with ~30% terminals."""

    def make(obs_dim: int = 3, act_dim: int = 2, b: int = 8) -> Batch:
        g = torch.Generator().manual_seed(7)
        return Batch(
            torch.randn(b, obs_dim, generator=g), torch.rand(b, act_dim, generator=g) * 2 - 1,
            torch.randn(b, generator=g), torch.randn(b, obs_dim, generator=g),
            (torch.rand(b, generator=g) < 0.3).float(),
        )  # fmt: skip

    return make


@pytest.fixture
def interrupt_evaluation(monkeypatch):
    """A function (n): the n-th Evaluator call from now raises KeyboardInterrupt (a run killed after a
    checkpoint), later calls run normally; (0) restores the evaluator."""
    from ocrl.envs import Evaluator

    real_call = Evaluator.__call__

    def arm(n: int) -> None:
        if n == 0:
            monkeypatch.setattr(Evaluator, "__call__", real_call)
            return
        calls = {"n": 0}

        def interrupting(self, policy):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real_call(self, policy)

        monkeypatch.setattr(Evaluator, "__call__", interrupting)

    return arm


def _tensors(state, prefix: str = ""):
    """(name, tensor) of every tensor in a nested checkpoint dict."""
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _tensors(value, f"{prefix}/{key}")


@pytest.fixture
def assert_same_checkpoints():
    """A function (run_dir_a, run_dir_b) -> the number of tensors compared: every tensor of the two
    checkpoint.pt files (RNG states, run log and normaliser aside) equal bit for bit."""

    def check(a_dir, b_dir) -> int:
        a = torch.load(f"{a_dir}/checkpoint.pt", weights_only=True)
        b = torch.load(f"{b_dir}/checkpoint.pt", weights_only=True)
        assert a.keys() == b.keys() and a["step"] == b["step"]
        skip = {"rng", "run", "normalizer"}
        want = dict(_tensors({k: v for k, v in a.items() if k not in skip}))
        got = dict(_tensors({k: v for k, v in b.items() if k not in skip}))
        assert want.keys() == got.keys()
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
        return len(want)

    return check


def _same_state(a, b, where: str = "checkpoint") -> int:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
        return 1
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        return sum(_same_state(a[k], b[k], f"{where}/{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        return sum(
            _same_state(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))
        )
    assert a == b, where
    return 0


@pytest.fixture
def assert_same_state():
    """A function (state_a, state_b) -> the number of tensors compared: two nested checkpoint states
    (dicts, lists, tensors, strings, numbers) equal exactly, RNG states and environment states included."""
    return _same_state


@pytest.fixture
def run_algorithm(capsys):
    """A function (algorithm module, argv) -> (exit code, stderr): `python algos/<name>.py ARGV`, in-process."""
    from ocrl.experiment import cli, friendly_errors

    def run(module, argv: list[str]) -> tuple[int, str]:
        with pytest.raises(SystemExit) as info, friendly_errors():
            module.main(cli(module.Args, getattr(module, "PRESETS", None), argv))
            raise SystemExit(0)
        return info.value.code, capsys.readouterr().err.strip()

    return run
