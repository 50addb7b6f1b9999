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
        ("td3_bc", "d1"): {0: 20.0, 1: 10.0, 4: 30.0},
        ("td3_bc", "d2"): {0: 50.0, 1: 70.0},
        ("prdc", "d1"): {0: 40.0, 1: 40.0, 2: 40.0},
    }
    for (algo, dataset), by_seed in finals.items():
        for seed, final in by_seed.items():
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
    # td3_bc has 2 seeds on d2, so on d1 its two lowest-numbered seeds (0, 1) count and seed 4 not.
    assert "- td3_bc on d1: seed 4\n" in text and "seed 0\n" not in text and "seed 1\n" not in text
    expected_iqm = trim_mean([20.0, 10.0, 50.0, 70.0], 0.25)  # 35; with seed 4's 30 it would be 40
    row = next(line for line in text.splitlines() if line.startswith("| td3_bc | ") and "[" in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert float(cells[1]) == pytest.approx(expected_iqm, abs=0.05)
    lo, hi = (float(x) for x in cells[2].strip("[]").split(","))
    assert 10.0 <= lo <= expected_iqm <= hi <= 70.0 and hi - lo > 0
    assert cells[3:] == ["4", "2"]  # runs in the IQM, datasets
    assert "| prdc | 40.0 | [40.0, 40.0] | 3 | 1 |" in text  # identical runs: a zero-width interval
    assert "| sac | -200.0 | [-200.0, -200.0] | 1 | 1 |" in text
    assert "![performance profile](performance_profile.png)" in text
    assert (tmp_path / "out" / "performance_profile.png").is_file()


def test_center_median_reports_the_median_of_the_seeds(tmp_path):
    report = load_script()
    finals = [0.0, 10.0, 50.0]  # mean 20, median 10, sample std 26.5
    for seed, final in enumerate(finals):
        write_run(tmp_path / "runs", f"sac__e__s{seed}", [final - 5.0, final], tag="eval/return")
    text = report.main(
        report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), reps=50, center="median")
    )
    std = np.std(finals, ddof=1)
    assert f"| sac | e | 2,000 | 10.0 ± {std:.1f} | 10.0 ± {std:.1f} | 3 |" in text
    assert "median ± std over seeds" in text
    text = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "o2"), reps=50))
    assert f"| sac | e | 2,000 | 20.0 ± {std:.1f} | 20.0 ± {std:.1f} | 3 |" in text


def test_metric_return_reads_the_return_where_a_normalised_score_exists_too(tmp_path):
    report = load_script()
    folder = write_run(tmp_path / "runs", "sac__Hopper-v4__s0", [10.0, 20.0])
    writer = SummaryWriter(str(folder))
    for i, v in enumerate([300.0, 700.0]):
        writer.add_scalar("eval/return", v, (i + 1) * 1000)
    writer.close()
    auto = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "a"), reps=50))
    assert "| sac | Hopper-v4 | 2,000 | 20.0 ± 0.0 | 20.0 ± 0.0 | 1 |" in auto
    ret = report.main(
        report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "r"), reps=50, metric="return")
    )
    assert "| sac | Hopper-v4 | 2,000 | 700.0 ± 0.0 | 700.0 ± 0.0 | 1 |" in ret


def test_metric_can_be_any_logged_tag_without_an_aggregate(tmp_path):
    report = load_script()
    for seed, values in enumerate([[0.1, 0.5, 0.9], [0.2, 0.4, 1.3]]):
        folder = write_run(tmp_path / "runs", f"expo__hopper__s{seed}", [10.0, 20.0, 30.0])
        with SummaryWriter(str(folder)) as writer:
            for i, v in enumerate(values):
                writer.add_scalar("expo/log_alpha", v, (i + 1) * 1000)
    text = report.main(
        report.Args(
            str(tmp_path / "runs"), out_dir=str(tmp_path / "o"), reps=50, metric="expo/log_alpha"
        )
    )
    final, best = np.array([0.9, 1.3]), np.array([0.9, 1.3])
    row = f"| expo | hopper | 3,000 | {final.mean():.1f} ± {final.std(ddof=1):.1f} | {best.mean():.1f} ± {best.std(ddof=1):.1f} | 2 |"
    assert row in text, text
    assert "IQM" not in text and "performance profile" not in text.lower()
    with pytest.raises(SystemExit):
        report.main(
            report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "x"), metric="alpha")
        )


