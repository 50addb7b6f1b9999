"""Dataset layer: D4RL HDF5 files, qlearning_dataset semantics, Minari round trips, errors.

Every fixture file is written here with raw h5py in D4RL's exact layout, so no network is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest

from ocrl.data import d4rl, minari_io, offline
from ocrl.data.d4rl import D4RL_REF_SCORES, read_d4rl_hdf5, write_d4rl_hdf5
from ocrl.data.minari_io import read_minari, write_minari
from ocrl.data.offline import DatasetError, OfflineDataset, load_dataset

HOPPER_MIN, HOPPER_MAX = D4RL_REF_SCORES["hopper"]
N = 40
TERMINALS_AT = (5, 22)
TIMEOUTS_AT = (12, 31, N - 1)  # the last row is a timeout too, as in D4RL files


# ------------------------------------------------------------------ fixtures
def make_d4rl_arrays(
    n=N,
    obs_dim=11,
    act_dim=3,
    dtype=np.float32,
    terminals_at=TERMINALS_AT,
    timeouts_at=TIMEOUTS_AT,
    seed=0,
):
    """Raw arrays of a D4RL-like file; next_observations[i] = obs[i+1] inside episodes."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(dtype)
    next_obs = np.empty_like(obs)
    next_obs[:-1] = obs[1:]
    next_obs[-1] = rng.normal(size=obs_dim)
    terminals = np.zeros(n, bool)
    terminals[list(terminals_at)] = True
    timeouts = np.zeros(n, bool)
    timeouts[list(timeouts_at)] = True
    # at an episode end, the true s' is not the next row (which is the next episode's reset state)
    for i in (*terminals_at, *timeouts_at):
        if i < n - 1:
            next_obs[i] = rng.normal(size=obs_dim)
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(dtype),
        "rewards": rng.normal(size=n).astype(dtype),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": next_obs,
    }


def write_d4rl_fixture(
    path,
    arrays=None,
    *,
    next_observations=True,
    timeouts=True,
    gzip=True,
    infos=True,
    metadata=True,
    rewards_2d=False,
    flag_dtype=None,
    drop=(),
    **array_kwargs,
):
    """Write a D4RL-layout HDF5 file with raw h5py; returns the arrays written."""
    arrays = dict(arrays if arrays is not None else make_d4rl_arrays(**array_kwargs))
    if not next_observations:
        arrays.pop("next_observations")
    if not timeouts:
        arrays.pop("timeouts")
    for key in drop:
        arrays.pop(key)
    comp = {"compression": "gzip"} if gzip else {}
    n = len(arrays["observations"]) if "observations" in arrays else len(arrays["rewards"])
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            if key == "rewards" and rewards_2d:
                arr = arr.reshape(-1, 1)
            if key in ("terminals", "timeouts") and flag_dtype is not None:
                arr = arr.astype(flag_dtype)
            f.create_dataset(key, data=arr, **comp)
        if infos:
            f.create_dataset("infos/action_log_probs", data=np.zeros(n, np.float32), **comp)
            f.create_dataset("infos/qpos", data=np.zeros((n, 6), np.float32), **comp)
            f.create_dataset("infos/qvel", data=np.zeros((n, 6), np.float32), **comp)
        if metadata:
            f.create_dataset("metadata/algorithm", data="SAC")
            f.create_dataset("metadata/iteration", data=np.int64(7))
            f.create_dataset("metadata/policy/nonlinearity", data="relu")
            f.create_dataset("metadata/policy/fc0/weight", data=np.ones((4, 11), np.float32))
    return arrays


def qlearning_reference(arrays):
    """d4rl.qlearning_dataset, written as the plain loop of its definition."""
    obs, act, rew = arrays["observations"], arrays["actions"], arrays["rewards"]
    term = arrays["terminals"]
    tout = arrays.get("timeouts", np.zeros(len(obs), bool))
    o, a, r, o2, d = [], [], [], [], []
    for i in range(len(obs) - 1):
        if tout[i]:
            continue
        o.append(obs[i])
        a.append(act[i])
        r.append(rew[i])
        o2.append(obs[i + 1])
        d.append(term[i])
    f32 = np.float32
    return (
        np.array(o, f32),
        np.array(a, f32),
        np.array(r, f32),
        np.array(o2, f32),
        np.array(d, f32),
    )


