"""GGD-TD (`algos/ggd_td.py`, sb3-faithful networks: 2 twins x 5 members, Tanh [256, 256]): seconds per SAC
update (critic step, one actor and temperature step, Polyak, and the `agent.diagnostics()` the loop logs)
for --loss mse (the plain-SAC baseline, the same networks), --loss gaussian, --loss ggd --reg none, the
default (ggd + BIEV with the on-device xi search) and the default with the released CPU Nelder-Mead xi
solver, on a device buffer of synthetic transitions; interleaved rounds, medians, ratios against --loss
mse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .harness import TransitionArgs, replay_buffer, step_rates, synthetic, time_round


@dataclass
class Args(TransitionArgs):
    """GGD-TD's SAC update for each loss against --loss mse."""

    updates: int = 300
    """updates per timed round"""
    rounds: int = 5
    """interleaved rounds per variant; the median is reported"""


def main(args: Args) -> dict[str, float]:
    from ocrl.algos import ggd_td

    device = torch.device(args.device)
    data = synthetic(100_000, args.obs_dim, args.act_dim)
    buffer = replay_buffer(data, device)
    flags = {
        "--loss mse (plain SAC)": dict(loss="mse"),
        "--loss gaussian": dict(loss="gaussian"),
        "--loss ggd --reg none": dict(loss="ggd", reg="none"),
        "default (ggd + BIEV, device xi)": dict(),
        "default, --xi-solver nelder-mead": dict(xi_solver="nelder-mead"),
    }
    steps: dict[str, Callable[[int], None]] = {}
    for name, over in flags.items():
        torch.manual_seed(0)
        gargs = ggd_td.Args(batch_size=args.batch_size, **over)
        agent = ggd_td.GGDSAC(gargs, args.obs_dim, args.act_dim, -1.0, 1.0, device)

        def step(_: int, agent=agent) -> None:
            # One seed's (N = 1, B, ...) minibatch of the seed-stacked update.
            agent.update(ggd_td.Batch(*(t[None] for t in buffer.sample(args.batch_size))), 1)
            agent.diagnostics()

        steps[name] = step
    for step in steps.values():  # warm-up
        time_round(step, 5, device)
    rates = step_rates(steps, args.updates, args.rounds, device)
    ms = {name: 1e3 / r for name, r in rates.items()}
    base = ms["--loss mse (plain SAC)"]
    print(f"\nGGD-TD SAC update on {device} (obs {args.obs_dim}, act {args.act_dim}, batch {args.batch_size}, "
          f"2 twins x 5 members, Tanh [256, 256], torch threads {torch.get_num_threads()}; median of "
          f"{args.rounds} interleaved rounds of {args.updates})")  # fmt: skip
    print("| variant | ms per update | ratio vs --loss mse |\n|---|---|---|")
    for name, t in ms.items():
        print(f"| {name} | {t:.2f} | {t / base:.2f}x |")
    return ms
