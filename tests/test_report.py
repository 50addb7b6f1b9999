"""scripts/report.py on event files written here with known values."""

from __future__ import annotations

import importlib.util
import json
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
    root: Path,
    name: str,
    values: list[float],
    tag: str = "eval/normalized_score",
    config: dict | None = None,
    finished: bool = True,
) -> Path:
    """A run folder as the algorithm files write it: config.json, events, metrics.json when finished."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or {}))
    writer = SummaryWriter(str(folder))
    for i, v in enumerate(values):
        writer.add_scalar(tag, v, (i + 1) * 1000)
    writer.close()
    if finished:
        (folder / "metrics.json").write_text(json.dumps({"normalized_score": values[-1]}))
    return folder


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
    # A run still going (no metrics.json yet): listed, but in no number.
    write_run(tmp_path / "runs", "td3_bc__d1__s7", [500.0, 500.0], finished=False)

    text = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), reps=500))
    assert (tmp_path / "out" / "report.md").read_text() == text
    assert "| td3_bc | d1 | 3,000 | 20.0 ± 10.0 | 120.0 ± 10.0 | 3 |" in text
    assert "| td3_bc | d2 | 3,000 | 60.0 ± 14.1 | 160.0 ± 14.1 | 2 |" in text
    assert "| prdc | d1 | 3,000 | 40.0 ± 0.0 | 140.0 ± 0.0 | 3 |" in text
    assert "| sac | Pendulum-v1 | 2,000 | -200.0 ± 0.0 | -200.0 ± 0.0 | 1 |" in text
    assert "Unfinished runs (no metrics.json)" in text and "- `td3_bc__d1__s7`" in text
    assert "published" not in text
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


def test_dataset_label_from_config_and_published_column(tmp_path):
    report = load_script()
    runs = tmp_path / "runs"
    # A dataset given as the path of a Minari folder that scripts/collect_dataset.py wrote.
    generated = tmp_path / "gen" / "ocrl" / "hopper" / "medium-replay-v0"
    (generated / "data").mkdir(parents=True)
    meta = {"dataset_id": "ocrl/hopper/medium-replay-v0", "collector": "scripts/collect_dataset.py"}
    (generated / "data" / "metadata.json").write_text(json.dumps(meta))
    write_run(runs, "td3_bc__gen-medium-replay__s0", [1.0, 2.0], config={"dataset": str(generated)})
    # D4RL names: from config.json, from a D4RL file path, and from the folder name (empty config).
    write_run(runs, "td3_bc__renamed__s0", [3.0, 50.0], config={"dataset": "hopper-medium-v2"})
    d4rl_file = "/elsewhere/hopper-medium-v2.hdf5"
    write_run(runs, "prdc__x__s0", [4.0, 70.0], config={"dataset": d4rl_file})
    write_run(runs, "prdc__hopper-medium-v2__s1", [5.0, 90.0])
    published = tmp_path / "published.csv"
    published.write_text(
        "algorithm,dataset,score,std,source\n"
        "td3_bc,hopper-medium-v2,59.3,,paper A\n"
        'td3_bc,hopper-medium-v2,60.37,3.49,"reproduction B, last"\n'
        "prdc,hopper-medium-v2,100.3,0.2,paper C\n"
        "a2pr,hopper-medium-v2,100.8,,paper D\n"
    )

    text = report.main(
        report.Args(str(runs), out_dir=str(tmp_path / "out"), published=str(published), reps=50)
    )
    assert "| td3_bc | ocrl/hopper/medium-replay-v0 (generated) | 2,000 | 2.0 ± 0.0 |" in text
    assert (
        "| td3_bc | hopper-medium-v2 | 2,000 | 50.0 ± 0.0 | 50.0 ± 0.0 | 1 | 59.3 [2]; 60.37 ± 3.49 [3] |"
        in text
    )
    assert (
        "| prdc | hopper-medium-v2 | 2,000 | 90.0 ± 0.0 | 90.0 ± 0.0 | 1 | 100.3 ± 0.2 [1] |"
        in text
    )
    assert (
        "| prdc | hopper-medium-v2 (file) | 2,000 | 70.0 ± 0.0 | 70.0 ± 0.0 | 1 | 100.3 ± 0.2 [1] |"
        in text
    )
    assert "(generated) | 2,000 | 2.0 ± 0.0 | 2.0 ± 0.0 | 1 | — |" in text
    assert "1. paper C\n2. paper A\n3. reproduction B, last\n" in text
    assert "paper D" not in text  # no a2pr run; sources are numbered in table order

    bad = tmp_path / "bad.csv"
    bad.write_text("algorithm,dataset,score\ntd3_bc,hopper-medium-v2,1\n")
    with pytest.raises(SystemExit, match="lacks the column"):
        report.main(report.Args(str(runs), out_dir=str(tmp_path / "o2"), published=str(bad)))


def test_resumed_run_curve_keeps_the_later_value_of_a_step(tmp_path):
    report = load_script()
    folder = tmp_path / "td3_bc__d__s0"
    first = SummaryWriter(str(folder), filename_suffix=".a")
    first.add_scalar("eval/normalized_score", 5.0, 1000, walltime=1.0)
    first.add_scalar("eval/normalized_score", 6.0, 2000, walltime=2.0)
    first.close()
    resumed = SummaryWriter(str(folder), filename_suffix=".b")  # --resume from the 2000 checkpoint
    resumed.add_scalar("eval/normalized_score", 7.0, 2000, walltime=3.0)
    resumed.add_scalar("eval/normalized_score", 8.0, 3000, walltime=4.0)
    resumed.close()
    _, steps, values = report.read_curve(folder)
    assert steps.tolist() == [1000, 2000, 3000] and values.tolist() == [5.0, 7.0, 8.0]


def test_learning_curve_pngs(tmp_path, capsys, monkeypatch):
    # Not importorskip: CI installs the [plots] extra, so the PNG path is tested there.
    import matplotlib.image

    report = load_script()
    for seed in range(2):
        write_run(tmp_path / "runs", f"td3_bc__d1__s{seed}", [1.0, 2.0 + seed, 3.0])
    write_run(tmp_path / "runs", "prdc__d1__s0", [2.0, 4.0, 6.0])
    text = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), reps=50))
    png = tmp_path / "out" / "curves_d1.png"
    assert "![curves_d1](curves_d1.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    assert matplotlib.image.imread(png).shape[:2] == (400, 600)  # decodes; 6x4 inches at 100 dpi

    # Without matplotlib the report is still written, and says how to get the PNGs.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "o2"), reps=50))
    assert "| td3_bc | d1 |" in text and not list((tmp_path / "o2").glob("*.png"))
    assert 'skipped; pip install -e ".[plots]"' in capsys.readouterr().out


def test_shipped_published_scores_parse_and_name_d4rl_datasets():
    from ocrl.data.d4rl import parse_d4rl_name

    report = load_script()
    table = report.read_published(str(ROOT / "docs" / "published_scores.csv"))
    assert all(parse_d4rl_name(dataset) is not None for _, dataset in table)
    assert sum(algo == "prdc" for algo, _ in table) == 12  # 3 envs x random/m/mr/me
    assert [r["score"] for r in table[("a2pr", "hopper-medium-v2")]] == ["100.8"]
    assert all(row["source"] for rows in table.values() for row in rows)
