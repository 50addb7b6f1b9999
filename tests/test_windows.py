"""Trajectory windows (PGD's unguided trajectory diffusion): which windows, and their rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ocrl.data import DatasetError, OfflineDataset, trajectory_windows, window_rows
from ocrl.data.windows import rows_to_transitions, transition_rows

# 40 rows; episodes end after rows 9 (terminal), 19 (timeout), 22 (terminal), 33 (timeout) and a
# trailing unfinished episode 34..39. Episodes: [0,10) T, [10,20) t/o, [20,23) T, [23,34) t/o, [34,40).
N = 40
TERMINALS_AT = (9, 22)
TIMEOUTS_AT = (19, 33)


def make_dataset(n=N, terminals_at=TERMINALS_AT, timeouts_at=TIMEOUTS_AT) -> OfflineDataset:
    """Row i has observation [i, -i] and reward i, so a window's rows name themselves."""
    terminals = np.zeros(n, bool)
    terminals[list(terminals_at)] = True
    timeouts = np.zeros(n, bool)
    timeouts[list(timeouts_at)] = True
    i = np.arange(n, dtype=np.float32)
    ds = OfflineDataset(
        observations=np.stack([i, -i], axis=1),
        actions=np.stack([i / 100, i / 50, -i / 100], axis=1).astype(np.float32),
        rewards=i.copy(),
        terminals=terminals,
        timeouts=timeouts,
        name="hand-made",
    )
    ds.validate()
    return ds


def test_exact_windows_of_a_small_case():
    # length 4, stride 3. Valid starts per episode [s, e): s .. e-4.
    #   [0,10)  T at 9:  strided 0,3,6; start 0; ends on the terminal: 6      -> 0, 3, 6
    #   [10,20) t/o 19:  strided 10,13,16; start 10; 16 ends on the timeout  -> 10, 13
    #   [20,23) T at 22: 3 rows < 4, no window                              -> none
    #   [23,34) t/o 33:  strided 23,26,29; start 23; 30 would end on t/o     -> 23, 26, 29
    #   [34,40) open:    strided 34 (37 > 40-4=36); start 34                 -> 34
    starts = trajectory_windows(make_dataset(), length=4, stride=3)
    assert starts.dtype == np.int64
    np.testing.assert_array_equal(starts, [0, 3, 6, 10, 13, 23, 26, 29, 34])


def test_terminal_window_off_the_stride_is_added():
    # length 4, stride 4: in [0,10) the strided starts are 0 and 4; the window ending on the
    # terminal at 9 starts at 6, off the stride, and is added.
    starts = trajectory_windows(make_dataset(), length=4, stride=4)
    np.testing.assert_array_equal(starts, [0, 4, 6, 10, 14, 23, 27, 34])


@pytest.mark.parametrize("length, stride", [(2, 1), (3, 2), (4, 3), (5, 8), (7, 5), (10, 1)])
def test_window_properties(length, stride):
    ds = make_dataset()
    starts = trajectory_windows(ds, length, stride)
    assert np.all(np.diff(starts) > 0)  # sorted, no duplicates
    ep_starts, ep_ends = ds.episode_bounds()
    obs, act, rew, done = window_rows(ds, starts, length)
    assert obs.shape == (starts.size, length, 2) and act.shape == (starts.size, length, 3)
    assert rew.shape == done.shape == (starts.size, length, 1) and done.dtype == np.float32
    for j, o, d in zip(starts.tolist(), obs, done, strict=True):
        rows = np.arange(j, j + length)
        np.testing.assert_array_equal(o[:, 0], rows)  # consecutive rows of the dataset
        ep = int(np.searchsorted(ep_starts, j, side="right") - 1)
        first, stop = int(ep_starts[ep]), int(ep_ends[ep])
        assert rows[-1] < stop, f"window at {j} crosses the episode end {stop}"
        assert not ds.timeouts[rows[-1]], f"window at {j} ends on a timeout"
        assert not (ds.terminals | ds.timeouts)[rows[:-1]].any()
        assert not d[:-1].any(), "a terminal before the last row"
        assert d[-1, 0] == float(ds.terminals[rows[-1]])
        assert (j - first) % stride == 0 or j == first or ds.terminals[rows[-1]]
    # every episode long enough has its first window; every terminal its ending window;
    # and every stride-th valid start of each episode is there
    present = set(starts.tolist())
    for first, stop in zip(ep_starts.tolist(), ep_ends.tolist(), strict=True):
        valid = [j for j in range(first, stop - length + 1) if not ds.timeouts[j + length - 1]]
        assert {j for j in valid if (j - first) % stride == 0} <= present
        if stop - first >= length and not ds.timeouts[stop - 1]:
            assert first in present
            if ds.terminals[stop - 1]:
                assert stop - length in present
        if stop - first < length:
            assert not present & set(range(first, stop))