@pytest.fixture(autouse=True)
def isolated_data_dirs(tmp_path, monkeypatch):
    """Keep every cache and Minari root inside tmp_path."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari_root"))
    monkeypatch.setenv("OCRL_DATA_DIR", str(tmp_path / "ocrl_cache"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl_legacy_cache"))


def forbid_network(*args, **kwargs):
    raise AssertionError("tests must not reach the network")


@pytest.fixture
def d4rl_file(tmp_path):
    path = tmp_path / "hopper_medium-v2.hdf5"
    arrays = write_d4rl_fixture(path)
    return path, arrays


# ------------------------------------------------------------ qlearning view
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("next_observations", [True, False])
@pytest.mark.parametrize("gzip", [True, False])
def test_drop_mode_is_qlearning_dataset(tmp_path, dtype, next_observations, gzip):
    path = tmp_path / "walker.hdf5"
    arrays = write_d4rl_fixture(
        path, dtype=dtype, next_observations=next_observations, gzip=gzip, obs_dim=5, act_dim=2
    )
    ds = load_dataset(path)
    tr = ds.transitions()

    n_dropped = sum(1 for i in TIMEOUTS_AT if i <= N - 2)
    assert len(tr) == (N - 1) - n_dropped == 37
    ref = qlearning_reference(arrays)
    got = (tr.observations, tr.actions, tr.rewards, tr.next_observations, tr.terminals)
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == np.float32 and g.flags.c_contiguous
        np.testing.assert_array_equal(g, r)

    # next_obs is the next row (not the file's next_observations key), for every kept row
    kept = [i for i in range(N - 1) if i not in TIMEOUTS_AT]
    obs32 = arrays["observations"].astype(np.float32)
    np.testing.assert_array_equal(tr.next_observations, obs32[np.array(kept) + 1])
    # terminals kept (masked later), timeouts dropped
    assert tr.terminals.sum() == len(TERMINALS_AT)
    assert [kept[j] for j in np.flatnonzero(tr.terminals)] == list(TERMINALS_AT)
    for i in TIMEOUTS_AT:
        assert not any(np.array_equal(row, obs32[i]) for row in tr.observations)
    assert ds.timeouts.sum() == len(TIMEOUTS_AT) and not tr.terminals[-1]


def test_drop_mode_without_timeouts_still_uses_the_next_row(tmp_path):
    path = tmp_path / "hopper_medium-v2.hdf5"  # a D4RL name: timeouts every 1000 rows, none here
    arrays = write_d4rl_fixture(path, timeouts=False)  # file next_observations differ at terminals
    tr = load_dataset(path).transitions()
    assert len(tr) == N - 1
    np.testing.assert_array_equal(tr.next_observations, arrays["observations"][1:])
    assert not np.array_equal(tr.next_observations, arrays["next_observations"][:-1])
    for g, r in zip(
        (tr.observations, tr.actions, tr.rewards, tr.next_observations, tr.terminals),
        qlearning_reference(arrays),
        strict=True,
    ):
        np.testing.assert_array_equal(g, r)


def test_keep_mode_uses_file_next_observations(d4rl_file):
    path, arrays = d4rl_file
    ds = load_dataset(path)
    tr = ds.transitions("keep")
    assert len(tr) == N == len(ds)
    np.testing.assert_array_equal(tr.next_observations, arrays["next_observations"])
    np.testing.assert_array_equal(tr.terminals, arrays["terminals"].astype(np.float32))
    # the final step of a truncated episode is kept, with not_done = 1
    assert tr.terminals[TIMEOUTS_AT[0]] == 0.0
    np.testing.assert_array_equal(
        tr.observations[TIMEOUTS_AT[0]], arrays["observations"][TIMEOUTS_AT[0]]
    )


def test_keep_mode_without_next_observations_is_an_error(tmp_path):
    path = tmp_path / "x.hdf5"
    write_d4rl_fixture(path, next_observations=False)
    ds = load_dataset(path)
    assert ds.next_observations is None
    with pytest.raises(DatasetError, match="next_observations"):
        ds.transitions("keep")
    with pytest.raises(DatasetError, match="'drop'"):
        ds.transitions("bogus")


def test_transitions_make_no_hidden_copies(tmp_path):
    path = tmp_path / "big.hdf5"
    write_d4rl_fixture(
        path,
        n=20000,
        obs_dim=17,
        act_dim=6,
        terminals_at=(10, 5000),
        timeouts_at=(999, 1999, 19999),
    )
    ds = load_dataset(path)
    rows_nbytes = 4 * len(ds) * (2 * ds.obs_dim + ds.act_dim + 2)  # (s, a, r, s', d) in float32
    for mode in ("drop", "keep"):
        tracemalloc.start()
        tr = ds.transitions(mode)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # peak = the result itself plus at most one int64 index and one bool mask
        assert peak <= tr.nbytes + 9 * len(ds) + 64 * 1024, (mode, peak, tr.nbytes)
        assert rows_nbytes + tr.nbytes <= 2 * rows_nbytes
        for a in (tr.observations, tr.next_observations, tr.actions, tr.rewards):
            assert not np.shares_memory(a, ds.observations) and a.flags.owndata


# ------------------------------------------------------------- file reading
def test_float64_file_is_read_as_float32(tmp_path):
    path = tmp_path / "hopper_medium_replay-v2.hdf5"
    arrays = write_d4rl_fixture(path, dtype=np.float64)
    ds = load_dataset(path)
    for key in ("observations", "actions", "rewards", "next_observations"):
        got = getattr(ds, key)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, arrays[key].astype(np.float32))
    assert ds.terminals.dtype == np.bool_ and ds.timeouts.dtype == np.bool_


@pytest.mark.parametrize("flag_dtype", [np.uint8, np.int64, np.float32, np.float64])
def test_numeric_flags_rewards_2d_and_missing_timeouts(tmp_path, flag_dtype):
    path = tmp_path / "hopper_medium-v0.h5"  # legacy: no timeouts, but a D4RL name gives the limit
    arrays = write_d4rl_fixture(
        path, timeouts=False, next_observations=False, rewards_2d=True, flag_dtype=flag_dtype
    )
    ds = load_dataset(path)
    assert ds.rewards.shape == (N,)
    np.testing.assert_array_equal(ds.rewards, arrays["rewards"])
    np.testing.assert_array_equal(ds.terminals, arrays["terminals"])
    assert ds.terminals.dtype == np.bool_
    assert not ds.timeouts.any() and ds.metadata["timeouts_missing"] is True
    assert ds.metadata["timeouts_synthesized_every"] == 1000  # D4RL's time limit; N < 1000
    assert len(ds.transitions()) == N - 1  # the rule still applies, nothing to skip


@pytest.mark.parametrize(
    "dtype,value", [(np.int32, 2), (np.int8, -1), (np.float32, 0.5), (np.float64, np.nan)]
)
@pytest.mark.parametrize("key", ["terminals", "timeouts"])
def test_flags_other_than_0_1_are_rejected(tmp_path, key, dtype, value):
    path = tmp_path / "flags.hdf5"
    arrays = make_d4rl_arrays()
    arrays[key] = arrays[key].astype(dtype)
    arrays[key][9] = value
    arrays[key][17] = value
    write_d4rl_fixture(path, arrays)
    with pytest.raises(DatasetError, match=rf"'{key}'.* at row 9 .*2 bad rows") as e:
        load_dataset(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_metadata_and_infos_groups(d4rl_file):
    path, _ = d4rl_file
    ds = load_dataset(path)
    assert ds.metadata["algorithm"] == "SAC"
    assert ds.metadata["iteration"] == 7
    assert ds.metadata["policy/nonlinearity"] == "relu"
    assert "policy/fc0/weight" not in ds.metadata  # only simple scalars
    assert not any(k.startswith("infos") for k in ds.metadata)
    assert ds.metadata["timeouts_missing"] is False


@pytest.mark.parametrize("fname", ["hopper_medium-v2.hdf5", "hopper-medium-v2.hdf5"])
def test_env_and_scores_inferred_from_file_name(tmp_path, fname):
    path = tmp_path / fname
    write_d4rl_fixture(path)
    ds = load_dataset(path)
    assert ds.env_id == "Hopper-v4"
    assert (ds.ref_min_score, ds.ref_max_score) == (HOPPER_MIN, HOPPER_MAX)
    assert ds.source == str(path)


def test_unrecognised_file_name_has_no_env_or_scores(tmp_path):
    path = tmp_path / "my_data.hdf5"
    write_d4rl_fixture(path)
    ds = load_dataset(path)
    assert ds.env_id is None and ds.ref_min_score is None
    with pytest.raises(DatasetError, match="reference scores"):
        ds.normalized_score(1.0)


def test_d4rl_named_file_with_wrong_dims_is_rejected(tmp_path):
    path = tmp_path / "halfcheetah_expert-v2.hdf5"
    write_d4rl_fixture(path, obs_dim=11, act_dim=3)
    with pytest.raises(DatasetError, match=r"halfcheetah.*17"):
        load_dataset(path)


# ------------------------------------------------------------------- errors
@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals"])
def test_missing_required_key(tmp_path, key):
    path = tmp_path / "missing.hdf5"
    write_d4rl_fixture(path, drop=(key,))
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    assert str(path) in str(e.value) and f"'{key}'" in str(e.value) and "missing" in str(e.value)


def test_length_mismatch(tmp_path):
    path = tmp_path / "mismatch.hdf5"
    arrays = make_d4rl_arrays()
    arrays["actions"] = arrays["actions"][:-3]
    write_d4rl_fixture(path, arrays)
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    msg = str(e.value)
    assert str(path) in msg and "'actions'" in msg and str(N - 3) in msg and "mismatch" in msg


@pytest.mark.parametrize(
    "key,row", [("observations", 13), ("rewards", 29), ("next_observations", 0)]
)
def test_non_finite_values_name_the_row(tmp_path, key, row):
    path = tmp_path / "nan.hdf5"
    arrays = make_d4rl_arrays()
    arr = arrays[key]
    if arr.ndim == 2:
        arr[row, 1] = np.nan
    else:
        arr[row] = np.inf
    write_d4rl_fixture(path, arrays)
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    msg = str(e.value)
    assert f"'{key}'" in msg and f"row {row}" in msg and str(path) in msg


def test_truncated_file(tmp_path, d4rl_file):
    path, _ = d4rl_file
    cut = tmp_path / "cut.hdf5"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as e:
        load_dataset(cut)
    assert str(cut) in str(e.value) and "delete it and download it again" in str(e.value)
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        load_dataset(garbage)


def test_validate_rejects_bad_shapes_and_empty():
    ok = OfflineDataset(
        observations=np.zeros((4, 2), np.float32),
        actions=np.zeros((4, 1), np.float32),
        rewards=np.zeros(4, np.float32),
        terminals=np.zeros(4, bool),
        timeouts=np.zeros(4, bool),
        name="tiny",
    )
    ok.validate()
    bad = OfflineDataset(**{**ok.__dict__, "rewards": np.zeros((4, 1), np.float32)})
    with pytest.raises(DatasetError, match=r"'rewards' must be 1-D"):
        bad.validate()
    bad = OfflineDataset(**{**ok.__dict__, "terminals": np.zeros(4, np.float32)})
    with pytest.raises(DatasetError, match=r"'terminals' must be a bool"):
        bad.validate()
    empty = OfflineDataset(
        **{
            **ok.__dict__,
            "observations": np.zeros((0, 2), np.float32),
            "actions": np.zeros((0, 1), np.float32),
            "rewards": np.zeros(0, np.float32),
            "terminals": np.zeros(0, bool),
            "timeouts": np.zeros(0, bool),
        }
    )
    with pytest.raises(DatasetError, match="empty"):
        empty.validate()


def test_unknown_and_refused_names(monkeypatch):
    monkeypatch.setattr(d4rl, "_fetch", forbid_network)
    with pytest.raises(DatasetError) as e:
        load_dataset("no-such-dataset")
    assert "unknown dataset 'no-such-dataset'" in str(e.value) and "hopper-medium-v2" in str(
        e.value
    )
    with pytest.raises(DatasetError, match="medium-replay"):
        load_dataset("hopper-mediun-v2")  # near miss: lists the valid kinds
    with pytest.raises(DatasetError, match="111-dim observation layout is not validated"):
        load_dataset("ant-medium-v2")
    with pytest.raises(DatasetError, match="v0"):
        load_dataset("hopper-medium-v0")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("nowhere/file.hdf5")
    with pytest.raises(DatasetError, match="not found in the Minari root") as e:
        load_dataset("someone/hopper/expert-v3", download=False)
    assert os.environ["MINARI_DATASETS_PATH"] in str(e.value)


def test_d4rl_names_and_urls():
    assert d4rl.parse_d4rl_name("hopper-medium-replay-v2") == ("hopper", "medium-replay", 2)
    assert d4rl.parse_d4rl_name("walker2d_full_replay-v1.hdf5") == ("walker2d", "full-replay", 1)
    assert d4rl.parse_d4rl_name("hopper-medium-v3") is None
    assert d4rl.parse_d4rl_name("mujoco/hopper/medium-v0") is None
    base = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
    assert d4rl.d4rl_url("halfcheetah-medium-expert-v2") == (
        f"{base}/gym_mujoco_v2/halfcheetah_medium_expert-v2.hdf5"
    )
    assert (
        d4rl.d4rl_url("hopper-medium-replay-v1")
        == f"{base}/gym_mujoco_v1/hopper_medium_replay-v1.hdf5"
    )


# ----------------------------------------------------------------- download
def copying_fetch(src, calls):
    def fetch(url, dest_path):
        calls.append(url)
        shutil.copyfile(src, dest_path)

    return fetch


def test_download_into_cache_then_reuse(tmp_path, d4rl_file, monkeypatch):
    src, arrays = d4rl_file
    calls = []
    monkeypatch.setattr(d4rl, "_fetch", copying_fetch(src, calls))
    ds = load_dataset("hopper-medium-v2")  # cache from $OCRL_DATA_DIR
    target = tmp_path / "ocrl_cache" / "hopper_medium-v2.hdf5"
    assert calls == [d4rl.d4rl_url("hopper-medium-v2")]
    assert target.is_file() and ds.source == str(target)
    assert ds.name == "hopper-medium-v2" and ds.env_id == "Hopper-v4"
    assert ds.ref_min_score == HOPPER_MIN
    assert os.listdir(target.parent) == [target.name]  # no temporary left
    np.testing.assert_array_equal(ds.observations, arrays["observations"])
    load_dataset("hopper-medium-v2", download=False)
    assert len(calls) == 1  # served from the cache
    other = tmp_path / "explicit"
    load_dataset("hopper-medium-v2", cache_dir=str(other))
    assert (other / "hopper_medium-v2.hdf5").is_file() and len(calls) == 2


def test_download_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    def no_network(url, dest_path):
        Path(dest_path).write_bytes(b"partial")
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(d4rl, "_fetch", no_network)
    cache = tmp_path / "c"
    with pytest.raises(DatasetError) as e:
        load_dataset("walker2d-medium-replay-v2", cache_dir=str(cache))
    msg = str(e.value)
    assert str(cache / "walker2d_medium_replay-v2.hdf5") in msg
    assert d4rl.d4rl_url("walker2d-medium-replay-v2") in msg and "$OCRL_DATA_DIR" in msg
    assert os.listdir(cache) == []


def test_truncated_download_is_verified_and_removed(tmp_path, d4rl_file, monkeypatch):
    src, _ = d4rl_file
    data = src.read_bytes()

    def truncated(url, dest_path):
        Path(dest_path).write_bytes(data[: len(data) // 3])

    monkeypatch.setattr(d4rl, "_fetch", truncated)
    cache = tmp_path / "c"
    with pytest.raises(DatasetError, match="failed verification") as e:
        load_dataset("hopper-medium-v2", cache_dir=str(cache))
    assert str(cache / "hopper_medium-v2.hdf5") in str(e.value)
    assert os.listdir(cache) == []

    def wrong_layout(url, dest_path):
        with h5py.File(dest_path, "w") as f:
            f.create_dataset("observations", data=np.zeros((3, 11), np.float32))

    monkeypatch.setattr(d4rl, "_fetch", wrong_layout)
    with pytest.raises(DatasetError, match="'actions' is missing"):
        load_dataset("hopper-medium-v2", cache_dir=str(cache))
    assert os.listdir(cache) == []


def test_offline_missing_file_error(tmp_path, monkeypatch):
    monkeypatch.setattr(d4rl, "_fetch", forbid_network)
    with pytest.raises(DatasetError) as e:
        load_dataset("halfcheetah-expert-v2", download=False)
    msg = str(e.value)
    assert str(tmp_path / "ocrl_cache" / "halfcheetah_expert-v2.hdf5") in msg
    assert "gym_mujoco_v2/halfcheetah_expert-v2.hdf5" in msg and "OCRL_DATA_DIR" in msg


def test_legacy_d4rl_cache_is_used(tmp_path, d4rl_file, monkeypatch):
    src, _ = d4rl_file
    monkeypatch.setattr(d4rl, "_fetch", forbid_network)
    legacy = tmp_path / "d4rl_legacy_cache"
    legacy.mkdir()
    shutil.copyfile(src, legacy / "hopper_medium-v2.hdf5")
    ds = load_dataset("hopper-medium-v2", download=False)
    assert ds.source == str(legacy / "hopper_medium-v2.hdf5")


# ----------------------------------------------------- normalised score, stats
def test_normalized_score(d4rl_file):
    ds = load_dataset(d4rl_file[0])
    assert ds.normalized_score(HOPPER_MIN) == pytest.approx(0.0)
    assert ds.normalized_score(HOPPER_MAX) == pytest.approx(100.0)
    assert isinstance(ds.normalized_score(1000.0), float)
    out = ds.normalized_score([HOPPER_MIN, HOPPER_MAX, 1000.0])
    np.testing.assert_allclose(out, [0, 100, 100 * (1000 - HOPPER_MIN) / (HOPPER_MAX - HOPPER_MIN)])


def test_normalized_score_matches_minari(tmp_path, d4rl_file):
    import minari

    ds = load_dataset(d4rl_file[0])
    folder = write_minari(ds, tmp_path / "root", "ocrl/hopper/score-v0")
    mds = minari.MinariDataset(Path(folder) / "data")
    returns = np.array([HOPPER_MIN, 0.0, 1234.5, HOPPER_MAX])
    np.testing.assert_allclose(
        ds.normalized_score(returns), 100 * minari.get_normalized_score(mds, returns), rtol=1e-12
    )
    back = read_minari(folder)
    np.testing.assert_allclose(back.normalized_score(returns), ds.normalized_score(returns))


def test_obs_mean_std(d4rl_file):
    ds = load_dataset(d4rl_file[0])
    mean, std = ds.obs_mean_std()
    x = ds.observations.astype(np.float64)
    assert mean.dtype == np.float32 and std.dtype == np.float32 and mean.shape == (11,)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, x.std(0) + 1e-3, rtol=1e-6)
    _, std0 = ds.obs_mean_std(eps=0.0)
    np.testing.assert_allclose(std - std0, 1e-3, rtol=1e-4)
    z = offline.normalize(ds.observations, mean, std)
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-5


def test_episodes_and_returns(d4rl_file):
    ds = load_dataset(d4rl_file[0])
    # cut after terminals (5, 22) and timeouts (12, 31, 39)
    bounds = [(0, 6), (6, 13), (13, 23), (23, 32), (32, 40)]
    assert [(s.start, s.stop) for s in ds.episodes()] == bounds
    np.testing.assert_allclose(
        ds.episode_returns(), [ds.rewards[a:b].astype(np.float64).sum() for a, b in bounds]
    )
    trailing = OfflineDataset(**{**ds.__dict__, "timeouts": np.zeros(N, bool)})
    assert [(s.start, s.stop) for s in trailing.episodes()] == [(0, 6), (6, 23), (23, 40)]


def corl_return_reward_range(rewards, terminals, max_episode_steps):
    """CORL's return_reward_range, written plainly: the trailing unfinished episode is not counted."""
    returns, ep_ret, ep_len = [], 0.0, 0
    for r, d in zip(rewards, terminals, strict=True):
        ep_ret += float(r)
        ep_len += 1
        if d or ep_len == max_episode_steps:
            returns.append(ep_ret)
            ep_ret, ep_len = 0.0, 0
    return min(returns), max(returns)


