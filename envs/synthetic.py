"""Synthetic experience from a generative model of a dataset: written as a dataset file that the offline
algorithms load unchanged, and its quality against the real data (SynthER's report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ocrl.data import OfflineDataset, Transitions
from ocrl.data.d4rl import write_d4rl_hdf5
from ocrl.data.minari_io import write_minari
from ocrl.data.offline import source_statistics_metadata
from ocrl.envs.dynamics import dynamics_error
from ocrl.envs.evaluation import EnvError, make_env, resolve_reference_scores


def synthetic_quality(
    real: Transitions, synthetic: dict[str, np.ndarray], env_id: str, n: int, seed: int
) -> dict[str, float]:
    """Terminal rates, per-dimension mean/std against the data, and the one-step dynamics error of the
    non-terminal transitions (real: the floor; normalised by the real next observations' std)."""
    real_next = real.next_observations
    scale = real_next.std(axis=0) + 1e-6
    report = {
        "terminal_rate_real": float(real.terminals.mean()),
        "terminal_rate_synthetic": float(synthetic["terminals"].mean()),
    }
    for key, r in (("observations", real.observations), ("actions", real.actions)):
        s = synthetic[key]
        std = r.std(axis=0) + 1e-6
        report[f"{key}_max_mean_gap_in_std"] = float(np.max(np.abs(s.mean(0) - r.mean(0)) / std))
        ratio = s.std(axis=0) / std
        report[f"{key}_std_ratio_min"], report[f"{key}_std_ratio_max"] = map(
            float, (ratio.min(), ratio.max())
        )
    report["reward_mean_real"] = float(real.rewards.mean())
    report["reward_mean_synthetic"] = float(synthetic["rewards"].mean())
    if n <= 0:
        return report
    # Only non-terminal transitions: after a terminal, qlearning_dataset's s' is the next episode's start
    # (the model learns that pairing too), which no simulator step reproduces.
    real_rows = real.terminals < 0.5
    syn_rows = ~synthetic["terminals"]
    sets = {
        "real": (real.observations, real.actions, real_next, real.rewards, real_rows),
        "synthetic": (
            synthetic["observations"], synthetic["actions"], synthetic["next_observations"],
            synthetic["rewards"], syn_rows,
        ),
    }  # fmt: skip
    try:
        for name, (obs, act, nxt, rew, rows) in sets.items():
            if not rows.any():
                continue
            err = dynamics_error(
                env_id, obs[rows], act[rows], nxt[rows], rewards=rew[rows], scale=scale,
                max_transitions=min(n, int(rows.sum())), seed=seed,
            )  # fmt: skip
            for k in ("normalized_mse", "normalized_mse_unclipped", "mse", "reward_mse"):
                if k in err:
                    report[f"dynamics_{k}_{name}"] = float(err[k])
    except EnvError as e:
        print(f"note: no dynamics error: {e}")
    return report


def write_synthetic_dataset(
    path: Path, source: OfflineDataset, real: Transitions, env_id: str,
    samples: dict[str, np.ndarray], provenance: dict, mix_real: bool = False,
) -> Path:  # fmt: skip
    """Write generated transitions (+ the real ones `real` with `mix_real`) as a D4RL file (.hdf5, .h5) or a Minari
    folder, with the source's env, reference scores and observation statistics, and `provenance`, in the metadata."""
    if mix_real:
        samples = {
            "observations": np.concatenate([samples["observations"], real.observations]),
            "actions": np.concatenate([samples["actions"], real.actions]),
            "rewards": np.concatenate([samples["rewards"], real.rewards]),
            "next_observations": np.concatenate([samples["next_observations"], real.next_observations]),
            "terminals": np.concatenate([samples["terminals"], real.terminals > 0.5]),
        }  # fmt: skip
    env = make_env(env_id)
    max_steps = (env.spec.max_episode_steps if env.spec else None) or 1000
    env.close()
    lo, hi, _ = resolve_reference_scores(
        source.ref_min_score, source.ref_max_score, env_id, None, None
    )
    metadata = {**provenance, **source_statistics_metadata(real, max_steps)}
    name = f"{source.name}-synthetic" if source.name else "synthetic"
    dataset = OfflineDataset.from_transitions(
        samples["observations"], samples["actions"], samples["rewards"],
        samples["next_observations"], samples["terminals"], name=name, env_id=env_id,
        ref_min_score=lo, ref_max_score=hi, source=str(path), metadata=metadata,
    )  # fmt: skip
    if path.suffix in (".hdf5", ".h5"):
        write_d4rl_hdf5(dataset, path)
    else:
        write_minari(dataset, path.parent, path.name, algorithm_name="ocrl diffusion")
    return path
