"""PRDC: "Policy Regularization with Dataset Constraint for Offline Reinforcement Learning" (Ran et al., ICML 2023, arXiv 2306.06569).

TD3+BC with one change: the behaviour-cloning target of the actor is not the batch's own dataset action but
the action of the dataset transition nearest to (beta * s, pi(s)) in the joint space [beta * state, action]:

    (s_hat, a_hat) = argmin over (s', a') in D of || (beta s) (+) pi(s) - (beta s') (+) a' ||     (exact 1-NN)
    L_pi = -lambda * mean Q1(s, pi(s)) + mean (pi(s) - a_hat)^2,   lambda = alpha / mean |Q1(s, pi(s))|

a_hat is a constant (the argmin is not differentiated); only the action distance is penalised, since the
state part does not depend on pi. beta trades state against action distance: as beta -> infinity the
neighbour is the query's own transition and PRDC is TD3+BC; as beta -> 0 it is the closest action anywhere.
The critic (twin Q, target smoothing, clipped double-Q, policy_freq 2, tau 0.005), the networks and the
state standardisation are TD3+BC's. The point set is the whole dataset (every transition), built once.

Defaults reproduce the paper's code (LAMDA-RL/PRDC @ 9f38464) with its README's per-domain settings, which
`--preset` selects (the code's own default beta is 1.0; every published command uses 2.0, as here):

    halfcheetah-*           alpha 40   beta 2
    hopper-*, walker2d-*    alpha 2.5  beta 2
    antmaze-*               alpha 7.5  beta 7.5, training reward r' = 10000 r - 1

Where paper code and paper differ:
* AntMaze reward shaping: the released code applied 10000 x - 1 to next_state instead of the reward until
  upstream's fix (5c8aaf8, July 2023). Default: the fixed version (shape the reward);
  --antmaze-shaping-bug reproduces the bug (which does not learn).
* Evaluation: default ocrl's shared protocol (10 episodes every 5,000 updates, episode seeds from --seed);
  --eval-protocol prdc is the original schedule (50 episodes every 1,000 updates). The original seeds its
  evaluation env with seed + 100 and defaults to seed 1024; ocrl derives the episode seeds from --seed (0).
* Search: the original queries scipy's KD-tree on the CPU. Every backend here is exact too (the same
  neighbours up to ties). --nn-backend auto is a chunked brute force on the GPU under CUDA and, on the CPU,
  "adaptive": it times a single-thread KD-tree, an all-core KD-tree and a brute force as it goes and runs
  the fastest (far queries, early in training, favour brute force; near ones a single-thread KD-tree).
  --nn-backend kdtree is the original's path; --kdtree-eps > 0 (approximate) is off by default.

    python algos/prdc.py --total-steps 20000                       # shipped hopper data, CPU-minutes
    python algos/prdc.py --dataset hopper-medium-v2 --preset hopper
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ocrl.data import (
    Batch,
    ReplayBuffer,
    Run,
    check_finite,
    cli,
    friendly_errors,
    load_checkpoint,
    pick_device,
    restore_training_state,
    resume_args,
    save_checkpoint,
    seed_everything,
    training_state,
)
from ocrl.envs import load_offline
from ocrl.nets import CriticEnsemble, DeterministicActor, NearestNeighbors, polyak_update

_DOMAIN = {
    "halfcheetah": {"alpha": 40.0, "beta": 2.0, "k": 1, "reward_scale": 1.0, "reward_shift": 0.0},
    "hopper": {"alpha": 2.5, "beta": 2.0, "k": 1, "reward_scale": 1.0, "reward_shift": 0.0},
    "walker2d": {"alpha": 2.5, "beta": 2.0, "k": 1, "reward_scale": 1.0, "reward_shift": 0.0},
    "antmaze": {"alpha": 7.5, "beta": 7.5, "k": 1, "reward_scale": 10000.0, "reward_shift": -1.0},
}
_KINDS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
_MAZES = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")
PRESETS: dict[str, dict] = {
    **_DOMAIN,
    **{
        f"{domain}-{kind}-v2": _DOMAIN[domain]
        for domain in ("halfcheetah", "hopper", "walker2d")
        for kind in _KINDS
    },
    **{f"antmaze-{maze}-v2": _DOMAIN["antmaze"] for maze in _MAZES},
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
_EVAL_PROTOCOLS = {"ocrl": (5_000, 10), "prdc": (1_000, 50)}


@dataclass
class Args:
    dataset: str = "ocrl/hopper/medium-v0"
    """D4RL name (hopper-medium-v2), path to a D4RL .hdf5 file or Minari folder, or a Minari id; the default is shipped"""
    env_id: str | None = None
    """evaluation environment; by default the one the dataset names (D4RL tasks evaluate on Gymnasium -v4)"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """per-domain settings of the paper's README (a domain name or a D4RL dataset name): halfcheetah-*: alpha 40, beta 2; hopper-*, walker2d-*: alpha 2.5, beta 2; antmaze-*: alpha 7.5, beta 7.5, reward 10000 r - 1. Explicit flags override them; --dataset alone changes none"""
    seed: int = 0
    """seed of torch, numpy and the evaluation episodes (the original's default is 1024)"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    total_steps: int = 1_000_000
    """gradient updates (critic steps); the paper trains for 1M"""
    batch_size: int = 256
    """transitions per update, sampled uniformly with replacement"""
    discount: float = 0.99
    """discount factor gamma"""
    tau: float = 0.005
    """Polyak rate of the target networks"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer widths of actor and critics"""
    policy_noise: float = 0.2
    """std of the target-policy smoothing noise, times the action scale"""
    noise_clip: float = 0.5
    """clip of the target-policy smoothing noise, times the action scale"""
    policy_freq: int = 2
    """actor and target updates (and nearest-neighbour searches) happen every policy_freq critic updates"""
    alpha: float = 2.5
    """weight of the Q term against the dataset constraint (lambda = alpha / mean|Q|)"""
    beta: float = 2.0
    """weight of the (standardised) state in the joint search space [beta * s, a]"""
    k: int = 1
    """the k-th nearest neighbour is the target (every published run uses 1)"""
    nn_backend: Literal["auto", "kdtree", "brute", "adaptive"] = "auto"
    """exact search: auto = brute force on CUDA, adaptive (fastest of KD-tree and brute force, timed) on the CPU; kdtree = the original's"""
    kdtree_eps: float = 0.0
    """approximate KD-tree search (scipy's eps, for every KD-tree query); 0 = exact, as the paper"""
    reward_scale: float = 1.0
    """training reward r' = reward_scale * r + reward_shift (antmaze preset: 10000)"""
    reward_shift: float = 0.0
    """training reward r' = reward_scale * r + reward_shift (antmaze preset: -1)"""
    antmaze_shaping_bug: bool = False
    """reproduce the original's bug: apply the reward scale/shift to the next state instead of the reward"""
    normalize_obs: bool = True
    """standardise observations with dataset mean and std (+1e-3)"""
    truncated_last: Literal["drop", "keep"] = "drop"
    """'drop' reproduces D4RL's qlearning_dataset; 'keep' also trains on timeout transitions using stored next observations"""
    eval_protocol: Literal["ocrl", "prdc"] = "ocrl"
    """'ocrl': 10 episodes every 5,000 updates (the shared protocol); 'prdc': the original's 50 every 1,000"""
    eval_every: int | None = None
    """updates between evaluations; default from --eval-protocol"""
    eval_episodes: int | None = None
    """episodes per evaluation, run in parallel; default from --eval-protocol"""
    log_every: int = 1_000
    """updates between loss logs (the only host synchronisations of the loop, besides a CPU search's own)"""
    save_model: bool = False
    """write checkpoint.pt (atomically) at every evaluation and at the end"""
    resume: str | None = None
    """run folder to continue from its checkpoint.pt (its config.json is reused, except total_steps and device)"""
    compile: bool = False
    """wrap the update in torch.compile (off by default: on a CPU compile time dominates short runs)"""
    run_dir: str | None = None
    """run folder; default runs/prdc__<dataset>__s<seed>__<time>"""
    progress: bool = True
    """show a progress bar"""


