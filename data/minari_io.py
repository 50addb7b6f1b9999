"""Minari datasets: read through the `minari` package; `write_minari` (in `ocrl.data.minari_write`,
importable from here) writes Minari's on-disk HDF5 format.

On disk (Minari 0.5, ``hdf5`` backend)::

    <root>/<namespace>/<env>/<name>-v<N>/data/metadata.json
    <root>/<namespace>/<env>/<name>-v<N>/data/main_data.hdf5   # groups episode_0, episode_1, ...

Each ``episode_{i}`` group holds ``observations`` (T+1 rows, the initial observation included),
``actions``, ``rewards``, ``terminations`` and ``truncations`` (T rows), with attributes ``id``,
``total_steps`` and per-episode reward statistics. Row conversion: row ``t < T`` of an episode is
``obs[t]``, ``next_obs = obs[t+1]``, ``terminals = terminations[t]``,
``timeouts = truncations[t] & ~terminations[t]``.

A Dict observation space of Boxes (gymnasium-robotics' AntMaze: ``achieved_goal``, ``desired_goal``,
``observation``; stored as a subgroup per key) is read flattened in `gymnasium.spaces.flatten`'s order,
so rows equal what `FlattenObservation` (which `ocrl.envs.make_env` applies) emits in the env; the
metadata then records the keys and their sizes under ``ocrl_flattened_observation``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ocrl.data.dataset import DatasetError, OfflineDataset
from ocrl.data.offline import SHIPPED_ROOT

__all__ = [
    "FLATTENED_KEY",
    "flattened_observation_keys",
    "is_local_minari",
    "is_shipped",
    "looks_like_minari_id",
    "minari_root",
    "read_minari",
    "recorded_env_spec",
]

# (namespace/)name-vN, as minari's DATASET_ID_RE, but the version is required (minari needs it).
_ID_RE = re.compile(
    r"^(?:(?P<namespace>[-_\w][-_\w/]*[-_\w]+)/)?(?P<name>[-_\w]+?)-v(?P<version>\d+)$"
)
#: metadata key of a dataset whose Dict observations were flattened: JSON {"space", "keys", "sizes"}.
FLATTENED_KEY = "ocrl_flattened_observation"
_RESERVED_KEYS = {
    "total_episodes",
    "total_steps",
    "data_format",
    "jpeg_encoding",
    "observation_space",
    "action_space",
    "dataset_id",
    "minari_version",
    "env_spec",
    "eval_env_spec",
    "dataset_size",
}


def looks_like_minari_id(name: str) -> bool:
    """True for ``(namespace/)name-vN`` strings."""
    return _ID_RE.fullmatch(name) is not None


def minari_root() -> Path:
    """Minari's local dataset root: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path("~/.minari/datasets").expanduser()


def _shipped_data_path(dataset_id: str) -> Path | None:
    if not looks_like_minari_id(dataset_id):
        return None
    p = SHIPPED_ROOT / dataset_id / "data"
    return p if (p / "metadata.json").is_file() else None


def is_shipped(dataset_id: str) -> bool:
    """True if ``dataset_id`` is shipped in ``ocrl/data/datasets``."""
    return _shipped_data_path(dataset_id) is not None


def is_local_minari(dataset_id: str) -> bool:
    """True if ``dataset_id`` exists in the local Minari root."""
    return (
        looks_like_minari_id(dataset_id)
        and (minari_root() / dataset_id / "data" / "metadata.json").is_file()
    )


def _data_folder(folder: Path) -> Path:
    if (folder / "metadata.json").is_file():
        return folder
    if (folder / "data" / "metadata.json").is_file():
        return folder / "data"
    raise DatasetError(
        f"{folder} is not a Minari dataset folder: expected {folder / 'data' / 'metadata.json'} "
        f"(or {folder / 'metadata.json'}). Pass the dataset folder <root>/<id> or its data/ folder."
    )


