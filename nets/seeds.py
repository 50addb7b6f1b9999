"""N seeds in one process (--num-seeds): linear layers stacked on a leading seed axis, one random stream per seed,
and each seed's slice of a stacked network, optimiser or stream in the format a single-seed run saves.

Seed k's numbers never depend on the other seeds: its weights are drawn from its own `torch.Generator` (seeded
with seed k) in the same order whatever N is, its minibatches and noise come from that stream too, and a stacked
layer computes each seed's matmul on its own slice. A loss is each seed's loss summed over the seeds, so the
gradient of seed k's weights is seed k's gradient; Adam works elementwise, so one optimiser over stacked
weights is N optimisers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ocrl.nets.core import EnsembleLayerNorm, EnsembleLinear, SeedLinear


class SeedStreams:
    """One torch.Generator per seed; every random draw of the update and the minibatch indices come from these."""

    def __init__(self, seeds: Iterable[int], device: torch.device | str = "cpu") -> None:
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.device = torch.device(device)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal draws of `shape` per seed: (N, *shape)."""
        return torch.stack(
            [torch.randn(*shape, generator=g, device=self.device) for g in self.generators]
        )

    def randint(self, high: int, shape: Sequence[int]) -> torch.Tensor:
        """Uniform integers in [0, high) of `shape` per seed: (N, *shape)."""
        return torch.stack(
            [torch.randint(0, high, tuple(shape), generator=g, device=self.device) for g in self.generators]
        )  # fmt: skip

    def state_dict(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        for g, s in zip(self.generators, state, strict=True):
            g.set_state(s)


def _seed_index(layer: nn.Module, tensor: torch.Tensor, k: int, num_seeds: int) -> int | list[int]:
    """Seed k's part of a stacked layer's `tensor`: index k of a SeedLinear or of a module's `seed_parameters`
    (the seed axis dropped); in an ensemble of E members per seed, stored member-major (member e of seed k at row
    e N + k), its E rows."""
    if not isinstance(layer, (EnsembleLinear, EnsembleLayerNorm)):
        return k
    return [e * num_seeds + k for e in range(tensor.shape[0] // num_seeds)]


def _stacked_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The layer of each stacked parameter of `module`, by state-dict name: every parameter of a SeedLinear or
    an ensemble layer, and those a module names in its `seed_parameters` (e.g. a state-independent log-std of
    shape (N, act_dim), seed k's slice the single-seed (act_dim,))."""
    stacked = (SeedLinear, EnsembleLinear, EnsembleLayerNorm)
    return {
        f"{prefix}.{name}" if prefix else name: layer
        for prefix, layer in module.named_modules()
        for name, _ in layer.named_parameters(recurse=False)
        if isinstance(layer, stacked) or name in getattr(layer, "seed_parameters", ())
    }


def init_seeds(module: nn.Module, streams: SeedStreams) -> nn.Module:
    """Draw every stacked linear layer's weights seed by seed, each from its own stream, with nn.Linear's default
    distribution U(+-1/sqrt(in)) (an ensemble's members in order): seed k's weights are the same for any N."""
    num_seeds = len(streams.generators)
    with torch.no_grad():
        for layer in module.modules():
            if not isinstance(layer, (SeedLinear, EnsembleLinear)):
                continue
            bound = 1.0 / math.sqrt(layer.in_dim)
            for k, g in enumerate(streams.generators):
                for tensor in (layer.weight, layer.bias):
                    index = _seed_index(layer, tensor, k, num_seeds)
                    for row in [index] if isinstance(index, int) else index:
                        tensor[row].uniform_(-bound, bound, generator=g)
    return module


class SeedSlice:
    """Seed k's checkpoint part of a stacked module, a bare tensor with a leading seed axis (e.g. SAC's (N,)
    log-temperature: seed k's is row k), their optimiser (give `module`, the module or tensor it steps) or
    SeedStreams: `state_dict` is what a single-seed run of seed k saves, `load_state_dict` writes such a state into
    seed k's slice. Any other part (e.g. the dataset's ReplayBuffer) is shared by the seeds: its whole state."""

    def __init__(
        self, part: Any, k: int, num_seeds: int, module: nn.Module | torch.Tensor | None = None
    ) -> None:
        self.part, self.k, self.num_seeds = part, k, num_seeds
        owner = module if isinstance(part, torch.optim.Optimizer) else part
        # The optimiser of a stacked tensor: seed k's state is row k.
        if isinstance(owner, torch.Tensor) and owner is not part:
            self.layers, self.names = {"": None}, [""]
        else:
            self.layers = _stacked_layers(owner) if isinstance(owner, nn.Module) else {}
            self.names = [name for name, _ in owner.named_parameters()] if owner is not part else []

    def _index(self, name: str, tensor: torch.Tensor) -> int | list[int]:
        return _seed_index(self.layers[name], tensor, self.k, self.num_seeds)

    def state_dict(self) -> Any:
        k, part = self.k, self.part
        if isinstance(part, SeedStreams):
            return part.generators[k].get_state()
        if isinstance(part, torch.Tensor):
            return part[k].detach().clone()
        if not isinstance(part, (nn.Module, torch.optim.Optimizer)):
            return part.state_dict()
        if isinstance(part, nn.Module):
            return {
                name: (t[self._index(name, t)] if name in self.layers else t).detach().clone()
                for name, t in part.state_dict().items()
            }
        full = part.state_dict()
        state = {}
        for index, entry in full["state"].items():
            name = self.names[index]
            state[index] = {
                key: v[self._index(name, v)].clone() if key != "step" else v.clone()
                for key, v in entry.items()
            }
        return {"state": state, "param_groups": full["param_groups"]}

    def load_state_dict(self, state: Any) -> None:
        k, part = self.k, self.part
        if isinstance(part, SeedStreams):
            part.generators[k].set_state(state)
            return
        if isinstance(part, torch.Tensor):
            with torch.no_grad():
                part[k] = state.to(part)
            return
        if not isinstance(part, (nn.Module, torch.optim.Optimizer)):
            part.load_state_dict(state)
            return
        if isinstance(part, nn.Module):
            own = part.state_dict()
            with torch.no_grad():
                for name, value in state.items():
                    target = own[name]
                    if name in self.layers:
                        target[self._index(name, target)] = value.to(target)
                    elif not torch.equal(target, value.to(target)):
                        raise ValueError(f"'{name}' differs from this run's (shared by its seeds)")
            return
        full = part.state_dict()
        params = [p for group in part.param_groups for p in group["params"]]
        for index, entry in state["state"].items():
            index = int(index)
            slot = full["state"].setdefault(index, {})
            name = self.names[index]
            for key, value in entry.items():
                if key == "step":
                    slot[key] = value.clone()
                    continue
                if key not in slot:
                    slot[key] = torch.zeros_like(params[index])
                slot[key][self._index(name, slot[key])] = value.to(slot[key])
        # The saved hyperparameters too (the same for every seed): an lr schedule has moved the lr.
        part.load_state_dict({"state": full["state"], "param_groups": state["param_groups"]})


def seed_parts(parts: dict[str, Any], k: int, num_seeds: int) -> dict[str, Any]:
    """Seed k's checkpoint parts of an agent's stacked `parts` (an optimiser is matched to the module or bare
    tensor whose parameters it steps; an lr schedule, the same for every seed, is every seed's part as it is; a
    list of N parts, one per seed such as the online files' replay buffers and training envs, gives seed k its
    own)."""
    # What an optimiser may step: a module's parameters, or a bare tensor alone.
    owners = [
        p if isinstance(p, nn.Module) else [p]
        for p in parts.values()
        if isinstance(p, (nn.Module, torch.Tensor))
    ]
    sliced = {}
    for name, part in parts.items():
        if isinstance(part, torch.optim.lr_scheduler.LRScheduler):
            sliced[name] = part
            continue
        if isinstance(part, list):
            if len(part) != num_seeds:
                raise ValueError(f"part '{name}': {len(part)} entries for {num_seeds} seeds")
            sliced[name] = part[k]
            continue
        module = None
        if isinstance(part, torch.optim.Optimizer):
            ids = [id(p) for group in part.param_groups for p in group["params"]]
            owner = next(m for m in owners if [id(p) for p in _params(m)] == ids)
            module = owner if isinstance(owner, nn.Module) else owner[0]
        sliced[name] = SeedSlice(part, k, num_seeds, module)
    return sliced


def _params(owner: nn.Module | list[torch.Tensor]) -> list[torch.Tensor]:
    return list(owner.parameters()) if isinstance(owner, nn.Module) else owner


def seed_member(stacked: nn.Module, plain: nn.Module, k: int, num_seeds: int) -> nn.Module:
    """Copy seed k's weights of `stacked` into `plain`, the same network built for one seed without stacking
    (e.g. the actor a single-seed run exports), and return it."""
    plain.load_state_dict(SeedSlice(stacked, k, num_seeds).state_dict())
    return plain
