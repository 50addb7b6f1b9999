"""D4RL-layout HDF5 files: the names and reference scores of the D4RL Gym-MuJoCo datasets, and an
h5py reader, a header check and a writer of their file layout.

File layout (written by D4RL's ``collect_data.py``; all gzip-compressed): ``observations``
(N, obs) float32, ``actions`` (N, act) float32, ``rewards`` (N,) float32, ``terminals`` (N,) bool,
``timeouts`` (N,) bool, ``next_observations`` (v2 files), ``infos/*`` and ``metadata/*``.
Downloading and the cache are `ocrl.data.d4rl`'s.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np

from ocrl.data.dataset import DatasetError, OfflineDataset
from ocrl.files import atomic_path

__all__ = [
    "D4RL_DIMS",
    "D4RL_ENV_IDS",
    "D4RL_KINDS",
    "D4RL_MAX_EPISODE_STEPS",
    "D4RL_REF_SCORES",
    "parse_d4rl_name",
    "read_d4rl_hdf5",
    "synthesize_timeouts",
    "verify_d4rl_file",
    "write_d4rl_hdf5",
]


#: Raw-return reference scores (REF_MIN_SCORE = random, REF_MAX_SCORE = expert), ``d4rl/infos.py``.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
#: Gymnasium evaluation environments. Ant is deliberately absent (111-dim v2 obs, not validated).
D4RL_ENV_IDS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v4",
    "hopper": "Hopper-v4",
    "walker2d": "Walker2d-v4",
}
#: (obs_dim, act_dim) of the D4RL files of each domain.
D4RL_DIMS: dict[str, tuple[int, int]] = {
    "halfcheetah": (17, 6),
    "hopper": (11, 3),
    "walker2d": (17, 6),
    "ant": (111, 8),
}
#: D4RL registers every Gym-MuJoCo task with this time limit (``d4rl/gym_mujoco/__init__.py``).
D4RL_MAX_EPISODE_STEPS = 1000
D4RL_KINDS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")

_NAME_RE = re.compile(
    r"^(?P<domain>halfcheetah|hopper|walker2d|ant)[-_]"
    r"(?P<kind>medium[-_]replay|medium[-_]expert|full[-_]replay|random|medium|expert)"
    r"-v(?P<version>[012])$"
)
_REQUIRED = ("observations", "actions", "rewards", "terminals")
_FLAGS = ("terminals", "timeouts")


# ------------------------------------------------------------------ names
def parse_d4rl_name(name: str) -> tuple[str, str, int] | None:
    """``"hopper-medium-replay-v2"`` or ``"hopper_medium_replay-v2"`` -> ``("hopper", "medium-replay", 2)``.

    A file name (``.hdf5``/``.h5`` suffix, any folder) is accepted too. None if not a D4RL
    Gym-MuJoCo name (domains halfcheetah/hopper/walker2d/ant, versions v0-v2).
    """
    base = os.path.basename(os.fspath(name)).lower()
    for suffix in (".hdf5", ".h5"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    m = _NAME_RE.match(base)
    if m is None:
        return None
    return m["domain"], m["kind"].replace("_", "-"), int(m["version"])


# ----------------------------------------------------------------- reading
def _corrupt(path, detail: str) -> DatasetError:
    return DatasetError(
        f"{path}: not a readable HDF5 file ({detail}). It is probably truncated or corrupt "
        "(e.g. an interrupted download): delete it and download it again."
    )


def _open_h5(path):
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise _corrupt(path, str(e)) from e


def _check_layout(f, path) -> dict[str, tuple[int, ...]]:
    """Check keys, ranks, dtypes and lengths from the HDF5 headers (no data read).

    Returns the shapes of the top-level arrays that will be read.
    """
    import h5py

    keys = sorted(f.keys())
    for key in _REQUIRED:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            if any(k.startswith("episode_") for k in keys):
                raise DatasetError(
                    f"{path} looks like a Minari main_data.hdf5 (episode_* groups), not a D4RL "
                    f"file: pass its dataset folder ({Path(path).parent}) instead"
                )
            raise DatasetError(
                f"{path}: required key '{key}' is missing (found: {', '.join(keys) or 'nothing'}). "
                "A D4RL file needs observations, actions, rewards and terminals (and usually "
                "timeouts); check the file was written in D4RL's layout."
            )
    shapes: dict[str, tuple[int, ...]] = {}
    for key in (*_REQUIRED, "timeouts", "next_observations"):
        if key not in f:
            continue
        d = f[key]
        if not isinstance(d, h5py.Dataset):
            raise DatasetError(f"{path}: '{key}' must be an array, found a group")
        # Flags may be bool, 0/1 integers or 0.0/1.0 floats (many tools write floats); the values
        # themselves are checked when read.
        if d.dtype.kind not in "biuf":
            kind = "bool, 0/1 integer or 0.0/1.0 float" if key in _FLAGS else "numeric"
            raise DatasetError(
                f"{path}: '{key}' must be {kind}, got dtype {d.dtype}; rewrite it as "
                f"{'bool' if key in _FLAGS else 'float32'}"
            )
        shape = tuple(d.shape)
        if key in ("observations", "actions", "next_observations"):
            if len(shape) != 2:
                raise DatasetError(f"{path}: '{key}' must be 2-D (N, dim), got shape {shape}")
        elif not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise DatasetError(f"{path}: '{key}' must have shape (N,) or (N, 1), got {shape}")
        shapes[key] = shape
    n = shapes["observations"][0]
    for key, shape in shapes.items():
        if shape[0] != n:
            raise DatasetError(
                f"{path}: length mismatch: 'observations' has {n} rows but '{key}' has "
                f"{shape[0]}; the file is inconsistent (re-download or regenerate it)"
            )
    if "next_observations" in shapes and shapes["next_observations"] != shapes["observations"]:
        raise DatasetError(
            f"{path}: 'next_observations' has shape {shapes['next_observations']}, expected "
            f"{shapes['observations']} like 'observations'"
        )
    if n == 0:
        raise DatasetError(f"{path}: the dataset is empty (0 rows)")
    return shapes


def verify_d4rl_file(path: str | os.PathLike) -> None:
    """Cheap structural check of a D4RL file (opens as HDF5; keys, ranks, dtypes, lengths)."""
    with _open_h5(path) as f:
        try:
            _check_layout(f, path)
        except DatasetError:
            raise
        except Exception as e:  # a damaged file fails anywhere inside h5py, with any type
            raise _corrupt(path, f"{type(e).__name__}: {e}") from e


def _read_float(f, key: str, path) -> np.ndarray:
    d = f[key]
    out = np.empty(d.shape, dtype=np.float32)
    try:
        if out.size:
            d.read_direct(out)  # HDF5 converts float64 -> float32 block by block
    except (OSError, ValueError, TypeError) as e:
        raise _corrupt(path, f"reading '{key}': {e}") from e
    return out.reshape(-1) if key == "rewards" else out


def _read_flag(f, key: str, path) -> np.ndarray:
    try:
        arr = f[key][()]
    except (OSError, ValueError, TypeError) as e:
        raise _corrupt(path, f"reading '{key}': {e}") from e
    arr = np.asarray(arr).reshape(-1)
    if arr.dtype != np.bool_:
        # NaN compares unequal to both, so it is refused like 0.5 or 2.
        bad = np.flatnonzero((arr != 0) & (arr != 1))
        if bad.size:
            row = int(bad[0])
            raise DatasetError(
                f"{path}: '{key}' must hold only 0 and 1 (bool, integer or float), found "
                f"{arr[row].item()!r} at row {row} ({bad.size} bad rows in all); fix those rows "
                f"in the file, or rewrite '{key}' as a bool array"
            )
        arr = arr != 0
    return arr


def _simple_value(value):
    """A JSON-friendly python scalar, or None if `value` is not a simple scalar."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "biufSOU":
            return None
        value = value.reshape(()).item()
        return _simple_value(value)
    if isinstance(value, np.generic):
        return _simple_value(value.item())
    return None


