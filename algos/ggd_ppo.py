"""GGD-TD: "Generalized Gaussian Temporal Difference Error for Uncertainty-aware Reinforcement Learning"
(Kim, Lee, Cho, Han, Hwang, arXiv 2408.02295; code ait-lab/ggtde @ ea36916, an SB3 fork), PPO variant,
written as a diff of algos/ppo.py (PPO: Schulman et al. 2017, arXiv 1707.06347).

PPO whose critic is a shared 64-64 Tanh trunk with E = 5 heads; head e outputs a mean V_e(s) and a raw
shape, beta_e = softplus(raw_e) + beta_eps, the shape of a generalised Gaussian (GGD, scale alpha = 1)
over that head's error. Every head gets its own GAE and return, and the policy uses their mean:

    delta_{t,e} = r_t + gamma (1 - d_{t+1}) V_e(s_{t+1}) - V_e(s_t),   A_{t,e} = delta_{t,e} + gamma lambda (1 - d_{t+1}) A_{t+1,e}
    R_{t,e}     = A_{t,e} + V_e^old(s_t),       A_t = mean_e A_{t,e},   A_hat = (A - mean A) / (std A + adv_eps)   (per minibatch)
    L_clip      = mean max(-A_hat ratio, -A_hat clip(ratio, 1 - eps, 1 + eps))
    err_{i,e}   = |V_e(s_i) - R_{i,e}|     (--clip-vloss: max(|V_e - R_e|, |V_e^old + clip(V_e - V_e^old, -eps, eps) - R_e|))
    L_GGD       = sum_e mean_i [ (err_{i,e} * beta_{i,e} - log beta_{i,e} + lgamma(1 / beta_{i,e})) * beta_{i,e} / sum_e' beta_{i,e'} ]
    L_reg       = sum_e mean_i [ w_i |V_e(s_i) - R_{i,e}| ],   w_i = (1/(s2_i + xi)) / sum_j 1/(s2_j + xi)
    s2_i        = Var_e^{ddof 0}(V_e(s_i) - R_{i,e}) / (kappa_i / E + (E + 1)/(E - 1))   (BIEV; detached, clipped >= 1e-6)
    L           = L_clip - ent_coef * mean H[pi(.|s)] + vf_coef * (L_GGD + lambda * L_reg)

with kappa_i the unbiased (Fisher) excess kurtosis of the heads' errors (the MBBE correction) and lambda =
--uncertainty-temperature 0.1. xi >= 0 is 0 when the effective batch size ESS = 1 / sum_i w_i^2 is at least
m = min(B - 1, --min-batch-size 16), otherwise the xi where ESS(s2 + xi) = m: by default a bracketing search
on the device, --xi-solver nelder-mead the released scipy solver on the CPU (as in algos/ggd_td.py). This
is the released `algos/ppo/algo.py` (`IEV_GGD_PPO`, the full method) with `losses/mle.py` and
`losses/weighted.py`: the risk-averse weight beta_e / sum_e' beta_e' is not detached, the constant log 2 is
dropped, the loss is summed over the heads (not averaged) and, as in SB3, has no factor 1/2. Only the means
feed GAE, the returns and the bootstrap; beta shapes the value loss alone. Var(error) = Gamma(3/beta) /
Gamma(1/beta): larger beta, less aleatoric uncertainty.

Variants (--loss, --reg), as the released classes: --loss mse is the released plain `PPO` (sum over heads
of the MSE of 1-output heads, no regulariser; with --ensemble-size 1 exactly algos/ppo.py's value loss
times 2, hence --vf-coef 0.25 in cleanrl-default), the baseline the reviews asked for; --loss gaussian is
`GD_PPO` (variance heads: F.gaussian_nll_loss with var = softplus(raw), eps 1e-6); --reg biv the `IV_*`
variants (s2_i = gamma^2 Var_e^{ddof 1}(V_e(s_i)), the heads' spread); --reg none with --loss ggd is `GGD_PPO`.
--reg auto = biev for --loss ggd, none otherwise; the regulariser's loss is the MAE for ggd, MSE otherwise.

Where the paper and the released code differ the code is the default, with a flag for the other (the
spec's "faithful vs fixed" table): --ggd-form power, --beta-eps 1e-6, --detach-ra-weight, --no-biev-mbbe,
--reg-scale sum (each flag's --help says what it changes).

Two settings (--preset): sb3-faithful (the default) is the released SB3 configuration (configs/ppo.yml and
SB3 PPO's defaults: 5 envs x 2048 steps, constant lr, no value clipping, advantages +1e-6, no normalisation,
truncation bootstrapped with gamma mean_e V_e(final obs), sb3_contrib's TimeFeatureWrapper, 3M steps);
cleanrl-default is the same value loss inside algos/ppo.py's defaults, with --vf-coef 0.25 (CleanRL's 0.5
times its 1/2 MSE): with --loss mse --ensemble-size 1 it is algos/ppo.py. Both settings in full, the
deviations from the released code and the ggd/* logs: docs/algos/ggd_ppo.md.

Differences from CleanRL: one running normaliser for all env copies (CleanRL's wrappers keep one per copy;
the same for --num-envs 1), held in the checkpoint; the run ends after whole iterations, so total_steps is
rounded up to a multiple of num_envs x num_steps (CleanRL rounds down); `--batch-size` is the minibatch size
(CleanRL derives it from --num-minibatches 32: 2048 / 32 = 64). Evaluation follows ocrl's shared protocol:
deterministic policy (the mean, or each sub-action's most likely value) on observations normalised with the
statistics of that moment, 10 episodes every 5,000 environment steps; Hopper-v4, HalfCheetah-v4 and
Walker2d-v4 also get D4RL's normalised score.
`--precision bf16` runs the actor's and the critic's hidden layers in bf16 autocast, in the rollout and in the
update alike (the stored log-probs and the ratio's come from the same networks); their output layers, the log-std,
log-probs, GAE, the losses, weights, Adam's state and evaluation stay fp32.

    python algos/ggd_ppo.py --env-id Hopper-v4
    python algos/ggd_ppo.py --env-id Hopper-v4 --loss mse           # plain (SB3) PPO, the rest equal
    python algos/ggd_ppo.py --preset cleanrl-default --env-id HalfCheetah-v4 --beta-eps 1e-6
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ocrl.data import ObservationNormalizer, RunningMeanStd, VectorRollout, explained_variance
from ocrl.envs import Evaluator, TimeFeature, make_vector_env, reference_scores
from ocrl.experiment import Acting, Agent, TrainingLoop, start_run
from ocrl.experiment.args import OnlineArgs, PrecisionArgs, RunArgs
from ocrl.experiment.flags import UsageError, check_args, run_cli
from ocrl.nets import ActorCritic, autocast, ggd

PRESETS: dict[str, dict] = {
    "sb3-faithful": {},  # the Args defaults
    # algos/ppo.py's defaults with the GGD value loss; vf_coef 0.25 = CleanRL's 0.5 x its 1/2 MSE.
    "cleanrl-default": {
        "total_steps": 1_000_000, "num_envs": 1, "anneal_lr": True, "adv_eps": 1e-8, "clip_vloss": True,
        "vf_coef": 0.25, "normalize_obs": True, "normalize_reward": True, "bootstrap_truncation": False,
        "time_feature": False,
    },
}  # fmt: skip
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
EPS = 1e-6  # the released code's floor on the regulariser's variances


@dataclass
class Args(ggd.GGDArgs, RunArgs, PrecisionArgs, OnlineArgs):
    env_id: str = "HalfCheetah-v4"
    """Gymnasium environment id: a flat Box observation; Box, Discrete or MultiDiscrete actions"""
    preset: PresetName = "sb3-faithful"  # type: ignore[valid-type]
    """sb3-faithful: the released SB3 settings (the defaults); cleanrl-default: algos/ppo.py's defaults with the GGD value loss; explicit flags override either"""
    seed: int = 1
    """seed of torch, numpy, the training envs and the evaluation episodes"""
    total_steps: int = 3_000_000
    """environment steps over all env copies, rounded up to whole iterations of num_envs x num_steps"""
    num_envs: int = 5
    """parallel training environments"""
    num_steps: int = 2048
    """steps per env copy in each rollout"""
    batch_size: int = 64
    """transitions per minibatch (CleanRL: num_envs x num_steps / num_minibatches, 2048 / 32)"""
    update_epochs: int = 10
    """passes over each rollout"""
    lr: float = 3e-4
    """Adam learning rate (eps 1e-5) of the actor and critic"""
    anneal_lr: bool = False
    """anneal the learning rate linearly to 0 over the iterations (CleanRL); SB3 keeps it constant"""
    discount: float = 0.99
    """discount factor gamma"""
    gae_lambda: float = 0.95
    """lambda of the generalised advantage estimate"""
    norm_adv: bool = True
    """standardise the advantages of each minibatch"""
    adv_eps: float = 1e-6
    """A_hat = (A - mean A) / (std A + adv_eps): the released EPS 1e-6; SB3 and CleanRL use 1e-8"""
    clip_coef: float = 0.2
    """clip range eps of the probability ratio (and of the value with --clip-vloss)"""
    clip_vloss: bool = False
    """clip the value loss around the rollout's values, as CleanRL does"""
    ent_coef: float = 0.0
    """weight of the entropy bonus"""
    vf_coef: float = 0.5
    """weight of the value loss (summed over the heads, no 1/2, as SB3)"""
    max_grad_norm: float = 0.5
    """clip of the global gradient norm"""
    target_kl: float | None = None
    """stop the epochs of an iteration once the approximate KL exceeds it (None: never)"""
    normalize_obs: bool = False
    """standardise observations by their running mean and variance, then clip to +-10"""
    normalize_reward: bool = False
    """divide rewards by the running std of the discounted return, then clip to +-10"""
    bootstrap_truncation: bool = True
    """add gamma V(final observation) to the last reward of a truncated episode (SB3); CleanRL does not"""
    time_feature: bool = True
    """append 1 - t / max_episode_steps to the observations (sb3_contrib's TimeFeatureWrapper, the released MuJoCo configs), in training and evaluation"""
    hidden: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and of the critic (Tanh)"""
    log_every: int = 2_048
    """environment steps between loss logs (checked after each iteration)"""


class GGDPPO(Agent):
    """The actor-critic with E GGD value heads, its optimiser and the observation/return normalisers; `update` is one iteration's epochs."""

    def __init__(self, args: Args, obs_dim: int, action_space: gym.Space, device) -> None:
        self.args = args
        value_dims = 1 if args.loss == "mse" else 2  # the released plain PPO has 1-output heads
        self.policy = ActorCritic(
            obs_dim, action_space, args.hidden, args.ensemble_size, value_dims
        ).to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=args.lr, eps=1e-5)
        self.obs_rms = ObservationNormalizer((obs_dim,), enabled=args.normalize_obs)
        self.return_rms = RunningMeanStd()
        self.reg = ggd.resolved_reg(args.reg, args.loss)
        self.reg_loss = ggd.resolved_reg_loss(args.reg_loss, args.loss)
        self.min_ess = float(min(args.batch_size - 1, args.min_batch_size))
        self.seen: dict[
            str, list[torch.Tensor]
        ] = {}  # the last update's intermediates, for diagnostics

    def act_for_evaluation(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluator's policy: raw observations, normalised with the current statistics (not updated)."""
        x = self.obs_rms(obs.cpu().numpy().astype(np.float64), update=False)
        return self.policy.act(torch.as_tensor(x, device=obs.device))

    def keep(self, **tensors: torch.Tensor) -> None:
        for name, tensor in tensors.items():
            self.seen.setdefault(name, []).append(tensor)

    def value_loss(self, error: torch.Tensor, raw: torch.Tensor | None) -> torch.Tensor:
        """The value loss of --loss from the heads' errors |V_e - R_e| and raw shapes, both (E, B)."""
        args = self.args
        if args.loss == "mse":
            return error.pow(2).mean(-1).sum(-1)
        if args.loss == "gaussian":
            var = F.softplus(raw)
            self.keep(param=var.detach())
            nll = F.gaussian_nll_loss(error, torch.zeros_like(error), var, reduction="none")
            return nll.mean(-1).sum(-1)
        beta = F.softplus(raw) + args.beta_eps
        loss, terms = ggd.ggd_nll(error, beta, args.ggd_form, args.detach_ra_weight)
        self.keep(param=beta.detach(), nonfinite=(~torch.isfinite(terms)).sum())
        return loss

    def update(self, rollout: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """update_epochs passes of clipped-surrogate minibatch steps over one rollout (flattened to B)."""
        args, policy = self.args, self.policy
        obs, actions, logprobs = rollout["obs"], rollout["actions"], rollout["logprobs"]
        advantages, returns, values = rollout["advantages"], rollout["returns"], rollout["values"]
        n = obs.shape[0]
        clipfracs = []
        self.seen = {}
        for _ in range(args.update_epochs):
            order = torch.randperm(n, device=obs.device)
            for start in range(0, n, args.batch_size):
                mb = order[start : start + args.batch_size]
                with autocast(args.precision, obs.device):
                    new_logprob, entropy, heads = policy.evaluate(obs[mb], actions[mb])
                new_value = heads[..., 0]  # (b, E)
                logratio = new_logprob - logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean())
                mb_adv = advantages[mb].mean(-1)  # the mean over the heads of their GAE
                if args.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + args.adv_eps)
                pg_loss = torch.max(
                    -mb_adv * ratio, -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                ).mean()
                error = (new_value - returns[mb]).abs()
                if args.clip_vloss:
                    v_clipped = values[mb] + (new_value - values[mb]).clamp(
                        -args.clip_coef, args.clip_coef
                    )
                    error = torch.max(error, (v_clipped - returns[mb]).abs())
                raw = heads[..., 1].T if heads.shape[-1] == 2 else None
                v_loss = self.value_loss(error.T, raw)  # heads first: (E, b)
                if self.reg != "none":  # BIEV/BIV on the heads' means, heads first
                    reg_loss, kept = ggd.inverse_variance_regulariser(
                        new_value.T, returns[mb].T, self.reg, biev_mbbe=args.biev_mbbe,
                        discount=args.discount, min_ess=self.min_ess, solver=args.xi_solver,
                        loss=self.reg_loss, scale=args.reg_scale, floor=EPS,
                    )  # fmt: skip
                    self.keep(**kept | {"reg_var": kept["reg_var"].mean()})
                else:
                    reg_loss = torch.zeros_like(v_loss)
                self.keep(td_var=(new_value - returns[mb]).detach().var(dim=-1, correction=0))
                entropy_loss = entropy.mean()
                value_term = v_loss + args.uncertainty_temperature * reg_loss
                loss = pg_loss - args.ent_coef * entropy_loss + args.vf_coef * value_term
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                self.optimizer.step()
            if args.target_kl is not None and float(approx_kl) > args.target_kl:
                break
        explained_var = explained_variance(values.mean(-1), returns.mean(-1))
        return {
            "value_loss": v_loss.detach(), "reg_loss": reg_loss.detach(), "policy_loss": pg_loss.detach(),
            "entropy": entropy_loss.detach(), "old_approx_kl": old_approx_kl,
            "approx_kl": approx_kl, "ppo/clipfrac": torch.stack(clipfracs).mean(),
            "ppo/explained_variance": explained_var,
        }  # fmt: skip

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """The reference's checks over the last update's minibatches (shape statistics, non-finite terms, xi, ESS)."""
        seen = {
            k: torch.cat(v, -1) if k in ("param", "td_var") else torch.stack(v)
            for k, v in self.seen.items()
        }
        return ggd.ggd_diagnostics("beta" if self.args.loss == "ggd" else "var", **seen)


