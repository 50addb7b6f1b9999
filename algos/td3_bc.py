"""TD3+BC: "A Minimalist Approach to Offline Reinforcement Learning" (Fujimoto & Gu, 2021, arXiv 2106.06860).

TD3 trained on a fixed dataset, with a behaviour-cloning term in the actor loss:

    L_pi = -lambda * mean Q1(s, pi(s)) + mean (pi(s) - a)^2,   lambda = alpha / mean |Q1(s, pi(s))|

Observations are standardised with dataset statistics, transitions follow D4RL's `qlearning_dataset`
(timeout rows dropped, done = terminal only). The critic is TD3's: twin Q-networks (here one batched
ensemble, which is the same maths as two networks with one optimiser), clipped target-policy noise, the
minimum of the two targets, and an actor/target update every `policy_freq` critic steps.

Defaults reproduce the paper and its reference code (sfujim/TD3_BC): alpha 2.5, 1M updates, batch 256.
The paper and the code agree on every setting used here. Evaluation follows ocrl's shared protocol:
deterministic actor, 10 episodes every 5,000 updates, episode seeds derived from --seed.

    python algos/td3_bc.py --total-steps 20000           # shipped hopper data, a few CPU-minutes
    python algos/td3_bc.py --dataset hopper-medium-v2 --preset hopper-medium-v2
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ocrl.data import (
    Batch,
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
from ocrl.nets import CriticEnsemble, DeterministicActor, polyak_update

_LOCOMOTION = [
    f"{domain}-{kind}-v2"
    for domain in ("halfcheetah", "hopper", "walker2d")
    for kind in ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
]
PRESETS: dict[str, dict] = {
    # The paper uses one setting for every Gym-MuJoCo dataset (CORL's per-dataset YAMLs agree).
    **{
        name: {"alpha": 2.5, "normalize_obs": True, "normalize_reward": False}
        for name in _LOCOMOTION
    },
    # Control for PRDC / A2PR, which use alpha = 40 on halfcheetah.
    "halfcheetah-alpha40": {"alpha": 40.0, "normalize_obs": True, "normalize_reward": False},
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args:
    dataset: str = "ocrl/hopper/medium-v0"
    """D4RL name (hopper-medium-v2), path to a D4RL .hdf5 file or Minari folder, or a Minari id; the default is shipped"""
    env_id: str | None = None
    """evaluation environment; by default the one the dataset names (D4RL tasks evaluate on Gymnasium -v4)"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """per-dataset hyperparameters from the paper; explicit flags override them; --dataset alone changes none"""
    seed: int = 0
    """seed of torch, numpy and the evaluation episodes"""
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
    """actor and target updates happen every policy_freq critic updates"""
    alpha: float = 2.5
    """weight of the Q term against behaviour cloning (lambda = alpha / mean|Q|)"""
    normalize_obs: bool = True
    """standardise observations with dataset mean and std (+1e-3)"""
    normalize_reward: bool = False
    """scale rewards by 1000 / (max - min episode return), as CORL's optional modify_reward"""
    truncated_last: Literal["drop", "keep"] = "drop"
    """'drop' reproduces D4RL's qlearning_dataset; 'keep' also trains on timeout transitions using stored next observations"""
    eval_every: int = 5_000
    """updates between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation, run in parallel"""
    log_every: int = 1_000
    """updates between loss logs (the only host synchronisations of the loop)"""
    save_model: bool = False
    """write checkpoint.pt (atomically) at every evaluation and at the end"""
    resume: str | None = None
    """run folder to continue from its checkpoint.pt (its config.json is reused, except total_steps and device)"""
    compile: bool = False
    """wrap the update in torch.compile (off by default: on a CPU compile time dominates short runs)"""
    run_dir: str | None = None
    """run folder; default runs/td3_bc__<dataset>__s<seed>__<time>"""
    progress: bool = True
    """show a progress bar"""


