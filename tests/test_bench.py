"""scripts/bench/: the harness interleaves and takes medians, an outside checkout is imported with
stand-ins that are gone afterwards, and every benchmark is a subcommand of `python -m scripts.bench`."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python -m scripts.bench` runs from the repository root
    sys.path.insert(0, str(ROOT))

bench = importlib.import_module("scripts.bench")
harness = importlib.import_module("scripts.bench.harness")


def test_interleaved_rounds_take_turns_and_medians():
    calls = []

    def variant(name, values):
        it = iter(values)
        return lambda: calls.append(name) or next(it)

    out = harness.interleaved({"a": variant("a", [3, 1, 2]), "b": variant("b", [9, 7, 8])}, 3)
    assert calls == ["a", "b"] * 3
    assert out == {"a": [3, 1, 2], "b": [9, 7, 8]}
    assert harness.medians(out) == {"a": 2, "b": 8}


def test_stand_ins_are_removed_and_what_was_there_comes_back(tmp_path):
    sys.modules["_bench_present"] = present = harness.stand_in("_bench_present", x=1)
    try:
        modules = {n: harness.stand_in(n, y=2) for n in ("_bench_present", "_bench_absent")}
        with harness.stand_ins(modules, path=str(tmp_path)):
            assert sys.modules["_bench_present"].y == 2 and sys.path[0] == str(tmp_path)
            import _bench_absent

            assert _bench_absent.y == 2
        assert sys.modules["_bench_present"] is present and "_bench_absent" not in sys.modules
        assert str(tmp_path) not in sys.path
    finally:
        sys.modules.pop("_bench_present", None)


def test_pdppo_checkout_is_loaded_by_path_with_a_gym_stand_in(tmp_path, capsys):
    lot_sizing = importlib.import_module("scripts.bench.lot_sizing")
    assert lot_sizing.import_pdppo_env(str(tmp_path)) is None  # no checkout: ocrl's numbers only
    (tmp_path / "envs").mkdir()
    (tmp_path / "scenarioManager").mkdir()
    (tmp_path / "scenarioManager" / "stochasticDemandModel.py").write_text(
        "class StochasticDemandModel:\n    def __init__(self, settings): self.settings = settings\n"
    )
    (tmp_path / "envs" / "simplePlant.py").write_text(
        "import gym\nfrom scenarioManager import StochasticDemandModel\n"
        "class SimplePlant(gym.Env):\n    demand = StochasticDemandModel\n"
    )
    gym_before = sys.modules.get("gym")
    plant, demand = lot_sizing.import_pdppo_env(str(tmp_path))
    assert plant.demand is demand and demand({"a": 1}).settings == {"a": 1}
    assert "scenarioManager" not in sys.modules and sys.modules.get("gym") is gym_before


def test_synther_checkout_imports_with_stand_ins_for_its_unused_imports(tmp_path, capsys):
    synther = importlib.import_module("scripts.bench.synther")
    assert synther.import_synther(str(tmp_path)) is None
    pkg = tmp_path / "synther" / "diffusion"
    pkg.mkdir(parents=True)
    (tmp_path / "synther" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "elucidated_diffusion.py").write_text(
        "import wandb\nfrom accelerate import Accelerator\nfrom redq.algos.core import ReplayBuffer\n"
        "from synther.online.utils import make_inputs_from_replay_buffer\n"
        "class ElucidatedDiffusion:\n    accelerator = Accelerator\n"
    )
    (pkg / "denoiser_network.py").write_text("class ResidualMLPDenoiser: pass\n")
    (pkg / "norm.py").write_text("import no_such_package_either\n")
    assert synther.import_synther(str(tmp_path)) is None  # a real missing import says so
    assert "pip install einops" in capsys.readouterr().out
    (pkg / "norm.py").write_text("class Normalizer: pass\n")
    for name in [n for n in sys.modules if n.split(".")[0] == "synther"]:
        del sys.modules[name]
    ed, _, _ = synther.import_synther(str(tmp_path))
    with pytest.raises(RuntimeError, match="stand-in"):
        ed.accelerator()
    # No stand-in is left behind (an installed wandb, really imported, may stay: it has a spec).
    left = [sys.modules.get(n) for n in ("wandb", "accelerate", "redq", "synther.online.utils")]
    assert all(module is None or module.__spec__ is not None for module in left)
    assert str(tmp_path) not in sys.path


def test_every_benchmark_is_a_subcommand_with_its_own_flags():
    names = set(bench.BENCHMARKS)
    assert {"updates", "memory", "knn", "hdpo", "diffusion", "pgd", "ggd_td", "expo"} <= names
    assert {"lot_sizing", "threads", "all"} <= names
    for name in names:
        assert (
            len(
                (ROOT / "scripts" / "bench" / f"{bench.BENCHMARKS[name]}.py")
                .read_text()
                .splitlines()
            )
            <= 300
        )
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "expo", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--utd" in out and "--knn-rows" not in out and "--updates" not in out
    bad = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "all", "--skip", "nope"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2


def test_lot_sizing_benchmark_prints_its_table(capsys):
    lot_sizing = importlib.import_module("scripts.bench.lot_sizing")
    args = lot_sizing.Args(pdppo_path="/nonexistent", steps=200, rounds=1)
    med = lot_sizing.main(args)
    out = capsys.readouterr().out
    assert "PDPPO's code not found at /nonexistent" in out
    assert list(med) == [
        "ocrl LotSizingEnv (one episode)",
        "ocrl LotSizingVectorEnv (4 episodes)",
        "ocrl LotSizingVectorEnv (4096 episodes)",
    ]
    assert "| ocrl LotSizingEnv (one episode) |" in out and "| 1.00x |" in out
