"""Dataset inputs as other tools write them: float flags, files without timeouts, Minari datasets
from minari.DataCollector, damaged files and folders, file permissions, unknown environment ids.

Every bad input must raise `DatasetError` with one line that names the file and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from ocrl.data import d4rl
from ocrl.data.d4rl import D4RL_REF_SCORES, synthesize_timeouts, write_d4rl_hdf5
from ocrl.data.minari_io import write_minari
from ocrl.data.offline import DatasetError, load_dataset
from ocrl.envs.evaluation import EnvError, make_env, reference_scores, resolve_reference_scores

HOPPER_MIN, HOPPER_MAX = D4RL_REF_SCORES["hopper"]


@pytest.fixture(autouse=True)
def isolated_data_dirs(tmp_path, monkeypatch):
    """Keep every cache and Minari root inside tmp_path."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari_root"))
    monkeypatch.setenv("OCRL_DATA_DIR", str(tmp_path / "ocrl_cache"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl_legacy_cache"))


def rows(n, obs_dim=11, act_dim=3, terminals_at=(), timeouts_at=(), seed=0):
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, bool)
    terminals[list(terminals_at)] = True
    timeouts = np.zeros(n, bool)
    timeouts[list(timeouts_at)] = True
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def write_h5(path, arrays, *, flag_dtype=None, drop=(), metadata=None):
    """A D4RL-layout file written with raw h5py, as another tool would."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            if key in drop:
                continue
            if key in ("terminals", "timeouts") and flag_dtype is not None:
                arr = arr.astype(flag_dtype)
            f.create_dataset(key, data=arr, compression="gzip")
        for key, value in (metadata or {}).items():
            f.create_dataset(f"metadata/{key}", data=value)
    return path


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


def same_transitions(a, b):
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


# ------------------------------------------------------------ 1. float flags
@pytest.mark.parametrize(
    "flag_dtype", [np.float32, np.float64, np.uint8, np.int8, np.int32, np.int64]
)
def test_numeric_flags_load_like_bool_flags(tmp_path, flag_dtype):
    arrays = rows(60, terminals_at=(7, 30), timeouts_at=(19, 45, 59))
    plain = load_dataset(write_h5(tmp_path / "a.hdf5", arrays))
    ds = load_dataset(write_h5(tmp_path / "b.hdf5", arrays, flag_dtype=flag_dtype))
    assert ds.terminals.dtype == np.bool_ and ds.timeouts.dtype == np.bool_
    np.testing.assert_array_equal(ds.terminals, arrays["terminals"])
    np.testing.assert_array_equal(ds.timeouts, arrays["timeouts"])
    same_transitions(ds.transitions(), plain.transitions())


def test_column_shaped_float_flags_load(tmp_path):
    arrays = rows(20, terminals_at=(4,), timeouts_at=(12, 19))
    for key in ("terminals", "timeouts"):
        arrays[key] = arrays[key].astype(np.float32).reshape(-1, 1)
    ds = load_dataset(write_h5(tmp_path / "col.hdf5", arrays))
    assert ds.terminals.tolist() == [i == 4 for i in range(20)]
    assert np.flatnonzero(ds.timeouts).tolist() == [12, 19]


# ------------------------------------------------------- 2. missing timeouts
def test_file_without_timeouts_gives_the_same_transitions(tmp_path):
    m = 1000  # D4RL's max_episode_steps; the file has 3 full-length episodes
    arrays = rows(3 * m, timeouts_at=(m - 1, 2 * m - 1, 3 * m - 1))
    with_t = load_dataset(write_h5(tmp_path / "with" / "hopper_medium-v2.hdf5", arrays))
    without = load_dataset(
        write_h5(tmp_path / "without" / "hopper_medium-v2.hdf5", arrays, drop=("timeouts",))
    )
    np.testing.assert_array_equal(without.timeouts, with_t.timeouts)
    same_transitions(without.transitions(), with_t.transitions())
    assert len(without.transitions()) == 3 * m - 1 - 2  # the two inner timeouts dropped
    assert without.metadata["timeouts_synthesized_every"] == m
    assert without.metadata["timeouts_missing"] is True
    assert "timeouts_synthesized_every" not in with_t.metadata
    assert [len(range(*s.indices(len(without)))) for s in without.episodes()] == [m, m, m]


def test_synthesized_timeouts_restart_after_every_episode_end():
    # limit 3: rows 0-2 end by the terminal at 2 (a limit row that terminates is a termination),
    # then 3-5 and 6-8 end by the limit, and row 9 is an unfinished episode.
    got = synthesize_timeouts(np.isin(np.arange(10), [2]), 3)
    assert np.flatnonzero(got).tolist() == [5, 8]
    assert np.flatnonzero(synthesize_timeouts(np.zeros(7, bool), 1)).tolist() == list(range(7))
    assert not synthesize_timeouts(np.zeros(0, bool), 5).any()


def test_missing_timeouts_use_the_named_env_limit(tmp_path):
    # Pendulum-v1 is registered with max_episode_steps=200.
    arrays = rows(700, obs_dim=3, act_dim=1, terminals_at=(150, 550))
    path = write_h5(tmp_path / "pendulum.hdf5", arrays, drop=("timeouts",))
    ds = load_dataset(path, env_id="Pendulum-v1")
    # 0-150 terminal; 151-350 timeout; 351-550 is 200 rows but ends in a terminal; 551-699 open
    assert np.flatnonzero(ds.timeouts).tolist() == [350]
    assert ds.env_id == "Pendulum-v1" and ds.metadata["timeouts_synthesized_every"] == 200
    assert [s.stop for s in ds.episodes()] == [151, 351, 551, 700]

    by_metadata = write_h5(
        tmp_path / "meta.hdf5", arrays, drop=("timeouts",), metadata={"ocrl_env_id": "Pendulum-v1"}
    )
    again = load_dataset(by_metadata)
    assert again.env_id == "Pendulum-v1"
    np.testing.assert_array_equal(again.timeouts, ds.timeouts)


def test_missing_timeouts_without_an_env_are_refused(tmp_path):
    path = write_h5(tmp_path / "data.hdf5", rows(30), drop=("timeouts",))
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    assert_one_line(e, str(path), "no 'timeouts'", "add a bool 'timeouts' dataset", "env_id=")
    with pytest.raises(DatasetError) as e:
        load_dataset(path, env_id="NoSuchEnv-v0")
    assert_one_line(e, str(path), "'NoSuchEnv-v0'", "not a registered Gymnasium id")


def test_synthesized_timeouts_survive_a_rewrite(tmp_path):
    arrays = rows(2500)
    ds = load_dataset(write_h5(tmp_path / "hopper_random-v2.hdf5", arrays, drop=("timeouts",)))
    out = tmp_path / "out.hdf5"
    write_d4rl_hdf5(ds, out)
    back = load_dataset(out)
    assert np.flatnonzero(back.timeouts).tolist() == [999, 1999]
    assert back.metadata["timeouts_synthesized_every"] == 1000  # provenance is kept


# ----------------------------------------------------- 3. reference scores
def test_resolve_reference_scores_priority():
    assert resolve_reference_scores(1.0, 2.0, "Hopper-v4", -5, 5) == (
        -5.0,
        5.0,
        "--ref-min-score/--ref-max-score",
    )
    assert resolve_reference_scores(1.0, 2.0, "Hopper-v4") == (1.0, 2.0, "dataset metadata")
    assert resolve_reference_scores(None, None, "Hopper-v5") == (
        HOPPER_MIN,
        HOPPER_MAX,
        "D4RL hopper reference (random -20.27, expert 3234.30)",
    )
    for env_id, domain in [
        ("HalfCheetah-v2", "halfcheetah"),
        ("Walker2d-v3", "walker2d"),
        ("Walker2d-v5", "walker2d"),
        ("Ant-v4", "ant"),
    ]:
        lo, hi, source = resolve_reference_scores(None, None, env_id)
        assert (lo, hi) == D4RL_REF_SCORES[domain] and source.startswith(f"D4RL {domain} ")
    assert resolve_reference_scores(None, None, "Pendulum-v1") == (
        None,
        None,
        "none: scores are raw returns",
    )
    assert resolve_reference_scores(None, None, None)[2] == "none: scores are raw returns"
    assert resolve_reference_scores(None, 3.0, "Hopper-v4")[2].startswith("D4RL hopper")


def test_resolve_reference_scores_refuses_half_or_degenerate_flags():
    for kwargs, given in [({"ref_min_score": 0.0}, "--ref-min-score"), ({"ref_max_score": 1.0}, "--ref-max-score")]:  # fmt: skip
        with pytest.raises(DatasetError) as e:
            resolve_reference_scores(None, None, "Hopper-v4", **kwargs)
        assert_one_line(e, f"only {given}", "--ref-min-score and --ref-max-score")
    with pytest.raises(DatasetError, match="must be finite and differ"):
        resolve_reference_scores(None, None, "Hopper-v4", 3.0, 3.0)
    with pytest.raises(DatasetError, match="dataset metadata"):
        resolve_reference_scores(float("nan"), 1.0, None)


def test_reference_scores_any_version():
    assert reference_scores("Hopper-v4") == (HOPPER_MIN, HOPPER_MAX)
    assert reference_scores("Hopper-v5") == (None, None)  # online runs: v4 only
    assert reference_scores("Hopper-v5", any_version=True) == (HOPPER_MIN, HOPPER_MAX)
    assert reference_scores("Ant-v2", any_version=True) == D4RL_REF_SCORES["ant"]
    assert reference_scores("Hopper-v1", any_version=True) == (None, None)
    assert reference_scores("Pendulum-v1", any_version=True) == (None, None)


@pytest.fixture
def jax_tree_util(monkeypatch):
    """minari.DataCollector needs jax.tree_util.tree_map (minari[create]); torch's pytree is enough."""
    try:
        import jax.tree_util
    except ImportError:
        from torch.utils import _pytree

        tree_util = types.ModuleType("jax.tree_util")
        tree_util.tree_map = _pytree.tree_map
        jax = types.ModuleType("jax")
        jax.tree_util = tree_util
        monkeypatch.setitem(sys.modules, "jax", jax)
        monkeypatch.setitem(sys.modules, "jax.tree_util", tree_util)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_minari_data_collector_dataset_loads_and_gets_d4rl_reference(tmp_path, jax_tree_util):
    import gymnasium as gym
    import minari

    env = minari.DataCollector(gym.make("Hopper-v5", max_episode_steps=100))
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(300):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    env.create_dataset(dataset_id="test/hopper/collected-v0", algorithm_name="random")
    env.close()
    folder = tmp_path / "minari_root" / "test/hopper/collected-v0"
    assert "ref_max_score" not in json.loads((folder / "data/metadata.json").read_text())

    for source in (folder, "test/hopper/collected-v0"):
        ds = load_dataset(source)
        assert len(ds) == 300 and (ds.obs_dim, ds.act_dim) == (11, 3)
        assert ds.env_id == "Hopper-v5" and ds.ref_min_score is None
        assert ds.observations.dtype == np.float32
        inner = ~(ds.terminals | ds.timeouts)[:-1]  # rows whose next row is the same episode
        np.testing.assert_array_equal(ds.next_observations[:-1][inner], ds.observations[1:][inner])
        assert resolve_reference_scores(ds.ref_min_score, ds.ref_max_score, ds.env_id) == (
            HOPPER_MIN,
            HOPPER_MAX,
            "D4RL hopper reference (random -20.27, expert 3234.30)",
        )


# ------------------------------------------------- 4. damaged files/folders
@pytest.fixture
def minari_folder(tmp_path):
    ds = load_dataset(
        write_h5(
            tmp_path / "hopper_medium-v2.hdf5",
            rows(60, terminals_at=(10,), timeouts_at=(30, 59)),
        )
    )
    return Path(write_minari(ds, tmp_path / "minari_root", "ns/damaged-v0"))


def _rewrite_meta(folder, change):
    meta_file = folder / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    change(meta)
    meta_file.write_text(json.dumps(meta))


def _edit_h5(folder, edit):
    with h5py.File(folder / "data" / "main_data.hdf5", "a") as f:
        edit(f)


DAMAGE = {
    "metadata garbage": (
        lambda d: (d / "data/metadata.json").write_bytes(b"\x00\xff\xfe garbage"),
        ["metadata.json", "not valid JSON"],
    ),
    "metadata truncated": (
        lambda d: (d / "data/metadata.json").write_text(
            (d / "data/metadata.json").read_text()[:100]
        ),
        ["metadata.json", "not valid JSON", "truncated"],
    ),
    "metadata not an object": (
        lambda d: (d / "data/metadata.json").write_text("[1, 2]"),
        ["metadata.json", "JSON object"],
    ),
    "metadata without total_steps": (
        lambda d: _rewrite_meta(d, lambda m: m.pop("total_steps")),
        ["metadata.json", "'total_steps'", "missing"],
    ),
    "metadata with a bad reference score": (
        lambda d: _rewrite_meta(d, lambda m: m.update(ref_min_score="low")),
        ["metadata.json", "'ref_min_score'", "finite number"],
    ),
    "main_data.hdf5 missing": (
        lambda d: (d / "data/main_data.hdf5").unlink(),
        ["main_data.hdf5", "is missing"],
    ),
    "main_data.hdf5 garbage": (
        lambda d: (d / "data/main_data.hdf5").write_bytes(b"<html>403 Forbidden</html>"),
        ["main_data.hdf5", "truncated or corrupt"],
    ),
    "episode group missing": (
        lambda d: _edit_h5(d, lambda f: f.__delitem__("episode_2")),
        ["main_data.hdf5", "'episode_2' is missing"],
    ),
    "episode key missing": (
        lambda d: _edit_h5(d, lambda f: f.__delitem__("episode_1/actions")),
        ["main_data.hdf5", "'episode_1/actions' is missing"],
    ),
    "episode key renamed": (
        lambda d: _edit_h5(d, lambda f: f.move("episode_0/rewards", "episode_0/reward")),
        ["main_data.hdf5", "'episode_0/rewards' is missing"],
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_minari_folder_is_one_clear_error(minari_folder, damage):
    do, parts = DAMAGE[damage]
    do(minari_folder)
    for source in (minari_folder, minari_folder / "data", "ns/damaged-v0"):
        with pytest.raises(DatasetError) as e:
            load_dataset(source, download=False)
        assert_one_line(e, str(minari_folder / "data"), *parts)
        assert "re-create" in str(e.value) or "remove" in str(e.value)


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.98])
def test_truncated_minari_data_is_one_clear_error(minari_folder, fraction):
    data = minari_folder / "data" / "main_data.hdf5"
    blob = data.read_bytes()
    data.write_bytes(blob[: int(len(blob) * fraction)])
    with pytest.raises(DatasetError) as e:
        load_dataset(minari_folder)
    assert_one_line(e, str(data), "truncated or corrupt")


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.3, 0.6, 0.9, 0.99])
def test_truncated_d4rl_file_is_one_clear_error(tmp_path, fraction):
    path = write_h5(tmp_path / "hopper_medium-v2.hdf5", rows(3000, timeouts_at=(999, 1999)))
    blob = path.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(blob[: int(len(blob) * fraction)])
    with pytest.raises(DatasetError) as e:
        load_dataset(cut)
    assert_one_line(e, str(cut), "delete it and download it again")


