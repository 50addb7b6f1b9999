"""Offline datasets: every recorded row, a TD transition view, episodes, scores and normalisation.

`load_dataset(name_or_path)` understands

* a path to a D4RL-layout ``.hdf5``/``.h5`` file (read with h5py, see `ocrl.data.d4rl`);
* a path to a Minari dataset folder (``<...>/data`` holding ``metadata.json``, or its parent);
* a D4RL name such as ``hopper-medium-v2`` (downloaded once into ``$OCRL_DATA_DIR`` or
  ``~/.cache/ocrl/d4rl``);
* an id of a dataset shipped with ocrl (``ocrl/data/datasets/<id>/data``);
* a Minari id such as ``mujoco/hopper/medium-v0`` (read through `minari`).

Transition semantics follow D4RL's ``qlearning_dataset`` exactly by default: row ``i`` gives
``(obs[i], act[i], rew[i], obs[i+1], terminals[i])`` for ``i < N-1``, rows with ``timeouts[i]``
are skipped, and a timeout is never a ``done``. See ``reference/datasets.md``.

This module needs numpy only; h5py and minari are imported by the readers when used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "Transitions",
    "load_dataset",
    "normalize",
    "reward_range",
    "atomic_path",
    "set_ordinary_permissions",
    "shipped_datasets",
    "SHIPPED_ROOT",
]

#: Root of the Minari-format datasets shipped inside the package (``ocrl/data/datasets``).
SHIPPED_ROOT = Path(__file__).resolve().parent / "datasets"

_CHUNK_ROWS = 1 << 13  # rows per block when scanning large arrays (bounds temporary memory)


class DatasetError(ValueError):
    """Bad dataset input. The message names the file or dataset, the field, and how to fix it."""

    def __init__(self, *args) -> None:
        # One line always: command-line tools print it after "error:", and library messages
        # (h5py, json, gymnasium) that get quoted inside it may carry newlines.
        if args and isinstance(args[0], str):
            args = (" ".join(args[0].split()), *args[1:])
        super().__init__(*args)


@dataclass
class Transitions:
    """The TD view of a dataset: float32, C-contiguous numpy arrays of equal length M.

    ``terminals`` is 1.0 for a true environment termination only; a timeout is never a done, so
    agents use ``not_done = 1 - terminals``.
    """

    observations: np.ndarray  # (M, obs_dim)
    actions: np.ndarray  # (M, act_dim)
    rewards: np.ndarray  # (M,)
    next_observations: np.ndarray  # (M, obs_dim)
    terminals: np.ndarray  # (M,)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def obs_mean_std(self, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Mean and ``std + eps`` of the training observations, as TD3+BC's code and CORL compute them."""
        if len(self) == 0:
            raise DatasetError("no transitions: no observations to normalise")
        return mean_std(self.observations, eps)

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.observations,
                self.actions,
                self.rewards,
                self.next_observations,
                self.terminals,
            )
        )