def test_reward_range():
    tr = offline.Transitions(
        observations=np.zeros((7, 1), np.float32),
        actions=np.zeros((7, 1), np.float32),
        rewards=np.array([1, 1, 1, 5, 2, 2, -9], np.float32),
        next_observations=np.zeros((7, 1), np.float32),
        terminals=np.array([0, 1, 0, 0, 0, 0, 0], np.float32),
    )
    # episodes: [0,2) terminal; then cut every 2 steps: [2,4) [4,6); the unfinished [6,7) is left out
    assert offline.reward_range(tr, max_episode_steps=2) == (2.0, 6.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        rewards = rng.normal(size=n).astype(np.float32)
        terminals = (rng.random(n) < 0.05).astype(np.float32)
        tr = offline.Transitions(
            np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32), rewards,
            np.zeros((n, 1), np.float32), terminals,
        )  # fmt: skip
        expected = corl_return_reward_range(rewards, terminals, 17)
        np.testing.assert_allclose(offline.reward_range(tr, 17), expected, rtol=1e-6)


# ---------------------------------------------------------------- round trips
def assert_same_transitions(a, b):
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


def test_round_trip_d4rl_to_minari(tmp_path, d4rl_file, monkeypatch):
    import minari

    ds = load_dataset(d4rl_file[0])
    root = tmp_path / "minari_root"
    folder = write_minari(
        ds,
        root,
        "roundtrip/hopper/medium-v0",
        description="test",
        algorithm_name="SAC",
        extra_metadata={"author": ["ocrl tests"], "note": "hello"},
    )
    assert folder == str(root / "roundtrip/hopper/medium-v0")
    assert (root / "roundtrip" / "namespace_metadata.json").is_file()
    assert (root / "roundtrip" / "hopper" / "namespace_metadata.json").is_file()
    assert not [p for p in (root / "roundtrip" / "hopper").iterdir() if p.name.startswith(".")]

    # minari reads it by id, from MINARI_DATASETS_PATH
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    mds = minari.load_dataset("roundtrip/hopper/medium-v0")
    assert mds.total_episodes == 5 and mds.total_steps == N
    assert mds.spec.dataset_id == "roundtrip/hopper/medium-v0"
    assert mds.env_spec.id == "Hopper-v4" and mds._eval_env_spec.id == "Hopper-v4"
    ep = next(iter(mds.iterate_episodes([1])))
    assert ep.observations.shape == (8, 11) and len(ep.actions) == 7
    assert ep.truncations[-1] and not ep.terminations[-1]
    assert "roundtrip/hopper/medium-v0" in minari.list_local_datasets()
    with h5py.File(Path(folder) / "data" / "main_data.hdf5") as f:
        g = f["episode_1"]
        assert g.attrs["id"] == 1 and g.attrs["total_steps"] == 7
        assert g["terminations"].dtype == np.bool_
        assert g.attrs["rewards_sum"] == pytest.approx(ds.rewards[6:13].sum(), rel=1e-6)
    meta = json.loads((Path(folder) / "data" / "metadata.json").read_text())
    assert meta["ref_min_score"] == HOPPER_MIN and meta["ocrl_env_id"] == "Hopper-v4"
    assert meta["note"] == "hello" and meta["data_format"] == "hdf5"

    back = load_dataset("roundtrip/hopper/medium-v0", download=False)
    assert back.env_id == "Hopper-v4" and back.ref_max_score == HOPPER_MAX
    assert back.metadata["description"] == "test"
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ds, key), err_msg=key)
    assert_same_transitions(back.transitions(), ds.transitions())
    assert_same_transitions(back.transitions("keep"), ds.transitions("keep"))
    # the folder and its data/ subfolder load by path as well
    assert len(load_dataset(folder)) == N
    assert len(load_dataset(Path(folder) / "data")) == N