# -------------------------------------------------------- 5. permissions
@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_d4rl_writes_get_ordinary_permissions(tmp_path, umask):
    ds = load_dataset(write_h5(tmp_path / "hopper_medium-v2.hdf5", rows(20, timeouts_at=(19,))))
    write_d4rl_hdf5(ds, tmp_path / "out" / "a.hdf5")
    assert mode(tmp_path / "out" / "a.hdf5") == 0o644
    umask(0o077)
    write_d4rl_hdf5(ds, tmp_path / "out" / "b.hdf5")
    assert mode(tmp_path / "out" / "b.hdf5") == 0o600  # the umask, not a fixed mode


def test_minari_writes_get_ordinary_permissions(tmp_path, umask):
    ds = load_dataset(write_h5(tmp_path / "hopper_medium-v2.hdf5", rows(20, timeouts_at=(19,))))
    folder = Path(write_minari(ds, tmp_path / "root", "ns/sub/perm-v0"))
    assert mode(folder) == 0o755 and mode(folder / "data") == 0o755
    assert mode(folder / "data" / "metadata.json") == 0o644
    assert mode(folder / "data" / "main_data.hdf5") == 0o644
    assert mode(tmp_path / "root" / "ns" / "namespace_metadata.json") == 0o644
    assert mode(tmp_path / "root" / "ns" / "sub" / "namespace_metadata.json") == 0o644
    write_minari(ds, tmp_path / "root", "ns/sub/perm-v0", overwrite=True)
    assert mode(folder) == 0o755


