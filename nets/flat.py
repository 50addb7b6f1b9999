"""Parameters packed in one contiguous buffer, so that an Adam step or a Polyak update is one pass over all of a
network's weights instead of a few operations per tensor (on the CPU torch's foreach optimisers loop over tensors)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

# Fused Adam's CPU kernel splits work into 16-float cache lines and runs 8- or 16-wide vectors, with a scalar loop
# for a remainder whose digits can differ; a buffer padded to a multiple of ALIGN elements has no remainder.
ALIGN = 64


def packed(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D buffer that `tensors` are consecutive contiguous views of, in their order, or None."""
    if not tensors:
        return None
    first = tensors[0]
    start = offset = first.storage_offset()
    for t in tensors:
        same = t.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        if not (
            same and t.is_contiguous() and t.dtype == first.dtype and t.storage_offset() == offset
        ):
            return None
        offset += t.numel()
    buffer = torch.empty(0, dtype=first.dtype, device=first.device)
    return buffer.set_(first.untyped_storage(), start, (offset - start,))


def pack_parameters(params: Iterable[torch.Tensor], align: int = 1) -> torch.Tensor:
    """Move `params` into one contiguous buffer, zero-padded to a multiple of `align` elements (each parameter
    becomes a view of it, values unchanged); returns the buffer. Parameters already packed unpadded stay put."""
    params = list(params)
    if align == 1 and (buffer := packed(params)) is not None:
        return buffer
    if len({(p.dtype, p.device) for p in params}) != 1:
        raise ValueError("pack_parameters: the parameters must share one dtype and device")
    size = sum(p.numel() for p in params)
    buffer = params[0].new_zeros(-(-size // align) * align)
    offset = 0
    with torch.no_grad():
        for p in params:
            view = buffer[offset : offset + p.numel()].view_as(p)
            view.copy_(p)
            p.data = view
            offset += p.numel()
    return buffer


class FlatAdam(torch.optim.Adam):
    """Adam as torch's `fused=True` computes it, as one fused step over the parameters packed in one buffer: every
    element runs through the kernel's vector loop, so its digits do not depend on where it sits (a stacked seed's
    update equals its single-seed run's). Every parameter needs a gradient at each step; `state_dict` is torch
    Adam's (per-parameter step, exp_avg, exp_avg_sq)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        params = list(params)
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        self.flat = pack_parameters(params, ALIGN)
        self.flat_grad = torch.zeros_like(self.flat)
        self.size = sum(p.numel() for p in params)
        # The whole buffer's step, exp_avg and exp_avg_sq, made at the first step (torch's Adam state is lazy too).
        self.buffers: dict[str, torch.Tensor] | None = None

    def _view_state(self) -> None:
        """Point each parameter's state at its slice of the whole buffer's moments (copying a loaded state in)."""
        flat_state = self.buffers = {
            "step": torch.zeros((), device=self.flat.device),
            "exp_avg": torch.zeros_like(self.flat),
            "exp_avg_sq": torch.zeros_like(self.flat),
        }
        offset = 0
        for p in self.param_groups[0]["params"]:
            end = offset + p.numel()
            views = {
                key: flat_state[key][offset:end].view_as(p) for key in ("exp_avg", "exp_avg_sq")
            }
            if state := self.state.get(p):
                for key, view in views.items():
                    view.copy_(state[key])
                flat_state["step"].copy_(state["step"])
            self.state[p] = {"step": flat_state["step"], **views}
            offset = end

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.buffers = None
        if self.state:
            self._view_state()

    # Eager under torch.compile: the parameters alias the buffer, which functionalisation cannot trace.
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure=None):
        if len(self.param_groups) != 1 or closure is not None:
            raise ValueError("FlatAdam: one parameter group and no closure")
        group = self.param_groups[0]
        params = group["params"]
        if missing := [i for i, p in enumerate(params) if p.grad is None]:
            raise ValueError(
                f"FlatAdam: parameters {missing} have no gradient; it steps every parameter"
            )
        if self.buffers is None:
            self._view_state()
        torch.cat([p.grad.reshape(-1) for p in params], out=self.flat_grad[: self.size])
        step, (beta1, beta2) = self.buffers["step"], group["betas"]
        step.add_(1)
        # What torch.optim.Adam(fused=True) runs, called directly: its Python layer costs more than the kernel.
        torch._fused_adam_(
            [self.flat], [self.flat_grad], [self.buffers["exp_avg"]], [self.buffers["exp_avg_sq"]], [], [step],
            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"], amsgrad=False,
            maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip
        return None