# ------------------------------------------------------------------ reading
_RECREATE = "re-create the dataset (or download it again)"
_EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def _read_metadata_json(data_path: Path) -> dict:
    """Parse and sanity-check ``metadata.json``; raise naming the file and the fix."""
    file = data_path / "metadata.json"
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise DatasetError(
            f"{file} cannot be read ({e}); check its permissions or {_RECREATE}"
        ) from e
    except ValueError as e:  # bad UTF-8 included
        raise DatasetError(
            f"{file} is not valid JSON ({e}): it is truncated or corrupt; restore it or {_RECREATE}"
        ) from e
    if not isinstance(meta, dict):
        raise DatasetError(
            f"{file} must hold a JSON object, found {type(meta).__name__}; {_RECREATE}"
        )
    wanted = {
        "total_steps": int,
        "total_episodes": int,
        "data_format": str,
        "dataset_id": str,
        "minari_version": str,
    }
    for key, typ in wanted.items():
        value = meta.get(key)
        if not isinstance(value, typ) or isinstance(value, bool) or value in (None, ""):
            got = "missing" if key not in meta else f"{value!r}"
            kind = "an integer" if typ is int else "a non-empty string"
            raise DatasetError(
                f"{file}: key '{key}' must be {kind}, got {got}; Minari writes it, so "
                f"the file was damaged or hand-edited: fix that key or {_RECREATE}"
            )
    return meta


def _check_hdf5_episodes(data_path: Path, meta: dict) -> None:
    """Check that ``main_data.hdf5`` opens and has every episode group with its five arrays."""
    import h5py

    file = data_path / "main_data.hdf5"
    if not file.is_file():
        raise DatasetError(
            f"{file} is missing (metadata.json says data_format 'hdf5'); copy it back or {_RECREATE}"
        )
    try:
        with h5py.File(file, "r") as f:
            for i in range(meta["total_episodes"]):
                group = f.get(f"episode_{i}")
                if not isinstance(group, h5py.Group):
                    raise DatasetError(
                        f"{file}: group 'episode_{i}' is missing (metadata.json says "
                        f"total_episodes={meta['total_episodes']}); the file is truncated or was "
                        f"written by another tool: fix total_episodes or {_RECREATE}"
                    )
                for key in _EPISODE_KEYS:
                    if key not in group:
                        raise DatasetError(
                            f"{file}: 'episode_{i}/{key}' is missing (found: "
                            f"{', '.join(sorted(group.keys())) or 'nothing'}); a Minari episode "
                            f"needs {', '.join(_EPISODE_KEYS)}: {_RECREATE}"
                        )
    except DatasetError:
        raise
    except Exception as e:  # a damaged file fails anywhere inside h5py, with any type
        raise DatasetError(
            f"{file} is not a readable HDF5 file ({type(e).__name__}: {e}): it is truncated or "
            f"corrupt; {_RECREATE}"
        ) from e


def _open_minari(id_or_folder, download: bool):
    """(MinariDataset, data folder, name)."""
    import minari

    name = os.fspath(id_or_folder)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DatasetError(f"{path} is a file, not a Minari dataset folder")
        data_path = _data_folder(path)
    else:
        data_path = _shipped_data_path(name)
        if data_path is None and is_local_minari(name):
            # Read the local copy directly, so a damaged one is reported as damaged rather than
            # as "not available" by minari.load_dataset.
            data_path = minari_root() / name / "data"
    if data_path is not None:
        meta = _read_metadata_json(data_path)
        if meta["data_format"] == "hdf5":
            _check_hdf5_episodes(data_path, meta)
        try:
            return minari.MinariDataset(data_path), data_path, name
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(
                f"Minari dataset folder {data_path} cannot be read ({type(e).__name__}: {e}); "
                f"check metadata.json and main_data.hdf5, or {_RECREATE}"
            ) from e
    if not looks_like_minari_id(name):
        raise DatasetError(
            f"'{name}' is neither an existing Minari folder nor a Minari id "
            "((namespace/)name-vN, e.g. mujoco/hopper/medium-v0)"
        )
    try:
        ds = minari.load_dataset(name, download=download)
    except Exception as e:
        local = minari_root() / name
        how = (
            "Minari could not download it"
            if download
            else "download=False; use minari.download_dataset or load_dataset(..., download=True)"
        )
        raise DatasetError(
            f"Minari dataset '{name}' is not available locally (looked in {local} and in the "
            f"shipped datasets) and {how} ({type(e).__name__}: {e}). Set $MINARI_DATASETS_PATH "
            "to the root folder that holds it, or pass the dataset folder's path."
        ) from e
    return ds, Path(ds.storage.data_path), name


def _box_dim(space, what: str, where: str) -> int:
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise DatasetError(
            f"{where}: the {what} space is {space}; ocrl's offline datasets need a 1-D Box "
            f"{what} space (flatten Dict/Tuple/image spaces into a Box first)"
        )
    return int(space.shape[0])