def td3_bc_update(
    batch: Batch,
    actor: DeterministicActor,
    actor_target: DeterministicActor,
    critic: CriticEnsemble,
    critic_target: CriticEnsemble,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    args: Args,
    update_actor: bool,
) -> dict[str, torch.Tensor]:
    """One TD3+BC iteration: a critic step, and on actor iterations an actor step and the target updates."""
    obs, actions, rewards, next_obs, dones = batch
    scale = actor.action_scale
    with torch.no_grad():
        noise = (
            torch.randn_like(actions)
            .mul_(args.policy_noise)
            .clamp_(-args.noise_clip, args.noise_clip)
        )
        low, high = actor.action_bias - scale, actor.action_bias + scale
        next_actions = torch.clamp(actor_target(next_obs).addcmul_(noise, scale), low, high)
        target_q = critic_target(next_obs, next_actions).min(dim=0).values
        target = torch.addcmul(rewards, 1.0 - dones, target_q, value=args.discount)

    q = critic(obs, actions)  # (2, B)
    # Sum over the two critics of each one's mean squared TD error.
    critic_loss = F.mse_loss(q, target.expand_as(q), reduction="sum") / q.shape[1]
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()
    metrics = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}

    if update_actor:
        pi = actor(obs)
        q_pi = critic.member(obs, pi, 0)
        lmbda = args.alpha / q_pi.abs().mean().detach()
        bc_mse = F.mse_loss(pi, actions)
        actor_loss = -lmbda * q_pi.mean() + bc_mse
        actor_params = list(actor.parameters())
        # Gradients for the actor only: the critic's weight gradients are not needed here.
        grads = torch.autograd.grad(actor_loss, actor_params)
        for p, g in zip(actor_params, grads, strict=True):
            p.grad = g
        actor_opt.step()
        polyak_update(critic_target.parameters(), critic.parameters(), args.tau)
        polyak_update(actor_target.parameters(), actor.parameters(), args.tau)
        metrics.update(actor_loss=actor_loss.detach(), bc_mse=bc_mse.detach(), lmbda=lmbda.detach())
    return metrics


def main(args: Args) -> dict:
    if args.resume:
        args = resume_args(args)
    device = pick_device(args.device)
    np_rng = seed_everything(args.seed)

    if args.preset in _LOCOMOTION and args.preset != args.dataset:
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
    if args.normalize_reward:
        returns = dataset.episode_returns()
        buffer.rewards *= 1000.0 / (returns.max() - returns.min())

    actor = DeterministicActor(
        dataset.obs_dim, dataset.act_dim, args.hidden, action_low, action_high
    ).to(device)
    critic = CriticEnsemble(dataset.obs_dim, dataset.act_dim, args.hidden, num_critics=2).to(device)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    for p in (*actor_target.parameters(), *critic_target.parameters()):
        p.requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, fused=True)

    run = Run("td3_bc", dataset.name, args.seed, args, args.run_dir)
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
    update = torch.compile(td3_bc_update) if args.compile else td3_bc_update

    def evaluate() -> None:
        pbar.set_postfix_str(run.log_eval(step, evaluator(actor.act)))

    pbar = tqdm(
        total=args.total_steps,
        initial=step,
        desc="td3_bc",
        disable=not args.progress,
        dynamic_ncols=True,
    )
    tick, tick_step = time.perf_counter(), step
    latest: dict[str, torch.Tensor] = {}  # device tensors; read on the host only at log steps
    while step < args.total_steps:
        metrics = update(
            buffer.sample(args.batch_size), actor, actor_target, critic, critic_target,
            actor_opt, critic_opt, args, step % args.policy_freq == 0,
        )  # fmt: skip
        latest.update(metrics)
        step += 1
        if step % args.log_every == 0 or step == args.total_steps:
            values = {f"losses/{k}": float(v) for k, v in latest.items()}
            check_finite(step, values, run)
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
        step, {"resumed_from": resumed_from, "dataset": dataset.name, "env_id": env_id}
    )


if __name__ == "__main__":
    with friendly_errors():
        main(cli(Args, PRESETS))
