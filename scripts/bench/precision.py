"""--precision fp32 against bf16, one seed: updates/s of ocrl's td3_bc, iql, prdc and a2pr updates (each file's
default networks, the shipped hopper medium data in a device buffer) beside CORL's TD3+BC and IQL updates as
the baseline (tinkoff-ai/CORL @ 6afec90, imported from an outside checkout, --corl-path, with stand-ins for
d4rl, gym, pyrallis and wandb, which their update never touches; nothing of CORL is modified or copied), then
training steps/s of SynthER's residual MLP (ocrl's, the same maths as SynthER's: `python -m scripts.bench
diffusion`) at SynthER's widths. Rounds of all variants are interleaved and the medians reported, so background
load falls on every variant alike (harness.py); run it with --threads 1 for per-core numbers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .harness import DeviceArgs, installed, load_file, stand_in, stand_ins, step_rates, time_round
from .synther import quiet

ALGOS = ("td3_bc", "iql", "prdc", "a2pr")


@dataclass
class Args(DeviceArgs):
    """updates/s in fp32 and bf16, and CORL's as the baseline; SynthER's network's training steps/s."""

    corl_path: str = "../CORL"
    """CORL checkout (git clone https://github.com/tinkoff-ai/CORL); without it only ocrl's numbers"""
    dataset: str = "ocrl/hopper/medium-v0"
    """the offline data the updates sample from"""
    algos: tuple[str, ...] = ALGOS
    """which of td3_bc, iql, prdc, a2pr to time"""
    updates: int = 100
    """updates per timed round"""
    rounds: int = 5
    """interleaved rounds per variant; the median is reported"""
    batch_size: int = 256
    """minibatch of every update (the files' default)"""
    synther_widths: tuple[int, ...] = (1024, 2048)
    """residual MLP widths (SynthER: 1024 in its paper's smaller runs, 2048 its default); empty skips the table"""
    synther_depth: int = 6
    """residual blocks (SynthER: 6)"""
    synther_batch: int = 256
    """rows per diffusion training step (SynthER: 256)"""
    synther_steps: int = 4
    """diffusion training steps per timed round"""
    synther_rounds: int = 3
    """interleaved rounds of the diffusion table"""


def import_corl(path: str):
    """CORL's td3_bc and iql modules from a checkout at `path`, or None when it is not there."""
    files = [Path(path) / "algorithms" / "offline" / f for f in ("td3_bc.py", "iql.py")]
    if not all(f.is_file() for f in files):
        return None
    identity = lambda *a, **k: lambda f: f  # noqa: E731 (pyrallis.wrap() as a no-op decorator)
    unused = {
        "d4rl": {},
        "gym": {"Env": object, "wrappers": stand_in("gym.wrappers")},
        "pyrallis": {"wrap": identity, "dump": None},
        "wandb": {"log": lambda *a, **k: None},
    }
    modules = {
        name: stand_in(name, **attrs)
        for name, attrs in unused.items()
        if name not in sys.modules and not installed(name)
    }
    with stand_ins(modules):
        return tuple(load_file(f"corl_{f.stem}", f) for f in files)


def corl_trainers(
    corl, data: dict[str, np.ndarray], obs_dim: int, act_dim: int, batch: int, device
):
    """CORL's TD3+BC and IQL (its defaults: 2 x 256 networks, Adam 3e-4, Gaussian IQL actor), each sampling
    its own ReplayBuffer; {name: step(iteration)}."""
    td3, iql = corl
    adam = torch.optim.Adam
    out = {}
    for name, module in (("td3_bc", td3), ("iql", iql)):
        buffer = module.ReplayBuffer(obs_dim, act_dim, len(data["rewards"]), str(device))
        quiet(buffer.load_d4rl_dataset, data)
        if name == "td3_bc":
            actor = module.Actor(obs_dim, act_dim, 1.0).to(device)
            c1, c2 = (
                module.Critic(obs_dim, act_dim).to(device),
                module.Critic(obs_dim, act_dim).to(device),
            )
            trainer = module.TD3_BC(
                max_action=1.0, actor=actor, actor_optimizer=adam(actor.parameters(), lr=3e-4),
                critic_1=c1, critic_1_optimizer=adam(c1.parameters(), lr=3e-4),
                critic_2=c2, critic_2_optimizer=adam(c2.parameters(), lr=3e-4), device=str(device),
            )  # fmt: skip
        else:
            actor = module.GaussianPolicy(obs_dim, act_dim, 1.0).to(device)
            q, v = (
                module.TwinQ(obs_dim, act_dim).to(device),
                module.ValueFunction(obs_dim).to(device),
            )
            trainer = module.ImplicitQLearning(
                max_action=1.0, actor=actor, actor_optimizer=adam(actor.parameters(), lr=3e-4),
                q_network=q, q_optimizer=adam(q.parameters(), lr=3e-4), v_network=v,
                v_optimizer=adam(v.parameters(), lr=3e-4), device=str(device),
            )  # fmt: skip
        out[name] = lambda it, t=trainer, b=buffer: t.train(b.sample(batch))
    return out


