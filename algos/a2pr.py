"""A2PR: "Adaptive Advantage-Guided Policy Regularization for Offline Reinforcement Learning" (Liu et al., ICML 2024, arXiv 2405.19909).

TD3+BC with a state-value network V and a conditional VAE (the "augmented behaviour policy") trained only on
dataset actions with positive advantage A(s, x) = Q1(s, x) - V(s). The actor's behaviour-cloning target is
chosen per sample between the dataset action a and the VAE's reconstruction of the policy action,
a~ = VAE(s, pi(s)), whichever has the higher advantage; the BC weight is mask when either candidate has a
positive advantage and 0 when neither has:

    V:    L_V   = mean (V(s) - min(y_online, y))^2,   y = r + g nd min Q_targ(s', a'),  y_online the same with Q
    VAE:  L_VAE = mean w_v 1[A(s,a) > eps_A] (VAE(s,a) - a)^2 + 0.5 KL(q(z|s,a) || N(0, I))
    pi:   a* = a~ if A(s,a~) >= A(s,a) else a,    w = mask (1[A(s,a~) >= eps_A] OR 1[A(s,a) > eps_A])
          L_pi = -lambda mean Q1(s, pi(s)) + mean w (pi(s) - a*)^2,   lambda = alpha / mean |Q1(s, pi(s))|

a~ carries gradient: the BC term back-propagates through the VAE into pi (only pi's parameters are stepped).
The actor (3 x 256) and the twin critics and V (4 x 256) are deeper than TD3+BC's; the VAE is 750-wide with
latent dim 2 |A| and its own Adam at lr 1e-3. The critic is TD3's (target smoothing, clipped double-Q,
policy_freq 2, tau 0.005 for the actor and critic targets; V and the VAE have none).

Defaults reproduce the released code (ltlhuuu/A2PR @ f92a2a4): eps_A = 0, and its update order critic -> V ->
VAE -> actor, where the VAE mask and the actor use V(s) computed *before* V's step (one step stale) and Q1 of
the *updated* critic. `--preset` selects the per-dataset (alpha, vae_weight, mask, discount) of the authors'
READMEs and scripts (hopper-medium-v2: 2.5 / 1.0 / 0.4 / 0.995; halfcheetah-*: alpha 40; see PRESETS; the
released code's own default is mask 0.5, discount 0.99). Presets are missing for halfcheetah/walker2d-random,
expert and AntMaze datasets: they are not published (any run there uses "our settings").

Where paper and code differ, and what the flags select:
* Advantage threshold: the code fixes eps_A = 0; the paper names eps_A > 0 but its value is not pinned down by
  our reference, so `--adv-threshold` takes any value and the default stays 0. How eps_A enters the BC weight is
  our reading (the same threshold in both indicators, with the code's tie rules: `>` for a, `>=` for a~).
* V loss: `--value-loss expectile` uses the code's unused expectile loss (weight `--expectile` 0.8 where
  u = target - V(s) > 0, else 0.2; the code never calls it, so the sign convention is IQL's, our choice).
* Update order: `--value-timing fresh` recomputes V(s) after its step for the VAE mask and the actor. The
  paper's own Algorithm 1 order is not pinned down by our reference and is not implemented (no `--variant paper`).
* `--detach-vae-target` stops the BC gradient through a~ (an ablation, not the paper's).
* `--actor-hidden 256 256 --critic-hidden 256 256` compares with TD3+BC at equal depth (V follows the critic).
Cost per 1,000 updates vs TD3+BC (measured, shipped data, batch 256): one CPU thread ~86-94 s vs ~10-12 s
(~8x; the FLOP ratio is ~10.7x, mostly the 750-wide VAE run twice per actor step); on an H100 ~13 s vs ~4 s
(~3.3x: both are bound by kernel launches there, not arithmetic).
Evaluation follows ocrl's shared protocol (10 episodes every 5,000 updates, as the original's schedule; episode
seeds from --seed, where the original seeds its env with seed + 100 and defaults to seed 1024).

    python algos/a2pr.py --total-steps 20000            # shipped hopper data, ~30 min on a 2-core CPU
    python algos/a2pr.py --dataset hopper-medium-v2 --preset hopper-medium-v2
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
from ocrl.nets import MLP, ConditionalVAE, CriticEnsemble, DeterministicActor, polyak_update


def _setting(alpha: float, vae_weight: float, mask: float, discount: float) -> dict:
    return {"alpha": alpha, "vae_weight": vae_weight, "mask": mask, "discount": discount}


PRESETS: dict[str, dict] = {
    # (alpha, vae_weight, mask, discount) from the authors' README (HEAD), initial README, READMEv0 and
    # run.sh; READMEv0 was a working note, so its rows are the best available, not certified.
    "hopper-random-v2": _setting(2.5, 1.5, 1.5, 0.995),  # initial README, READMEv0
    "hopper-medium-v2": _setting(2.5, 1.0, 0.4, 0.995),  # README (HEAD), run.sh
    "hopper-medium-replay-v2": _setting(2.5, 1.5, 0.5, 0.99),  # READMEv0
    "hopper-medium-expert-v2": _setting(2.5, 1.0, 4.0, 0.99),  # READMEv0
    "halfcheetah-medium-v2": _setting(40.0, 1.0, 1.0, 0.99),  # README (HEAD)
    "halfcheetah-medium-replay-v2": _setting(40.0, 1.5, 0.8, 0.995),  # READMEv0
    # READMEv0; mask 10.0 before c1fe2a8
    "halfcheetah-medium-expert-v2": _setting(40.0, 1.0, 15.0, 0.99),
    "walker2d-medium-v2": _setting(2.5, 1.5, 1.0, 0.99),  # README (HEAD)
    "walker2d-medium-replay-v2": _setting(2.5, 1.5, 1.2, 0.995),  # READMEv0 (1.5 also noted)
    "walker2d-medium-expert-v2": _setting(2.5, 1.0, 0.8, 0.99),  # READMEv0 (0.995 also tried)
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args:
    dataset: str = "ocrl/hopper/medium-v0"
    """D4RL name (hopper-medium-v2), path to a D4RL .hdf5 file or Minari folder, or a Minari id; the default is shipped"""
    env_id: str | None = None
    """evaluation environment; by default the one the dataset names (D4RL tasks evaluate on Gymnasium -v4)"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """per-dataset alpha / vae_weight / mask / discount of the authors' READMEs (hopper-medium-v2: 2.5/1.0/0.4/0.995, halfcheetah-*: alpha 40; random-other, expert and AntMaze are unpublished). Explicit flags override them; --dataset alone changes none"""
    seed: int = 0
    """seed of torch, numpy and the evaluation episodes (the original's default is 1024)"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    total_steps: int = 1_000_000
    """gradient updates (critic steps); the paper trains for 1M"""
    batch_size: int = 256
    """transitions per update, sampled uniformly with replacement"""
    discount: float = 0.99
    """discount factor gamma (the code's default; several presets use 0.995)"""
    tau: float = 0.005
    """Polyak rate of the actor and critic targets"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics"""
    value_lr: float = 3e-4
    """Adam learning rate of the value network V"""
    vae_lr: float = 1e-3
    """Adam learning rate of the VAE (the code passes none: Adam's default 1e-3)"""
    actor_hidden: tuple[int, ...] = (256, 256, 256)
    """hidden layer widths of the actor (A2PR: 3 x 256; TD3+BC: 2 x 256)"""
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """hidden layer widths of each critic and of V (A2PR: 4 x 256; TD3+BC: 2 x 256)"""
    vae_hidden: tuple[int, ...] = (750, 750)
    """hidden layer widths of the VAE's encoder and decoder"""
    latent_dim: int | None = None
    """VAE latent size; default 2 x action dim, as the code"""
    policy_noise: float = 0.2
    """std of the target-policy smoothing noise, times the action scale"""
    noise_clip: float = 0.5
    """clip of the target-policy smoothing noise, times the action scale"""
    policy_freq: int = 2
    """actor and target updates happen every policy_freq critic updates"""
    alpha: float = 2.5
    """weight of the Q term against the BC term (lambda = alpha / mean|Q|)"""
    mask: float = 0.5
    """BC weight w = mask * (1[A(s,a~) >= eps_A] OR 1[A(s,a) > eps_A]), in {0, mask} (the code's default 0.5)"""
    vae_weight: float = 1.0
    """weight of the VAE's masked reconstruction loss"""
    adv_threshold: float = 0.0
    """eps_A: the advantage above which a sample counts as positive; the code's 0 (the paper's value is not pinned down here)"""
    value_loss: Literal["mse-min-target", "expectile"] = "mse-min-target"
    """V's loss: the code's MSE to min(y_online, y), or the code's unused expectile loss on the same target"""
    expectile: float = 0.8
    """expectile of --value-loss expectile"""
    value_timing: Literal["stale", "fresh"] = "stale"
    """V(s) used by the VAE mask and the actor: 'stale' = from before V's step (the code), 'fresh' = recomputed after it"""
    detach_vae_target: bool = False
    """stop the BC gradient through a~ = VAE(s, pi(s)) (an ablation; the code back-propagates through it)"""
    normalize_obs: bool = True
    """standardise observations with dataset mean and std (+1e-3)"""
    truncated_last: Literal["drop", "keep"] = "drop"
    """'drop' reproduces D4RL's qlearning_dataset; 'keep' also trains on timeout transitions using stored next observations"""
    eval_every: int = 5_000
    """updates between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation, run in parallel"""
    log_every: int = 1_000
    """updates between loss logs (the only host synchronisations of the loop); a2pr/* values are interval means"""
    save_model: bool = False
    """write checkpoint.pt (atomically) at every evaluation and at the end"""
    resume: str | None = None
    """run folder to continue from its checkpoint.pt (its config.json is reused, except total_steps and device)"""
    compile: bool = False
    """wrap the update in torch.compile (off by default: on a CPU compile time dominates short runs)"""
    run_dir: str | None = None
    """run folder; default runs/a2pr__<dataset>__s<seed>__<time>"""
    progress: bool = True
    """show a progress bar"""


def select_target(
    adv_data: torch.Tensor,
    adv_vae: torch.Tensor,
    data_action: torch.Tensor,
    vae_action: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the BC target with the higher advantage (ties go to the VAE action) and the bool 'VAE chosen' (B,)."""
    use_vae = adv_vae >= adv_data
    return torch.where(use_vae.unsqueeze(-1), vae_action, data_action), use_vae


def bc_weights(
    adv_data: torch.Tensor, adv_vae: torch.Tensor, mask: float, threshold: float = 0.0
) -> torch.Tensor:
    """w = mask * (1[A(s,a~) >= eps_A] OR 1[A(s,a) > eps_A]) in {0, mask}: note the two tie rules."""
    # The released code adds two bool tensors, which PyTorch evaluates as a logical OR (never 2 mask).
    return mask * torch.logical_or(adv_vae >= threshold, adv_data > threshold).float()


def positive_advantage(adv_data: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """The VAE's reconstruction mask 1[A(s,a) > eps_A] as floats (B,)."""
    return (adv_data > threshold).float()


def a2pr_update(
    batch: Batch,
    actor: DeterministicActor,
    actor_target: DeterministicActor,
    critic: CriticEnsemble,
    critic_target: CriticEnsemble,
    value: MLP,
    vae: ConditionalVAE,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    value_opt: torch.optim.Optimizer,
    vae_opt: torch.optim.Optimizer,
    args: Args,
    update_actor: bool,
) -> dict[str, torch.Tensor]:
    """One A2PR iteration in the code's order: critic, V, VAE, and on actor iterations the actor and the targets."""
    obs, actions, rewards, next_obs, dones = batch
    scale = actor.action_scale
    not_done = 1.0 - dones

    # 1. Critic: TD3's.
    with torch.no_grad():
        noise = (
            torch.randn_like(actions)
            .mul_(args.policy_noise)
            .clamp_(-args.noise_clip, args.noise_clip)
        )
        low, high = actor.action_bias - scale, actor.action_bias + scale
        next_actions = torch.clamp(actor_target(next_obs).addcmul_(noise, scale), low, high)
        target_q = critic_target(next_obs, next_actions).min(dim=0).values
        target = torch.addcmul(rewards, not_done, target_q, value=args.discount)
    q = critic(obs, actions)  # (2, B)
    critic_loss = F.mse_loss(q, target.expand_as(q), reduction="sum") / q.shape[1]
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()

    # 2. V: regress onto min(online, target) Bellman targets of the dataset action, with the updated critic.
    v = value(obs).squeeze(-1)
    with torch.no_grad():
        online_q = critic(next_obs, next_actions).min(dim=0).values
        value_target = torch.min(
            torch.addcmul(rewards, not_done, online_q, value=args.discount), target
        )
    if args.value_loss == "expectile":
        diff = value_target - v
        weight = torch.where(diff > 0, args.expectile, 1.0 - args.expectile)
        value_loss = (weight * diff.square()).mean()
    else:
        value_loss = F.mse_loss(v, value_target)
    value_opt.zero_grad(set_to_none=True)
    value_loss.backward()
    value_opt.step()
    if args.value_timing == "fresh":
        with torch.no_grad():
            v_s = value(obs).squeeze(-1)
    else:
        v_s = v.detach()  # the code's one-step-stale V(s)

    # 3. VAE on positive-advantage dataset actions (reconstruction masked; KL on every sample).
    with torch.no_grad():
        q_data = critic.member(obs, actions, 0)
        adv_data = q_data - v_s
        positive = positive_advantage(adv_data, args.adv_threshold)
    recon, mean, std = vae(obs, actions)
    recon_loss = (args.vae_weight * positive.unsqueeze(-1) * (recon - actions).square()).mean()
    kl = -0.5 * (1.0 + torch.log(std.square()) - mean.square() - std.square()).mean()
    vae_loss = recon_loss + 0.5 * kl
    vae_opt.zero_grad(set_to_none=True)
    vae_loss.backward()
    vae_opt.step()
    metrics = {
        "critic_loss": critic_loss.detach(),
        "value_loss": value_loss.detach(),
        "vae_loss": vae_loss.detach(),
        "q_mean": q.detach().mean(),
        "a2pr/positive_adv_fraction": positive.mean(),
        "a2pr/v_mean": v_s.mean(),
        "a2pr/q_data_mean": q_data.mean(),
        "a2pr/v_target_mean": value_target.mean(),
        "a2pr/adv_data_mean": adv_data.mean(),
        "a2pr/vae_recon_loss": recon_loss.detach(),
        "a2pr/vae_kl": kl.detach(),
    }

    if update_actor:
        # 4. Actor: BC target chosen per sample by advantage between a and a~ = VAE(s, pi(s)).
        pi = actor(obs)
        q_pi = critic.member(obs, pi, 0)
        q_pi_abs = q_pi.abs().mean().detach()
        lmbda = args.alpha / q_pi_abs
        vae_action = vae(obs, pi)[0]
        if args.detach_vae_target:
            vae_action = vae_action.detach()
        with torch.no_grad():
            adv_vae = critic.member(obs, vae_action.detach(), 0) - v_s
        bc_target, use_vae = select_target(adv_data, adv_vae, actions, vae_action)
        weight = bc_weights(adv_data, adv_vae, args.mask, args.adv_threshold)
        bc_loss = (weight.unsqueeze(-1) * (pi - bc_target).square()).mean()
        actor_loss = -lmbda * q_pi.mean() + bc_loss
        actor_params = list(actor.parameters())
        # Gradients for the actor only (the code's VAE and critic gradients are zeroed before use).
        grads = torch.autograd.grad(actor_loss, actor_params)
        for p, g in zip(actor_params, grads, strict=True):
            p.grad = g
        actor_opt.step()
        polyak_update(critic_target.parameters(), critic.parameters(), args.tau)
        polyak_update(actor_target.parameters(), actor.parameters(), args.tau)
        with torch.no_grad():
            metrics.update(
                actor_loss=actor_loss.detach(),
                bc_loss=bc_loss.detach(),
                lmbda=lmbda.detach(),
                **{
                    "a2pr/vae_target_fraction": use_vae.float().mean(),
                    "a2pr/weight_zero_fraction": (weight == 0).float().mean(),
                    "a2pr/adv_vae_mean": adv_vae.mean(),
                    "a2pr/q_pi_abs_mean": q_pi_abs,
                    "a2pr/vae_policy_distance": (vae_action - pi).norm(dim=1).mean(),
                },
            )
    return metrics


def main(args: Args) -> dict:
    if args.resume:
        args = resume_args(args)
    device = pick_device(args.device)
    np_rng = seed_everything(args.seed)

    if args.preset is not None and args.preset != args.dataset:
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
    obs_dim, act_dim = dataset.obs_dim, dataset.act_dim

    actor = DeterministicActor(obs_dim, act_dim, args.actor_hidden, action_low, action_high).to(
        device
    )
    critic = CriticEnsemble(obs_dim, act_dim, args.critic_hidden, num_critics=2).to(device)
    value = MLP(obs_dim, 1, args.critic_hidden).to(device)
    vae = ConditionalVAE(
        obs_dim, act_dim, args.latent_dim, args.vae_hidden, action_low, action_high
    ).to(device)
    actor_target, critic_target = copy.deepcopy(actor), copy.deepcopy(critic)
    for p in (*actor_target.parameters(), *critic_target.parameters()):
        p.requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, fused=True)
    value_opt = torch.optim.Adam(value.parameters(), lr=args.value_lr, fused=True)
    vae_opt = torch.optim.Adam(vae.parameters(), lr=args.vae_lr, fused=True)

    run = Run("a2pr", dataset.name, args.seed, args, args.run_dir)
    parts = {
        "actor": actor, "critic": critic, "actor_target": actor_target, "critic_target": critic_target,
        "value": value, "vae": vae, "actor_opt": actor_opt, "critic_opt": critic_opt,
        "value_opt": value_opt, "vae_opt": vae_opt,
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
    update = torch.compile(a2pr_update) if args.compile else a2pr_update

    def evaluate() -> None:
        pbar.set_postfix_str(run.log_eval(step, evaluator(actor.act)))

    pbar = tqdm(
        total=args.total_steps,
        initial=step,
        desc="a2pr",
        disable=not args.progress,
        dynamic_ncols=True,
    )
    tick, tick_step = time.perf_counter(), step
    latest: dict[str, torch.Tensor] = {}  # device tensors; read on the host only at log steps
    sums: dict[str, torch.Tensor] = {}  # a2pr/* statistics, averaged over the log interval
    counts: dict[str, int] = {}
    while step < args.total_steps:
        metrics = update(
            buffer.sample(args.batch_size), actor, actor_target, critic, critic_target, value, vae,
            actor_opt, critic_opt, value_opt, vae_opt, args, step % args.policy_freq == 0,
        )  # fmt: skip
        for key, val in metrics.items():
            if key.startswith("a2pr/"):
                sums[key] = sums[key] + val if key in sums else val
                counts[key] = counts.get(key, 0) + 1
            else:
                latest[key] = val
        step += 1
        if step % args.log_every == 0 or step == args.total_steps:
            values = {f"losses/{k}": float(v) for k, v in latest.items()}
            values.update({k: float(v) / counts[k] for k, v in sums.items()})
            check_finite(step, values, run)
            sums, counts = {}, {}
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
    evaluator.close()
    if not run.last_eval:
        evaluate()
    return run.finish(
        step, {"resumed_from": resumed_from, "dataset": dataset.name, "env_id": env_id}
    )


if __name__ == "__main__":
    with friendly_errors():
        main(cli(Args, PRESETS))