def check_ggd_ppo_args(args: Args) -> None:
    check_args(args, ("total_steps", "num_envs", "num_steps", "batch_size", "update_epochs",
                      "eval_every", "eval_episodes", "log_every", "ensemble_size",
                      "min_batch_size"))  # fmt: skip
    rollout = args.num_envs * args.num_steps
    if rollout % args.batch_size:
        raise UsageError(
            f"--batch-size {args.batch_size}: must divide num_envs x num_steps = {rollout} "
            "(whole minibatches, as CleanRL's --num-minibatches)"
        )
    if not 0.0 <= args.gae_lambda <= 1.0:
        raise UsageError(f"--gae-lambda {args.gae_lambda}: must lie in [0, 1]")
    for name in ("lr", "clip_coef", "max_grad_norm"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be a positive number")
    for name in ("ent_coef", "vf_coef", "adv_eps", "beta_eps", "uncertainty_temperature"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be a number >= 0")
    if args.target_kl is not None and not args.target_kl > 0:
        raise UsageError(f"--target-kl {args.target_kl}: must be positive (or omitted)")
    reg = ggd.resolved_reg(args.reg, args.loss)
    if problem := ggd.regulariser_misfit(reg, args.biev_mbbe, args.ensemble_size, args.batch_size):
        raise UsageError(problem)


def main(args: Args) -> dict:
    args, device, np_rng = start_run(args, check_ggd_ppo_args)

    wrap = TimeFeature if args.time_feature else None
    envs = make_vector_env(args.env_id, args.num_envs, args.seed, "PPO",
                           (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete), wrap)  # fmt: skip
    obs_dim = envs.single_observation_space.shape[0]
    agent = GGDPPO(args, obs_dim, envs.single_action_space, device)
    ref_min, ref_max = reference_scores(args.env_id)
    evaluator = Evaluator(
        args.env_id, args.eval_episodes, args.seed, ref_min_score=ref_min, ref_max_score=ref_max,
        device=device, env_wrapper=wrap,
    )  # fmt: skip
    rollout_size = args.num_envs * args.num_steps
    rollout = VectorRollout(
        envs, args.num_steps, agent.obs_rms, agent.return_rms, device, seed=args.seed,
        discount=args.discount, gae_lambda=args.gae_lambda, normalize_reward=args.normalize_reward,
        bootstrap_truncation=args.bootstrap_truncation, ensemble_size=args.ensemble_size,
    )  # fmt: skip
    loop = TrainingLoop(
        "ggd_ppo", args.env_id, args, agent.parts() | {"rollout": rollout}, np_rng,
        rate_tag="charts/steps_per_s", policy=Acting(agent.policy, agent.obs_rms),
    )  # fmt: skip
    iterations = math.ceil(args.total_steps / rollout_size)

    for start in loop.steps(stride=rollout_size):
        if args.anneal_lr:
            # 0-based here; CleanRL's frac = 1 - (iteration - 1) / num_iterations
            iteration = start // rollout_size
            agent.optimizer.param_groups[0]["lr"] = (1.0 - iteration / iterations) * args.lr
        # One autocast for the whole rollout: it casts the weights to bf16 once (no update happens inside).
        with autocast(args.precision, device):
            batch = rollout.collect(agent.policy, start, loop.run.log)
        metrics = agent.update(batch)
        metrics["charts/learning_rate"] = torch.tensor(agent.optimizer.param_groups[0]["lr"])
        loop.log(metrics | agent.diagnostics())
        if loop.due(args.eval_every):
            loop.evaluate(evaluator, agent.act_for_evaluation)

    envs.close()
    return loop.finish(evaluator, agent.act_for_evaluation, env_id=args.env_id)


if __name__ == "__main__":
    run_cli(main, Args, PRESETS)