def test_score_matrices_keep_the_lowest_seeds_of_every_dataset():
    report = load_script()

    def curves(by_seed):
        return [report.Curve(seed, np.array([1000]), np.array([v])) for seed, v in by_seed.items()]

    runs = {
        ("a", "x"): curves({3: 3.0, 0: 0.0, 8: 8.0}),
        ("a", "y"): curves({5: 15.0, 2: 12.0}),
        ("b", "x"): curves({1: 1.0}),
    }
    scores, columns, left_out = report.score_matrices(runs)
    assert columns == {"a": ["x", "y"], "b": ["x"]}
    np.testing.assert_array_equal(scores["a"], [[0.0, 12.0], [3.0, 15.0]])  # runs x datasets
    np.testing.assert_array_equal(scores["b"], [[1.0]])
    assert left_out == [("a", "x", 8)]


def test_iqm_and_ci_against_values_computed_here():
    report = load_script()
    matrix = np.random.default_rng(3).normal(50.0, 20.0, size=(6, 4))  # 6 runs x 4 tasks
    state = np.random.get_state()
    (point, lo, hi), *_ = report.iqm_with_ci({"a": matrix}, 400, seed=1).values()
    assert point == pytest.approx(trim_mean(matrix.ravel(), 0.25))
    assert matrix.min() <= lo < point < hi <= matrix.max()
    # The caller's global numpy stream is left as it was (rliable draws from it).
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state, strict=True))
    # Reproducible from the seed, whatever else the report holds; another seed resamples anew.
    again = report.iqm_with_ci({"b": matrix * 2, "a": matrix}, 400, seed=1)
    assert again["a"] == (point, lo, hi)
    assert report.iqm_with_ci({"a": matrix}, 400, seed=2)["a"] != (point, lo, hi)
    # An independent stratified percentile bootstrap gives about the same interval.
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 6, size=(4000, 6, 4))
    boot = trim_mean(matrix[rows, np.arange(4)].reshape(4000, -1), 0.25, axis=1)
    ref_lo, ref_hi = np.percentile(boot, [2.5, 97.5])
    tol = 0.15 * (ref_hi - ref_lo)
    assert lo == pytest.approx(ref_lo, abs=tol) and hi == pytest.approx(ref_hi, abs=tol)


def test_iqm_with_ci_bootstrap_is_stratified():
    report = load_script()
    scores = {"a": np.array([[1.0, 5.0], [1.0, 5.0]])}  # 2 runs x 2 tasks
    point, lo, hi = report.iqm_with_ci(scores, 200, seed=0)["a"]
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


def test_learning_curve_and_performance_profile_pngs(tmp_path, capsys, monkeypatch):
    # Not importorskip: CI installs the [plots] extra, so the PNG path is tested there.
    import matplotlib.image

    report = load_script()
    for seed in range(2):
        write_run(tmp_path / "runs", f"td3_bc__d1__s{seed}", [1.0, 2.0 + seed, 3.0 + seed])
    write_run(tmp_path / "runs", "prdc__d1__s0", [2.0, 4.0, 6.0])
    text = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), reps=50))
    for name in ("curves_d1", "performance_profile"):
        png = tmp_path / "out" / f"{name}.png"
        assert f"]({name}.png)" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
        assert matplotlib.image.imread(png).shape[:2] == (
            400,
            600,
        )  # decodes; 6x4 inches at 100 dpi

    # Without matplotlib the report and its IQM are still written, and it says how to get the PNGs.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "o2"), reps=50))
    assert "| td3_bc | d1 |" in text and not list((tmp_path / "o2").glob("*.png"))
    assert "| td3_bc | 3.5 | [3.0, 4.0] | 2 | 1 |" in text and ".png" not in text
    out = capsys.readouterr().out
    assert "learning-curve PNGs were skipped" in out and "performance profile was skipped" in out


def test_report_without_rliable_skips_the_iqm_with_a_note(tmp_path, capsys, monkeypatch):
    report = load_script()
    write_run(tmp_path / "runs", "td3_bc__d1__s0", [1.0, 3.0])
    monkeypatch.setitem(sys.modules, "rliable", None)
    text = report.main(report.Args(str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), reps=50))
    assert "| td3_bc | d1 | 2,000 | 3.0 ± 0.0 |" in text and "| IQM |" not in text
    assert "rliable is not installed, so the IQM was skipped" in text
    assert not (tmp_path / "out" / "performance_profile.png").exists()
    assert 'pip install -e ".[plots]"' in capsys.readouterr().out


def test_shipped_published_scores_parse_and_name_d4rl_datasets():
    from ocrl.data.d4rl import parse_d4rl_name

    report = load_script()
    table = report.read_published(str(ROOT / "docs" / "published_scores.csv"))
    assert all(parse_d4rl_name(dataset) is not None for _, dataset in table)
    assert sum(algo == "prdc" for algo, _ in table) == 12  # 3 envs x random/m/mr/me
    assert [r["score"] for r in table[("a2pr", "hopper-medium-v2")]] == ["100.8"]
    assert all(row["source"] for rows in table.values() for row in rows)
