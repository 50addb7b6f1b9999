"""Normalisation and the metadata rules: observation statistics, return ranges, and the source
statistics a synthetic dataset carries from the real one it was made from (``ocrl_obs_mean``,
``ocrl_obs_std``, ``ocrl_return_range``)."""

from __future__ import annotations

import json
import math

import numpy as np

from ocrl.data.dataset import DatasetError, OfflineDataset, Transitions

__all__ = [
    "metadata_obs_stats",
    "metadata_return_range",
    "normalize",
    "reward_range",
    "source_statistics_metadata",
]


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
