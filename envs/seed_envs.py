"""The training envs and replay buffers of an off-policy online loop (sac, ggd_td) for every seed of a --num-seeds
group. Seed k has exactly what a single-seed run of seed k has: its own `TrainingEnvs` (copy i seeded with seed k + i,
the warm-up samples from its action space seeded with seed k) and its own `ReplayBuffer` of its transitions only.
Both are lists with one entry per seed, so `nets.seeds.seed_parts` gives seed k its own checkpoint parts "envs" and
"buffer" in the single-seed format."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from ocrl.data.replay import Batch, ReplayBuffer
from ocrl.envs.training import TrainingEnvs
from ocrl.experiment.run import Run, UsageError


class SeedEnvs:
    """Per seed of seed .. seed+N-1: `num_envs` training envs and a replay buffer (`parts()`), stepped together."""

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        args,
        algo: str,
        device: torch.device | str,
    ) -> None:
        """`args`: env_id, num_envs, seed, num_seeds and buffer_size of an online file's Args; stops with a
        UsageError (the envs closed) unless observations and actions are flat Boxes."""
        seeds = range(args.seed, args.seed + args.num_seeds)
        self.envs = [TrainingEnvs(make_env, args.num_envs, s) for s in seeds]
        try:
            self.obs_dim, self.act_dim = self.envs[0].check_flat_box(algo, args.env_id)
        except UsageError:  # the first seed's envs are closed already
            for envs in self.envs[1:]:
                envs.close()
            raise
        self.action_space = self.envs[0].single_action_space
        self.device = torch.device(device)
        self.buffers = [
            ReplayBuffer(self.obs_dim, self.act_dim, args.buffer_size, device) for _ in seeds
        ]

    def parts(self) -> dict[str, list]:
        """The checkpoint parts: each seed's replay buffer and training envs."""
        return {"buffer": self.buffers, "envs": self.envs}

    def step(
        self,
        policy: Callable[[torch.Tensor], torch.Tensor] | None,
        runs: Sequence[Run],
        step: int,
    ) -> None:
        """One vector step of every seed's envs, its transitions into its buffer and its finished episodes logged
        to its run: warm-up samples of each seed's action space when `policy` is None, else `policy` on the seeds'
        stacked observations (N, num_envs, obs) -> actions (N, num_envs, act)."""
        if policy is None:
            actions = [envs.action_space.sample() for envs in self.envs]
        else:
            obs = torch.as_tensor(np.stack([envs.obs for envs in self.envs]), dtype=torch.float32)
            with torch.no_grad():
                actions = policy(obs.to(self.device)).cpu().numpy()
        for envs, buffer, action, run in zip(self.envs, self.buffers, actions, runs, strict=True):
            envs.step_into(buffer, action, run, step)

    def sample(self, batch_size: int, streams) -> Batch:
        """One uniform minibatch per seed from its own buffer, its indices from its stream (`nets.seeds.SeedStreams`):
        (N, batch_size, ...) tensors."""
        idx = streams.randint(len(self.buffers[0]), (batch_size,))
        batches = [buffer.gather(i) for buffer, i in zip(self.buffers, idx, strict=True)]
        return Batch(*(torch.stack(t) for t in zip(*batches, strict=True)))

    def close(self) -> None:
        for envs in self.envs:
            envs.close()
