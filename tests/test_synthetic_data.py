"""Independent-transition datasets (SynthER's synthetic samples): layout, round trips, source statistics."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ocrl.data import OfflineDataset, load_dataset, source_statistics_metadata
from ocrl.data.d4rl import D4RL_REF_SCORES, write_d4rl_hdf5
from ocrl.data.minari_io import write_minari
from ocrl.data.offline import DatasetError, Transitions, reward_range
from ocrl.envs.offline_task import load_offline_task

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals")
PROVENANCE = {"ocrl_generator": "synther", "ocrl_source_dataset": "hopper-medium-v2"}


def synthetic_arrays(n=30, obs_dim=11, act_dim=3, seed=0):
    """Random (s, a, r, s', terminal) rows, a few terminals, none consecutive with the next."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, bool)
    terminals[[3, 17]] = True
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "terminals": terminals,
    }


def synthetic(metadata=None, **kw) -> OfflineDataset:
    lo, hi = D4RL_REF_SCORES["hopper"]
    return OfflineDataset.from_transitions(
        **synthetic_arrays(**kw),
        name="synthetic",
        env_id="Hopper-v4",
        ref_min_score=lo,
        ref_max_score=hi,
        metadata={**PROVENANCE, **(metadata or {})},
    )


def assert_same_transitions(a: Transitions, b: Transitions) -> None:
    for key in FIELDS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype == np.float32, key
        np.testing.assert_array_equal(x, y, err_msg=key)


# ------------------------------------------------------------------ layout
def test_from_transitions_makes_one_step_episodes_and_keeps_every_row():
    arrays = synthetic_arrays()
    ds = synthetic()
    assert ds.metadata["ocrl_layout"] == "transitions" and ds.is_transitions_layout
    assert ds.metadata["ocrl_generator"] == "synther"
    np.testing.assert_array_equal(ds.timeouts, ~arrays["terminals"])
    starts, ends = ds.episode_bounds()
    np.testing.assert_array_equal(ends - starts, np.ones(30))
    for mode in ("drop", "keep"):  # no truncated last step to drop: both give every row
        tr = ds.transitions(mode)
        assert len(tr) == 30
        for key in FIELDS:
            np.testing.assert_array_equal(
                getattr(tr, key), arrays[key].astype(np.float32), err_msg=f"{mode} {key}"
            )
        assert not np.shares_memory(tr.next_observations, ds.next_observations)


def test_without_the_marker_the_same_rows_read_as_d4rl_episodes():
    # The layout is what changes the semantics: unmarked, the timeouts drop every non-terminal row
    # and s' is the next row, as D4RL's qlearning_dataset.
    ds = synthetic()
    plain = OfflineDataset(**{**ds.__dict__, "metadata": {}})
    tr = plain.transitions()
    assert len(tr) == 2
    np.testing.assert_array_equal(tr.next_observations, ds.observations[[4, 18]])


def test_from_transitions_converts_dtypes_and_columns():
    arrays = synthetic_arrays()
    ds = OfflineDataset.from_transitions(
        arrays["observations"].astype(np.float64),
        arrays["actions"].astype(np.float64),
        arrays["rewards"].astype(np.float64)[:, None],
        arrays["next_observations"],
        arrays["terminals"].astype(np.float32)[:, None],  # a thresholded model output
        name="synthetic",
    )
    assert ds.rewards.shape == (30,) and ds.terminals.dtype == np.bool_
    np.testing.assert_array_equal(ds.terminals, arrays["terminals"])
    np.testing.assert_array_equal(ds.observations, arrays["observations"])


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda a: a.update(terminals=np.full(30, 0.7)), "'terminals' must hold only 0 and 1"),
        (lambda a: a["observations"].__setitem__((5, 2), np.nan), "'observations'.*row 5"),
        (lambda a: a.update(rewards=a["rewards"][:-1]), "length mismatch.*'rewards'"),
        (lambda a: a.update(next_observations=a["next_observations"][:, :4]), "next_observations"),
        (lambda a: a.update(terminals=np.array(["x"] * 30)), "'terminals' must be bool"),
    ],
)
def test_from_transitions_refuses_bad_arrays(change, expected):
    arrays = synthetic_arrays()
    change(arrays)
    with pytest.raises(DatasetError, match=expected) as info:
        OfflineDataset.from_transitions(**arrays, name="synthetic")
    assert "\n" not in str(info.value) and "synthetic" in str(info.value)