def test_round_trip_without_next_observations_drops_only_the_last_row(tmp_path):
    path = tmp_path / "hopper_random-v2.hdf5"
    arrays = write_d4rl_fixture(path, next_observations=False, timeouts_at=(12, 31))
    ds = load_dataset(path)
    folder = write_minari(ds, tmp_path / "root", "plain-v1")
    back = read_minari(folder)
    assert len(back) == N - 1 and back.metadata["ocrl_final_observation"] == "next_row"
    np.testing.assert_array_equal(back.observations, arrays["observations"][:-1])
    np.testing.assert_array_equal(back.next_observations, arrays["observations"][1:])
    np.testing.assert_array_equal(back.terminals, arrays["terminals"][:-1])
    np.testing.assert_array_equal(back.timeouts, arrays["timeouts"][:-1])
    a, b = back.transitions(), ds.transitions()
    assert len(a) == len(b) - 1  # the transition into the dropped last row
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key)[:-1])


def test_write_d4rl_round_trip(tmp_path, d4rl_file):
    ds = load_dataset(d4rl_file[0])
    out = tmp_path / "out" / "collected.hdf5"
    write_d4rl_hdf5(ds, out)
    assert os.listdir(out.parent) == ["collected.hdf5"]
    with h5py.File(out) as f:
        assert f["terminals"].dtype == np.bool_ and f["observations"].dtype == np.float32
        assert f["observations"].compression == "gzip"
    back = read_d4rl_hdf5(out)
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ds, key), err_msg=key)
    # env id and reference scores survive a non-D4RL file name through metadata/
    assert back.env_id == "Hopper-v4" and back.ref_min_score == HOPPER_MIN
    assert back.metadata["algorithm"] == "SAC" and back.metadata["policy/nonlinearity"] == "relu"
    assert_same_transitions(back.transitions(), ds.transitions())


