"""IQL: "Offline Reinforcement Learning with Implicit Q-Learning" (Kostrikov, Nair & Levine, ICLR 2022, arXiv 2110.06169).

IQL never queries Q at actions outside the dataset. A state value V learns an upper expectile of the
target critics' Q over the dataset's actions, the twin critics regress onto r + gamma (1 - d) V(s'), and
the policy is extracted by advantage-weighted regression onto the dataset's actions:

    V:   u = min(Q1_targ, Q2_targ)(s, a) - V(s),   L_V  = mean |tau_e - 1[u < 0]| u^2        (expectile tau_e)
    Q:   y = r + gamma (1 - d) V(s'),              L_Q  = 1/2 sum_i mean (Q_i(s, a) - y)^2
    pi:  w = min(exp(beta A), 100), A = u,         L_pi = mean w * (-log pi(a|s))   or   mean w * |pi(s) - a|^2

Defaults follow CORL's algorithms/offline/iql.py (tinkoff-ai/CORL @ 6afec90), which is the reference here:
its update order (V(s') and A from V before V's step, then V, the critics and their Polyak targets, then the
actor), beta 3.0, expectile 0.7, Adam 3e-4 for V, Q and the actor, the actor's lr decayed by a cosine to 0
over --total-steps, 2 x 256 ReLU networks, tau 0.005, gamma 0.99, batch 256, 1M updates, observations
standardised (std + 1e-3). `--actor gaussian` (CORL's default) is CORL's GaussianPolicy: a Normal whose mean
is tanh(MLP(s)) and whose std exp(log_std) is one state-independent parameter (log_std initialised to 0,
clamped to [-20, 2]); -log pi(a|s) is the plain Normal log-density of the dataset action summed over action
dimensions, with no tanh change-of-variables term, and evaluation takes the mean. `--actor deterministic`
is CORL's DeterministicPolicy: tanh(MLP(s)) regressed with a per-sample squared error summed over action
dimensions. Both are CORL's losses when the action bounds are +-1 (every D4RL task); for other bounds the
Gaussian models actions rescaled to [-1, 1] and the squared error is in the action's own units.
`--preset` applies CORL's per-dataset YAMLs: hopper-medium and -medium-replay use the deterministic actor,
CORL's reward scaling and tau 0.001; hopper-medium-expert beta 6 and expectile 0.5; AntMaze beta 10,
expectile 0.9, reward - 1 (`--reward-shift -1`) and 100 evaluation episodes. CORL's actor dropout (Adroit
only) is not implemented. This is CORL's variant, not the authors' JAX code (ikostrikov/implicit_q_learning),
which uses V *after* its step for the advantages and the critics' target, and differs in data handling
(tinkoff-ai/CORL#33); there is no flag for it.
Logged: the losses, and iql/v_mean, iql/q_mean, iql/adv_mean, iql/weight_clip_fraction (share of weights
at the clip 100), iql/actor_lr. Evaluation: ocrl's shared protocol (deterministic actor, 10 episodes every
5,000 updates, episode seeds from --seed): CORL's cadence and episode count, not its env seeds.
`--precision bf16` runs the networks' hidden layers in bf16 autocast; their output layers (V, Q, the actor's
mean), the expectile, TD and AWR losses, the log-probabilities, weights, Polyak updates and Adam's state stay fp32.
`--num-seeds N` trains seeds seed .. seed+N-1 at once: every network (the Gaussian actor's log_std too) has a
leading seed axis (one batched matmul per layer), each seed draws its weights and minibatches from its own
generator, and its V, Q and actor losses are its own; their sums step every seed's weights with that seed's
gradient alone. A single-seed run is N = 1 of the same code, so seed k alone and seed k in a group train the same
networks.

    python algos/iql.py --total-steps 20000 --preset hopper-medium-v2   # shipped hopper data, CPU minutes
    python algos/iql.py --dataset antmaze-umaze-v2 --preset antmaze-umaze-v2
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from ocrl.data import Batch
from ocrl.envs import load_offline_task
from ocrl.experiment import Agent, SeedLoops, start_run
from ocrl.experiment.args import OfflineArgs, PrecisionArgs, RunArgs, SeedsArgs, TargetArgs
from ocrl.experiment.flags import UsageError, check_args, run_cli
from ocrl.nets import MLP, CriticEnsemble, DeterministicActor, FlatAdam, autocast, polyak_update
from ocrl.nets.seeds import SeedStreams, init_seeds

_DEFAULT = {"beta": 3.0, "expectile": 0.7, "actor": "gaussian", "tau": 0.005,
            "normalize_reward": False, "reward_shift": 0.0}  # fmt: skip
_HOPPER_DETERMINISTIC = {"actor": "deterministic", "normalize_reward": True, "tau": 0.001}
_ANTMAZE = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")  # fmt: skip
PRESETS: dict[str, dict] = {
    # CORL's configs/offline/iql/<domain>/<dataset>.yaml; every other locomotion YAML uses CORL's defaults.
    **{
        f"{domain}-{kind}-v2": dict(_DEFAULT)
        for domain in ("halfcheetah", "hopper", "walker2d")
        for kind in ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
    },
    "hopper-medium-v2": _DEFAULT | _HOPPER_DETERMINISTIC,
    "hopper-medium-replay-v2": _DEFAULT | _HOPPER_DETERMINISTIC,
    "hopper-medium-expert-v2": _DEFAULT | {"beta": 6.0, "expectile": 0.5},
    # AntMaze: CORL's normalize_reward means r - 1 there (modify_reward), and 100 evaluation episodes.
    **{
        f"antmaze-{maze}-v2": _DEFAULT
        | {"beta": 10.0, "expectile": 0.9, "reward_shift": -1.0, "eval_episodes": 100}
        for maze in _ANTMAZE
    },
}
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclass
class Args(TargetArgs, RunArgs, PrecisionArgs, SeedsArgs, OfflineArgs):
    preset: PresetName | None = None  # type: ignore[valid-type]
    """per-dataset hyperparameters of CORL's YAMLs (hopper-medium(-replay)-v2: deterministic actor, reward scaling, tau 0.001; antmaze-*: beta 10, expectile 0.9, reward - 1); explicit flags override them; --dataset alone changes none"""
    seed: int = 0
    """seed of the networks' weights, the minibatches and noise (one generator per seed) and the evaluation episodes"""
    total_steps: int = 1_000_000
    """gradient updates (one V, Q and actor step each), CORL's 1M; also the length of the actor's cosine lr decay (a --resume keeps the first run's)"""
    batch_size: int = 256
    """transitions per update, sampled uniformly with replacement"""
    beta: float = 3.0
    """inverse temperature of the advantage weights exp(beta A): small is BC, large maximises Q"""
    expectile: float = 0.7
    """expectile tau_e of V's asymmetric loss (CORL's iql_tau), in (0, 1); 0.5 is a mean"""
    max_weight: float = 100.0
    """clip of the advantage weights exp(beta A) (CORL's EXP_ADV_MAX)"""
    actor: Literal["gaussian", "deterministic"] = "gaussian"
    """'gaussian': -log pi(a|s) of CORL's Normal(tanh MLP(s), state-independent std); 'deterministic': squared error to tanh MLP(s)"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor at step 0; a cosine takes it to 0 at --total-steps"""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics"""
    value_lr: float = 3e-4
    """Adam learning rate of V"""
    hidden: tuple[int, ...] = (256, 256)
    """hidden layer widths of the actor, the critics and V"""
    normalize_obs: bool = True
    """standardise observations with the mean and std (+1e-3) of the training transitions"""
    normalize_reward: bool = False
    """scale rewards by max_episode_steps / (max - min return) over the training transitions, CORL's modify_reward for locomotion"""
    reward_shift: float = 0.0
    """added to every reward after any scaling: -1 is CORL's AntMaze modify_reward (AntMaze presets)"""
    truncated_last: Literal["drop", "keep"] = "drop"
    """'drop' reproduces D4RL's qlearning_dataset (CORL); 'keep' also trains on timeout transitions using stored next observations"""
    compile: bool = False
    """wrap the update in torch.compile (off by default: on a CPU compile time dominates short runs)"""


