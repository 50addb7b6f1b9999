"""EXPO: "Stable Reinforcement Learning with Expressive Policies" (Dong et al., ICLR 2026, arXiv 2507.07986),
and its base RLPD: "Efficient Online Reinforcement Learning with Offline Data" (Ball et al., 2023, arXiv
2302.02948) as `--policy gaussian`.

RLPD is SAC with E = 10 LayerNorm critics (one batched ensemble), a target that is the min over a random
subset of `num_min_qs` target critics, G = `utd_ratio` = 20 critic steps per environment step, and every
minibatch half offline data, half online replay (interleaved, as RLPD's combine()). EXPO keeps the
critic and replaces the actor by three parts:

    base policy  pi_base: a DDPM over actions (T = 10, VP betas, nets.diffusion.DDPM), trained only by
                 imitation of the mixed batch:  L_IL = E ||eps - eps_psi(sqrt(ahat_t) a + sqrt(1 - ahat_t) eps, s, t)||^2
    edit policy  a_hat = beta_edit * tanh(u), u ~ N(mu(s, a), sigma(s, a)), on the batch's own action a:
                 L_edit = E[alpha * log pi_edit(a_hat | s, a) - mean_k Q_k(s, a + a_hat)],
                 log pi_edit = log pi_tanh(tanh u) - |A| log beta_edit
    OTF policy   pi_OTF(s) = argmax over {a_1..a_N} u {a_1 + a_hat_1 .. a_K + a_hat_K} of min_{k in S} Q'_k(s, .),
                 a_i ~ pi_base(s), S a fresh random subset of the target critics on every call.

The same OTF procedure picks the environment action (EMA diffusion weights, psi' <- 0.001 psi + 0.999 psi'),
the evaluation action (the same, stochastic) and the TD-backup action (online diffusion weights):

    y       = r + discount * (1 - terminal) * min_{k in S'} Q'_k(s', pi_OTF(s')),   S' drawn independently of S
    L_Q     = mean over the E critics and the batch of (Q_k(s, a) - y)^2,           Polyak tau after each step
    L_alpha = alpha * (H - H_target),  H = -E[log pi_edit],  alpha = exp(log_alpha) starting at 1

On the last of the G minibatches only: one diffusion step (AdamW, weight decay 1e-4, lr cosine-decayed to 0
over 3M steps; then the EMA), one edit step (Adam on the same cosine schedule), one temperature step (Adam).
The online replay stores the executed, unclipped OTF action, so imitation distils the edits and the argmax
into the base policy.

`--policy gaussian` is RLPD (runs named rlpd__...): the same critic, data mixing and schedule, a tanh-Gaussian
actor, L_pi = E[alpha log pi(a|s) - mean_k Q_k(s, a)], a' ~ pi(s'), temperature toward -|A|/2, mean-action eval.
Defaults are the released scripts' (pd-perry/EXPO @ b7ed710, scripts/expo_*); faithful-vs-fixed flags
(--target-entropy, --clip-edited-actions, --backup-entropy), AntMaze and Adroit runs: docs/algos/expo.md.
`--precision bf16`: bf16 autocast of the networks' hidden layers in the updates and the OTF selection; outputs,
DDPM noise maths, losses, weights, optimiser states and the EMA stay fp32 (details: docs/algos/expo.md).
EXPO's policy.pt2 is a stochastic acting program (the OTF choice), written by CPU runs only (docs/runs.md,
Policy files).

    python algos/expo.py --dataset ocrl/hopper/medium-v0 --total-steps 50000
    python algos/expo.py --dataset ocrl/hopper/medium-v0 --policy gaussian --total-steps 50000
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch

from ocrl.data import Batch, ReplayBuffer, mixed_minibatches
from ocrl.envs import TrainingEnvs, load_offline_task, make_env, reward_bias
from ocrl.experiment import Acting, Agent, TrainingLoop, start_run
from ocrl.experiment.args import OnlineArgs, PrecisionArgs, RunArgs, TargetArgs
from ocrl.experiment.flags import UsageError, check_args, run_cli
from ocrl.nets import CriticEnsemble, TanhNormalPolicy, autocast, polyak_update, xavier_init
from ocrl.nets.core import compile_with_cuda_graphs, gradient_step
from ocrl.nets.ddpm import DDPM, LNResNetEpsNet, imitation_training
from ocrl.nets.diffusion import lr_factor

PRESETS: dict[str, dict] = {
    # scripts/expo_antmaze/*.sh (online from scratch): one random target critic, beta_edit 0.05, no
    # entropy backup, 300k steps, and RLPD's AntMaze reward - 1 whatever the dataset is called.
    "antmaze": dict(num_min_qs=1, backup_entropy=False, hidden=(256, 256, 256), edit_action_scale=0.05,
                    n_samples=8, n_edit_samples=8, utd_ratio=20, learning_starts=5_000,
                    total_steps=300_000, reward_bias=-1.0),
}  # fmt: skip
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(TargetArgs, RunArgs, PrecisionArgs, OnlineArgs):
    dataset: str = "ocrl/hopper/medium-v0"
    """offline dataset: an ocrl/Minari id (e.g. D4RL/antmaze/large-diverse-v1), a D4RL-style HDF5 file or a Minari folder"""
    env_id: str | None = None
    """Gymnasium environment to train and evaluate in (default: the dataset's)"""
    preset: PresetName | None = None  # type: ignore[valid-type]
    """'antmaze': the AntMaze scripts' settings (subset of 1, reward - 1); explicit flags override it"""
    seed: int = 1
    """seed of torch, numpy, the training env and the evaluation episodes"""
    policy: Literal["expo", "gaussian"] = "expo"
    """'expo' (diffusion base + edit policy + OTF max-Q) or 'gaussian' (RLPD's tanh-Gaussian actor)"""
    total_steps: int = 300_000
    """environment steps (the AntMaze scripts' max_steps)"""
    buffer_size: int = 1_000_000
    """online replay capacity (at most total_steps are allocated)"""
    reward_bias: Literal["auto"] | float = "auto"
    """added to every minibatch's rewards, offline and online; 'auto': -1 for AntMaze (dataset or env name), else 0"""
    batch_size: int = 256
    """transitions per gradient step: half offline, half online (must be even)"""
    utd_ratio: int = 20
    """critic steps per environment step (G); the policy and temperature take one"""
    learning_starts: int = 5_000
    """uniformly random actions for this many steps; updates start after it (pen-binary: 0)"""
    pretrain_steps: int = 0
    """offline imitation steps of the diffusion base before the online phase (EXPO only)"""
    num_qs: int = 10
    """critics in the ensemble (E)"""
    num_min_qs: int = 2
    """size of the random critic subset whose min is the target and the OTF score (AntMaze: 1)"""
    hidden: tuple[int, ...] = (256, 256, 256)
    """hidden widths of the critics, the edit policy and the gaussian actor"""
    critic_layer_norm: bool = True
    """LayerNorm after each critic hidden Dense, before the ReLU"""
    q_lr: float = 3e-4
    """Adam learning rate of the critics"""
    policy_lr: float = 3e-4
    """peak learning rate of the diffusion and edit policies (cosine-decayed), or of the gaussian actor"""
    alpha_lr: float = 3e-4
    """Adam learning rate of log alpha"""
    lr_decay_steps: int = 3_000_000
    """policy updates over which the EXPO policy learning rates decay to 0 (cosine)"""
    diffusion_weight_decay: float = 1e-4
    """AdamW weight decay of the diffusion policy (optax.adamw's default, on every parameter)"""
    init_temperature: float = 1.0
    """initial alpha"""
    target_entropy: Literal["code", "adjusted", "port"] = "code"
    """'code' -|A|/2, 'adjusted' -|A|/2 + |A| log beta_edit, 'port' -|A| + |A| log 2 beta_edit"""
    backup_entropy: bool = False
    """an entropy term in the backup (EXPO: section 4.3's softmax-over-candidates density; RLPD: SAC's)"""
    sampling_beta: float = 1.0
    """inverse temperature of the candidate softmax with --backup-entropy (EXPO)"""
    n_samples: int = 8
    """base diffusion samples per OTF choice (N)"""
    n_edit_samples: int = 8
    """edited candidates per OTF choice (K <= N), edits of the first K base samples"""
    edit_action_scale: float = 0.05
    """beta_edit: the edit lies in [-beta_edit, beta_edit]^|A| (pen-binary: 0.7)"""
    edit_dropout: float = 0.0
    """dropout of the edit policy's MLP in its update (pen-binary: 0.1)"""
    clip_edited_actions: bool = False
    """clip edited actions to [-1, 1] in the learner, the candidates and the replay (the code does not)"""
    diffusion_steps: int = 10
    """T, steps of the DDPM chain"""
    diffusion_width: int = 256
    """width of the epsilon-network's residual trunk"""
    diffusion_blocks: int = 3
    """LN-ResNet blocks of the epsilon-network"""
    time_dim: int = 128
    """Fourier time features of the epsilon-network (its conditioning MLP is 2 x time_dim wide)"""
    actor_tau: float = 0.001
    """EMA rate of the diffusion weights used for acting and evaluation"""
    compile: bool = False
    """torch.compile the OTF candidate selection (the T-step chain of the N + K candidates and their scores; CUDA graphs on CUDA)"""


def target_entropy(args: Args, act_dim: int) -> float:
    """H_target of the temperature: --target-entropy code, adjusted or port."""
    beta = args.edit_action_scale
    return {"code": -act_dim / 2, "adjusted": -act_dim / 2 + act_dim * math.log(beta),
            "port": -act_dim + act_dim * math.log(2 * beta)}[args.target_entropy]  # fmt: skip


class EXPO(Agent):
    """The critics and targets, the diffusion base (+ EMA) and edit policy or the gaussian actor, log alpha, optimisers."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, device):
        self.args, self.act_dim = args, act_dim
        self.expo = args.policy == "expo"
        self.critic = CriticEnsemble(
            obs_dim, act_dim, args.hidden, args.num_qs, args.critic_layer_norm, layer_norm_eps=1e-6
        )
        xavier_init(self.critic.net).to(device)  # Flax's init: xavier-uniform kernels, zero biases
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=args.q_lr)
        decay, lr = lr_factor("cosine", args.lr_decay_steps), args.policy_lr
        if self.expo:
            eps_net = LNResNetEpsNet(obs_dim, act_dim, args.diffusion_width, args.diffusion_blocks,
                                     args.time_dim)  # fmt: skip
            self.diffusion = DDPM(eps_net, act_dim, args.diffusion_steps).to(device)
            self.diffusion_ema, self.diffusion_opt, self.diffusion_lr = imitation_training(
                self.diffusion, lr, args.diffusion_weight_decay, args.lr_decay_steps, args.actor_tau
            )
            self.edit = TanhNormalPolicy(obs_dim + act_dim, act_dim, args.hidden,
                                         args.edit_action_scale, args.edit_dropout).to(device)  # fmt: skip
            self.edit_opt = torch.optim.Adam(self.edit.parameters(), lr)
            self.edit_lr = torch.optim.lr_scheduler.LambdaLR(self.edit_opt, decay)
        else:
            self.actor = TanhNormalPolicy(obs_dim, act_dim, args.hidden).to(device)
            self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr)
        self.target_entropy = target_entropy(args, act_dim)
        log_alpha = math.log(args.init_temperature)
        self.log_alpha = torch.tensor(log_alpha, device=device, requires_grad=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=args.alpha_lr)
        # On CUDA the T-step chain is T small launches per call, 3 per critic step: CUDA graphs replay them as one.
        self.select = compile_with_cuda_graphs(self.otf, device) if args.compile else self.otf
        self.seen: dict[str, torch.Tensor] = {}  # the last step's intermediates, for diagnostics

    def subset(self) -> torch.Tensor:
        """A fresh random subset of num_min_qs critic indices, drawn without replacement."""
        device = self.log_alpha.device
        return torch.randperm(self.args.num_qs, device=device)[: self.args.num_min_qs]

    @torch.no_grad()
    def otf(
        self, obs: torch.Tensor, diffusion: DDPM
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The OTF candidates of each state: (candidates (B, N+K, A), their subset-min target Q (B, N+K), base samples)."""
        args, (b, a) = self.args, (obs.shape[0], self.act_dim)
        n, k = args.n_samples, args.n_edit_samples
        # Inside the (compiled) function, so that torch.compile and its CUDA graphs capture the casts.
        with autocast(args.precision, obs.device):
            base = diffusion.sample(obs.repeat_interleave(n, 0)).view(b, n, a)
            candidates = base
            if k > 0:
                edit_in = torch.cat([obs.repeat_interleave(k, 0), base[:, :k].reshape(b * k, a)], -1)  # fmt: skip
                edited = base[:, :k] + self.edit(edit_in)[0].view(b, k, a)
                if args.clip_edited_actions:
                    edited = edited.clamp(-1.0, 1.0)
                candidates = torch.cat([base, edited], dim=1)
            states = obs.repeat_interleave(n + k, 0)
            q = self.critic_target.members(states, candidates.reshape(-1, a), self.subset())
        return candidates, q.min(dim=0).values.view(b, n + k), base

    @torch.no_grad()
    def act(self, obs: torch.Tensor, record: bool = True) -> torch.Tensor:
        """The environment (and evaluation) action: the OTF argmax with the EMA diffusion, or a ~ pi(s)."""
        if not self.expo:
            return self.actor(obs)[0]
        candidates, q, base = self.select(obs, self.diffusion_ema.ema_model)
        best = q.argmax(dim=1)
        action = candidates[torch.arange(obs.shape[0], device=obs.device), best]
        if record:
            self.seen.update(edited_fraction_act=(best >= self.args.n_samples).float().mean(),
                             chosen_base_distance=(base - action[:, None]).norm(dim=-1).mean(),
                             action_outside_fraction=(action.abs() > 1.0).any(dim=-1).float().mean())  # fmt: skip
        return action

    @torch.no_grad()
    def act_eval(self, obs: torch.Tensor) -> torch.Tensor:
        """Evaluation: EXPO acts as in training (stochastic OTF); RLPD takes the mean action."""
        return self.act(obs, record=False) if self.expo else self.actor(obs)[2]

    def critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One TD step on the minibatch with the OTF (or pi) backup action, then the Polyak update."""
        args = self.args
        obs, actions, rewards, next_obs, terminals = batch
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad(), autocast(args.precision, obs.device):
            entropy_term = torch.zeros_like(rewards)
            if self.expo:
                candidates, q_sel, _ = self.select(next_obs, self.diffusion)
                rows = torch.arange(obs.shape[0], device=obs.device)
                if args.backup_entropy:
                    logits = args.sampling_beta * q_sel
                    best = torch.multinomial(logits.softmax(dim=1), 1).squeeze(1)
                    entropy_term = alpha * logits.log_softmax(dim=1)[rows, best]
                else:
                    best = q_sel.argmax(dim=1)
                next_actions = candidates[rows, best]
                self.seen["edited_fraction_backup"] = (best >= args.n_samples).float().mean()
            else:
                next_actions, next_log_prob, _ = self.actor(next_obs)
                if args.backup_entropy:
                    entropy_term = alpha * next_log_prob
            next_all = self.critic_target(next_obs, next_actions)  # (E, B)
            next_q = next_all[self.subset()].min(dim=0).values  # S', independent of the OTF's S
            target = rewards + args.discount * (1.0 - terminals) * (next_q - entropy_term)
        with autocast(args.precision, obs.device):
            q = self.critic(obs, actions)
        critic_loss = ((q - target) ** 2).mean()
        gradient_step(self.critic_opt, critic_loss)
        polyak_update(self.critic_target.parameters(), self.critic.parameters(), args.tau)
        self.seen.update(
            q_mean=q.detach().mean(), q_ensemble_std=q.detach().std(dim=0).mean(), target_mean=target.mean(),
            target_mean_minus_subset_min=(next_all.mean(dim=0) - next_q).mean(),
        )  # fmt: skip
        return {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()}

    def diffusion_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One imitation step of the base policy on the batch's (s, a) (AdamW, cosine lr), then the EMA."""
        with autocast(self.args.precision, batch.observations.device):
            losses = self.diffusion.sample_losses(batch.observations, batch.actions)
        bc_loss = losses.mean()
        gradient_step(self.diffusion_opt, bc_loss, scheduler=self.diffusion_lr)
        self.diffusion_ema.update()
        # Mixed minibatches interleave offline (even rows) and online (odd rows) transitions.
        self.seen.update(
            bc_loss_offline=losses[0::2].detach().mean(), bc_loss_online=losses[1::2].detach().mean(),
        )  # fmt: skip
        return {"bc_loss": bc_loss.detach()}

    def policy_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The edit (or gaussian actor) step on the minibatch against the mean of all critics, then the temperature step."""
        obs, actions = batch.observations, batch.actions
        alpha = self.log_alpha.exp().detach()
        with autocast(self.args.precision, obs.device):
            if self.expo:
                edit, log_prob, _ = self.edit(torch.cat([obs, actions], -1), train=True)
                new_actions = actions + edit
                if self.args.clip_edited_actions:
                    new_actions = new_actions.clamp(-1.0, 1.0)
                opt, lr, name = self.edit_opt, self.edit_lr, "edit_loss"
                self.seen["edit_magnitude"] = edit.detach().norm(dim=-1).mean()
            else:
                new_actions, log_prob, _ = self.actor(obs)
                opt, lr, name = self.actor_opt, None, "actor_loss"
            q_new = self.critic(obs, new_actions).mean(dim=0)
        loss = (alpha * log_prob - q_new).mean()
        # Gradients for the policy only: the critics' weight gradients are not needed here.
        gradient_step(opt, loss, own_only=True, scheduler=lr)
        entropy = -log_prob.detach().mean()
        alpha_loss = self.log_alpha.exp() * (entropy - self.target_entropy)
        gradient_step(self.alpha_opt, alpha_loss)
        return {
            name: loss.detach(), "entropy": entropy, "alpha": alpha, "alpha_loss": alpha_loss.detach(),
        }  # fmt: skip

    def update(self, minibatches: list[Batch]) -> dict[str, torch.Tensor]:
        """One environment step's updates: a critic step on each of the G minibatches, then on the last one the
        diffusion imitation step (EXPO), the edit or actor step and the temperature step."""
        edited = []
        for batch in minibatches:
            metrics = self.critic_step(batch)
            if self.expo:
                edited.append(self.seen["edited_fraction_backup"])
        if self.expo:
            self.seen["edited_fraction_backup"] = torch.stack(edited).mean()
            metrics |= self.diffusion_step(minibatches[-1])
        return metrics | self.policy_step(minibatches[-1])

    @torch.no_grad()
    def diagnostics(self) -> dict[str, torch.Tensor]:
        """The reference's checks (interval means): log alpha, OTF edited fractions, edit size, Q statistics, imitation loss by source."""
        stats = {f"expo/{k}": v for k, v in self.seen.items()}
        return stats | {"expo/log_alpha": self.log_alpha.detach().clone()}


def check_expo_args(args: Args) -> None:
    """This file's flag checks, after ocrl's: counts, the subset, the candidates, beta_edit and the variants."""
    check_args(args, ("total_steps", "batch_size", "eval_every", "eval_episodes", "log_every",
                      "buffer_size", "utd_ratio", "num_qs", "num_min_qs", "n_samples",
                      "diffusion_steps", "lr_decay_steps"),
               non_negative=("learning_starts", "pretrain_steps", "n_edit_samples"))  # fmt: skip
    gaussian = args.policy == "gaussian"
    for bad, problem in (
        (args.batch_size % 2, f"--batch-size {args.batch_size}: must be even (half offline, half online)"),
        (args.num_min_qs > args.num_qs, f"--num-min-qs {args.num_min_qs}: at most --num-qs ({args.num_qs})"),
        (args.n_edit_samples > args.n_samples, f"--n-edit-samples {args.n_edit_samples}: edits the first K "
                                               f"base samples, so at most --n-samples ({args.n_samples})"),
        (not args.edit_action_scale > 0, f"--edit-action-scale {args.edit_action_scale}: must be > 0"),
        (args.init_temperature <= 0, f"--init-temperature {args.init_temperature}: must be > 0"),
        (not 0 <= args.edit_dropout < 1, f"--edit-dropout {args.edit_dropout}: must lie in [0, 1)"),
        (gaussian and args.target_entropy != "code",
         f"--target-entropy {args.target_entropy}: depends on beta_edit, so needs --policy expo"),
        (gaussian and args.pretrain_steps, "--pretrain-steps: pre-trains the diffusion base, so needs --policy expo"),
    ):  # fmt: skip
        if bad:
            raise UsageError(problem)


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check_expo_args)
    task = load_offline_task(args.dataset, args.env_id, device=device, normalize_obs=False)
    # The policy works in [-1, 1]^A (RLPD's rescale_actions); dataset actions clipped to +-(1 - 1e-5).
    off, unit = task.buffer, task.unit_actions(margin=1e-5)
    bias = reward_bias(args.reward_bias, task.dataset.name, task.env_id)
    print(f"reward bias: {bias:+g} on every minibatch (--reward-bias {args.reward_bias})")
    # One SAME_STEP autoreset env, seeded; a checkpoint part, so --resume continues the episode.
    envs = TrainingEnvs(lambda: make_env(task.env_id, **task.env_kwargs), 1, args.seed)
    agent = EXPO(args, task.obs_dim, task.act_dim, device)
    capacity = min(args.buffer_size, args.total_steps)
    online = ReplayBuffer(task.obs_dim, task.act_dim, capacity, device)
    evaluator = task.evaluator(args.eval_episodes, args.seed, device)
    eval_policy = unit.acting(agent.act_eval)  # in the env's action range

    loop = TrainingLoop(
        "expo" if agent.expo else "rlpd", task.dataset.name, args,
        agent.parts() | {"online": online, "envs": envs}, np_rng, rate_tag="charts/steps_per_s",
        policy=Acting(function=eval_policy, stochastic=agent.expo),
    )  # fmt: skip
    if agent.expo and loop.step == 0 and args.pretrain_steps:
        for _ in range(args.pretrain_steps):  # the diffusion base only, as the original
            pretrain = agent.diffusion_step(off.sample(args.batch_size))
        loop.run.log(0, {"losses/pretrain_bc_loss": float(pretrain["bc_loss"])})
    for step in loop.steps():
        # Warm-up samples, then the OTF choice; its unclipped action goes into the replay, as the original's.
        policy = agent.act if step >= args.learning_starts else None
        env_action, action = envs.act(policy, device, unit)
        envs.step_into(online, env_action, loop.run, step, stored_action=action)

        if loop.step > args.learning_starts:
            batches = mixed_minibatches(off, online, args.batch_size, args.utd_ratio, bias)
            loop.log(agent.update(batches) | agent.diagnostics())
        if loop.due(args.eval_every):
            loop.evaluate(evaluator, eval_policy)

    envs.close()
    return loop.finish(evaluator, eval_policy, dataset=task.dataset.name, env_id=task.env_id)


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
