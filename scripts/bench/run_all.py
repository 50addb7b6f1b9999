"""Every benchmark but `threads` in turn, at its default sizes, on one device (the old `bench.py` with no
--only)."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass
from typing import Literal

from .harness import DeviceArgs

Name = Literal[
    "updates", "memory", "knn", "hdpo", "diffusion", "pgd", "ggd_td", "expo", "lot_sizing",
    "precision",
]  # fmt: skip


@dataclass
class Args(DeviceArgs):
    """Every benchmark but threads, at its default sizes."""

    skip: tuple[Name, ...] = ()
    """benchmarks to leave out"""
    compile: bool = True
    """also time the torch.compile'd variants (updates; diffusion and expo on CUDA)"""


def main(args: Args) -> None:
    for name in typing.get_args(Name):
        if name in args.skip:
            continue
        module = importlib.import_module(f"{__package__}.{name}")
        given = {"device": args.device, "threads": args.threads, "compile": args.compile}
        fields = {f.name for f in dataclasses.fields(module.Args)}
        module.main(module.Args(**{k: v for k, v in given.items() if k in fields}))
