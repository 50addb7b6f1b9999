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

A dataset whose ``metadata["ocrl_layout"]`` is ``"transitions"`` (made by
`OfflineDataset.from_transitions`, e.g. synthetic samples of a diffusion model) holds independent
transitions instead: every row is its own one-step episode with its stored ``next_observations``.
Such files may carry the source dataset's normalisation statistics (`source_statistics_metadata`).

This module needs numpy only; h5py and minari are imported by the readers when used.
"""

from __future__ import annotations

import contextlib
import json
import math
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
    "source_statistics_metadata",
    "metadata_obs_stats",
    "metadata_return_range",
    "TRANSITIONS_LAYOUT",
    "atomic_path",
    "set_ordinary_permissions",
    "shipped_datasets",
    "SHIPPED_ROOT",
]

#: Root of the Minari-format datasets shipped inside the package (``ocrl/data/datasets``).
SHIPPED_ROOT = Path(__file__).resolve().parent / "datasets"

_CHUNK_ROWS = 1 << 13  # rows per block when scanning large arrays (bounds temporary memory)

#: ``metadata["ocrl_layout"]`` of a dataset of independent transitions (one-step episodes).
TRANSITIONS_LAYOUT = "transitions"


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

    # ------------------------------------------------------------ construction
    @classmethod
    def from_transitions(
        cls,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_observations: np.ndarray,
        terminals: np.ndarray,
        *,
        name: str,
        env_id: str | None = None,
        ref_min_score: float | None = None,
        ref_max_score: float | None = None,
        source: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> OfflineDataset:
        """A validated dataset of independent transitions: every row is its own one-step episode.

        Arrays are converted to float32 (rewards and terminals may be (N,) or (N, 1); terminals
        bool or 0/1). ``timeouts = ~terminals`` so that every row ends an episode (both writers
        keep each row apart), and ``metadata["ocrl_layout"] = "transitions"`` tells
        `transitions` to use the stored ``next_observations`` of every row.
        """
        where = f"dataset '{name or '<unnamed>'}'"
        meta = dict(metadata or {})
        if meta.get("ocrl_layout", TRANSITIONS_LAYOUT) != TRANSITIONS_LAYOUT:
            raise DatasetError(
                f"{where}: from_transitions got metadata ocrl_layout={meta['ocrl_layout']!r}; "
                f"it writes {TRANSITIONS_LAYOUT!r} itself, so drop that key"
            )
        meta["ocrl_layout"] = TRANSITIONS_LAYOUT
        term = _as_flag(terminals, "terminals", where)
        ds = cls(
            observations=_as_float32(observations, "observations", where),
            actions=_as_float32(actions, "actions", where),
            rewards=_as_float32(rewards, "rewards", where, column=True),
            terminals=term,
            timeouts=~term,
            next_observations=_as_float32(next_observations, "next_observations", where),
            name=name,
            env_id=env_id,
            ref_min_score=ref_min_score,
            ref_max_score=ref_max_score,
            source=source,
            metadata=meta,
        )
        ds.validate()
        # Malformed source statistics are reported now, not when an algorithm loads the file.
        metadata_obs_stats(ds)
        metadata_return_range(ds)
        return ds

    @property
    def is_transitions_layout(self) -> bool:
        """True when the rows are independent transitions (``metadata["ocrl_layout"] == "transitions"``)."""
        return self.metadata.get("ocrl_layout") == TRANSITIONS_LAYOUT

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

        A transitions-layout dataset (``metadata["ocrl_layout"] == "transitions"``, see
        `from_transitions`) has no truncated final steps to drop: both modes return every row
        with its stored ``next_observations``, and its ``timeouts`` are ignored.
        """
        n = len(self)
        if truncated_last not in ("drop", "keep"):
            raise DatasetError(
                f"transitions(truncated_last={truncated_last!r}): expected 'drop' (D4RL parity) "
                "or 'keep'"
            )
        if self.is_transitions_layout:
            if self.next_observations is None:
                raise DatasetError(
                    f"{self._where()} has independent transitions (metadata ocrl_layout="
                    f"'{TRANSITIONS_LAYOUT}') but no 'next_observations'; write the file again "
                    "with OfflineDataset.from_transitions"
                )
            return self._all_rows()
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
        if self.next_observations is None:
            raise DatasetError(
                f"{self._where()} has no 'next_observations', so transitions('keep') cannot "
                "give the final step of a truncated episode a next state. Use "
                "transitions('drop') (D4RL parity), or a source that stores next "
                "observations (D4RL v2 files, Minari datasets)."
            )
        return self._all_rows()

    def _all_rows(self) -> Transitions:
        """Every row as a transition with its stored next observation (fresh arrays)."""
        assert self.next_observations is not None  # checked by the caller, with its message
        return Transitions(
            observations=self.observations.copy(),
            actions=self.actions.copy(),
            rewards=self.rewards.copy(),
            next_observations=self.next_observations.copy(),
            terminals=self.terminals.astype(np.float32),
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
        self._validate_layout(where)

    def _validate_layout(self, where: str) -> None:
        """A layout marker must be known, and independent transitions need s' and one-row episodes."""
        layout = self.metadata.get("ocrl_layout")
        if layout is None:
            return
        if layout != TRANSITIONS_LAYOUT:
            # An unknown marker (a typo) would silently read as consecutive episodes.
            raise DatasetError(
                f"{where}: metadata ocrl_layout={layout!r} is unknown; the only layout marker is "
                f"'{TRANSITIONS_LAYOUT}' (independent transitions): fix or remove that key"
            )
        if self.next_observations is None:
            raise DatasetError(
                f"{where} has independent transitions (metadata ocrl_layout="
                f"'{TRANSITIONS_LAYOUT}') but no 'next_observations'; write the file again with "
                "OfflineDataset.from_transitions"
            )
        open_rows = np.flatnonzero(~(self.terminals | self.timeouts))
        if open_rows.size:
            # A row that ends no episode would be merged with the next one by episode-based
            # writers (Minari) and its next observation lost.
            raise DatasetError(
                f"{where} has independent transitions (metadata ocrl_layout="
                f"'{TRANSITIONS_LAYOUT}') but row {int(open_rows[0])} ({open_rows.size} rows in "
                "all) has neither terminals nor timeouts set; every row must end its own episode: "
                "build it with OfflineDataset.from_transitions (timeouts = ~terminals)"
            )

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


def _as_float32(x, key: str, where: str, *, column: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous float32 array; a (N, 1) column becomes (N,) when ``column``."""
    try:
        arr = np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: '{key}' is not a numeric array ({e}); pass numbers") from e
    if column and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    return arr


def _as_flag(x, key: str, where: str) -> np.ndarray:
    """``x`` as an (N,) bool array; numbers must be exactly 0 or 1."""
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.reshape(-1)
    if arr.dtype == np.bool_:
        return arr.copy()
    if arr.dtype.kind not in "iuf":
        raise DatasetError(f"{where}: '{key}' must be bool or 0/1 numbers, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    if bad.size:
        row = int(bad[0])
        raise DatasetError(
            f"{where}: '{key}' must hold only 0 and 1, found {arr.flat[row].item()!r} at row "
            f"{row} ({bad.size} bad rows in all); threshold it first (e.g. x > 0.5)"
        )
    return arr != 0


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        # Name the path the user gave, not the temporary file beside it.
        raise PermissionError(
            f"cannot write {path} ({err.strerror or err}); choose a writable place"
        ) from None
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


def source_statistics_metadata(transitions: Transitions, max_episode_steps: int) -> dict[str, str]:
    """Metadata keys carrying a real dataset's normalisation statistics into a synthetic one.

    ``ocrl_obs_mean`` and ``ocrl_obs_std`` are `Transitions.obs_mean_std` (what
    `load_offline_task` computes for the same transitions) and ``ocrl_return_range`` is
    `reward_range`, each JSON-encoded as a string so it survives D4RL's scalar-only metadata.
    Pass ``dataset.transitions()`` of the real dataset; raises `DatasetError` when no episode
    of it ends.
    """
    mean, std = transitions.obs_mean_std()
    lo, hi = reward_range(transitions, max_episode_steps)
    # float32 -> Python float is exact and json writes the shortest exact repr, so the
    # statistics read back bit-for-bit.
    return {
        "ocrl_obs_mean": json.dumps([float(v) for v in mean]),
        "ocrl_obs_std": json.dumps([float(v) for v in std]),
        "ocrl_return_range": json.dumps([lo, hi]),
    }


def _metadata_numbers(dataset: OfflineDataset, key: str) -> list[float]:
    """The finite numbers of JSON list metadata ``key`` (a string, or a list from metadata.json)."""
    value = dataset.metadata[key]
    where = f"{dataset._where()}: metadata '{key}'"
    fix = "write it with source_statistics_metadata, or remove it"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise DatasetError(f"{where} is not valid JSON ({e}); {fix}") from e
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise DatasetError(
            f"{where} must be a JSON list of finite numbers, got {value!r:.80}; {fix}"
        )
    return [float(v) for v in value]


def metadata_obs_stats(dataset: OfflineDataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) float32 from metadata ``ocrl_obs_mean``/``ocrl_obs_std`` (the source data's), or None."""
    keys = ("ocrl_obs_mean", "ocrl_obs_std")
    present = [k for k in keys if k in dataset.metadata]
    if not present:
        return None
    if len(present) == 1:
        missing = next(k for k in keys if k not in present)
        raise DatasetError(
            f"{dataset._where()}: metadata has '{present[0]}' but not '{missing}'; write both "
            "with source_statistics_metadata, or neither"
        )
    mean, std = (np.asarray(_metadata_numbers(dataset, k), dtype=np.float32) for k in keys)
    for key, arr in zip(keys, (mean, std), strict=True):
        if arr.shape != (dataset.obs_dim,):
            raise DatasetError(
                f"{dataset._where()}: metadata '{key}' has {arr.size} values but observations "
                f"have {dataset.obs_dim} dims; write the statistics of the matching source dataset"
            )
    if not bool((std > 0).all()):
        raise DatasetError(
            f"{dataset._where()}: metadata 'ocrl_obs_std' has a value <= 0 at dim "
            f"{int(np.flatnonzero(std <= 0)[0])}; a std includes eps > 0: write it again"
        )
    return mean, std


def metadata_return_range(dataset: OfflineDataset) -> tuple[float, float] | None:
    """(lo, hi) episode return range from metadata ``ocrl_return_range`` (the source data's), or None."""
    if "ocrl_return_range" not in dataset.metadata:
        return None
    values = _metadata_numbers(dataset, "ocrl_return_range")
    if len(values) != 2 or not values[0] < values[1]:
        raise DatasetError(
            f"{dataset._where()}: metadata 'ocrl_return_range' must be [lo, hi] with lo < hi, "
            f"got {values}; write it with source_statistics_metadata"
        )
    return values[0], values[1]


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
