"""Dynamics error of (generated) transitions: reset MuJoCo to each s, step a, compare with s'.

The one-step check of "What to measure to confirm a re-implementation" in
``reference/diffusion.md``: D4RL locomotion observations are ``[qpos[1:], qvel]`` (hopper and
walker2d clip the velocities to [-10, 10]; Gymnasium's -v4/-v5 envs, with their default
``exclude_current_positions_from_observation=True``, produce the same layout). Each transition
``(s, a, r, s', terminal)`` is replayed as ``set_state(qpos=[0, s[:nq-1]], qvel=s[nq-1:])`` (the
dynamics do not depend on the root x), one env step with ``a``, and the simulated observation,
reward and ``terminated`` are compared with the given ones. A clipped velocity makes the reset
approximate, so the same call on real data gives the noise floor that generated data is judged
against.
"""

from __future__ import annotations

import re

import numpy as np

from ocrl.data.offline import DatasetError
from ocrl.envs.evaluation import EnvError, make_env

__all__ = ["DYNAMICS_ENV_IDS", "dynamics_error"]

# The velocity clip of each domain's _get_obs (gymnasium/envs/mujoco/<domain>_v4.py and _v5.py);
# None where the velocities are not clipped.
_VELOCITY_CLIP = {"Hopper": 10.0, "Walker2d": 10.0, "HalfCheetah": None}
_SUPPORTED = re.compile(r"^(?P<domain>Hopper|Walker2d|HalfCheetah)-v[45]$")

#: Environment ids whose observation layout `dynamics_error` knows.
DYNAMICS_ENV_IDS = tuple(f"{d}-v{v}" for d in _VELOCITY_CLIP for v in (4, 5))


def _as_rows(name: str, value, n: int | None, dim: int | None, env_id: str) -> np.ndarray:
    """`value` as a float64 (n, dim) array (or (n,) when dim is None), or a DatasetError naming it."""
    arr = np.asarray(value, dtype=np.float64)
    if dim is None and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # (N, 1) rewards/terminals, as some writers store them
    want = (n if n is not None else "N",) + (() if dim is None else (dim,))
    want_text = f"({want[0]},)" if dim is None else f"({want[0]}, {dim})"
    if (
        arr.ndim != len(want)
        or (dim is not None and arr.shape[1] != dim)
        or (n is not None and len(arr) != n)
    ):
        raise DatasetError(
            f"dynamics_error({env_id!r}): {name} has shape {arr.shape} but {env_id} needs "
            f"{want_text}; pass one row per transition with the environment's dimensions"
        )
    if len(arr) == 0:
        raise DatasetError(
            f"dynamics_error({env_id!r}): {name} is empty; pass at least one transition"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))[0])
        raise DatasetError(
            f"dynamics_error({env_id!r}): {name} has {int(bad.sum())} NaN/inf values (first in row "
            f"{row}); drop or fix those transitions first"
        )
    return arr


