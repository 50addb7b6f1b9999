"""The training environments of an online loop as one checkpoint part, so `--resume` continues their episodes.

`TrainingEnvs` holds a `SyncVectorEnv`, the observation the policy acts on next and each copy's running
episode return and length. Its `state_dict` is everything the next steps depend on, in a form that
`torch.load(weights_only=True)` accepts:

- the vector env's autoreset flags and its batched action space's RNG (the warm-up samples);
- for every copy, the wrappers' state (TimeLimit's elapsed steps, OrderEnforcing's reset flag,
  TimeFeature's step) and the unwrapped env's RNG (it draws the reset noise of later episodes);
- for a Gymnasium MuJoCo env, its MjData: the integration state (`mj_getState` with
  mjSTATE_INTEGRATION: time, qpos, qvel, act, the solver's warmstart, ctrl, applied forces, ...; qpos
  and qvel alone are not bit-exact: Ant diverges within 1,500 steps without the warmstart), then the
  other arrays of MjData's fixed buffer copied back. Those are derived quantities that the next
  mj_step recomputes, but some envs read them before stepping (Ant's, Humanoid's and Reacher's
  rewards take positions from xpos/xipos, which after a step are one substep behind qpos, so
  `mj_forward` would not restore them). The per-step arena (contacts, constraint rows, islands) is
  rebuilt by that mj_step before anything reads it.
- for a classic-control env, the attributes its `step` reads (`state`, and Pendulum's `last_u`,
  CartPole's `steps_beyond_terminated`), listed in `ENV_STATE`;
- an env or wrapper whose class defines `state_dict`/`load_state_dict` saves itself.

Any other env or wrapper (gymnasium-robotics tasks keep their goal and target positions outside MjData;
RecordEpisodeStatistics) is saved as "restart": on `--resume` that copy starts a new episode, as every
copy did before this part existed, and a note names it and why.

`vector_env_state` and `load_vector_env_state` are the envs' part of that state for any SyncVectorEnv; the
on-policy `ocrl.data.VectorRollout` saves its envs with them. `UnitActions` maps the actions of a policy
that acts in [-1, 1]^A (RLPD's, EXPO's) into an env's Box and back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.classic_control import (
    AcrobotEnv,
    CartPoleEnv,
    Continuous_MountainCarEnv,
    MountainCarEnv,
    PendulumEnv,
)

from ocrl.envs.evaluation import TimeFeature
from ocrl.experiment.run import CheckpointError, Run, UsageError

if TYPE_CHECKING:
    from ocrl.data import ReplayBuffer

#: Unwrapped non-MuJoCo envs: the attributes that hold their state (besides np_random).
ENV_STATE: dict[type, tuple[str, ...]] = {
    PendulumEnv: ("state", "last_u"),
    CartPoleEnv: ("state", "steps_beyond_terminated"),
    MountainCarEnv: ("state",),
    Continuous_MountainCarEnv: ("state",),
    AcrobotEnv: ("state",),
}
#: Wrappers: the attributes that hold their state. PassiveEnvChecker's flags only decide whether it
#: checks (and warns) once more, never what a step returns.
WRAPPER_STATE: dict[type, tuple[str, ...]] = {
    gym.wrappers.TimeLimit: ("_elapsed_steps",),
    gym.wrappers.OrderEnforcing: ("_has_reset",),
    gym.wrappers.PassiveEnvChecker: (),
    gym.wrappers.FlattenObservation: (),
    TimeFeature: ("t",),
}


def _encode(value: Any, where: str) -> Any:
    """An attribute's value as plain data or tensors; NumPy arrays and scalars keep their dtype."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        if isinstance(value, np.ndarray):
            return {"array": torch.from_numpy(value.copy())}
        if isinstance(value, np.generic):
            return {"scalar": torch.from_numpy(np.asarray(value).copy())}
    except TypeError:
        pass
    raise CheckpointError(
        f"cannot save {where}: a {type(value).__name__} value ocrl cannot store in a checkpoint"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "scalar" in value:
            return value["scalar"].numpy().copy()[()]
        return value["array"].numpy().copy()
    return value


def _rng_json(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def _wrappers(env: gym.Env) -> list[gym.Wrapper]:
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(env)
        env = env.env
    return chain


def _own_state(obj: Any) -> bool:
    """Whether the object's class (not an inner env) defines state_dict and load_state_dict."""
    return callable(getattr(type(obj), "state_dict", None)) and callable(
        getattr(type(obj), "load_state_dict", None)
    )


def _is_mujoco(env: gym.Env) -> bool:
    # Gymnasium's own MuJoCo envs keep all their state in MjData and np_random (checked for Hopper,
    # HalfCheetah, Walker2d, Ant, Humanoid, Swimmer, Reacher and the pendulums, -v4 and -v5).
    return type(env).__module__.startswith("gymnasium.envs.mujoco.") and hasattr(env, "data")


def _why_not_saveable(env: gym.Env) -> str | None:
    """None when every wrapper and the unwrapped env of `env` can be saved, else the reason."""
    name = env.spec.id if env.spec else type(env.unwrapped).__name__
    for wrapper in _wrappers(env):
        if type(wrapper) not in WRAPPER_STATE and not _own_state(wrapper):
            return f"{name}: ocrl does not know the state of its wrapper {type(wrapper).__name__}"
    inner = env.unwrapped
    if _is_mujoco(inner) or type(inner) in ENV_STATE or _own_state(inner):
        return None
    return (
        f"{name} ({type(inner).__module__}.{type(inner).__name__}): ocrl knows the state of "
        "Gymnasium's MuJoCo and classic-control envs and of classes with state_dict() only"
    )


def _buffer_arrays(data: Any) -> dict[str, np.ndarray]:
    """The numeric arrays of an MjData that live in its fixed buffer: those sized by the model (qpos, xpos,
    cfrc_ext, ...), not the per-step arena of contacts, constraint rows and islands, which mj_step
    rebuilds first and which can hold uninitialised memory."""
    # mjData's buffer starts with qpos (MuJoCo's mjxmacro.h) and is nbuffer bytes long.
    start = data.qpos.__array_interface__["data"][0]
    arrays = {}
    for name in dir(data):
        value = None if name.startswith("_") else getattr(data, name)
        # Numbers only: the unsigned arrays (plugin_data) hold pointers, meaningless in another process.
        if isinstance(value, np.ndarray) and value.dtype.kind in "bif":
            address = value.__array_interface__["data"][0]
            if value.size and start <= address < start + data.nbuffer:
                arrays[name] = value
    return arrays


def _mujoco_state(env: gym.Env) -> dict:
    import mujoco

    model, data = env.model, env.data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    arrays = {name: torch.from_numpy(v.copy()) for name, v in _buffer_arrays(data).items()}
    return {"integration": torch.from_numpy(state), "arrays": arrays}


def _load_mujoco_state(env: gym.Env, saved: dict) -> None:
    import mujoco

    model, data = env.model, env.data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = saved["integration"].numpy()
    live = _buffer_arrays(data)
    shapes = {name: tuple(v.shape) for name, v in saved["arrays"].items()}
    if state.shape != (mujoco.mj_stateSize(model, spec),) or shapes != {
        name: v.shape for name, v in live.items()
    }:
        raise CheckpointError(
            f"the saved MuJoCo state ({state.size} numbers) does not fit this model's "
            f"({mujoco.mj_stateSize(model, spec)}) or this MuJoCo version's MjData"
        )
    mujoco.mj_setState(model, data, state, spec)
    for name, value in saved["arrays"].items():
        live[name][...] = value.numpy()


def _env_state_dict(env: gym.Env) -> dict:
    """Everything the next steps of one (wrapped) env depend on, or {"id", "restart": why} when ocrl cannot save it."""
    name = env.spec.id if env.spec else type(env.unwrapped).__name__
    why = _why_not_saveable(env)
    if why is not None:
        return {"id": name, "restart": why}
    wrappers = []
    for wrapper in _wrappers(env):
        cls = type(wrapper)
        if _own_state(wrapper):
            wrappers.append({"class": cls.__name__, "state_dict": wrapper.state_dict()})
            continue
        attrs = {
            a: _encode(getattr(wrapper, a), f"{name}'s {cls.__name__}.{a}")
            for a in WRAPPER_STATE[cls]
        }
        wrappers.append({"class": cls.__name__, "attrs": attrs})
    inner = env.unwrapped
    seed = getattr(inner, "_np_random_seed", None)
    state: dict[str, Any] = {
        "id": name,
        "class": type(inner).__name__,
        "wrappers": wrappers,
        "np_random": _rng_json(inner.np_random),
        "np_random_seed": seed if isinstance(seed, int) else None,
    }
    if _own_state(inner):
        state["state_dict"] = inner.state_dict()
    elif _is_mujoco(inner):
        state["mujoco"] = _mujoco_state(inner)
    else:
        state["attrs"] = {
            a: _encode(getattr(inner, a), f"{name}'s {a}") for a in ENV_STATE[type(inner)]
        }
    return state


def _load_env_state_dict(env: gym.Env, state: dict) -> None:
    """Restore what `_env_state_dict` saved (not a "restart") into an env made the same way (same id and wrappers)."""
    name = env.spec.id if env.spec else type(env.unwrapped).__name__
    chain = _wrappers(env)
    have = [type(w).__name__ for w in chain] + [type(env.unwrapped).__name__]
    want = [w["class"] for w in state["wrappers"]] + [state["class"]]
    if name != state["id"] or have != want:
        raise CheckpointError(
            f"the saved training env is {state['id']} ({' > '.join(want)}), this run's is "
            f"{name} ({' > '.join(have)})"
        )
    for wrapper, saved in zip(chain, state["wrappers"], strict=True):
        if "state_dict" in saved:
            wrapper.load_state_dict(saved["state_dict"])
        else:
            for attr, value in saved["attrs"].items():
                setattr(wrapper, attr, _decode(value))
    inner = env.unwrapped
    inner.np_random.bit_generator.state = json.loads(state["np_random"])
    if state["np_random_seed"] is not None:
        inner._np_random_seed = state["np_random_seed"]
    if "state_dict" in state:
        inner.load_state_dict(state["state_dict"])
    elif "mujoco" in state:
        _load_mujoco_state(inner, state["mujoco"])
    else:
        for attr, value in state["attrs"].items():
            setattr(inner, attr, _decode(value))


def vector_env_state(envs: gym.vector.SyncVectorEnv) -> dict:
    """The state of a SyncVectorEnv's copies (each saved as `_env_state_dict` does), its autoreset flags and its
    batched action space's RNG, as plain data and tensors."""
    return {
        # SyncVectorEnv's own bookkeeping: which copies reset at their next step (NEXT_STEP mode).
        "autoreset": torch.from_numpy(envs._autoreset_envs.copy()),
        "action_space_rng": _rng_json(envs.action_space.np_random),
        "envs": [_env_state_dict(env) for env in envs.envs],
    }


def load_vector_env_state(envs: gym.vector.SyncVectorEnv, state: dict) -> list[int]:
    """Restore `vector_env_state` into envs made the same way; return the copies saved as "restart" (left as this
    run's reset left them, after a note that says why), whose observation and counters the caller resets."""
    if len(state["envs"]) != envs.num_envs:
        raise CheckpointError(
            f"the checkpoint has {len(state['envs'])} training envs, this run {envs.num_envs}"
        )
    autoreset = state["autoreset"].numpy().copy()
    restarted, why = [], []
    for i, (env, saved) in enumerate(zip(envs.envs, state["envs"], strict=True)):
        if "restart" in saved:
            restarted.append(i)
            why.append(saved["restart"])
            autoreset[i] = False
        else:
            _load_env_state_dict(env, saved)
    envs._autoreset_envs = autoreset
    envs.action_space.np_random.bit_generator.state = json.loads(state["action_space_rng"])
    if restarted:
        print(
            f"note: --resume: {len(restarted)} of {envs.num_envs} training envs start a new "
            f"episode ({why[0]})"
        )
    return restarted


class UnitActions:
    """An env's Box actions seen as [-1, 1]^A: `to_env` maps a policy's actions (tensors, clipped to [-1, 1]) into
    the env's range, `to_unit` maps the env's (arrays, e.g. warm-up samples) into [-1, 1]^A."""

    def __init__(
        self, low: np.ndarray, high: np.ndarray, device: str | torch.device = "cpu"
    ) -> None:
        self.low, self.high = low, high
        self.low_t = torch.as_tensor(low, device=device)
        self.high_t = torch.as_tensor(high, device=device)

    def to_env(self, action: torch.Tensor) -> torch.Tensor:
        return self.low_t + (action.clamp(-1.0, 1.0) + 1) / 2 * (self.high_t - self.low_t)

    def to_unit(self, action: np.ndarray) -> np.ndarray:
        return 2 * (action - self.low) / (self.high - self.low) - 1

    def acting(
        self, policy: Callable[[torch.Tensor], torch.Tensor]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """`policy` (acting in [-1, 1]^A) followed by `to_env`: an acting function in the env's range."""

        def act(obs: torch.Tensor) -> torch.Tensor:
            return self.to_env(policy(obs))

        return act


class TrainingEnvs:
    """An online loop's training envs as one checkpoint part: the vector env, the observation the policy
    acts on next (`obs`) and each copy's running `episode_return` and `episode_length`.

    An off-policy loop picks its actions with `envs.act(policy, device)` (warm-up samples with no policy) and
    steps with `envs.step_into(buffer, action, loop.run, step)`, which keeps `obs` and
    the counters up to date; the checkpoint saves them as they are, with every copy's env state, so a
    resumed run continues the same episodes.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        num_envs: int,
        seed: int,
        autoreset_mode: gym.vector.AutoresetMode = gym.vector.AutoresetMode.SAME_STEP,
    ) -> None:
        self.envs = gym.vector.SyncVectorEnv(
            [make_env for _ in range(num_envs)], autoreset_mode=autoreset_mode
        )
        self.envs.action_space.seed(seed)
        self.obs, _ = self.envs.reset(seed=[seed + i for i in range(num_envs)])
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)

    @property
    def num_envs(self) -> int:
        return self.envs.num_envs

    @property
    def single_observation_space(self) -> gym.Space:
        return self.envs.single_observation_space

    @property
    def single_action_space(self) -> gym.Space:
        return self.envs.single_action_space

    @property
    def action_space(self) -> gym.Space:
        """The batched action space; its `sample()` draws from the RNG that the checkpoint keeps."""
        return self.envs.action_space

    def step(self, action: np.ndarray) -> tuple:
        """`SyncVectorEnv.step`: (next_obs, reward, terminated, truncated, infos)."""
        return self.envs.step(action)

    def check_flat_box(self, algo: str, env_id: str) -> tuple[int, int]:
        """(obs_dim, act_dim) when the observations and actions are flat Boxes; else close the envs and stop with a UsageError."""
        obs_space, act_space = self.single_observation_space, self.single_action_space
        if not isinstance(act_space, gym.spaces.Box) or len(obs_space.shape or ()) != 1:
            self.close()
            raise UsageError(
                f"--env-id {env_id}: {algo} needs flat Box observation and action spaces, "
                f"this environment has {obs_space} and {act_space}"
            )
        return obs_space.shape[0], act_space.shape[0]

    def act(
        self,
        policy: Callable[[torch.Tensor], torch.Tensor] | None,
        device: str | torch.device = "cpu",
        unit: UnitActions | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(env action, action to store) for `obs`: the action space's warm-up samples when `policy` is None,
        else `policy` on `obs`; with `unit` the policy acts in [-1, 1]^A and its action is the one stored."""
        if policy is None:
            action = self.action_space.sample()
            return action, action if unit is None else unit.to_unit(action)
        with torch.no_grad():
            chosen = policy(torch.as_tensor(self.obs, dtype=torch.float32, device=device))
        action = chosen.cpu().numpy()
        return (action if unit is None else unit.to_env(chosen).cpu().numpy()), action

    def step_into(
        self,
        buffer: ReplayBuffer,
        action: np.ndarray,
        run: Run,
        step: int,
        stored_action: np.ndarray | None = None,
    ) -> None:
        """Step every copy with `action`; add the transitions to `buffer` (`stored_action` in place of `action`
        when given), log each finished episode's return and length to `run` at `step`, and move `obs` on."""
        next_obs, reward, terminated, truncated, infos = self.envs.step(action)
        real_next_obs = next_obs.copy()
        done = terminated | truncated
        # SAME_STEP autoreset: next_obs already starts the new episode; the true last state is in infos.
        for i in np.flatnonzero(done):
            real_next_obs[i] = infos["final_obs"][i]
        stored = action if stored_action is None else stored_action
        buffer.add(self.obs, stored, reward, real_next_obs, terminated, truncated)
        self.episode_return += reward
        self.episode_length += 1
        for i in np.flatnonzero(done):
            run.log(step, {"charts/episodic_return": self.episode_return[i],
                           "charts/episodic_length": self.episode_length[i]})  # fmt: skip
            self.episode_return[i], self.episode_length[i] = 0.0, 0
        self.obs = next_obs

    def close(self) -> None:
        self.envs.close()

    def state_dict(self) -> dict:
        return {
            "obs": torch.from_numpy(np.array(self.obs)),
            "episode_return": torch.from_numpy(self.episode_return.copy()),
            "episode_length": torch.from_numpy(self.episode_length.copy()),
            **vector_env_state(self.envs),
        }

    def load_state_dict(self, state: dict) -> None:
        # This run's reset: the start of a new episode for a copy saved as "restart".
        fresh = self.obs
        restarted = load_vector_env_state(self.envs, state)
        self.obs = state["obs"].numpy().copy()
        self.episode_return = state["episode_return"].numpy().copy()
        self.episode_length = state["episode_length"].numpy().copy()
        for i in restarted:
            self.obs[i], self.episode_return[i], self.episode_length[i] = fresh[i], 0.0, 0
