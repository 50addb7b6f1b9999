"""SynthER's code (conglu1997/SynthER @ e6835a5) imported from an outside checkout, its network's weights
renamed into ours, and the same-maths check of the diffusion benchmark. Nothing of SynthER is modified or
copied."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import sys
from pathlib import Path

import torch
from torch import nn

from .harness import Unused, installed, stand_in, stand_ins


def import_synther(path: str):
    """SynthER's (ElucidatedDiffusion, ResidualMLPDenoiser, Normalizer) from a source tree at `path`, or None.

    synther/diffusion/elucidated_diffusion.py imports packages that forward/sample never touch (wandb,
    accelerate, redq, torchdiffeq, synther.online.utils -> gym/redq). Those that are not installed are
    replaced by empty stand-in modules in sys.modules for the import only, and removed again afterwards.
    einops, gin-config and ema-pytorch (what forward/sample/EMA use) must be installed.
    """
    if not (Path(path) / "synther" / "diffusion" / "elucidated_diffusion.py").is_file():
        return None
    unused = {
        "wandb": {"log": lambda *a, **k: None},
        "accelerate": {"Accelerator": Unused},
        "torchdiffeq": {"odeint": Unused},
        "redq": {},
        "redq.algos": {},
        "redq.algos.core": {"ReplayBuffer": Unused},
    }
    modules = {
        name: stand_in(name, **attrs)
        for name, attrs in unused.items()
        if name not in sys.modules and not installed(name)
    }
    if "synther.online.utils" not in sys.modules:
        modules["synther.online.utils"] = stand_in(
            "synther.online.utils", make_inputs_from_replay_buffer=Unused
        )
    with stand_ins(modules, path=str(path)):
        try:
            ed = importlib.import_module("synther.diffusion.elucidated_diffusion")
            dn = importlib.import_module("synther.diffusion.denoiser_network")
            norm = importlib.import_module("synther.diffusion.norm")
        except ImportError as e:
            print(f"SynthER import failed ({e}); pip install einops gin-config ema-pytorch")
            return None
    return ed.ElucidatedDiffusion, dn.ResidualMLPDenoiser, norm.Normalizer


def synther_to_ocrl_state(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """SynthER ResidualMLPDenoiser state_dict -> ocrl ResidualMLPDenoiser names.

    time_mlp.* (RandomOrLearnedSinusoidalPosEmb.weights, a frozen Parameter there, is a buffer in ours) and
    proj.* keep their names; residual_mlp.network.0 -> input_layer, residual_mlp.network.{i+1}.linear ->
    blocks.{i}, .ln -> norms.{i}, residual_mlp.network.{depth+1} (final LayerNorm) -> final_norm,
    residual_mlp.final_linear -> output_layer.
    """
    out = {}
    for key, value in state.items():
        if key.startswith(("time_mlp.", "proj.")):
            new = key
        elif key.startswith("residual_mlp.final_linear."):
            new = "output_layer." + key.split(".", 2)[2]
        else:
            _, _, index, rest = key.split(".", 3)  # residual_mlp.network.<i>.<rest>
            i = int(index)
            if i == 0:
                new = f"input_layer.{rest}"
            elif i == depth + 1:
                new = f"final_norm.{rest}"
            else:
                part, leaf = rest.split(".", 1)
                group = {"linear": "blocks", "ln": "norms"}[part]
                new = f"{group}.{i - 1}.{leaf}"
        out[new] = value
    return out


def quiet(fn, *a, **k):
    """SynthER's Normalizer prints its statistics; keep the benchmark's output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