class SearchTimer:
    """Time spent in the nearest-neighbour search, read on the host only at log steps (CUDA events on GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.seconds, self.calls, self._t = 0.0, 0, 0.0

    def start(self) -> None:
        if self.cuda:
            self.events.append(
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            )
            self.events[-1][0].record()
        else:
            self._t = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.events[-1][1].record()
        else:
            self.seconds += time.perf_counter() - self._t
        self.calls += 1

    def read_ms(self) -> float:
        """Mean milliseconds per search since the last read (synchronises CUDA)."""
        if self.cuda and self.events:
            self.events[-1][1].synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self.events) / 1e3
            self.events.clear()
        ms = 1e3 * self.seconds / max(self.calls, 1)
        self.seconds, self.calls = 0.0, 0
        return ms


def prdc_update(
    batch: Batch,
    batch_idx: torch.Tensor,
    actor: DeterministicActor,
    actor_target: DeterministicActor,
    critic: CriticEnsemble,
    critic_target: CriticEnsemble,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    index: NearestNeighbors,
    buffer: ReplayBuffer,
    args: Args,
    update_actor: bool,
    timer: SearchTimer,
) -> dict[str, torch.Tensor]:
    """One PRDC iteration: TD3+BC's critic step; on actor iterations the dataset-constrained actor step and targets."""
    obs, actions, rewards, next_obs, dones = batch
    scale = actor.action_scale
    with torch.no_grad():
        noise = (torch.randn_like(actions) * args.policy_noise).clamp(
            -args.noise_clip, args.noise_clip
        ) * scale
        low, high = actor.action_bias - scale, actor.action_bias + scale
        next_actions = torch.max(torch.min(actor_target(next_obs) + noise, high), low)
        target_q = critic_target(next_obs, next_actions).min(dim=0).values
        target = rewards + args.discount * (1.0 - dones) * target_q

    q = critic(obs, actions)  # (2, B)
    critic_loss = ((q - target) ** 2).mean(dim=1).sum()
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()
    metrics = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}

    if update_actor:
        pi = actor(obs)
        # The dataset constraint: the action of the nearest transition to (beta * s, pi(s)), a constant.
        query = torch.cat([args.beta * obs, pi.detach()], dim=1)
        timer.start()
        nn_idx, nn_dist = index.query(query, k=args.k)
        timer.stop()
        nn_idx, nn_dist = nn_idx[:, -1], nn_dist[:, -1]
        nn_actions = buffer.actions[nn_idx]
        q_pi = critic.member(obs, pi, 0)
        lmbda = args.alpha / q_pi.abs().mean().detach()
        dc_mse = F.mse_loss(pi, nn_actions)
        actor_loss = -lmbda * q_pi.mean() + dc_mse
        actor_params = list(actor.parameters())
        # Gradients for the actor only: the critic's weight gradients are not needed here.
        grads = torch.autograd.grad(actor_loss, actor_params)
        for p, g in zip(actor_params, grads, strict=True):
            p.grad = g
        actor_opt.step()
        polyak_update(critic_target.parameters(), critic.parameters(), args.tau)
        polyak_update(actor_target.parameters(), actor.parameters(), args.tau)
        with torch.no_grad():
            pi_d = pi.detach()
            metrics.update(
                actor_loss=actor_loss.detach(),
                dc_mse=dc_mse.detach(),
                lmbda=lmbda.detach(),
                **{
                    "prdc/nn_self_fraction": (nn_idx == batch_idx).float().mean(),
                    "prdc/nn_distance": nn_dist.mean(),
                    "prdc/nn_state_distance": (
                        args.beta * (buffer.observations[nn_idx] - obs).norm(dim=1).mean()
                    ),
                    "prdc/nn_action_distance": (nn_actions - pi_d).norm(dim=1).mean(),
                    "prdc/own_action_distance": (actions - pi_d).norm(dim=1).mean(),
                },
            )
    return metrics