def test_layout_errors():
    ds = synthetic()
    with pytest.raises(DatasetError, match="no 'next_observations'"):
        OfflineDataset(**{**ds.__dict__, "next_observations": None}).transitions("drop")
    with pytest.raises(DatasetError, match="no 'next_observations'"):
        OfflineDataset(**{**ds.__dict__, "next_observations": None}).validate()
    typo = OfflineDataset(**{**ds.__dict__, "metadata": {"ocrl_layout": "transition"}})
    with pytest.raises(DatasetError, match="ocrl_layout='transition' is unknown"):
        typo.validate()
    open_row = ds.timeouts.copy()
    open_row[7] = False  # neither flag: a writer would join it to row 8
    with pytest.raises(DatasetError, match="row 7 .*neither terminals nor timeouts"):
        OfflineDataset(**{**ds.__dict__, "timeouts": open_row}).validate()
    with pytest.raises(DatasetError, match="ocrl_layout='episodes'"):
        synthetic(metadata={"ocrl_layout": "episodes"})
    with pytest.raises(DatasetError, match="truncated_last='all'"):
        ds.transitions("all")


# ------------------------------------------------------------- round trips
def assert_round_trip(back: OfflineDataset, ds: OfflineDataset) -> None:
    rows = synthetic_arrays()
    for mode in ("drop", "keep"):
        tr = back.transitions(mode)
        assert_same_transitions(tr, ds.transitions(mode))
        for key in FIELDS:  # the rows given to from_transitions, not just the same view twice
            np.testing.assert_array_equal(getattr(tr, key), rows[key], err_msg=f"{mode} {key}")
    assert back.is_transitions_layout and back.env_id == "Hopper-v4"
    assert (back.ref_min_score, back.ref_max_score) == D4RL_REF_SCORES["hopper"]
    for key in (*PROVENANCE, "ocrl_obs_mean", "ocrl_obs_std", "ocrl_return_range"):
        assert back.metadata[key] == ds.metadata[key], key
        assert isinstance(back.metadata[key], str), key


def stats_metadata(n=200):
    real = synthetic_arrays(n=n, seed=1)
    tr = Transitions(**{**real, "terminals": real["terminals"].astype(np.float32)})
    return source_statistics_metadata(tr, max_episode_steps=10)


def test_d4rl_round_trip_is_bit_exact(tmp_path):
    ds = synthetic(metadata=stats_metadata())
    write_d4rl_hdf5(ds, tmp_path / "synthetic.hdf5")
    with h5py.File(tmp_path / "synthetic.hdf5") as f:
        assert f["metadata/ocrl_layout"][()] == b"transitions"
    assert_round_trip(load_dataset(tmp_path / "synthetic.hdf5"), ds)


def test_minari_round_trip_is_bit_exact_with_one_episode_per_row(tmp_path):
    ds = synthetic(metadata=stats_metadata())
    folder = Path(write_minari(ds, tmp_path / "root", "synthetic/hopper/synther-v0"))
    meta = json.loads((folder / "data" / "metadata.json").read_text())
    assert meta["total_episodes"] == meta["total_steps"] == 30
    assert (
        meta["ocrl_layout"] == "transitions" and meta["ocrl_source_dataset"] == "hopper-medium-v2"
    )
    with h5py.File(folder / "data" / "main_data.hdf5") as f:
        ep = f["episode_3"]  # the row with a terminal
        assert ep["observations"].shape == (2, 11) and bool(ep["terminations"][0])
        assert not ep["truncations"][0] and f["episode_4"]["truncations"][0]
    assert_round_trip(load_dataset(folder), ds)


def test_minari_carries_scalar_metadata_and_extra_metadata_wins(tmp_path):
    ds = synthetic(metadata={"ocrl_note": "from the dataset", "nested": {"not": "scalar"}})
    folder = write_minari(ds, tmp_path / "root", "x-v0", extra_metadata={"ocrl_note": "extra"})
    meta = json.loads((Path(folder) / "data" / "metadata.json").read_text())
    assert meta["ocrl_note"] == "extra" and "nested" not in meta
    assert meta["ocrl_generator"] == "synther"


# ------------------------------------------------------ source statistics
def test_source_statistics_metadata_is_what_load_offline_task_computes():
    real = synthetic_arrays(n=200, seed=1)
    tr = Transitions(**{**real, "terminals": real["terminals"].astype(np.float32)})
    meta = source_statistics_metadata(tr, max_episode_steps=10)
    assert set(meta) == {"ocrl_obs_mean", "ocrl_obs_std", "ocrl_return_range"}
    assert all(isinstance(v, str) for v in meta.values())
    mean, std = tr.obs_mean_std()
    np.testing.assert_array_equal(np.array(json.loads(meta["ocrl_obs_mean"]), np.float32), mean)
    np.testing.assert_array_equal(np.array(json.loads(meta["ocrl_obs_std"]), np.float32), std)
    assert tuple(json.loads(meta["ocrl_return_range"])) == reward_range(tr, 10)