def same_maths(d_in: int, width: int, depth: int, sample_steps: int, synther) -> str:
    """Load SynthER's network weights into ours and compare F, D(x; sigma), the loss and the sampler."""
    from ocrl.nets.diffusion import EDMDenoiser, ResidualMLPDenoiser, heun_sample

    ElucidatedDiffusion, SynResMLP, SynNormalizer = synther
    dim_t = 128
    lines = []
    for layer_norm in (False, True):
        torch.manual_seed(1)
        theirs = SynResMLP(
            d_in, dim_t=dim_t, mlp_width=width, num_layers=depth, layer_norm=layer_norm
        )
        # Non-trivial LayerNorm affine parameters, so that a misplaced norm would show.
        if layer_norm:
            with torch.no_grad():
                for m in theirs.modules():
                    if isinstance(m, nn.LayerNorm):
                        m.weight.normal_(1.0, 0.3), m.bias.normal_(0.0, 0.3)
        ours = ResidualMLPDenoiser(d_in, width, depth, dim_t, layer_norm=layer_norm)
        ours.load_state_dict(synther_to_ocrl_state(theirs.state_dict(), depth), strict=True)
        torch.manual_seed(5)
        x = torch.randn(4096, d_in) * 2
        sigma = (-1.2 + 1.2 * torch.randn(4096)).exp()
        sigma[:2] = torch.tensor([0.002, 80.0])
        x = x + sigma[:, None] * torch.randn_like(x)
        # F alone in float64: a structural difference (layer order, activation placement) would show far
        # above rounding; D(x; sigma) in float32, ours through EDMDenoiser, theirs through
        # ElucidatedDiffusion.preconditioned_network_forward.
        with torch.no_grad():
            th64, ou64 = copy.deepcopy(theirs).double(), copy.deepcopy(ours).double()
            c_noise = 0.25 * sigma.double().log()
            f_diff = (ou64(x.double(), c_noise) - th64(x.double(), c_noise)).abs().max().item()
            edm = ElucidatedDiffusion(theirs, normalizer=nn.Identity(), event_shape=[d_in])
            d_ours, d_theirs = (
                EDMDenoiser(ours)(x, sigma),
                edm.preconditioned_network_forward(x, sigma),
            )
        diff = (d_ours - d_theirs).abs().max().item()
        rel = ((d_ours - d_theirs).abs() / d_theirs.abs().clamp_min(1.0)).max().item()
        lines.append(f"LayerNorm {layer_norm}: max |D_ours - D_synther| = {diff:.2e} (float32; relative to "
                     f"max(|D|, 1) {rel:.1e}); network F alone in float64: {f_diff:.1e}")  # fmt: skip
    # The loss with the same sigma and noise draws (SynthER draws from the global RNG, ours from a generator
    # seeded alike: sigma first, then the noise), through SynthER's Normalizer on raw rows.
    torch.manual_seed(2)
    theirs = SynResMLP(d_in, dim_t=dim_t, mlp_width=width, num_layers=depth, layer_norm=False)
    ours = ResidualMLPDenoiser(d_in, width, depth, dim_t)
    ours.load_state_dict(synther_to_ocrl_state(theirs.state_dict(), depth))
    raw = torch.randn(20_000, d_in) * 3 + 1
    raw[:, -1] = (torch.rand(20_000) < 0.01).float()
    normalizer = quiet(SynNormalizer, raw, skip_dims=[d_in - 1])
    edm = ElucidatedDiffusion(theirs, normalizer=normalizer, event_shape=[d_in])
    den = EDMDenoiser(ours)
    batch = raw[:256]
    torch.manual_seed(3)
    loss_theirs = edm(batch).item()
    loss_ours = den.loss(normalizer.normalize(batch), torch.Generator().manual_seed(3)).item()
    lines.append(f"EDM loss, same draws: ours {loss_ours:.6f}, SynthER {loss_theirs:.6f}, "
                 f"|diff| {abs(loss_ours - loss_theirs):.1e}")  # fmt: skip
    # The stochastic Heun sampler with the same noise (x_0 then one eps per step, in the same order).
    steps = min(sample_steps, 32)
    torch.manual_seed(4)
    with torch.no_grad():
        s_theirs = edm.sample(512, num_sample_steps=steps, clamp=False, disable_tqdm=True)
        s_ours = normalizer.unnormalize(
            heun_sample(den, (512, d_in), steps, generator=torch.Generator().manual_seed(4))
        )
    diff = (s_ours - s_theirs).abs().max().item()
    scale = s_theirs.abs().max().item()
    lines.append(f"sampler, same noise, {steps} steps, 512 rows: max |x_ours - x_synther| = {diff:.2e} "
                 f"(max |x| {scale:.1f}; schedules in float64->32 vs float32)")  # fmt: skip
    return "\n".join(lines)
