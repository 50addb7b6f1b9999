"""The dataset model: every recorded row (`OfflineDataset`), its TD transition view (`Transitions`),
episodes, scores, validation and the errors bad input raises.

Transition semantics follow D4RL's ``qlearning_dataset`` exactly by default: row ``i`` gives
``(obs[i], act[i], rew[i], obs[i+1], terminals[i])`` for ``i < N-1``, rows with ``timeouts[i]``
are skipped, and a timeout is never a ``done``. See ``reference/datasets.md``.

A dataset whose ``metadata["ocrl_layout"]`` is ``"transitions"`` (made by
`OfflineDataset.from_transitions`, e.g. synthetic samples of a diffusion model) holds independent
transitions instead: every row is its own one-step episode with its stored ``next_observations``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["TRANSITIONS_LAYOUT", "DatasetError", "OfflineDataset", "Transitions", "mean_std"]

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
        from ocrl.data.metadata import (
            metadata_obs_stats,
            metadata_return_range,
        )  # imports this module

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