def ocrl_trainer(
    name: str, task, precision: str, batch: int, device, num_seeds: int = 1, compiled: bool = False
) -> Callable[[int], None]:
    """The `update` of algos/<name>.py (torch.compile'd with `compiled`) with its default Args, --precision and
    --num-seeds, on a minibatch per seed; returns step(iteration)."""
    from ocrl.algos import a2pr, iql, prdc, td3_bc

    low, high, buffer = task.action_low, task.action_high, task.buffer
    module = {"td3_bc": td3_bc, "iql": iql, "prdc": prdc, "a2pr": a2pr}[name]
    args = module.Args(precision=precision, num_seeds=num_seeds)
    if name == "prdc":
        agent = prdc.PRDC(args, buffer, low, high, device)
    else:
        agent_class = {"td3_bc": td3_bc.TD3BC, "iql": iql.IQL, "a2pr": a2pr.A2PR}[name]
        agent = agent_class(args, task.obs_dim, task.act_dim, low, high, device)
    update = torch.compile(agent.update) if compiled else agent.update
    if name == "iql":
        return lambda it: update(buffer.sample_per_seed(batch, agent.streams))
    return lambda it: update(buffer.sample_per_seed(batch, agent.streams), it % 2 == 0)


def update_table(args: Args, device: torch.device) -> dict[str, float]:
    from ocrl.envs import load_offline_task

    task = load_offline_task(args.dataset, device=device)
    obs_dim, act_dim = task.obs_dim, task.act_dim
    corl = import_corl(args.corl_path)
    if corl is None:
        print(f"CORL not found at {args.corl_path}: only ocrl's numbers")
    steps: dict[str, Callable[[int], None]] = {}
    if corl is not None:
        b = task.buffer
        keys = ("observations", "actions", "rewards", "next_observations", "terminals")
        data = {k: getattr(b, k)[: b.size].cpu().numpy() for k in keys}
        for name, step in corl_trainers(
            corl, data, obs_dim, act_dim, args.batch_size, device
        ).items():
            if name in args.algos:
                steps[f"{name} CORL"] = step
    for name in args.algos:
        for precision in ("fp32", "bf16"):
            steps[f"{name} {precision}"] = ocrl_trainer(
                name, task, precision, args.batch_size, device
            )
    for step in steps.values():  # warm-up: allocator, PRDC's adaptive search choice
        time_round(step, 20, device)
    med = step_rates(steps, args.updates, args.rounds, device)
    print(f"\nupdates/s on {device}, one seed, torch threads {torch.get_num_threads()}, {args.dataset} "
          f"(obs {obs_dim}, act {act_dim}), batch {args.batch_size}; median of {args.rounds} interleaved "
          f"rounds of {args.updates}")  # fmt: skip
    print(
        "| algorithm | CORL fp32 | ocrl fp32 | ocrl bf16 | bf16 / fp32 | fp32 / CORL | bf16 / CORL |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.algos:
        f32, b16, base = med[f"{name} fp32"], med[f"{name} bf16"], med.get(f"{name} CORL")
        vs = (f"{f32 / base:.2f}x", f"{b16 / base:.2f}x") if base else ("-", "-")
        print(f"| {name} | {f'{base:.1f}' if base else '-'} | {f32:.1f} | {b16:.1f} | {b16 / f32:.2f}x | "
              f"{vs[0]} | {vs[1]} |")  # fmt: skip
    return med


def synther_table(args: Args, device: torch.device) -> dict[str, float]:
    from ocrl.algos import diffusion as algo
    from ocrl.nets.diffusion import DiffusionNormalizer, build_network

    d_in, depth, dim_t = 27, args.synther_depth, 128  # hopper rows [s, a, r, s', terminal]
    gen = np.random.default_rng(0)
    rows = gen.standard_normal((20_000, d_in)).astype(np.float32)
    rows[:, -1] = gen.random(20_000) < 0.01
    normalizer = DiffusionNormalizer.fit(torch.from_numpy(rows), skip=(d_in - 1,))
    data = normalizer.normalize(torch.from_numpy(rows)).to(device)
    steps, params = {}, {}
    for width in args.synther_widths:
        for precision in ("fp32", "bf16"):
            dargs = algo.Args(width=width, depth=depth, dim_t=dim_t, precision=precision)
            kwargs = dict(d_in=d_in, width=width, depth=depth, dim_t=dim_t, layer_norm=False)
            agent = algo.Diffusion(dargs, build_network("resmlp", kwargs), normalizer, device)
            params[width] = sum(p.numel() for p in agent.denoiser.parameters()) / 1e6
            steps[f"{width} {precision}"] = lambda it, a=agent, b=args.synther_batch: a.update(
                data[torch.randint(len(data), (b,), device=device)]
            )
    for step in steps.values():
        time_round(step, 2, device)
    med = step_rates(steps, args.synther_steps, args.synther_rounds, device)
    print(f"\nSynthER residual MLP (ocrl's; d_in {d_in}, depth {depth}, dim_t {dim_t}, no LayerNorm) training "
          f"steps/s on {device}, batch {args.synther_batch}, torch threads {torch.get_num_threads()}; median "
          f"of {args.synther_rounds} interleaved rounds of {args.synther_steps}")  # fmt: skip
    print(
        "| width | parameters | fp32 steps/s | bf16 steps/s | bf16 / fp32 | hours per 100k steps fp32 / bf16 |"
    )
    print("|---|---|---|---|---|---|")
    for width in args.synther_widths:
        f32, b16 = med[f"{width} fp32"], med[f"{width} bf16"]
        print(f"| {width} | {params[width]:.1f}M | {f32:.2f} | {b16:.2f} | {b16 / f32:.2f}x | "
              f"{1e5 / f32 / 3600:.1f} / {1e5 / b16 / 3600:.1f} |")  # fmt: skip
    return med


def main(args: Args) -> dict[str, float]:
    device = torch.device(args.device)
    out = update_table(args, device) if args.algos else {}
    if args.synther_widths:
        out |= {f"synther {k}": v for k, v in synther_table(args, device).items()}
    return out
