"""Fixed-length windows of consecutive rows, for trajectory diffusion models (PGD's unguided baseline).

A window of ``length`` rows starting at row ``j`` holds rows ``j .. j+length-1`` of one episode
(episodes cut at ``terminals | timeouts``); only its last row may end the episode. Which windows
are kept follows PGD (Jackson et al., "Policy-Guided Diffusion", ``environments/dataset.py``):

* every ``stride``-th window counted from each episode start;
* plus the window that starts at each episode start, and the one that ends on each terminal;
* minus every window whose last row is a timeout (a truncation is not a real end, and the row
  after it belongs to another episode).

PGD strides over the concatenated list of valid starts, so its phase inside an episode depends on
the episodes before it; here the stride restarts at every episode start, which makes the windows
of an episode independent of the others (the episode-start window is added by PGD anyway).
"""

from __future__ import annotations

import numpy as np
import torch

from ocrl.data.offline import DatasetError, OfflineDataset, Transitions

__all__ = [
    "rows_to_transitions",
    "trajectory_rows",
    "trajectory_windows",
    "transition_rows",
    "window_rows",
    "windows_to_transitions",
]


def _check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int at least ``minimum``, else a `DatasetError` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DatasetError(f"trajectory windows: {name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _check_layout(dataset: OfflineDataset) -> None:
    if dataset.is_transitions_layout:
        raise DatasetError(
            f"dataset '{dataset.name}' holds independent transitions (metadata ocrl_layout="
            "'transitions'), not episodes of consecutive rows; windows need recorded episodes"
        )


def trajectory_windows(dataset: OfflineDataset, length: int, stride: int = 8) -> np.ndarray:
    """Sorted, unique int64 start rows of the windows of ``length`` consecutive rows PGD trains on.

    See the module docstring for which windows are kept. Episodes shorter than ``length`` give
    none. Raises `DatasetError` for ``length < 2``, ``stride < 1`` or a transitions-layout dataset.
    """
    length = _check_int(length, "length", 2)
    stride = _check_int(stride, "stride", 1)
    _check_layout(dataset)
    n = len(dataset)
    if n < length:
        return np.zeros(0, dtype=np.int64)
    ep_starts, ep_ends = dataset.episode_bounds()
    sizes = ep_ends - ep_starts
    # Every candidate start j = 0..n-length, with its episode's first row and one-past-last row.
    j = np.arange(n - length + 1, dtype=np.int64)
    episode = np.repeat(np.arange(sizes.size), sizes)[: j.size]
    first, stop = ep_starts[episode], ep_ends[episode]
    last = j + length - 1  # the window's last row
    inside = last < stop  # no episode end before the last row, so none inside the window
    offset = j - first
    keep = (offset % stride == 0) | (offset == 0) | dataset.terminals[last]
    keep &= inside & ~dataset.timeouts[last]
    return j[keep]


def window_rows(
    dataset: OfflineDataset, starts: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs, act, rew, done) of the windows at ``starts``: (W, length, obs_dim), (W, length, act_dim), (W, length, 1) x2.

    float32 copies gathered with one fancy index; ``done`` is ``terminals`` (a timeout is never a
    done). ``rew`` and ``done`` keep a trailing axis so the four concatenate into PGD's rows
    ``[obs, act, rew, done]``.
    """
    length = _check_int(length, "length", 2)
    _check_layout(dataset)
    starts = np.asarray(starts)
    if starts.ndim != 1 or (starts.size and starts.dtype.kind not in "iu"):
        raise DatasetError(
            f"window_rows: starts must be a 1-D integer array (from trajectory_windows), got "
            f"dtype {starts.dtype} shape {starts.shape}"
        )
    n = len(dataset)
    bad = np.flatnonzero((starts < 0) | (starts > n - length))
    if bad.size:
        raise DatasetError(
            f"window_rows: start {int(starts[bad[0]])} (index {int(bad[0])}) leaves no room for "
            f"{length} rows in dataset '{dataset.name}' of {n} rows; use trajectory_windows"
        )
    rows = starts.astype(np.int64)[:, None] + np.arange(length, dtype=np.int64)
    obs = dataset.observations[rows]
    act = dataset.actions[rows]
    rew = dataset.rewards[rows][..., None]
    done = dataset.terminals[rows].astype(np.float32)[..., None]
    return obs, act, rew, done


def trajectory_rows(dataset: OfflineDataset, length: int, stride: int = 8) -> np.ndarray:
    """PGD's model input (W, length, [s, arctanh(clip(a, +-0.999)), r, done]); `windows_to_transitions` inverts it."""
    starts = trajectory_windows(dataset, length, stride)
    obs, act, rew, done = window_rows(dataset, starts, length)
    act = np.arctanh(np.clip(act, -0.999, 0.999))
    return np.concatenate([obs, act, rew, done], axis=-1).astype(np.float32)


def windows_to_transitions(
    windows: torch.Tensor, obs_dim: int, act_dim: int
) -> dict[str, torch.Tensor]:
    """Generated windows (W, L, [s, arctanh a, r, done]) to transitions t -> t+1, a = tanh, each window cut after its first done."""
    o, a = obs_dim, act_dim
    done = windows[:, :-1, -1] > 0.5
    # Keep the steps up to and including the first done of each window: later rows follow a terminal.
    before_done = (done.cumsum(dim=1) - done.long()) < 1
    return {
        "observations": windows[:, :-1, :o][before_done],
        "actions": torch.tanh(windows[:, :-1, o : o + a])[before_done],
        "rewards": windows[:, :-1, o + a][before_done],
        "next_observations": windows[:, 1:, :o][before_done],
        "terminals": done[before_done].float(),
    }


def transition_rows(t: Transitions) -> np.ndarray:
    """SynthER's model input [s, a, r, s', terminal] of every TD transition; `rows_to_transitions` inverts it."""
    parts = [
        t.observations,
        t.actions,
        t.rewards[:, None],
        t.next_observations,
        t.terminals[:, None],
    ]
    return np.concatenate(parts, axis=1).astype(np.float32)


def rows_to_transitions(rows: torch.Tensor, obs_dim: int, act_dim: int) -> dict[str, torch.Tensor]:
    """Generated rows (N, [s, a, r, s', terminal]) to transitions (views of `rows`); terminal = 1[x > 0.5]."""
    o, a = obs_dim, act_dim
    return {
        "observations": rows[:, :o],
        "actions": rows[:, o : o + a],
        "rewards": rows[:, o + a],
        "next_observations": rows[:, o + a + 1 : 2 * o + a + 1],
        "terminals": rows[:, -1] > 0.5,
    }