def test_episode_start_window_ending_on_a_timeout_is_removed():
    # [10,20) is exactly 10 rows and ends on a timeout: its only window, the episode-start one,
    # is removed. [23,34) has 11 rows: 23 is kept, 24 ends on the timeout at 33.
    starts = trajectory_windows(make_dataset(), length=10, stride=1)
    np.testing.assert_array_equal(starts, [0, 23])


def test_window_rows_gathers_every_field():
    ds = make_dataset()
    starts = np.array([0, 6, 34])
    obs, act, rew, done = window_rows(ds, starts, 4)
    idx = starts[:, None] + np.arange(4)
    np.testing.assert_array_equal(obs, ds.observations[idx])
    np.testing.assert_array_equal(act, ds.actions[idx])
    np.testing.assert_array_equal(rew[..., 0], ds.rewards[idx])
    np.testing.assert_array_equal(done[..., 0], [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert np.concatenate([obs, act, rew, done], axis=-1).shape == (3, 4, 2 + 3 + 2)
    assert not np.shares_memory(obs, ds.observations)


def test_no_windows_when_the_data_are_shorter_than_a_window():
    assert trajectory_windows(make_dataset(n=5, terminals_at=(), timeouts_at=()), 8).size == 0
    obs, *_ = window_rows(make_dataset(), np.zeros(0, np.int64), 4)
    assert obs.shape == (0, 4, 2)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(length=1), "length=1 must be an integer >= 2"),
        (dict(length=4, stride=0), "stride=0 must be an integer >= 1"),
        (dict(length=4.0), "length=4.0"),
        (dict(length=True), "length=True"),
    ],
)
def test_bad_arguments(kwargs, expected):
    with pytest.raises(DatasetError, match=expected):
        trajectory_windows(make_dataset(), **kwargs)


def test_window_rows_refuses_bad_starts_and_independent_transitions():
    ds = make_dataset()
    with pytest.raises(DatasetError, match="start 37 .*no room for 4 rows"):
        window_rows(ds, np.array([0, 37]), 4)
    with pytest.raises(DatasetError, match="start -1"):
        window_rows(ds, np.array([-1]), 4)
    with pytest.raises(DatasetError, match="1-D integer array"):
        window_rows(ds, np.array([0.5]), 4)
    with pytest.raises(DatasetError, match="length=1"):
        window_rows(ds, np.array([0]), 1)
    synthetic = OfflineDataset.from_transitions(
        ds.observations, ds.actions, ds.rewards, ds.observations, ds.terminals, name="synthetic"
    )
    with pytest.raises(DatasetError, match="independent transitions"):
        trajectory_windows(synthetic, 4)
    with pytest.raises(DatasetError, match="independent transitions"):
        window_rows(synthetic, np.array([0]), 4)


def test_rows_to_transitions_inverts_transition_rows():
    rng = np.random.default_rng(0)
    data = OfflineDataset(
        observations=rng.normal(size=(9, 3)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(9, 2)).astype(np.float32),
        rewards=rng.normal(size=9).astype(np.float32),
        terminals=np.array([0, 0, 1, 0, 0, 0, 0, 0, 0], bool),
        timeouts=np.array([0, 0, 0, 0, 0, 1, 0, 0, 1], bool),
    )
    t = data.transitions()
    rows = transition_rows(t)
    assert rows.shape == (len(t), 2 * 3 + 2 + 2) and rows.dtype == np.float32
    back = rows_to_transitions(torch.from_numpy(rows), 3, 2)
    for key in ("observations", "actions", "rewards", "next_observations"):
        np.testing.assert_array_equal(back[key].numpy(), getattr(t, key), err_msg=key)
    np.testing.assert_array_equal(back["terminals"].numpy(), t.terminals > 0.5)