def _read_metadata(f) -> dict:
    """Scalar values of the ``metadata/`` group (e.g. algorithm, iteration, policy/nonlinearity)."""
    import h5py

    out: dict = {}
    grp = f.get("metadata")
    if not isinstance(grp, h5py.Group):
        return out
    for k, v in grp.attrs.items():
        sv = _simple_value(v)
        if sv is not None:
            out[k] = sv

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.size <= 1:
            with contextlib.suppress(Exception):
                sv = _simple_value(obj[()])
                if sv is not None:
                    out[name] = sv

    grp.visititems(visit)
    return out


def synthesize_timeouts(terminals: np.ndarray, max_episode_steps: int) -> np.ndarray:
    """Timeouts for a file that has none: every ``max_episode_steps``-th row since the last episode end."""
    # D4RL's qlearning_dataset, without timeouts, ends an episode after max_episode_steps steps
    # counted from the previous end. Its counter restarts one step late after a terminal (it is
    # reset to 0 and then incremented on the terminal row); here every episode, after a terminal
    # or a timeout alike, gets exactly max_episode_steps rows, which is what the time limit means.
    # A row that is both the limit and a terminal is a termination (timeout = truncated and not
    # terminated), so two episodes are never joined and no terminal is hidden.
    if max_episode_steps < 1:
        raise DatasetError(f"max_episode_steps must be at least 1, got {max_episode_steps}")
    terminals = np.asarray(terminals, dtype=bool).reshape(-1)
    n = terminals.shape[0]
    out = np.zeros(n, dtype=bool)
    start = 0
    for stop in (*np.flatnonzero(terminals).tolist(), n):
        out[start + max_episode_steps - 1 : stop : max_episode_steps] = True
        start = stop + 1
    return out


