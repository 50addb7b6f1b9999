"""SAC: "Soft Actor-Critic Algorithms and Applications" (Haarnoja et al., 2018, arXiv 1812.05905).

Online continuous control with a squashed-Gaussian actor, twin Q-networks with Polyak targets and an
automatically tuned entropy temperature:

    y     = r + gamma * (1 - terminated) * (min_j Q'_j(s', a') - alpha * log pi(a'|s')),  a' ~ pi(s')
    L_Q   = sum_j mean (Q_j(s, a) - y)^2
    L_pi  = mean (alpha * log pi(a|s) - min_j Q_j(s, a)),                               a ~ pi(s)
    L_alpha = mean (-alpha * (log pi(a|s) + target_entropy)),  target_entropy = -|A|

Defaults follow CleanRL's `sac_continuous_action.py` (the baseline the later methods are compared with):
5,000 random steps first, actor lr 3e-4, critic and temperature lr 1e-3, the actor and temperature
updated `policy_frequency` times every `policy_frequency` steps, log-std in [-5, 2]. Truncated episodes
bootstrap (only `terminated` ends the return). Evaluation: deterministic (mean) actor, 10 episodes every
5,000 environment steps, episode seeds derived from --seed; D4RL tasks also get a normalised score.

    python algos/sac.py --env-id Pendulum-v1 --total-steps 10000
    python algos/sac.py --env-id Hopper-v4
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
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
from ocrl.envs import Evaluator, make_env, reference_scores
from ocrl.nets import CriticEnsemble, TanhGaussianActor, polyak_update


@dataclass
class Args:
    env_id: str = "Hopper-v4"
    """Gymnasium environment id (flat Box observation and action spaces)"""
    seed: int = 1
    """seed of torch, numpy, the training env and the evaluation episodes"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    total_steps: int = 1_000_000
    """environment steps (over all env copies)"""
    num_envs: int = 1
    """parallel training environments; one gradient update per vector step"""
    buffer_size: int = 1_000_000
    """replay buffer capacity"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    batch_size: int = 256
    """transitions per update"""
    learning_starts: int = 5_000
    """uniformly random actions for this many steps before learning starts"""
    policy_lr: float = 3e-4
    """Adam learning rate of the actor"""
    q_lr: float = 1e-3
    """Adam learning rate of the critics (and of the temperature)"""
    policy_frequency: int = 2
    """the actor (and temperature) take policy_frequency steps every policy_frequency updates"""
    target_network_frequency: int = 1
    """updates between Polyak updates of the target critics"""
    alpha: float = 0.2
    """entropy temperature when --no-autotune"""
    autotune: bool = True
    """learn the temperature towards target entropy -|A| (log alpha starts at 0)"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer widths of actor and critics"""
    eval_every: int = 5_000
    """environment steps between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation, run in parallel"""
    log_every: int = 1_000
    """environment steps between loss logs"""
    save_model: bool = False
    """write checkpoint.pt (networks, optimisers, RNG and replay buffer) at every evaluation and at the end"""
    save_snapshots: bool = False
    """also keep the actor of every evaluation in snapshots/ with its score (used by scripts/collect_dataset.py)"""
    resume: str | None = None
    """run folder to continue from its checkpoint.pt (the environment restarts its episode)"""
    compile: bool = False
    """wrap the update in torch.compile (off by default on the CPU)"""
    run_dir: str | None = None
    """run folder; default runs/sac__<env>__s<seed>__<time>"""
    progress: bool = True
    """show a progress bar"""


def sac_update(
    batch: Batch,
    actor: TanhGaussianActor,
    critic: CriticEnsemble,
    critic_target: CriticEnsemble,
    log_alpha: torch.Tensor,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    alpha_opt: torch.optim.Optimizer | None,
    target_entropy: float,
    args: Args,
    actor_steps: int,
) -> dict[str, torch.Tensor]:
    """A critic step, then `actor_steps` actor (and temperature) steps on the same observations."""
    obs, actions, rewards, next_obs, dones = batch
    alpha = log_alpha.exp().detach()
    with torch.no_grad():
        next_actions, next_log_prob, _ = actor(next_obs)
        next_q = critic_target(next_obs, next_actions).min(dim=0).values - alpha * next_log_prob
        target = rewards + args.gamma * (1.0 - dones) * next_q
    q = critic(obs, actions)
    critic_loss = ((q - target) ** 2).mean(dim=1).sum()
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()
    metrics = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean(), "alpha": alpha}

    actor_params = list(actor.parameters())
    for _ in range(actor_steps):
        pi, log_prob, _ = actor(obs)
        actor_loss = (alpha * log_prob - critic(obs, pi).min(dim=0).values).mean()
        # Gradients for the actor only: the critic's weight gradients are not needed here.
        for p, g in zip(actor_params, torch.autograd.grad(actor_loss, actor_params), strict=True):
            p.grad = g
        actor_opt.step()
        metrics.update(actor_loss=actor_loss.detach(), entropy=-log_prob.detach().mean())
        if alpha_opt is not None:
            with torch.no_grad():
                _, log_prob, _ = actor(obs)
            alpha_loss = (-log_alpha.exp() * (log_prob + target_entropy)).mean()
            alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            alpha_opt.step()
            alpha = log_alpha.exp().detach()
            metrics["alpha_loss"] = alpha_loss.detach()
    return metrics


