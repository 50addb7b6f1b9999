"""--num-seeds: per-seed updates/s of algos/td3_bc.py's update with N seeds stacked (N = 1, 2, 4, 8, 16), in fp32
and bf16, beside CORL's TD3+BC update (tinkoff-ai/CORL, read from an outside checkout, --corl-path, as the
precision benchmark does) on the shipped hopper medium data. Rounds of every variant are interleaved and the
medians reported (harness.py); run it with --threads 1 for per-core numbers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .harness import DeviceArgs, interleaved, medians, time_round
from .precision import corl_trainers, import_corl


@dataclass
class Args(DeviceArgs):
    """per-seed updates/s of td3_bc at several --num-seeds, fp32 and bf16, against CORL's TD3+BC."""

    corl_path: str = "../CORL"
    """CORL checkout (git clone https://github.com/tinkoff-ai/CORL); without it only ocrl's numbers"""
    dataset: str = "ocrl/hopper/medium-v0"
    """the offline data the updates sample from"""
    num_seeds: tuple[int, ...] = (1, 2, 4, 8, 16)
    """the group sizes N to time"""
    precisions: tuple[str, ...] = ("fp32", "bf16")
    """--precision values to time"""
    seed_updates: int = 400
    """seed-updates per timed round (a group of N makes seed_updates / N update calls, at least 4)"""
    rounds: int = 5
    """interleaved rounds per variant; the median is reported"""
    batch_size: int = 256
    """minibatch of every seed's update (the file's default)"""


def td3_bc_step(task, num_seeds: int, precision: str, batch: int, device):
    """One call of `TD3BC.update` for N stacked seeds (default networks) on per-seed minibatches."""
    from ocrl.algos import td3_bc

    args = td3_bc.Args(num_seeds=num_seeds, precision=precision)
    low, high, buffer = task.action_low, task.action_high, task.buffer
    agent = td3_bc.TD3BC(args, task.obs_dim, task.act_dim, low, high, device)
    return lambda it: agent.update(buffer.sample_per_seed(batch, agent.streams), it % 2 == 0)


def main(args: Args) -> dict[str, float]:
    from ocrl.envs import load_offline_task

    device = torch.device(args.device)
    task = load_offline_task(args.dataset, device=device)
    variants: dict[str, tuple] = {}
    corl = import_corl(args.corl_path)
    if corl is None:
        print(f"CORL not found at {args.corl_path}: only ocrl's numbers")
    else:
        b = task.buffer
        keys = ("observations", "actions", "rewards", "next_observations", "terminals")
        data = {k: getattr(b, k)[: b.size].cpu().numpy() for k in keys}
        trainers = corl_trainers(corl, data, task.obs_dim, task.act_dim, args.batch_size, device)
        variants["CORL"] = (trainers["td3_bc"], 1)
    for precision in args.precisions:
        for n in args.num_seeds:
            step = td3_bc_step(task, n, precision, args.batch_size, device)
            variants[f"{precision} N={n}"] = (step, n)
    for step, _ in variants.values():  # warm-up
        time_round(step, 4, device)
    # A round of N stacked seeds makes 1/N as many calls: every variant times the same seed-updates.
    measures = {
        name: lambda s=step, n=n: n * time_round(s, max(4, args.seed_updates // n), device)
        for name, (step, n) in variants.items()
    }
    med = medians(interleaved(measures, args.rounds))
    base = med.get("CORL")
    print(f"\nper-seed updates/s of td3_bc on {device}, torch threads {torch.get_num_threads()}, "
          f"{args.dataset}, batch {args.batch_size}; median of {args.rounds} interleaved rounds"
          + (f"; CORL's TD3+BC {base:.1f}" if base else ""))  # fmt: skip
    header = " | ".join(f"N = {n}" for n in args.num_seeds)
    print(f"| precision | {header} |\n|---|" + "---|" * len(args.num_seeds))
    for precision in args.precisions:
        cells = []
        for n in args.num_seeds:
            rate = med[f"{precision} N={n}"]
            cells.append(f"{rate:.1f}" + (f" ({rate / base:.2f}x)" if base else ""))
        print(f"| {precision} | " + " | ".join(cells) + " |")
    return med
