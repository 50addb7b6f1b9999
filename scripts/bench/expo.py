"""EXPO (`algos/expo.py`, the scripts' networks and N = 8 + K = 8 candidates): wall time per environment
step, i.e. one OTF action (EMA diffusion chain for the N samples, edits, subset-min Q) plus the --utd
critic steps with their OTF backups and the diffusion, edit and temperature steps, against RLPD
(`--policy gaussian`, the same critics) in the same run; interleaved rounds of --steps, medians, the ratio;
on CUDA with --compile also EXPO with the OTF selection compiled into CUDA graphs (`--compile` of
algos/expo.py). At UTD 20 an EXPO step is ~1.4 TFLOP, tens of seconds on one CPU core: lower --utd there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .harness import TransitionArgs, replay_buffer, step_rates, synthetic, time_round


@dataclass
class Args(TransitionArgs):
    """EXPO's wall time per environment step against RLPD's."""

    utd: int = 20
    """critic steps per environment step (the scripts: 20)"""
    steps: int = 2
    """environment steps per timed round"""
    rounds: int = 5
    """interleaved rounds per variant; the median is reported"""
    compile: bool = True
    """on CUDA, also time EXPO with --compile (CUDA graphs)"""


def main(args: Args) -> dict[str, float]:
    from ocrl.algos import expo

    device = torch.device(args.device)
    data = synthetic(100_000, args.obs_dim, args.act_dim)
    offline, online = (
        replay_buffer(data, device, rows) for rows in (slice(None), slice(0, 10_000))
    )
    obs = torch.as_tensor(data["observations"][:1], device=device)
    steps: dict[str, Callable[[int], None]] = {}
    variants = [("RLPD (--policy gaussian)", "gaussian", False), ("EXPO", "expo", False)]
    if args.compile and device.type == "cuda":
        variants.append(("EXPO --compile (CUDA graphs)", "expo", True))
    for name, policy, compiled in variants:
        torch.manual_seed(0)
        eargs = expo.Args(
            policy=policy, utd_ratio=args.utd, batch_size=args.batch_size, compile=compiled
        )
        agent = expo.EXPO(eargs, args.obs_dim, args.act_dim, device)

        def step(_: int, agent=agent) -> None:
            agent.act(obs)
            agent.update(expo.mixed_minibatches(offline, online, args.batch_size, args.utd))
            agent.diagnostics()

        steps[name] = step
    for step in steps.values():  # warm-up
        time_round(step, 1, device)
    rates = step_rates(steps, args.steps, args.rounds, device)
    secs = {name: 1.0 / r for name, r in rates.items()}
    base = secs["RLPD (--policy gaussian)"]
    print(f"\nEXPO vs RLPD per environment step on {device} (obs {args.obs_dim}, act {args.act_dim}, "
          f"batch {args.batch_size}, UTD {args.utd}, 10 critics (256, 256, 256), N 8 + K 8, T 10, "
          f"torch threads {torch.get_num_threads()}; median of {args.rounds} interleaved rounds of "
          f"{args.steps} steps)")  # fmt: skip
    print("| variant | s per env step | ratio vs RLPD |\n|---|---|---|")
    for name, t in secs.items():
        print(f"| {name} | {t:.3f} | {t / base:.1f}x |")
    return secs