def _episode_limit(env_id: str | None, domain: str | None, path) -> tuple[int, str]:
    """(max_episode_steps, the env it came from) for synthesising missing timeouts."""
    how = (
        "add a bool 'timeouts' dataset to the file, or name the env: load_dataset(path, "
        "env_id='Hopper-v4'), a D4RL file name like hopper_medium-v2.hdf5, or metadata/ocrl_env_id"
    )
    if env_id is None and domain is not None:
        return D4RL_MAX_EPISODE_STEPS, f"D4RL {domain}"
    if env_id is None:
        raise DatasetError(
            f"{path}: the file has no 'timeouts' and names no environment, so the ends of its "
            f"time-limited episodes are unknown (they would be joined); {how}"
        )
    import gymnasium as gym

    try:
        limit = gym.spec(env_id).max_episode_steps
    except gym.error.Error as e:
        raise DatasetError(
            f"{path}: the file has no 'timeouts', and its environment '{env_id}' is not a "
            f"registered Gymnasium id ({e}), so its episode length is unknown; {how}"
        ) from e
    if not limit:
        raise DatasetError(
            f"{path}: the file has no 'timeouts', and environment '{env_id}' has no "
            f"max_episode_steps in the Gymnasium registry; {how}"
        )
    return int(limit), env_id