def test_downloads_get_ordinary_permissions(tmp_path, umask, monkeypatch):
    src = write_h5(tmp_path / "src.hdf5", rows(20, timeouts_at=(19,)))
    monkeypatch.setattr(d4rl, "_fetch", lambda url, dest: shutil.copyfile(src, dest))
    ds = load_dataset("hopper-medium-v2")
    assert mode(ds.source) == 0o644 and Path(ds.source).parent == tmp_path / "ocrl_cache"


# ------------------------------------------------------ 6. unknown env ids
@pytest.mark.parametrize(
    "env_id,suggestion",
    [("hopper-v4", "did you mean 'Hopper-v4'"), ("Hopper-v9", "'Hopper-v5'"), ("Walker2D-v4", "'Walker2d-v4'")],
)  # fmt: skip
def test_make_env_unknown_id_suggests(env_id, suggestion):
    with pytest.raises(EnvError) as e:
        make_env(env_id)
    assert isinstance(e.value, DatasetError) and isinstance(e.value, ValueError)
    assert_one_line(e, f"cannot make environment '{env_id}'", suggestion)


def test_unknown_env_exits_2_with_one_line(capsys):
    from ocrl.experiment import friendly_errors

    with pytest.raises(SystemExit) as e, friendly_errors():
        make_env("NoSuchEnv-v0")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot make environment 'NoSuchEnv-v0'") and err.count("\n") == 1