def main(args: Args) -> dict:
    if args.resume:
        args = resume_args(args)
    device = pick_device(args.device)
    np_rng = seed_everything(args.seed)

    envs = gym.vector.SyncVectorEnv(
        [lambda: make_env(args.env_id) for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if not isinstance(act_space, gym.spaces.Box) or len(obs_space.shape or ()) != 1:
        raise SystemExit(
            f"error: SAC needs flat Box observation and action spaces; {args.env_id} has {obs_space}, {act_space}"
        )
    obs_dim, act_dim = obs_space.shape[0], act_space.shape[0]
    envs.action_space.seed(args.seed)

    actor = TanhGaussianActor(obs_dim, act_dim, args.hidden, act_space.low, act_space.high).to(
        device
    )
    critic = CriticEnsemble(obs_dim, act_dim, args.hidden, num_critics=2).to(device)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.q_lr, fused=True)
    target_entropy = -float(act_dim)
    log_alpha = torch.tensor(
        0.0 if args.autotune else float(np.log(args.alpha)),
        device=device,
        requires_grad=args.autotune,
    )
    alpha_opt = torch.optim.Adam([log_alpha], lr=args.q_lr) if args.autotune else None
    buffer = ReplayBuffer(obs_dim, act_dim, args.buffer_size, device)

    run = Run("sac", args.env_id, args.seed, args, args.run_dir)
    parts = {
        "actor": actor,
        "critic": critic,
        "critic_target": critic_target,
        "actor_opt": actor_opt,
        "critic_opt": critic_opt,
        "buffer": buffer,
    }
    if alpha_opt is not None:
        parts["alpha_opt"] = alpha_opt
    step = 0
    if args.resume:
        ckpt = load_checkpoint(run.checkpoint_path, device)
        step = restore_training_state(ckpt, parts, np_rng, run)
        with torch.no_grad():
            log_alpha.copy_(ckpt["log_alpha"])
    resumed_from = step

    def checkpoint() -> None:
        save_checkpoint(
            run.checkpoint_path,
            training_state(step, parts, np_rng, run, log_alpha=log_alpha.detach()),
        )

    snapshot_dir = run.dir / "snapshots"
    ref_min, ref_max = reference_scores(args.env_id)
    evaluator = Evaluator(
        args.env_id,
        args.eval_episodes,
        args.seed,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        device=device,
    )
    update = torch.compile(sac_update) if args.compile else sac_update

    def evaluate() -> None:
        result = evaluator(actor.act)
        pbar.set_postfix_str(run.log_eval(step, result))
        if args.save_snapshots:
            snapshot_dir.mkdir(exist_ok=True)
            save_checkpoint(
                snapshot_dir / f"actor_{step:09d}.pt",
                {"actor": actor.state_dict(), "step": step, **result},
            )
            index = snapshot_dir / "index.jsonl"
            with open(index, "a") as f:
                f.write(json.dumps({"step": step, "file": f"actor_{step:09d}.pt", **result}) + "\n")

    obs, _ = envs.reset(seed=[args.seed + i for i in range(args.num_envs)])
    episode_return = np.zeros(args.num_envs)
    episode_length = np.zeros(args.num_envs, dtype=np.int64)
    pbar = tqdm(
        total=args.total_steps,
        initial=step,
        desc="sac",
        disable=not args.progress,
        dynamic_ncols=True,
    )
    if args.save_snapshots and step == 0:
        evaluate()  # the untrained actor, which scripts/collect_dataset.py uses for "random" data
    latest: dict[str, torch.Tensor] = {}  # device tensors; read on the host only at log steps
    tick, tick_step = time.perf_counter(), step
    updates = 0
    while step < args.total_steps:
        if step < args.learning_starts:
            action = envs.action_space.sample()
        else:
            with torch.no_grad():
                action = (
                    actor(torch.as_tensor(obs, dtype=torch.float32, device=device))[0].cpu().numpy()
                )
        next_obs, reward, terminated, truncated, infos = envs.step(action)
        real_next_obs = next_obs.copy()
        done = terminated | truncated
        if done.any():
            # SAME_STEP autoreset: next_obs already starts the new episode; the true last state is in infos.
            for i in np.flatnonzero(done):
                real_next_obs[i] = infos["final_obs"][i]
        buffer.add(obs, action, reward, real_next_obs, terminated, truncated)
        episode_return += reward
        episode_length += 1
        for i in np.flatnonzero(done):
            run.log(
                step,
                {
                    "charts/episodic_return": episode_return[i],
                    "charts/episodic_length": episode_length[i],
                },
            )
            episode_return[i], episode_length[i] = 0.0, 0
        obs = next_obs
        prev_step, step = step, step + args.num_envs

        if step > args.learning_starts:
            updates += 1
            actor_steps = args.policy_frequency if updates % args.policy_frequency == 0 else 0
            latest.update(update(
                buffer.sample(args.batch_size), actor, critic, critic_target, log_alpha,
                actor_opt, critic_opt, alpha_opt, target_entropy, args, actor_steps,
            ))  # fmt: skip
            if updates % args.target_network_frequency == 0:
                polyak_update(critic_target.parameters(), critic.parameters(), args.tau)
        if latest and (
            step // args.log_every > prev_step // args.log_every or step >= args.total_steps
        ):
            values = {f"losses/{k}": float(v) for k, v in latest.items()}
            check_finite(step, values, run)
            now = time.perf_counter()
            values["charts/steps_per_s"] = (step - tick_step) / (now - tick)
            tick, tick_step = now, step
            run.log(step, values)
        if step // args.eval_every > prev_step // args.eval_every or step >= args.total_steps:
            evaluate()
            if args.save_model:
                checkpoint()
        pbar.update(step - prev_step)
    pbar.close()
    envs.close()
    if not run.last_eval:
        evaluate()
    evaluator.close()
    return run.finish(step, {"resumed_from": resumed_from, "env_id": args.env_id})


if __name__ == "__main__":
    with friendly_errors():
        main(cli(Args))
