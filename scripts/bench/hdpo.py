"""HDPO's simulator (`ocrl.envs.inventory`, one store, lost sales, L = 2, the vanilla [32, 32, 32] ELU
policy): simulated path-periods per second, forward only and forward + backward through T = 50 periods,
and the time of one epoch at the reference's N = 32768 paths, batch 8192, against a plain version of the
same dynamics written with clones and slice assignments in the same run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import nn

from .harness import DeviceArgs, interleaved, medians, seconds, time_round


@dataclass
class Args(DeviceArgs):
    """HDPO's inventory simulator against a plain clone-and-assign rollout."""

    batches: tuple[int, ...] = (1024, 8192)
    """paths per simulated batch"""
    rounds: int = 5
    """interleaved rounds per variant; the median is reported"""


def plain_lost_sales_rollout(
    policy: nn.Module, initial: torch.Tensor, demand: torch.Tensor, p: float, lead_time: int
) -> torch.Tensor:
    """Baseline: one store, lost sales, written with a clone and slice assignments per period."""
    inv, total = initial.clone(), 0.0
    for t in range(demand.shape[-1]):
        orders = policy(inv)
        inv = inv.clone()
        y = inv[:, :, 0] - demand[:, :, t]
        cost = p * torch.clip(-y, min=0) + torch.clip(y, min=0)
        new = torch.zeros_like(inv)
        new[:, :, 0] = torch.clip(y, min=0) + inv[:, :, 1]
        new[:, :, 1:-1] = inv[:, :, 2:]
        new[:, :, lead_time - 1] += orders
        inv, total = new, total + cost.sum(-1)
    return total


def main(args: Args) -> dict[str, float]:
    from ocrl.algos import hdpo
    from ocrl.envs.inventory import (
        InventorySimulator,
        InventoryState,
        make_problem,
        sample_scenario,
    )

    device = torch.device(args.device)
    problem = make_problem("one_store_lost", p=9, lead_time=2)
    sim = InventorySimulator(problem, device)
    policy = hdpo.make_policy(hdpo.Args(), problem)[0].to(device)
    periods, out = 50, {}
    print(
        f"\nHDPO simulator on {device}: one store, lost sales, L = 2, T = {periods}, [32, 32, 32] ELU"
    )
    for batch in args.batches:
        scenario = sample_scenario(problem, batch, periods, seed=0).to(device)

        def ours(scenario=scenario):
            return hdpo.simulate(policy, sim, scenario, periods)

        def plain(scenario=scenario):
            return plain_lost_sales_rollout(
                lambda inv: policy(InventoryState(inv, inv[:, :0]))[0],
                scenario.initial_stores, scenario.demand, 9.0, 2,
            )  # fmt: skip

        if not torch.allclose(ours(), plain(), rtol=1e-4):
            raise AssertionError("the plain rollout and ocrl's simulator disagree")

        def forward(fn):
            with torch.no_grad():
                fn()

        def forward_backward(fn):
            fn().mean().backward()

        for mode, run in (("forward", forward), ("forward+backward", forward_backward)):
            variants = {
                n: lambda fn=fn, run=run: seconds(lambda: run(fn), device)
                for n, fn in (("plain", plain), ("ocrl", ours))
            }
            med = medians(interleaved(variants, args.rounds))
            rate = {k: batch * periods / v / 1e6 for k, v in med.items()}
            out[f"{mode} {batch}"] = med["plain"] / med["ocrl"]
            print(
                f"  batch {batch:5d} {mode:16s}: plain {rate['plain']:.2f}M, ocrl {rate['ocrl']:.2f}M "
                f"path-periods/s ({out[f'{mode} {batch}']:.2f}x)"
            )
    step = statistics.median(
        [time_round(lambda _: ours().mean().backward(), 1, device) for _ in range(args.rounds)]
    ) if 8192 in args.batches else None  # fmt: skip
    if step is not None:
        print(f"  one epoch at N = 32768, batch 8192 (4 gradient steps): {4 / step:.2f} s")
    return out