@dataclass
class OfflineDataset:
    """Every recorded row of an offline dataset, in file order, plus what is needed to evaluate.

    Arrays: ``observations`` (N, obs_dim) float32, ``actions`` (N, act_dim) float32, ``rewards``
    (N,) float32, ``terminals`` (N,) bool (true termination), ``timeouts`` (N,) bool (time-limit
    truncation), ``next_observations`` (N, obs_dim) float32 or None when the source has none.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray | None = None
    name: str = ""
    env_id: str | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes
    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    def _where(self) -> str:
        if self.source and self.source != self.name:
            return f"dataset '{self.name}' ({self.source})" if self.name else f"'{self.source}'"
        return f"dataset '{self.name or '<unnamed>'}'"

    # ------------------------------------------------------------ transitions
    def transitions(self, truncated_last: Literal["drop", "keep"] = "drop") -> Transitions:
        """The TD transitions, as fresh float32 arrays (never views into the dataset).

        ``"drop"`` (default) is exactly D4RL's ``qlearning_dataset``: for ``i`` in ``0..N-2``,
        skip rows with ``timeouts[i]``, and emit ``(obs[i], act[i], rew[i], obs[i+1],
        terminals[i])``. The file's ``next_observations`` are not used and the last row is never
        a transition.

        ``"keep"`` needs ``next_observations``: every row is a transition with
        ``s' = next_observations[i]``, so the final step of a truncated episode is kept (with
        ``not_done = 1``).
        """
        n = len(self)
        if truncated_last == "drop":
            keep = ~self.timeouts[: n - 1]
            if bool(keep.all()):
                sl = slice(0, n - 1)
                return Transitions(
                    observations=self.observations[sl].copy(),
                    actions=self.actions[sl].copy(),
                    rewards=self.rewards[sl].copy(),
                    next_observations=self.observations[1:].copy(),
                    terminals=self.terminals[sl].astype(np.float32),
                )
            idx = np.flatnonzero(keep)  # the only temporary: one int64 per row
            del keep
            obs = np.take(self.observations, idx, axis=0)
            act = np.take(self.actions, idx, axis=0)
            rew = np.take(self.rewards, idx)
            term = np.take(self.terminals, idx).astype(np.float32)
            idx += 1  # in place: no second index array
            next_obs = np.take(self.observations, idx, axis=0)
            return Transitions(obs, act, rew, next_obs, term)
        if truncated_last == "keep":
            if self.next_observations is None:
                raise DatasetError(
                    f"{self._where()} has no 'next_observations', so transitions('keep') cannot "
                    "give the final step of a truncated episode a next state. Use "
                    "transitions('drop') (D4RL parity), or a source that stores next "
                    "observations (D4RL v2 files, Minari datasets)."
                )
            return Transitions(
                observations=self.observations.copy(),
                actions=self.actions.copy(),
                rewards=self.rewards.copy(),
                next_observations=self.next_observations.copy(),
                terminals=self.terminals.astype(np.float32),
            )
        raise DatasetError(
            f"transitions(truncated_last={truncated_last!r}): expected 'drop' (D4RL parity) or 'keep'"
        )

    # --------------------------------------------------------------- episodes
    def episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the episodes, cut after every row with ``terminals | timeouts``.

        A trailing unfinished episode is included.
        """
        n = len(self)
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        if ends.size == 0 or ends[-1] != n:
            ends = np.append(ends, n)
        starts = np.concatenate(([0], ends[:-1]))
        return starts.astype(np.int64), ends.astype(np.int64)

    def episodes(self) -> list[slice]:
        """Episodes as row slices, cut at ``terminals | timeouts`` (trailing unfinished one kept)."""
        starts, ends = self.episode_bounds()
        return [slice(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode of `episodes()`, as float64."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.float64)
        starts, _ = self.episode_bounds()
        return np.add.reduceat(self.rewards.astype(np.float64), starts)

    # ---------------------------------------------------------------- scoring
    def normalized_score(self, returns):
        """D4RL normalised score on the x100 scale: ``100 * (R - ref_min) / (ref_max - ref_min)``."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise DatasetError(
                f"{self._where()} has no reference scores (ref_min_score/ref_max_score), so "
                "returns cannot be normalised. D4RL names get them from the D4RL table; for a "
                "Minari dataset write 'ref_min_score' and 'ref_max_score' into its metadata.json."
            )
        lo, hi = float(self.ref_min_score), float(self.ref_max_score)
        out = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
        if out.ndim == 0:
            return float(out)
        return out

    # ---------------------------------------------------------- normalisation
    def obs_mean_std(self, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and ``std + eps`` of every row's observation, float32 (obs_dim,)."""
        if len(self) == 0:
            raise DatasetError(f"{self._where()} is empty: no observations to normalise")
        return mean_std(self.observations, eps)

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check shapes, lengths, dtypes and finiteness; raise `DatasetError` naming the field and row."""
        where = self._where()
        if self.observations is None or self.actions is None or self.rewards is None:
            raise DatasetError(f"{where}: observations, actions and rewards are required")
        expected_ndim = {
            "observations": 2,
            "actions": 2,
            "rewards": 1,
            "terminals": 1,
            "timeouts": 1,
            "next_observations": 2,
        }
        arrays = {k: getattr(self, k) for k in expected_ndim}
        if arrays["next_observations"] is None:
            del arrays["next_observations"]
        for key, arr in arrays.items():
            if not isinstance(arr, np.ndarray):
                raise DatasetError(
                    f"{where}: '{key}' must be a numpy array, got {type(arr).__name__}"
                )
            if arr.ndim != expected_ndim[key]:
                hint = " (reshape (N, 1) to (N,))" if expected_ndim[key] == 1 else ""
                raise DatasetError(
                    f"{where}: '{key}' must be {expected_ndim[key]}-D, got shape {arr.shape}{hint}"
                )
        n = arrays["observations"].shape[0]
        if n == 0:
            raise DatasetError(f"{where} is empty (0 rows); regenerate or re-download it")
        for key, arr in arrays.items():
            if arr.shape[0] != n:
                raise DatasetError(
                    f"{where}: length mismatch: 'observations' has {n} rows but '{key}' has "
                    f"{arr.shape[0]}; every field must have one entry per row"
                )
        if (
            "next_observations" in arrays
            and arrays["next_observations"].shape != self.observations.shape
        ):
            raise DatasetError(
                f"{where}: 'next_observations' has shape {arrays['next_observations'].shape}, "
                f"expected {self.observations.shape} like 'observations'"
            )
        for key in ("terminals", "timeouts"):
            if arrays[key].dtype != np.bool_:
                raise DatasetError(
                    f"{where}: '{key}' must be a bool array, got {arrays[key].dtype}; convert with "
                    f"arr.astype(bool) after checking it holds only 0/1"
                )
        for key in ("observations", "actions", "rewards", "next_observations"):
            if key not in arrays:
                continue
            arr = arrays[key]
            if arr.dtype != np.float32:
                raise DatasetError(f"{where}: '{key}' must be float32, got {arr.dtype}")
            _check_finite(arr, key, where)

    # ------------------------------------------------------------------- misc
    def __repr__(self) -> str:
        return (
            f"OfflineDataset(name={self.name!r}, rows={len(self)}, obs_dim={self.obs_dim}, "
            f"act_dim={self.act_dim}, episodes={len(self.episode_bounds()[0])}, "
            f"env_id={self.env_id!r}, next_observations={self.next_observations is not None}, "
            f"source={self.source!r})"
        )


def _check_finite(arr: np.ndarray, key: str, where: str) -> None:
    """Raise naming the first non-finite row of `arr`, scanning in blocks."""
    n = arr.shape[0]
    for a in range(0, n, _CHUNK_ROWS):
        block = arr[a : a + _CHUNK_ROWS]
        ok = np.isfinite(block)
        if ok.all():
            continue
        if ok.ndim > 1:
            ok = ok.reshape(ok.shape[0], -1).all(axis=1)
        row = a + int(np.flatnonzero(~ok)[0])
        value = arr[row]
        raise DatasetError(
            f"{where}: '{key}' has a non-finite value (NaN or inf) at row {row}: {value!r}. "
            "Fix or remove that row in the source file."
        )


# ---------------------------------------------------------------- helpers
def mean_std(x: np.ndarray, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and ``std + eps`` of a (N, D) array, float32, in float64 blocks (no full-size copy)."""
    n = x.shape[0]
    total = np.zeros(x.shape[1], dtype=np.float64)
    for a in range(0, n, _CHUNK_ROWS):
        total += x[a : a + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros_like(mean)
    for a in range(0, n, _CHUNK_ROWS):
        d = x[a : a + _CHUNK_ROWS].astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(sq / n)
    return mean.astype(np.float32), (std + eps).astype(np.float32)


def set_ordinary_permissions(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give a file (0600) or folder (0700) made by `tempfile` the mode a plain open()/mkdir() would get."""
    # tempfile makes private files so nobody reads a half-written one; once complete, the renamed
    # result must be as readable as any file the user writes (shared caches, group-readable data).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it gets ordinary permissions and is renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        set_ordinary_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` as float32 (use with `OfflineDataset.obs_mean_std`; std includes eps)."""
    x = np.asarray(x, dtype=np.float32)
    return ((x - mean) / std).astype(np.float32, copy=False)


def reward_range(transitions: Transitions, max_episode_steps: int = 1000) -> tuple[float, float]:
    """(min, max) return of the episodes in `transitions`, cut at a terminal or after ``max_episode_steps``.

    CORL's ``return_reward_range``: counted on the transition view (timeouts already dropped), and a
    trailing episode that neither terminates nor reaches the limit is left out. Used as
    ``r * max_episode_steps / (max - min)`` (CORL ``modify_reward``).
    """
    rewards = np.asarray(transitions.rewards, dtype=np.float64).reshape(-1)
    terminals = np.asarray(transitions.terminals).reshape(-1) > 0.5
    ends = []
    length = 0
    for i in range(len(rewards)):
        length += 1
        if terminals[i] or length == max_episode_steps:
            ends.append(i + 1)
            length = 0
    if not ends:
        raise DatasetError(
            f"reward_range: no episode ends within the {len(rewards)} transitions (no terminal and "
            f"none reaches {max_episode_steps} steps); drop --normalize-reward"
        )
    ends_arr = np.asarray(ends)
    csum = np.concatenate(([0.0], np.cumsum(rewards)))
    returns = csum[ends_arr] - csum[np.concatenate(([0], ends_arr[:-1]))]
    return float(returns.min()), float(returns.max())


def shipped_datasets() -> list[str]:
    """Ids of the Minari-format datasets shipped with ocrl (``ocrl/data/datasets``)."""
    if not SHIPPED_ROOT.is_dir():
        return []
    found = []
    for meta in sorted(SHIPPED_ROOT.glob("**/data/metadata.json")):
        rel = meta.parent.parent.relative_to(SHIPPED_ROOT)
        if not any(part.startswith(".") for part in rel.parts):
            found.append(rel.as_posix())
    return found


# ---------------------------------------------------------------- loading
def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    download: bool = True,
    cache_dir: str | None = None,
    env_id: str | None = None,
) -> OfflineDataset:
    """Load a dataset by path, D4RL name, shipped id or Minari id; always validated.

    Resolution order: an existing path (a file is read as D4RL HDF5, a folder as Minari); a D4RL
    name (``hopper-medium-v2``; downloaded into ``cache_dir``, ``$OCRL_DATA_DIR`` or
    ``~/.cache/ocrl/d4rl`` unless ``download=False``); an id shipped in ``ocrl/data/datasets``; a
    Minari id (local Minari root, then Minari's remote when ``download``).

    ``env_id`` names the Gymnasium environment the data were recorded on, for sources that do not
    say (it wins over what the source says). A D4RL-layout file without ``timeouts`` needs it, or
    a D4RL file name, to know where its episodes end.
    """
    from ocrl.data import d4rl, minari_io

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            ds = _read_path(path, lambda: minari_io.read_minari(path), "Minari dataset folder")
        else:
            ds = _read_path(path, lambda: d4rl.read_d4rl_hdf5(path, env_id=env_id), "file")
        return _finish(ds, env_id)

    if d4rl.parse_d4rl_name(name) is not None:
        ds = d4rl.load_d4rl(name, download=download, cache_dir=cache_dir)
        return _finish(ds, env_id)

    if minari_io.is_shipped(name) or minari_io.is_local_minari(name):
        ds = minari_io.read_minari(name)
        return _finish(ds, env_id)

    d4rl.check_near_miss(name)  # raises a helpful error for e.g. "hopper-mediun-v2"

    why = ""
    if download and minari_io.looks_like_minari_id(name):
        try:
            ds = minari_io.read_minari(name, download=True)
        except DatasetError as e:
            why = f" ({e})"
        else:
            return _finish(ds, env_id)
    if name.endswith((".hdf5", ".h5")):
        raise DatasetError(
            f"dataset file '{name}' does not exist (resolved to {path.resolve()}); check the path"
        )
    if not why and minari_io.looks_like_minari_id(name):
        why = f" (not found in the Minari root {minari_io.minari_root()})"
    shipped = ", ".join(shipped_datasets()) or "none"
    raise DatasetError(
        f"unknown dataset '{name}'{why}: expected a D4RL name like hopper-medium-v2, a path to a "
        f".hdf5 file or Minari folder, or a Minari id (e.g. mujoco/hopper/medium-v0, found in "
        f"$MINARI_DATASETS_PATH or ~/.minari/datasets); shipped datasets: {shipped}"
    )


def _finish(ds: OfflineDataset, env_id: str | None) -> OfflineDataset:
    if env_id is not None:
        ds.env_id = env_id
    ds.validate()
    return ds


def _read_path(path: Path, read, what: str) -> OfflineDataset:
    """Run a reader; a library error it did not translate (h5py, json, KeyError) becomes one clear line."""
    # The readers translate every failure they know of; this is the net for the ones they do not,
    # so that a damaged file never shows a raw traceback from deep inside h5py or minari.
    try:
        return read()
    except DatasetError:
        raise
    except (
        OSError,
        KeyError,
        ValueError,
        TypeError,
        IndexError,
        RuntimeError,
        AttributeError,
    ) as e:
        fix = (
            "check its metadata.json and main_data.hdf5, or re-create the dataset"
            if what.startswith("Minari")
            else "it is probably truncated or corrupt: delete it and download or write it again"
        )
        raise DatasetError(f"{what} {path} cannot be read ({type(e).__name__}: {e}); {fix}") from e
