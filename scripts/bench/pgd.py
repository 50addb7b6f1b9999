"""PGD (`algos/pgd.py`): seconds per regeneration of the synthetic set (--trajectories windows of the
trajectory U-Net, --sample-steps Heun steps), unguided (the plain sampler) against guided (the policy's
log-likelihood gradient before every step: one actor forward + backward per step, plus one extra U-Net call
with --denoised-guidance), interleaved rounds, medians, and the ratio. Without --model a U-Net of random
weights of the same size stands in (the cost does not depend on the weights); without --run a fresh actor
guides. With --quality (needs both) it prints, per guidance coefficient in --coefs, the target policy's
mean log-likelihood of the synthetic actions and the one-step dynamics error of the synthetic transitions,
with the real data's beside them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ocrl.data import load_dataset
from ocrl.data.windows import windows_to_transitions

from .harness import DeviceArgs, interleaved, medians, seconds


@dataclass
class Args(DeviceArgs):
    """PGD's regeneration of the synthetic set, guided against unguided."""

    obs_dim: int = 11
    """observation size of the stand-in model (Hopper: 11)"""
    act_dim: int = 3
    """action size of the stand-in model (Hopper: 3)"""
    model: str | None = None
    """model.pt of algos/diffusion.py --level trajectory; default a random U-Net of --unet-features"""
    run: str | None = None
    """an algos/pgd.py run folder written with --save-model: its actor guides (default: a fresh actor)"""
    agent: Literal["td3_bc", "iql"] = "td3_bc"
    """the guiding actor's kind when --run is not given"""
    unet_features: int = 64
    """U-Net width of the stand-in model (the docs/results/pgd.md model: 64, 2 blocks)"""
    length: int = 16
    """rows per window of the stand-in model"""
    trajectories: int = 1024
    """windows per regeneration (algos/pgd.py's cpu-small preset: 1024; PGD: 8192)"""
    sample_steps: int = 32
    """Heun steps per regeneration (cpu-small: 32; PGD: 256)"""
    rounds: int = 3
    """interleaved timed regenerations per variant; the median is reported"""
    coef: float = 1.0
    """guidance coefficient of the timed guided variant"""
    normalize: bool = True
    """--normalize-action-guidance for the guided variants"""
    denoised_guidance: bool = False
    """--denoised-guidance for the guided variants"""
    quality: bool = False
    """also print the log-likelihood / dynamics-error table over --coefs (needs --model and --run)"""
    coefs: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)
    """guidance coefficients of the table"""
    quality_transitions: int = 5000
    """transitions (synthetic and real each) of the dynamics error"""


def pgd_setup(args: Args, device: torch.device):
    """(pgd module, trajectory model, guiding actor, agent name, obs mean, obs std, run config)."""
    from ocrl.algos import pgd
    from ocrl.nets.diffusion import DiffusionNormalizer, EDMConfig, EDMDenoiser, TemporalUNet
    from ocrl.nets.edm_runs import load_trajectory_model

    obs_dim, act_dim = args.obs_dim, args.act_dim
    if args.model is not None:
        model = load_trajectory_model(args.model, device, precision="auto")
        obs_dim, act_dim = model.obs_dim, model.act_dim
    else:
        channels = obs_dim + act_dim + 2
        net = TemporalUNet(channels, features=args.unet_features, num_blocks=2)
        net.to(device).eval().requires_grad_(False)
        normalizer = DiffusionNormalizer(torch.zeros(channels), torch.ones(channels)).to(device)
        model = pgd.TrajectoryModel(
            EDMDenoiser(net, EDMConfig()), normalizer, obs_dim, act_dim, args.length
        )
    config: dict = {"agent": args.agent}
    obs_mean = obs_std = None
    if args.run is not None:
        config = json.loads((Path(args.run) / "config.json").read_text())
    low, high = -torch.ones(act_dim), torch.ones(act_dim)
    hidden = tuple(config.get("hidden", (256, 256)))
    if config["agent"] == "td3_bc":
        from ocrl.nets import DeterministicActor

        actor = DeterministicActor(obs_dim, act_dim, hidden, low, high)
    else:
        actor = pgd.GaussianActor(obs_dim, act_dim, hidden, low, high)
    if args.run is not None:
        ckpt = torch.load(Path(args.run) / "checkpoint.pt", map_location="cpu", weights_only=True)
        actor.load_state_dict(ckpt["actor"])
        if "obs_mean" in ckpt.get("normalizer", {}):
            obs_mean = ckpt["normalizer"]["obs_mean"].float().to(device)
            obs_std = ckpt["normalizer"]["obs_std"].float().to(device)
    return pgd, model, actor.to(device).requires_grad_(False), config, obs_mean, obs_std