def _observation_layout(space, where: str) -> tuple[int, list[tuple[str, int]] | None]:
    """(row width, [(key, size), ...]) of an observation space: a 1-D Box (no keys) or a Dict of Boxes.

    A Dict is flattened as `gymnasium.spaces.flatten` does (its keys in the space's order, each Box
    raveled), which is what `gymnasium.wrappers.FlattenObservation` gives the agent in the env.
    """
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Dict):
        return _box_dim(space, "observation", where), None
    parts = []
    for key, sub in space.spaces.items():
        if not isinstance(sub, gym.spaces.Box):
            raise DatasetError(
                f"{where}: the observation space is {space}; ocrl flattens a Dict of Box spaces, but "
                f"key '{key}' is {sub} (flatten nested Dict/Tuple/discrete spaces into a Box first)"
            )
        parts.append((str(key), int(np.prod(sub.shape, dtype=np.int64))))
    if not parts:
        raise DatasetError(
            f"{where}: the observation space is an empty Dict; nothing to learn from"
        )
    return sum(size for _, size in parts), parts


def _flat_observations(observations, parts, rows: int, where: str, episode) -> np.ndarray:
    """An episode's observations as (rows, width): a Box's as they are, a Dict's keys concatenated."""
    if parts is None:
        return np.asarray(observations).reshape(rows, -1)
    if not isinstance(observations, dict) or any(key not in observations for key, _ in parts):
        found = ", ".join(observations) if isinstance(observations, dict) else "no keys"
        raise DatasetError(
            f"{where}: episode {episode} observations have {found}; the observation space's keys "
            f"are {', '.join(key for key, _ in parts)}: {_RECREATE}"
        )
    columns = []
    for key, size in parts:
        value = np.asarray(observations[key])
        if value.size != rows * size:
            raise DatasetError(
                f"{where}: episode {episode} observation '{key}' holds {value.size} numbers, not "
                f"{rows} rows of {size}; {_RECREATE}"
            )
        columns.append(value.reshape(rows, size))
    return np.concatenate(columns, axis=1)


def recorded_env_spec(meta: dict) -> dict | None:
    """The env spec a Minari dataset records for evaluation: ``eval_env_spec``, else ``env_spec``.

    Returns ``{"id", "kwargs", "max_episode_steps"}`` from its JSON, or None when neither parses.
    """
    for key in ("eval_env_spec", "env_spec"):
        spec = meta.get(key)
        if not isinstance(spec, str):
            continue
        try:
            spec = json.loads(spec)
        except ValueError:
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("id"), str):
            continue
        kwargs = spec.get("kwargs")
        steps = spec.get("max_episode_steps")
        return {
            "id": spec["id"],
            "kwargs": dict(kwargs) if isinstance(kwargs, dict) else {},
            "max_episode_steps": steps if isinstance(steps, int) and steps > 0 else None,
        }
    return None


def flattened_observation_keys(meta: dict) -> list[tuple[str, int]] | None:
    """[(key, size), ...] of a dataset whose Dict observations `read_minari` flattened, else None."""
    value = meta.get(FLATTENED_KEY)
    if value is None:
        return None
    try:
        info = json.loads(value) if isinstance(value, str) else value
        return [(str(k), int(n)) for k, n in zip(info["keys"], info["sizes"], strict=True)]
    except (ValueError, TypeError, KeyError) as e:
        raise DatasetError(
            f"metadata '{FLATTENED_KEY}' is {value!r}, not the JSON that read_minari writes "
            f"({type(e).__name__}: {e}); remove it or {_RECREATE}"
        ) from e


def _env_id_from_metadata(meta: dict) -> str | None:
    from ocrl.data.d4rl import D4RL_ENV_IDS, parse_d4rl_name

    if isinstance(meta.get("ocrl_env_id"), str) and meta["ocrl_env_id"]:
        return meta["ocrl_env_id"]
    spec = recorded_env_spec(meta)
    if spec is None:
        return None
    parsed = parse_d4rl_name(spec["id"])  # a D4RL gym id like "hopper-medium-v2"
    if parsed is not None:
        return D4RL_ENV_IDS.get(parsed[0])
    return spec["id"]