def read_d4rl_hdf5(
    path: str | os.PathLike, name: str | None = None, *, env_id: str | None = None
) -> OfflineDataset:
    """Read a D4RL-layout HDF5 file with h5py into a validated `OfflineDataset`.

    Accepts float32/float64 arrays (stored as float32), flags as bool, 0/1 integers or 0.0/1.0
    floats, rewards (N,) or (N, 1), files with or without ``next_observations``. ``infos/`` is
    ignored, scalar ``metadata/`` values go into ``metadata``.

    env id: ``env_id``, else ``metadata/ocrl_env_id``, else the Gymnasium ``-v4`` task of a D4RL
    ``name`` or file name (``hopper_medium-v2.hdf5``), else None. Reference scores:
    ``metadata/ref_{min,max}_score``, else D4RL's table for a D4RL name, else None.

    Without ``timeouts`` the time-limit ends are synthesised as D4RL does, from the env's
    ``max_episode_steps`` (1000 for D4RL names; see `synthesize_timeouts`), and
    ``metadata["timeouts_synthesized_every"]`` records the limit; when the env is unknown the
    file is refused rather than have its episodes silently joined.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"D4RL file {path} does not exist")
    with _open_h5(path) as f:
        try:
            shapes = _check_layout(f, path)
            obs = _read_float(f, "observations", path)
            act = _read_float(f, "actions", path)
            rew = _read_float(f, "rewards", path)
            term = _read_flag(f, "terminals", path)
            has_timeouts = "timeouts" in shapes
            tout = _read_flag(f, "timeouts", path) if has_timeouts else None
            next_obs = (
                _read_float(f, "next_observations", path) if "next_observations" in shapes else None
            )
            meta = _read_metadata(f)
            file_keys = sorted(f.keys())
        except DatasetError:
            raise
        except Exception as e:  # a damaged file fails anywhere inside h5py, with any type
            raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    meta.update(
        {
            "format": "d4rl-hdf5",
            "file_keys": file_keys,
            "timeouts_missing": not has_timeouts,
            "has_next_observations": next_obs is not None,
        }
    )
    parsed = parse_d4rl_name(name) if name else None
    if parsed is None:
        parsed = parse_d4rl_name(path.name)
    domain = ref_min = ref_max = None
    found_env_id = None
    if parsed is not None:
        domain = parsed[0]
        found_env_id = D4RL_ENV_IDS.get(domain)
        ref_min, ref_max = D4RL_REF_SCORES[domain]
        meta["d4rl_domain"] = domain
        exp_obs, exp_act = D4RL_DIMS[domain]
        if (obs.shape[1], act.shape[1]) != (exp_obs, exp_act):
            raise DatasetError(
                f"{path}: named like a D4RL {domain} dataset, but its observations have "
                f"{obs.shape[1]} dims and actions {act.shape[1]} (expected {exp_obs} and "
                f"{exp_act}, as in {found_env_id or domain}). Rename the file if it is not D4RL data."
            )
    file_env_id = meta.get("ocrl_env_id") if isinstance(meta.get("ocrl_env_id"), str) else None
    if env_id is None and file_env_id:
        env_id = file_env_id
    if env_id is not None:
        found_env_id = env_id
    if tout is None:
        limit, limit_from = _episode_limit(env_id, domain, path)
        tout = synthesize_timeouts(term, limit)
        meta["timeouts_synthesized_every"] = limit
        meta["timeouts_synthesized_from"] = limit_from
    if isinstance(meta.get("ref_min_score"), int | float) and isinstance(
        meta.get("ref_max_score"), int | float
    ):
        ref_min, ref_max = float(meta["ref_min_score"]), float(meta["ref_max_score"])
    ds = OfflineDataset(
        observations=obs,
        actions=act,
        rewards=rew,
        terminals=term,
        timeouts=tout,
        next_observations=next_obs,
        name=name or str(path),
        env_id=found_env_id,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        source=str(path),
        metadata=meta,
    )
    ds.validate()
    return ds


# ----------------------------------------------------------------- writing
_NOT_WRITTEN = {"format", "file_keys", "timeouts_missing", "has_next_observations"}


def write_d4rl_hdf5(dataset: OfflineDataset, path: str | os.PathLike) -> None:
    """Write `dataset` in D4RL's layout (float32 arrays, bool terminals/timeouts, gzip,
    ``next_observations`` when present; simple metadata, env id and reference scores under
    ``metadata/``), atomically: a temporary file next to ``path``, renamed into place."""
    import h5py

    dataset.validate()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            arrays = {
                "observations": dataset.observations,
                "actions": dataset.actions,
                "rewards": dataset.rewards,
                "terminals": dataset.terminals.astype(bool, copy=False),
                "timeouts": dataset.timeouts.astype(bool, copy=False),
            }
            if dataset.next_observations is not None:
                arrays["next_observations"] = dataset.next_observations
            for key, arr in arrays.items():
                f.create_dataset(key, data=arr, compression="gzip")
            meta = f.create_group("metadata")
            extra = {
                k: v for k, v in dataset.metadata.items() if k not in _NOT_WRITTEN and "." not in k
            }
            extra["ocrl_name"] = dataset.name
            if dataset.env_id is not None:
                extra["ocrl_env_id"] = dataset.env_id
            if dataset.ref_min_score is not None and dataset.ref_max_score is not None:
                extra["ref_min_score"] = float(dataset.ref_min_score)
                extra["ref_max_score"] = float(dataset.ref_max_score)
            for k, v in extra.items():
                v = _simple_value(v)
                if v is None or k in meta:
                    continue
                with contextlib.suppress(ValueError, TypeError):
                    meta.create_dataset(k, data=v)
