"""`python -m scripts.bench <benchmark> [flags]`: one tyro subcommand per benchmark module."""

from __future__ import annotations

from typing import Annotated, Union

import torch
import tyro

from scripts.bench import BENCHMARKS, benchmark
from scripts.bench.harness import CpuArgs


def main() -> None:
    modules = {name: benchmark(name) for name in BENCHMARKS}
    choices = tuple(Annotated[m.Args, tyro.conf.subcommand(n)] for n, m in modules.items())
    args = tyro.cli(Union[choices], prog="python -m scripts.bench")  # noqa: UP007 (built at run time)
    if isinstance(args, CpuArgs) and args.threads is not None:
        torch.set_num_threads(args.threads)
    next(m for m in modules.values() if type(args) is m.Args).main(args)


if __name__ == "__main__":
    main()