def read_minari(id_or_folder: str | os.PathLike, *, download: bool = False) -> OfflineDataset:
    """Read a Minari dataset through `minari` into a validated `OfflineDataset`.

    ``id_or_folder``: a folder (``<...>/data`` holding ``metadata.json``, or its parent), an id
    shipped in ``ocrl/data/datasets``, or a Minari id in the Minari root (downloaded by `minari`
    when ``download``). Every episode step becomes one row with ``next_observations`` filled.
    env id: metadata ``ocrl_env_id``, else the id of ``eval_env_spec``/``env_spec`` (a D4RL gym id
    maps to its Gymnasium ``-v4`` env). Reference scores: metadata ``ref_min_score``/``ref_max_score``.
    Observations: a 1-D Box, or a Dict of Boxes flattened as `gymnasium.spaces.flatten` does (the
    keys and sizes go into metadata ``ocrl_flattened_observation``); other spaces are refused.
    """
    from minari.dataset.minari_storage import MinariStorage

    mds, data_path, name = _open_minari(id_or_folder, download)
    where = f"Minari dataset '{name}' ({data_path})"
    obs_dim, obs_parts = _observation_layout(mds.observation_space, where)
    act_dim = _box_dim(mds.action_space, "action", where)
    total = int(mds.total_steps)
    obs = np.empty((total, obs_dim), np.float32)
    next_obs = np.empty((total, obs_dim), np.float32)
    act = np.empty((total, act_dim), np.float32)
    rew = np.empty(total, np.float32)
    term = np.empty(total, bool)
    tout = np.empty(total, bool)
    pos = 0
    try:
        for ep in mds.iterate_episodes():
            t = len(ep.rewards)
            rows = _observation_rows(ep.observations)
            if rows != t + 1:
                raise DatasetError(
                    f"{where}: episode {ep.id} has {rows} observations for {t} steps; a Minari "
                    "episode needs T+1 observations (the initial one included)"
                )
            if pos + t > total:
                raise DatasetError(
                    f"{where}: episodes hold more steps than metadata.json's total_steps={total}; "
                    "fix total_steps in metadata.json"
                )
            o = _flat_observations(ep.observations, obs_parts, t + 1, where, ep.id)
            obs[pos : pos + t] = o[:-1]
            next_obs[pos : pos + t] = o[1:]
            act[pos : pos + t] = np.asarray(ep.actions).reshape(t, -1)
            rew[pos : pos + t] = np.asarray(ep.rewards).reshape(-1)
            terminations = np.asarray(ep.terminations).reshape(-1).astype(bool)
            truncations = np.asarray(ep.truncations).reshape(-1).astype(bool)
            term[pos : pos + t] = terminations
            tout[pos : pos + t] = truncations & ~terminations
            pos += t
    except DatasetError:
        raise
    except Exception as e:  # damaged data fails inside minari/h5py/pyarrow, with any type
        hdf5 = data_path / "main_data.hdf5"
        what = hdf5 if hdf5.exists() else data_path
        raise DatasetError(
            f"{where}: reading the episodes failed ({type(e).__name__}: {e}); {what} is "
            f"truncated or corrupt: {_RECREATE}"
        ) from e
    if pos != total:
        raise DatasetError(
            f"{where}: episodes hold {pos} steps but metadata.json says total_steps={total}; "
            "fix total_steps in metadata.json"
        )
    try:
        meta = MinariStorage.read_raw_metadata(data_path)
    except Exception as e:
        raise DatasetError(
            f"{where}: metadata.json cannot be read ({type(e).__name__}: {e}); {_RECREATE}"
        ) from e
    ref_min, ref_max = (_score(meta, k, data_path) for k in ("ref_min_score", "ref_max_score"))
    ds = OfflineDataset(
        observations=obs,
        actions=act,
        rewards=rew,
        terminals=term,
        timeouts=tout,
        next_observations=next_obs,
        name=name,
        env_id=_env_id_from_metadata(meta),
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        source=str(data_path),
        metadata={
            **meta,
            "format": "minari",
            **_flattened_metadata(mds.observation_space, obs_parts),
        },
    )
    ds.validate()
    return ds


def _observation_rows(observations) -> int:
    """Rows of an episode's observations (a Dict space's: those of its first key)."""
    if isinstance(observations, dict):
        first = next(iter(observations.values()), None)
        return 0 if first is None else len(first)
    return np.asarray(observations).shape[0]


def _flattened_metadata(space, parts) -> dict:
    if parts is None:
        return {}
    info = {
        "space": type(space).__name__,
        "keys": [k for k, _ in parts],
        "sizes": [n for _, n in parts],
    }
    return {FLATTENED_KEY: json.dumps(info)}


def _score(meta: dict, key: str, data_path: Path) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise DatasetError(
            f"{data_path / 'metadata.json'}: '{key}' must be a finite number, got {value!r}; fix "
            "it, or remove ref_min_score and ref_max_score to score raw returns"
        )
    return float(value)


def __getattr__(name: str):
    # write_minari lives in ocrl.data.minari_write, which imports this module's id rules; it is
    # imported on first use so that `from ocrl.data.minari_io import write_minari` keeps working.
    if name == "write_minari":
        from ocrl.data.minari_write import write_minari

        return write_minari
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
