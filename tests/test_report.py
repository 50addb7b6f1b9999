"""scripts/report.py on event files written here with known values."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import trim_mean
from torch.utils.tensorboard import SummaryWriter

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("report", ROOT / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_run(
    root: Path, name: str, values: list[float], tag: str = "eval/normalized_score"
) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    writer = SummaryWriter(str(folder))
    for i, v in enumerate(values):
        writer.add_scalar(tag, v, (i + 1) * 1000)
    writer.close()


def test_report_table_and_iqm_from_known_event_files(tmp_path):
    report = load_script()
    finals = {
        ("td3_bc", "d1"): [10.0, 20.0, 30.0],
        ("td3_bc", "d2"): [50.0, 70.0],
        ("prdc", "d1"): [40.0, 40.0, 40.0],
    }
    for (algo, dataset), values in finals.items():
        for seed, final in enumerate(values):
            write_run(tmp_path / "runs", f"{algo}__{dataset}__s{seed}", [0.0, final + 100.0, final])
    write_run(tmp_path / "runs", "sac__Pendulum-v1__s0", [-900.0, -200.0], tag="eval/return")
    (tmp_path / "runs" / "not_a_run").mkdir()

    text = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), reps=500))
    assert (tmp_path / "out" / "report.md").read_text() == text
    assert "| td3_bc | d1 | 20.0 ± 10.0 | 120.0 ± 10.0 | 3 |" in text
    assert "| td3_bc | d2 | 60.0 ± 14.1 | 160.0 ± 14.1 | 2 |" in text
    assert "| prdc | d1 | 40.0 ± 0.0 | 140.0 ± 0.0 | 3 |" in text
    assert "| sac | Pendulum-v1 | -200.0 ± 0.0 | -200.0 ± 0.0 | 1 |" in text
    expected_iqm = trim_mean([10.0, 20.0, 30.0, 50.0, 70.0], 0.25)
    row = next(line for line in text.splitlines() if line.startswith("| td3_bc | ") and "[" in line)
    point, ci = row.split("|")[2].strip(), row.split("|")[3].strip()
    assert float(point) == pytest.approx(expected_iqm, abs=0.05)
    lo, hi = (float(x) for x in ci.strip("[]").split(","))
    assert lo <= expected_iqm <= hi and hi - lo > 0
    assert "| prdc | 40.0 | [40.0, 40.0] | 3 | 1 |" in text  # identical runs: a zero-width interval


def test_iqm_with_ci_bootstrap_is_stratified():
    report = load_script()
    rng = np.random.default_rng(0)
    point, lo, hi = report.iqm_with_ci([np.array([1.0, 1.0]), np.array([5.0, 5.0])], 200, rng)
    # Resampling within each task keeps both tasks in every resample, so the IQM never moves.
    assert point == lo == hi == pytest.approx(trim_mean([1.0, 1.0, 5.0, 5.0], 0.25))