def main(args: Args) -> dict:
    if args.resume:
        args = resume_args(args)
    every, episodes = _EVAL_PROTOCOLS[args.eval_protocol]
    args = replace(
        args,
        eval_every=args.eval_every or every,
        eval_episodes=args.eval_episodes or episodes,
    )
    device = pick_device(args.device)
    np_rng = seed_everything(args.seed)

    if args.preset is not None and args.preset not in _DOMAIN and args.preset != args.dataset:
        print(
            f"note: hyperparameters of preset '{args.preset}' applied to dataset '{args.dataset}'"
        )
    offline = load_offline(
        args.dataset, args.env_id, device=device, normalize_obs=args.normalize_obs,
        truncated_last=args.truncated_last,
    )  # fmt: skip
    dataset, env_id, buffer = offline.dataset, offline.env_id, offline.buffer
    obs_mean, obs_std = offline.obs_mean, offline.obs_std
    action_low, action_high = offline.action_low, offline.action_high
    if args.reward_scale != 1.0 or args.reward_shift != 0.0:
        shaped = buffer.next_observations if args.antmaze_shaping_bug else buffer.rewards
        shaped *= args.reward_scale
        shaped += args.reward_shift
    # The search space [beta * s, a] over every transition of the dataset, built once.
    points = torch.cat([args.beta * buffer.observations, buffer.actions], dim=1)
    index = NearestNeighbors(points, args.nn_backend, kdtree_eps=args.kdtree_eps)
    del points

    actor = DeterministicActor(
        dataset.obs_dim, dataset.act_dim, args.hidden, action_low, action_high
    ).to(device)
    critic = CriticEnsemble(dataset.obs_dim, dataset.act_dim, args.hidden, num_critics=2).to(device)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    for p in (*actor_target.parameters(), *critic_target.parameters()):
        p.requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, fused=True)

    run = Run("prdc", dataset.name, args.seed, args, args.run_dir)
    parts = {
        "actor": actor, "critic": critic, "actor_target": actor_target, "critic_target": critic_target,
        "actor_opt": actor_opt, "critic_opt": critic_opt,
    }  # fmt: skip
    step = 0
    if args.resume:
        step = restore_training_state(
            load_checkpoint(run.checkpoint_path, device), parts, np_rng, run
        )
    resumed_from = step

    def checkpoint() -> None:
        normalizer = (
            {"obs_mean": torch.as_tensor(obs_mean), "obs_std": torch.as_tensor(obs_std)}
            if args.normalize_obs
            else {}
        )
        save_checkpoint(run.checkpoint_path, training_state(step, parts, np_rng, run, **normalizer))

    evaluator = offline.evaluator(args.eval_episodes, args.seed, device)
    update = torch.compile(prdc_update) if args.compile else prdc_update
    timer = SearchTimer(device)

    def evaluate() -> None:
        pbar.set_postfix_str(run.log_eval(step, evaluator(actor.act)))

    pbar = tqdm(
        total=args.total_steps,
        initial=step,
        desc="prdc",
        disable=not args.progress,
        dynamic_ncols=True,
    )
    tick, tick_step = time.perf_counter(), step
    latest: dict[str, torch.Tensor] = {}  # device tensors; read on the host only at log steps
    sums: dict[str, torch.Tensor] = {}  # prdc/* statistics, averaged over the log interval
    searches = 0
    while step < args.total_steps:
        batch_idx = torch.randint(0, len(buffer), (args.batch_size,), device=device)
        batch = Batch(
            buffer.observations[batch_idx], buffer.actions[batch_idx], buffer.rewards[batch_idx],
            buffer.next_observations[batch_idx], buffer.terminations[batch_idx],
        )  # fmt: skip
        metrics = update(
            batch, batch_idx, actor, actor_target, critic, critic_target, actor_opt, critic_opt,
            index, buffer, args, step % args.policy_freq == 0, timer,
        )  # fmt: skip
        for key, value in metrics.items():
            if key.startswith("prdc/"):
                sums[key] = sums[key] + value if key in sums else value
            else:
                latest[key] = value
        searches += "prdc/nn_distance" in metrics
        step += 1
        if step % args.log_every == 0 or step == args.total_steps:
            values = {f"losses/{k}": float(v) for k, v in latest.items()}
            check_finite(step, values, run)
            if searches:
                values.update({k: float(v) / searches for k, v in sums.items()})
                values["prdc/search_ms"] = timer.read_ms()
                sums, searches = {}, 0
            now = time.perf_counter()
            values["charts/updates_per_s"] = (step - tick_step) / (now - tick)
            tick, tick_step = now, step
            run.log(step, values)
        if step % args.eval_every == 0 or step == args.total_steps:
            evaluate()
            if args.save_model:
                checkpoint()
        pbar.update(1)
    pbar.close()
    if not run.last_eval:
        evaluate()
    evaluator.close()
    return run.finish(
        step,
        {
            "resumed_from": resumed_from,
            "dataset": dataset.name,
            "env_id": env_id,
            "nn_backend": index.backend,
        },
    )


if __name__ == "__main__":
    with friendly_errors():
        main(cli(Args, PRESETS))