def dynamics_error(
    env_id: str,
    observations,
    actions,
    next_observations,
    rewards=None,
    terminals=None,
    *,
    scale=None,
    max_transitions: int | None = None,
    seed: int = 0,
) -> dict[str, float | np.ndarray]:
    """One-step simulator error of each transition; the returned keys are listed in the comment below."""
    # Returned: mse (mean over transitions and dims of (s' - s'_sim)^2), normalized_mse (per-dim
    # mse / scale^2, averaged over dims; scale defaults to the std of next_observations: pass the
    # real data's so synthetic and real numbers compare), per_dim_mse (obs_dim,),
    # per_transition_mse (n,), n (transitions used; max_transitions draws a subset with seed),
    # unstable (states MuJoCo found diverging), for hopper/walker2d clipped_start_fraction and
    # normalized_mse_unclipped (over starts with no velocity at the clip), reward_mse (rewards
    # given), terminal_agreement (terminals given; > 0.5 counts as terminal).
    match = _SUPPORTED.match(env_id) if isinstance(env_id, str) else None
    if match is None:
        raise EnvError(
            f"dynamics_error: environment {env_id!r} has no known D4RL observation layout; supported "
            f"ids are {', '.join(DYNAMICS_ENV_IDS)}"
        )
    env = make_env(env_id)  # an EnvError when the mujoco extra is missing
    import mujoco  # here, not at the top: `import ocrl.envs` works without MuJoCo

    try:
        sim = env.unwrapped  # no TimeLimit/OrderEnforcing: every transition is an independent reset
        model, data = sim.model, sim.data
        nq, nv = model.nq, model.nv
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        # The layout this module assumes; a Gymnasium that changed it would make every number wrong.
        if obs_dim != nq - 1 + nv:
            raise EnvError(
                f"dynamics_error: {env_id} observations have {obs_dim} dims, not nq-1+nv = {nq - 1 + nv}; "
                "this Gymnasium version changed the layout, use one whose -v4 envs match D4RL's"
            )

        obs = _as_rows("observations", observations, None, obs_dim, env_id)
        n_all = len(obs)
        act = _as_rows("actions", actions, n_all, act_dim, env_id)
        next_obs = _as_rows("next_observations", next_observations, n_all, obs_dim, env_id)
        rew = None if rewards is None else _as_rows("rewards", rewards, n_all, None, env_id)
        term = None if terminals is None else _as_rows("terminals", terminals, n_all, None, env_id)

        if scale is None:
            std = next_obs.std(axis=0)
            if not (std > 0).all():
                raise DatasetError(
                    f"dynamics_error({env_id!r}): next_observations dims {np.flatnonzero(~(std > 0)).tolist()} "
                    "are constant, so their std cannot normalise; pass scale= (e.g. the real data's std)"
                )
        else:
            std = np.asarray(scale, dtype=np.float64)
            if std.shape != (obs_dim,) or not (np.isfinite(std).all() and (std > 0).all()):
                raise DatasetError(
                    f"dynamics_error({env_id!r}): scale (shape {std.shape}) must be ({obs_dim},) with every "
                    "entry positive and finite; pass the per-dimension std of the real next_observations"
                )

        if max_transitions is not None and (
            isinstance(max_transitions, bool)
            or not isinstance(max_transitions, int | np.integer)
            or max_transitions < 1
        ):
            raise DatasetError(
                f"dynamics_error({env_id!r}): max_transitions={max_transitions!r}; pass a positive int or None"
            )
        if max_transitions is not None and max_transitions < n_all:
            idx = np.sort(
                np.random.default_rng(seed).choice(n_all, int(max_transitions), replace=False)
            )
            obs, act, next_obs = obs[idx], act[idx], next_obs[idx]
            rew = None if rew is None else rew[idx]
            term = None if term is None else term[idx]
        n = len(obs)

        sim.reset(seed=seed)  # MujocoEnv needs one reset for its RNG; the states below overwrite it
        sim_next = np.empty_like(next_obs)
        sim_rew = np.empty(n)
        sim_term = np.empty(n, dtype=bool)
        qpos = np.zeros(nq)  # qpos[0], the root x, stays 0
        diverged = [
            data.warning[w]
            for w in (
                mujoco.mjtWarning.mjWARN_BADQPOS,
                mujoco.mjtWarning.mjWARN_BADQVEL,
                mujoco.mjtWarning.mjWARN_BADQACC,
            )
        ]
        unstable = 0
        # MuJoCo prints a line for each diverging state (and resets the data); generated data can
        # have thousands, so they are counted in "unstable" instead. The handler is process-wide:
        # the previous one comes back in the finally below.
        previous_handler = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(lambda _msg: None)
        try:
            for i in range(n):
                qpos[1:] = obs[i, : nq - 1]
                # The solver warm-starts from the last step's accelerations; zeroing them makes each
                # transition's result independent of which transition was simulated before it.
                data.qacc_warmstart[:] = 0.0
                for w in diverged:
                    w.number = 0
                sim.set_state(qpos, obs[i, nq - 1 :])
                sim_next[i], sim_rew[i], sim_term[i], _, _ = sim.step(act[i])
                unstable += any(w.number > 0 for w in diverged)
        finally:
            mujoco.set_mju_user_warning(previous_handler)
    finally:
        env.close()

    sq = (next_obs - sim_next) ** 2
    per_dim = sq.mean(axis=0)
    out: dict[str, float | np.ndarray] = {
        "mse": float(sq.mean()),
        "normalized_mse": float((per_dim / std**2).mean()),
        "per_dim_mse": per_dim,
        "per_transition_mse": sq.mean(axis=1),
        "n": float(n),
        "unstable": float(unstable),
    }
    clip = _VELOCITY_CLIP[match["domain"]]
    if clip is not None:
        # A start velocity at the clip bound is not the true velocity: those resets are approximate,
        # and on real data they are the whole floor, so the error without them is reported too.
        clipped = (np.abs(obs[:, nq - 1 :]) >= clip).any(axis=1)
        out["clipped_start_fraction"] = float(clipped.mean())
        out["normalized_mse_unclipped"] = (
            float((sq[~clipped].mean(axis=0) / std**2).mean()) if (~clipped).any() else float("nan")
        )
    if rew is not None:
        out["reward_mse"] = float(((rew - sim_rew) ** 2).mean())
    if term is not None:
        # Generated terminals are often a continuous output: > 0.5 is a terminal (SynthER's rule).
        out["terminal_agreement"] = float(((term > 0.5) == sim_term).mean())
    return out