class GaussianActor(nn.Module):
    """CORL's GaussianPolicy: Normal(tanh(MLP(s)), exp(log_std)) over actions scaled to [-1, 1]; log_std is one
    parameter vector (with `num_seeds` N: one per seed, (N, act_dim), and (N, B, ...) inputs)."""

    def __init__(self, obs_dim, act_dim, hidden, action_low, action_high, num_seeds=None) -> None:
        super().__init__()
        self.net = MLP(obs_dim, act_dim, hidden, output_activation=nn.Tanh, num_seeds=num_seeds)
        self.log_std = nn.Parameter(torch.zeros(act_dim) if num_seeds is None else torch.zeros(num_seeds, act_dim))  # fmt: skip
        self.seed_parameters = () if num_seeds is None else ("log_std",)  # seed k's log_std: row k
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) summed over action dimensions ((N,) B): the Normal density, no tanh correction."""
        mean, log_std = self.net(obs), self.log_std.clamp(-20.0, 2.0)
        if self.seed_parameters:  # (N, act_dim) against the (N, B, act_dim) means
            log_std = log_std.unsqueeze(1)
        z = (actions - self.action_bias) / self.action_scale
        return (-0.5 * ((z - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)  # fmt: skip

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action, used at evaluation time."""
        return self.net(obs) * self.action_scale + self.action_bias