def synthetic_file_from(real_path: str, tmp_path: Path, *, with_range: bool = True) -> Path:
    """A D4RL file of rows resampled and perturbed from the real file, carrying its statistics."""
    real = load_dataset(real_path)
    tr = real.transitions()
    meta = source_statistics_metadata(tr, max_episode_steps=1000)
    if not with_range:
        del meta["ocrl_return_range"]
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(tr))[:500]
    noisy = {k: getattr(tr, k)[pick] for k in FIELDS}
    noisy["observations"] = noisy["observations"] + 0.5  # statistics unlike the real ones
    ds = OfflineDataset.from_transitions(
        **noisy, name="synthetic", env_id="Hopper-v4", metadata=meta
    )
    path = tmp_path / f"synthetic{'' if with_range else '_norange'}.hdf5"
    write_d4rl_hdf5(ds, path)
    return path


def test_load_offline_task_uses_the_real_data_statistics(hopper_random_file, tmp_path, capsys):
    path = synthetic_file_from(hopper_random_file, tmp_path)
    real = load_offline_task(hopper_random_file, normalize_reward=True)
    capsys.readouterr()
    synth = load_offline_task(str(path), normalize_reward=True)
    assert "observation statistics and return range of" in capsys.readouterr().out
    np.testing.assert_array_equal(synth.obs_mean, real.obs_mean)
    np.testing.assert_array_equal(synth.obs_std, real.obs_std)
    assert synth.obs_mean.dtype == np.float32 and synth.reward_scale == real.reward_scale
    # the buffer holds the synthetic rows standardised with the real statistics
    raw = load_dataset(path)
    want = (raw.observations - real.obs_mean) / real.obs_std
    np.testing.assert_allclose(
        synth.buffer.observations[: synth.buffer.size].cpu().numpy(), want, rtol=1e-6, atol=1e-6
    )
    # without the metadata the statistics would be the synthetic rows' own
    own, _ = raw.transitions().obs_mean_std()
    assert not np.allclose(own, real.obs_mean, atol=0.1)


def test_normalize_reward_needs_a_return_range(hopper_random_file, tmp_path):
    path = synthetic_file_from(hopper_random_file, tmp_path, with_range=False)
    load_offline_task(str(path))  # fine without --normalize-reward
    with pytest.raises(DatasetError, match="independent synthetic transitions.*ocrl_return_range"):
        load_offline_task(str(path), normalize_reward=True)


@pytest.mark.parametrize(
    "meta, expected",
    [
        ({"ocrl_obs_mean": json.dumps([0.0] * 11)}, "has 'ocrl_obs_mean' but not 'ocrl_obs_std'"),
        (
            {"ocrl_obs_mean": json.dumps([0.0] * 10), "ocrl_obs_std": json.dumps([1.0] * 10)},
            "'ocrl_obs_mean' has 10 values but observations have 11 dims",
        ),
        (
            {"ocrl_obs_mean": "[0.0, NaN]", "ocrl_obs_std": json.dumps([1.0] * 11)},
            "'ocrl_obs_mean' must be a JSON list of finite numbers",
        ),
        (
            {"ocrl_obs_mean": json.dumps([0.0] * 11), "ocrl_obs_std": json.dumps([0.0] * 11)},
            "'ocrl_obs_std' has a value <= 0",
        ),
        ({"ocrl_return_range": "[5, 1]"}, "lo < hi"),
        ({"ocrl_return_range": "[0, 1"}, "not valid JSON"),
    ],
)
def test_bad_source_statistics_are_refused(meta, expected, tmp_path):
    with pytest.raises(DatasetError, match=expected):
        synthetic(metadata=meta)
    # and when a file written by another tool carries them, at load time
    ds = synthetic()
    ds.metadata.update(meta)
    write_d4rl_hdf5(ds, tmp_path / "bad.hdf5")
    with pytest.raises(DatasetError, match=expected):
        load_offline_task(str(tmp_path / "bad.hdf5"))


def test_td3_bc_trains_on_a_synthetic_file_unchanged(hopper_random_file, tmp_path):
    td3_bc = importlib.import_module("ocrl.algos.td3_bc")
    path = synthetic_file_from(hopper_random_file, tmp_path)
    args = td3_bc.Args(
        dataset=str(path), total_steps=20, eval_every=20, log_every=10, hidden=(16, 16),
        eval_episodes=1, progress=False, run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    metrics = td3_bc.main(args)
    assert metrics["steps"] == 20 and np.isfinite(metrics["return"])
