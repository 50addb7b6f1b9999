"""Writing Minari's on-disk HDF5 format (Minari 0.5, ``hdf5`` backend) without going through
`minari`'s DataCollector; the layout and the row conversion are described in `ocrl.data.minari_io`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ocrl.data.dataset import DatasetError, OfflineDataset
from ocrl.data.minari_io import _ID_RE, _RESERVED_KEYS
from ocrl.files import atomic_path, set_ordinary_permissions

__all__ = ["write_minari"]


def _spec_json(env_id: str) -> str | None:
    import gymnasium as gym

    try:
        return gym.spec(env_id).to_json()
    except Exception:  # unregistered env or unserialisable kwargs: keep only ocrl_env_id
        return None


def _write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj))


def write_minari(
    dataset: OfflineDataset,
    root: str | os.PathLike,
    dataset_id: str,
    *,
    description: str = "",
    algorithm_name: str = "",
    extra_metadata: dict | None = None,
    overwrite: bool = False,
) -> str:
    """Write `dataset` as Minari dataset ``dataset_id`` under ``root``; return ``<root>/<dataset_id>``.

    The result loads with ``minari.MinariDataset(<root>/<dataset_id>/data)`` and, with
    ``MINARI_DATASETS_PATH=root``, ``minari.load_dataset(dataset_id)``. The folder is written
    under a hidden temporary name and renamed into place; an existing dataset is an error unless
    ``overwrite``. Namespace folders get a ``namespace_metadata.json`` when they have none.

    Episodes are cut at ``terminals | timeouts`` (a trailing unfinished episode is written with
    neither flag set). An episode's final observation is ``next_observations`` of its last row. A
    dataset without ``next_observations`` uses the next row's observation instead (for an episode
    that ended by termination or timeout that is the next episode's first state: harmless after a
    termination, and dropped by ``transitions("drop")`` after a timeout), and the very last row of
    the dataset, which has no next row, is not written. ``metadata.json`` then records
    ``"ocrl_final_observation": "next_row"``.

    Scalar entries (str, bool, int, finite float) of ``dataset.metadata`` are written to
    ``metadata.json`` as `write_d4rl_hdf5` writes them to ``metadata/``, so markers such as
    ``ocrl_layout`` and provenance survive; ``extra_metadata`` wins over them, and the keys this
    writer derives from the data (ids, spaces, sizes, env, scores) win over both. A
    transitions-layout dataset (`OfflineDataset.from_transitions`) becomes one Minari episode per
    row; Minari's per-episode groups make that far slower and larger than `write_d4rl_hdf5`.
    """
    import gymnasium as gym
    import h5py
    import minari
    from minari.serialization import serialize_space

    m = _ID_RE.fullmatch(dataset_id)
    if m is None:
        raise DatasetError(
            f"Minari dataset id '{dataset_id}' is malformed: expected (namespace/)name-vN, e.g. "
            "ocrl/hopper/medium-v0"
        )
    dataset.validate()
    extra = dict(extra_metadata or {})
    clash = sorted(_RESERVED_KEYS & extra.keys())
    if clash:
        raise DatasetError(
            f"write_minari('{dataset_id}'): extra_metadata may not set {', '.join(clash)}; "
            "these are written from the data"
        )
    root = Path(root).expanduser()
    final = root / dataset_id
    if final.exists() and not overwrite:
        raise DatasetError(
            f"Minari dataset {final} already exists; delete it, use another version, or pass "
            "overwrite=True"
        )

    n = len(dataset)
    obs, next_obs = dataset.observations, dataset.next_observations
    starts, ends = dataset.episode_bounds()
    # Actions are declared in [-1, 1] when they all lie there (D4RL MuJoCo), else unbounded.
    act = dataset.actions
    bounded = bool(np.all(act >= -1.0)) and bool(np.all(act <= 1.0))
    act_space = gym.spaces.Box(
        low=-1.0 if bounded else -np.inf,
        high=1.0 if bounded else np.inf,
        shape=(dataset.act_dim,),
        dtype=np.float32,
    )
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(dataset.obs_dim,), dtype=np.float32)

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        data = tmp / "data"
        data.mkdir()
        total_steps = 0
        n_eps = 0
        with h5py.File(data / "main_data.hdf5", "w", track_order=True) as f:
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                if next_obs is not None:
                    ep_obs = np.concatenate([obs[s:e], next_obs[e - 1 : e]])
                else:
                    ep_obs = obs[s : min(e + 1, n)]
                t = ep_obs.shape[0] - 1
                if t == 0:
                    continue  # only the dataset's last row, which has no next observation
                g = f.create_group(f"episode_{n_eps}")
                g.attrs["id"] = n_eps
                g.attrs["total_steps"] = t
                r = dataset.rewards[s : s + t]
                g.attrs.update(
                    {
                        "rewards_sum": float(r.sum(dtype=np.float64)),
                        "rewards_mean": float(r.mean(dtype=np.float64)),
                        "rewards_std": float(r.std(dtype=np.float64)),
                        "rewards_max": float(r.max()),
                        "rewards_min": float(r.min()),
                    }
                )
                term = dataset.terminals[s : s + t]
                columns = {
                    "observations": ep_obs,
                    "actions": act[s : s + t],
                    "rewards": r,
                    "terminations": term,
                    "truncations": dataset.timeouts[s : s + t] & ~term,
                }
                for key, arr in columns.items():
                    # Contiguous storage: a chunked, resizable dataset (Minari's own writer, which appends)
                    # costs kilobytes of index per array, more than a short episode's data.
                    g.create_dataset(key, data=arr)
                total_steps += t
                n_eps += 1

        meta = _scalar_metadata(dataset.metadata)
        meta.update(extra)
        meta.update(
            {
                "dataset_id": dataset_id,
                "total_episodes": n_eps,
                "total_steps": total_steps,
                "data_format": "hdf5",
                "jpeg_encoding": False,
                "observation_space": serialize_space(obs_space),
                "action_space": serialize_space(act_space),
                "algorithm_name": algorithm_name,
                "description": description,
                "minari_version": minari.__version__,
            }
        )
        if dataset.ref_min_score is not None and dataset.ref_max_score is not None:
            meta["ref_min_score"] = float(dataset.ref_min_score)
            meta["ref_max_score"] = float(dataset.ref_max_score)
        if dataset.env_id is not None:
            meta["ocrl_env_id"] = dataset.env_id
            spec = _spec_json(dataset.env_id)
            if spec is not None:
                meta["env_spec"] = spec
                meta["eval_env_spec"] = spec
        if next_obs is None:
            meta["ocrl_final_observation"] = "next_row"
        size = (data / "main_data.hdf5").stat().st_size
        meta["dataset_size"] = round(size / 1e6, 1)
        try:
            text = json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise DatasetError(
                f"write_minari('{dataset_id}'): metadata is not JSON-serialisable ({e}); pass "
                "only str/number/bool/list/dict values in extra_metadata"
            ) from e
        (data / "metadata.json").write_text(text)

        _ensure_namespaces(root, m["namespace"])
        set_ordinary_permissions(tmp, directory=True)  # mkdtemp made it 0700
        if final.exists():  # overwrite: move the old one aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(final)


# What readers add about the file they read, and what write_minari derives itself: never carried.
_NOT_CARRIED = _RESERVED_KEYS | {
    "format",
    "file_keys",
    "timeouts_missing",
    "has_next_observations",
    "algorithm_name",
    "description",
    "ref_min_score",
    "ref_max_score",
    "ocrl_env_id",
    "ocrl_final_observation",
}


def _scalar_metadata(metadata: dict) -> dict:
    """The JSON scalar entries of a dataset's metadata that `write_minari` carries over."""
    out = {}
    for key, value in metadata.items():
        if key in _NOT_CARRIED or not isinstance(key, str):
            continue
        if isinstance(value, float) and not np.isfinite(value):
            continue  # not valid JSON
        if isinstance(value, str | bool | int | float):
            out[key] = value
    return out


def _ensure_namespaces(root: Path, namespace: str | None) -> None:
    """Write ``namespace_metadata.json`` ({}) for the namespace and its parents if missing."""
    if not namespace:
        return
    parts = namespace.split("/")
    for i in range(1, len(parts) + 1):
        folder = root.joinpath(*parts[:i])
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "namespace_metadata.json"
        if not target.exists():
            _write_json_atomic(target, {})
