"""Training environments: N copies of a Gymnasium env in one SyncVectorEnv, their spaces checked."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

from ocrl.envs.evaluation import EnvError, make_env


def make_vector_env(
    env_id: str, num_envs: int, seed: int, algo: str,
    actions: tuple[type[gym.Space], ...] = (gym.spaces.Box,),
    wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> gym.vector.SyncVectorEnv:  # fmt: skip
    """num_envs copies of env_id (each wrapped by `wrapper`) with SAME_STEP autoreset (the last observation of an
    episode in infos["final_obs"]), action space seeded; an EnvError unless the observation is a flat Box and the
    action space one of `actions`."""
    wrap = wrapper or (lambda env: env)
    envs = gym.vector.SyncVectorEnv(
        [lambda: wrap(make_env(env_id)) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if not isinstance(act_space, actions) or len(obs_space.shape or ()) != 1:
        envs.close()
        names = [space.__name__ for space in actions]
        kinds = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise EnvError(
            f"--env-id {env_id}: {algo} needs a flat Box observation and {kinds} actions; "
            f"this environment has {obs_space} and {act_space}"
        )
    envs.action_space.seed(seed)
    return envs