def test_write_minari_refuses_overwrite_and_bad_input(tmp_path, d4rl_file):
    ds = load_dataset(d4rl_file[0])
    root = tmp_path / "root"
    write_minari(ds, root, "ns/a-v0")
    with pytest.raises(DatasetError, match="already exists"):
        write_minari(ds, root, "ns/a-v0")
    small = OfflineDataset(**{**ds.__dict__})
    small.rewards = ds.rewards + 1
    write_minari(small, root, "ns/a-v0", overwrite=True)
    np.testing.assert_array_equal(read_minari(root / "ns/a-v0").rewards, ds.rewards + 1)
    assert sorted(p.name for p in (root / "ns").iterdir()) == ["a-v0", "namespace_metadata.json"]
    with pytest.raises(DatasetError, match="malformed"):
        write_minari(ds, root, "no_version")
    with pytest.raises(DatasetError, match="total_steps"):
        write_minari(ds, root, "ns/b-v0", extra_metadata={"total_steps": 3})
    with pytest.raises(DatasetError, match="JSON"):
        write_minari(ds, root, "ns/c-v0", extra_metadata={"bad": object()})
    assert not (root / "ns" / "c-v0").exists()
    assert not [p for p in (root / "ns").iterdir() if p.name.startswith(".")]


def test_shipped_ids_resolve_before_minari(tmp_path, d4rl_file, monkeypatch):
    ds = load_dataset(d4rl_file[0])
    shipped = tmp_path / "shipped"
    write_minari(ds, shipped, "ocrl/hopper/tiny-v0")
    monkeypatch.setattr(offline, "SHIPPED_ROOT", shipped)
    monkeypatch.setattr(minari_io, "SHIPPED_ROOT", shipped)
    assert offline.shipped_datasets() == ["ocrl/hopper/tiny-v0"]
    got = load_dataset("ocrl/hopper/tiny-v0", download=False)
    assert got.source == str(shipped / "ocrl/hopper/tiny-v0/data") and got.env_id == "Hopper-v4"
    with pytest.raises(DatasetError, match="shipped datasets: ocrl/hopper/tiny-v0"):
        load_dataset("not a dataset", download=False)


def test_minari_env_id_from_metadata():
    import gymnasium as gym

    spec = gym.spec("Walker2d-v4").to_json()
    assert minari_io._env_id_from_metadata({"eval_env_spec": spec}) == "Walker2d-v4"
    d4rl_style = json.dumps({"id": "walker2d-medium-v2"})
    assert minari_io._env_id_from_metadata({"env_spec": d4rl_style}) == "Walker2d-v4"
    assert (
        minari_io._env_id_from_metadata({"env_spec": spec, "ocrl_env_id": "Mine-v0"}) == "Mine-v0"
    )
    assert minari_io._env_id_from_metadata({}) is None


def test_minari_folder_errors(tmp_path, d4rl_file):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset folder"):
        load_dataset(tmp_path / "empty")
    folder = Path(write_minari(load_dataset(d4rl_file[0]), tmp_path / "root", "x-v0"))
    with pytest.raises(DatasetError, match="looks like a Minari main_data.hdf5"):
        load_dataset(folder / "data" / "main_data.hdf5")
    meta = folder / "data" / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "minari_version": "0.0.1"}))
    with pytest.raises(DatasetError, match="cannot be read"):
        load_dataset(folder)