def main(args: Args) -> dict[str, float]:
    device = torch.device(args.device)
    pgd, model, actor, config, obs_mean, obs_std = pgd_setup(args, device)
    rows = model.trajectory_length

    def regenerate(coef: float, seed: int = 0) -> torch.Tensor:
        pargs = pgd.Args(
            agent=config["agent"], guidance_coef=coef, sample_steps=args.sample_steps,
            num_synth_trajectories=args.trajectories, sample_batch_size=256,
            normalize_action_guidance=args.normalize, denoised_guidance=args.denoised_guidance,
        )  # fmt: skip
        guide = pgd.Guidance(pargs, model, actor, (obs_mean, obs_std)) if coef != 0 else None
        gen = torch.Generator(device).manual_seed(seed)
        return model.sample_n(
            pargs.num_synth_trajectories, pargs.sample_batch_size, pargs.sample_steps, rows,
            device=device, generator=gen, pre_step=guide, euler_origin=pargs.euler_origin,
            churn=pargs.churn,
        )  # fmt: skip

    times = interleaved(
        {n: lambda c=c: seconds(lambda: regenerate(c), device)
         for n, c in (("unguided", 0.0), ("guided", args.coef))},
        args.rounds,
    )  # fmt: skip
    med = medians(times)
    source = args.model or f"random U-Net F={args.unet_features}"
    print(
        f"\nPGD regeneration ({source}; {args.trajectories} windows x {rows} rows, "
        f"{args.sample_steps} Heun steps, {config['agent']} actor, device {device}):"
    )
    print(f"  unguided: {med['unguided']:.2f} s per regeneration")
    print(
        f"  guided (coef {args.coef}, normalised {args.normalize}, denoised "
        f"{args.denoised_guidance}): {med['guided']:.2f} s, "
        f"{med['guided'] / med['unguided']:.2f}x the unguided"
    )
    out = {f"pgd_{k}_s": v for k, v in med.items()}
    if args.quality:
        out.update(pgd_quality(args, pgd, model, actor, config, obs_mean, obs_std, regenerate))
    return out


def pgd_quality(args, pgd, model, actor, config, obs_mean, obs_std, regenerate) -> dict:
    """Target-policy log-likelihood and one-step dynamics error of the synthetic set per coefficient."""
    from ocrl.envs.dynamics import dynamics_error

    if args.model is None or args.run is None:
        raise SystemExit("--quality needs --model and --run")
    state = torch.load(args.model, map_location="cpu", weights_only=True)
    real = load_dataset(config["dataset"])  # the run's real data
    real = real.transitions()
    env_id = state["env_id"]
    scale = real.next_observations.std(axis=0) + 1e-6
    device = obs_mean.device if obs_mean is not None else torch.device(args.device)
    n = args.quality_transitions

    def loglik(obs: np.ndarray | torch.Tensor, act) -> float:
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        act = torch.as_tensor(act, dtype=torch.float32, device=device)
        if obs_mean is not None:
            obs = (obs - obs_mean) / obs_std
        with torch.no_grad():
            return float(pgd.policy_log_prob(config["agent"], actor, obs, act).mean())

    def dyn(obs, act, nxt, rew, term) -> float:
        keep = ~np.asarray(term, dtype=bool)
        err = dynamics_error(
            env_id, obs[keep], act[keep], nxt[keep], rewards=rew[keep], scale=scale,
            max_transitions=min(n, int(keep.sum())), seed=0,
        )  # fmt: skip
        return float(err["normalized_mse"])

    print(
        f"\nPGD on-policyness ({config['agent']} actor of {args.run}; mean log pi(a|s) per "
        "transition; dynamics error = one-step normalised MSE, non-terminal transitions):"
    )
    print("| coefficient | log pi(a|s) synthetic | dynamics error synthetic | transitions |")
    print("|---|---|---|---|")
    out = {}
    for coef in args.coefs:
        t = windows_to_transitions(regenerate(coef, seed=1), model.obs_dim, model.act_dim)
        t = {k: v.cpu().numpy() for k, v in t.items()}
        ll = loglik(t["observations"], t["actions"])
        de = dyn(t["observations"], t["actions"], t["next_observations"], t["rewards"], t["terminals"] > 0.5)  # fmt: skip
        print(f"| {coef:g} | {ll:.3f} | {de:.4f} | {len(t['rewards'])} |")
        out[f"pgd_loglik_{coef:g}"], out[f"pgd_dynamics_{coef:g}"] = ll, de
    idx = np.random.default_rng(0).choice(len(real.rewards), min(20 * n, len(real.rewards)), replace=False)  # fmt: skip
    ll = loglik(real.observations[idx], real.actions[idx])
    de = dyn(real.observations[idx], real.actions[idx], real.next_observations[idx], real.rewards[idx], real.terminals[idx] > 0.5)  # fmt: skip
    print(f"| real data (floor) | {ll:.3f} | {de:.2e} | {len(idx)} |")
    out["pgd_loglik_real"], out["pgd_dynamics_real"] = ll, de
    return out
