"""--num-seeds: per-seed updates/s of the td3_bc, iql, prdc and a2pr updates with N seeds stacked (N = 1, 2, 4, 8,
16), in fp32 and bf16, beside CORL's TD3+BC and IQL updates (tinkoff-ai/CORL, read from an outside checkout,
--corl-path, as the precision benchmark does) on the shipped hopper medium data. Rounds of an algorithm's variants
are interleaved and the medians reported (harness.py); run it with --threads 1 for per-core numbers."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .harness import DeviceArgs, interleaved, medians, time_round
from .precision import ALGOS, corl_trainers, import_corl, ocrl_trainer


@dataclass
class Args(DeviceArgs):
    """per-seed updates/s at several --num-seeds, fp32 and bf16, against CORL's TD3+BC and IQL."""

    corl_path: str = "../CORL"
    """CORL checkout (git clone https://github.com/tinkoff-ai/CORL); without it only ocrl's numbers"""
    dataset: str = "ocrl/hopper/medium-v0"
    """the offline data the updates sample from"""
    algos: tuple[str, ...] = ALGOS
    """which of td3_bc, iql, prdc, a2pr to time"""
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
    compile: bool = False
    """also time the torch.compile'd updates ("+c"; their compile time is printed)"""


def main(args: Args) -> dict[str, float]:
    from ocrl.envs import load_offline_task

    device = torch.device(args.device)
    if args.compile:  # every variant compiles the same functions at other shapes: no eager fallback
        torch._dynamo.config.recompile_limit = 64
    task = load_offline_task(args.dataset, device=device)
    corl = import_corl(args.corl_path)
    if corl is None:
        print(f"CORL not found at {args.corl_path}: only ocrl's numbers")
        baselines = {}
    else:
        b = task.buffer
        keys = ("observations", "actions", "rewards", "next_observations", "terminals")
        data = {k: getattr(b, k)[: b.size].cpu().numpy() for k in keys}
        baselines = corl_trainers(corl, data, task.obs_dim, task.act_dim, args.batch_size, device)
    out = {}
    for name in args.algos:
        variants = {"CORL": (baselines[name], 1)} if name in baselines else {}
        for precision in args.precisions:
            for n in args.num_seeds:
                for compiled in (False, True) if args.compile else (False,):
                    step = ocrl_trainer(name, task, precision, args.batch_size, device, n, compiled)
                    variants[f"{precision}{'+c' * compiled} N={n}"] = (step, n)
        for key, (
            step,
            _,
        ) in variants.items():  # warm-up (PRDC's adaptive search choice, compilation)
            start = time.perf_counter()
            time_round(step, 4, device)
            if "+c" in key:
                print(
                    f"{name} {key}: compiled and 4 updates in {time.perf_counter() - start:.1f} s"
                )
        # A round of N stacked seeds makes 1/N as many calls: every variant times the same seed-updates.
        measures = {
            key: lambda s=step, n=n: n * time_round(s, max(4, args.seed_updates // n), device)
            for key, (step, n) in variants.items()
        }
        med = medians(interleaved(measures, args.rounds))
        out |= {f"{name} {key}": v for key, v in med.items()}
        base = med.get("CORL")
        print(f"\n{name}: per-seed updates/s on {device}, torch threads {torch.get_num_threads()}, "
              f"{args.dataset}, batch {args.batch_size}; median of {args.rounds} interleaved rounds"
              + (f"; CORL's {base:.1f} (x: the ratio to it)" if base else ""))  # fmt: skip
        header = " | ".join(f"N = {n}" for n in args.num_seeds)
        print(f"| precision | {header} |\n|---|" + "---|" * len(args.num_seeds))
        for variant in dict.fromkeys(key.split(" N=")[0] for key in variants if key != "CORL"):
            cells = []
            for n in args.num_seeds:
                rate = med[f"{variant} N={n}"]
                cells.append(f"{rate:.1f}" + (f" ({rate / base:.2f}x)" if base else ""))
            print(f"| {variant} | " + " | ".join(cells) + " |")
    return out