def expectile_loss(u: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |tau_e - 1[u < 0]| u^2 over the last (batch) axis: residuals above V weigh tau_e, those below 1 - tau_e."""
    return (torch.abs(expectile - (u < 0).float()) * u.square()).mean(dim=-1)


def actor_class(args: Args) -> type[nn.Module]:
    """The actor of --actor: CORL's Gaussian policy or TD3's deterministic one."""
    return GaussianActor if args.actor == "gaussian" else DeterministicActor


class IQL(Agent):
    """V, the twin critics and their targets, the actor, their optimisers and the actor's lr schedule of
    --num-seeds seeds, stacked on a leading seed axis; `update` is one IQL iteration of every seed on (N, B, ...)
    minibatches."""

    def __init__(self, args: Args, obs_dim: int, act_dim: int, action_low, action_high, device):
        self.args, n = args, args.num_seeds
        self.streams = SeedStreams(range(args.seed, args.seed + n), device)
        self.actor = actor_class(args)(
            obs_dim, act_dim, args.hidden, action_low, action_high, num_seeds=n
        )
        self.critic = CriticEnsemble(obs_dim, act_dim, args.hidden, num_critics=2, num_seeds=n)
        self.value = MLP(obs_dim, 1, args.hidden, num_seeds=n)
        for net in (self.actor, self.critic, self.value):
            init_seeds(net, self.streams).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # FlatAdam: torch's fused Adam over one padded buffer, whose digits do not depend on N.
        self.actor_opt = FlatAdam(self.actor.parameters(), lr=args.actor_lr)
        self.critic_opt = FlatAdam(self.critic.parameters(), lr=args.critic_lr)
        self.value_opt = FlatAdam(self.value.parameters(), lr=args.value_lr)
        self.actor_schedule = CosineAnnealingLR(self.actor_opt, args.total_steps)
        self.seen: dict[str, torch.Tensor] = {}  # the last update's intermediates, for diagnostics

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One iteration in CORL's order: V's expectile step, the critics' step and targets, the actor's step;
        (N,) losses."""
        args = self.args
        obs, actions, rewards, next_obs, terminals = batch  # (N, B, ...): one minibatch per seed
        with torch.no_grad(), autocast(args.precision, obs.device):
            next_v = self.value(next_obs).squeeze(-1)  # (N, B)
            target_q = self.critic_target(obs, actions).min(dim=0).values

        # V: an upper expectile of the target critics' Q over the dataset's actions.
        with autocast(args.precision, obs.device):
            v = self.value(obs).squeeze(-1)
        adv = target_q - v
        value_loss = expectile_loss(adv, args.expectile)  # (N,)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.sum().backward()  # the seeds' gradients do not mix
        self.value_opt.step()

        # Q: both critics regress onto r + gamma (1 - d) V(s'), with V from before its step.
        target = torch.addcmul(rewards, 1.0 - terminals, next_v, value=args.discount)
        with autocast(args.precision, obs.device):
            q = self.critic(obs, actions)  # (2, N, B)
        critic_loss = (
            (q - target).square().mean(dim=2).mean(dim=0)
        )  # the mean of the two critics' MSEs
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critic_opt.step()
        polyak_update(self.critic_target.parameters(), self.critic.parameters(), args.tau)

        # pi: advantage-weighted regression onto the dataset's actions, weights clipped at max_weight.
        adv = adv.detach()
        weight = torch.exp(args.beta * adv).clamp(max=args.max_weight)
        with autocast(args.precision, obs.device):
            if args.actor == "gaussian":
                bc_loss = -self.actor.log_prob(obs, actions)
            else:
                bc_loss = (self.actor(obs) - actions).square().sum(-1)
        actor_loss = (weight * bc_loss).mean(dim=-1)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.actor_opt.step()
        self.actor_schedule.step()

        self.seen = dict(v=v.detach(), q=q.detach(), adv=adv, weight=weight)
        return {"value_loss": value_loss.detach(), "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach()}  # fmt: skip

    @torch.no_grad()
    def diagnostics(self) -> dict[str, torch.Tensor]:
        """The reference's checks for the last update, per seed (N,): V below Q for tau_e > 0.5, and the share of
        clipped weights."""
        seen = self.seen
        return {
            "iql/v_mean": seen["v"].mean(dim=-1), "iql/q_mean": seen["q"].mean(dim=2).mean(dim=0),
            "iql/adv_mean": seen["adv"].mean(dim=-1),
            "iql/weight_clip_fraction": (seen["weight"] >= self.args.max_weight).float().mean(dim=-1),
            "iql/actor_lr": torch.full((self.args.num_seeds,), self.actor_opt.param_groups[0]["lr"]),
        }  # fmt: skip


def check_iql_args(args: Args) -> None:
    check_args(args)
    if not 0.0 < args.expectile < 1.0:
        raise UsageError(f"--expectile {args.expectile}: must lie in (0, 1); CORL uses 0.7 (AntMaze 0.9)")  # fmt: skip
    if not args.max_weight > 0.0:
        raise UsageError(f"--max-weight {args.max_weight}: must be positive; CORL clips at 100")


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check_iql_args)
    if args.preset is not None and args.preset != args.dataset:
        print(f"note: hyperparameters of preset '{args.preset}' applied to dataset '{args.dataset}'")  # fmt: skip
    task = load_offline_task(
        args.dataset, args.env_id, device=device, normalize_obs=args.normalize_obs,
        normalize_reward=args.normalize_reward, truncated_last=args.truncated_last,
        ref_min_score=args.ref_min_score, ref_max_score=args.ref_max_score,
    )  # fmt: skip
    task.buffer.rewards.add_(args.reward_shift)
    agent = IQL(args, task.obs_dim, task.act_dim, task.action_low, task.action_high, device)
    update = torch.compile(agent.update) if args.compile else agent.update
    loop = SeedLoops(
        "iql", task.dataset.name, args, agent.parts(), np_rng, normalizer=task.normalizer,
        evaluator=lambda seed: task.evaluator(args.eval_episodes, seed, device),
        # Each seed's actor as a single-seed run builds it: what it evaluates with and exports as policy.pt2.
        policy=lambda: actor_class(args)(
            task.obs_dim, task.act_dim, args.hidden, task.action_low, task.action_high
        ).to(device),
    )  # fmt: skip

    for _ in loop.steps():
        metrics = update(task.buffer.sample_per_seed(args.batch_size, agent.streams))
        loop.log(metrics | agent.diagnostics())
        if loop.due(args.eval_every):
            loop.evaluate(agent.actor)

    return loop.finish(agent.actor, dataset=task.dataset.name, env_id=task.env_id)


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
