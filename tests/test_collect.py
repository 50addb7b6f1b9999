"""scripts/collect_dataset.py end to end on a tiny Pendulum budget: datasets, metadata, resume."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import minari
import numpy as np
import pytest

from ocrl.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "collect_dataset", ROOT / "scripts" / "collect_dataset.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_collect_dataset_writes_loadable_datasets_and_resumes(tmp_path, monkeypatch):
    collect = load_script()
    args = collect.Args(
        env_id="Pendulum-v1", out_dir=str(tmp_path / "ds"), sac_steps=600, eval_every=200, steps_per_dataset=300,
        device="cpu", sac_overrides={"learning_starts": 100, "batch_size": 32},
    )  # fmt: skip
    written = collect.main(args)
    assert len(written) == len(collect.KINDS)
    snapshots = [
        json.loads(x)
        for x in (tmp_path / "ds/.collect/Pendulum-v1/sac/snapshots/index.jsonl")
        .read_text()
        .splitlines()
    ]
    best = max(s["return"] for s in snapshots)
    for kind in collect.KINDS:
        ds = load_dataset(str(tmp_path / "ds" / "ocrl" / "pendulum" / f"{kind}-v0"))
        assert ds.env_id == "Pendulum-v1"
        # Not a D4RL task: reference scores are the measured untrained and best returns.
        assert ds.ref_min_score == pytest.approx(
            snapshots[0]["return"]
        ) and ds.ref_max_score == pytest.approx(best)
        assert ds.timeouts[-1] or ds.terminals[-1]
        expected = {"medium-expert": 600, "medium-replay": None}.get(kind, 300)
        if expected is not None:
            assert len(ds) == expected, kind
    replay = load_dataset(str(tmp_path / "ds" / "ocrl" / "pendulum" / "medium-replay-v0"))
    assert 0 < len(replay) <= 600
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "ds"))
    via_minari = minari.load_dataset("ocrl/pendulum/medium-v0")
    assert via_minari.total_steps == 300
    np.testing.assert_allclose(
        minari.get_normalized_score(via_minari, np.array([best])), 1.0, rtol=1e-6
    )

    # An interrupted collection: SAC's metrics.json and one dataset missing -> SAC resumes, the rest is kept.
    sac_dir = tmp_path / "ds/.collect/Pendulum-v1/sac"
    (sac_dir / "metrics.json").unlink()
    kept = tmp_path / "ds/ocrl/pendulum/random-v0/data/metadata.json"
    stamp = kept.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "ds/ocrl/pendulum/expert-v0")
    collect.main(args)
    assert json.loads((sac_dir / "metrics.json").read_text())["resumed_from"] == 600
    assert kept.stat().st_mtime_ns == stamp
    assert load_dataset(
        str(tmp_path / "ds/ocrl/pendulum/expert-v0")
    ).ref_max_score == pytest.approx(best)
