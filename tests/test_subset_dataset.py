"""scripts/subset_dataset.py: whole episodes, the asked share of rows, metadata carried over."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from ocrl.data import DatasetError, load_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "subset_dataset.py"
spec = importlib.util.spec_from_file_location("subset_dataset", SCRIPT)
subset_dataset = importlib.util.module_from_spec(spec)
sys.modules["subset_dataset"] = subset_dataset  # dataclasses look their module up there
spec.loader.exec_module(subset_dataset)


def test_subset_keeps_whole_episodes_and_the_share_of_rows(hopper_random_file, tmp_path):
    out = tmp_path / "sub.hdf5"
    subset_dataset.main(subset_dataset.Args(hopper_random_file, str(out), fraction=0.3, seed=1))
    full, sub = load_dataset(hopper_random_file), load_dataset(str(out))
    assert 0.3 * len(full) <= len(sub) < 0.3 * len(full) + 200  # episodes here are <= 200 rows
    assert sub.env_id == full.env_id and sub.ref_max_score == full.ref_max_score
    assert sub.metadata["ocrl_subset_fraction"] == 0.3
    # Every subset episode is an episode of the full data, row for row.
    starts = {tuple(full.observations[e.start]): e for e in full.episodes()}
    for e in sub.episodes():
        source = starts[tuple(sub.observations[e.start])]
        np.testing.assert_array_equal(sub.actions[e], full.actions[source])
        np.testing.assert_array_equal(sub.terminals[e], full.terminals[source])
    # No transition pairs the end of one episode with the start of another (timeouts are dropped).
    t = sub.transitions()
    assert len(t) == len(sub) - 1 - int(sub.timeouts[:-1].sum())


def test_bad_fraction_and_existing_out_are_refused(hopper_random_file, tmp_path):
    with pytest.raises(DatasetError, match="fraction"):
        subset_dataset.main(subset_dataset.Args(hopper_random_file, str(tmp_path / "a.hdf5"), 1.5))
    taken = tmp_path / "taken.hdf5"
    taken.write_bytes(b"x")
    with pytest.raises(DatasetError, match="exists"):
        subset_dataset.main(subset_dataset.Args(hopper_random_file, str(taken)))
