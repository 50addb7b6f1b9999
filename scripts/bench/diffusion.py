"""Diffusion (`ocrl.nets.diffusion`, `algos/diffusion.py`) against the original SynthER code
(conglu1997/SynthER @ e6835a5, imported from an outside source tree given by --synther-path; not part of
ocrl), on the same rows and network size (the cpu-small preset: residual MLP width 256, depth 4, dim_t 128,
no LayerNorm; Hopper rows d_in = 27, batch 256; --width for 1024/2048): training steps per second
(`Diffusion.update` against ElucidatedDiffusion.forward + backward + clip 1.0 + AdamW + CosineAnnealingLR +
ema_pytorch EMA, as SynthER's Trainer.train_on_batch does it) and samples per second (`heun_sample`, 128
steps with churn, + unnormalise against ElucidatedDiffusion.sample), as ratios against SynthER,
interleaved rounds, medians. First a same-maths check with SynthER's weights loaded into ours (synther.py).
On CUDA also ours in bf16 autocast + TF32 (and with --compile the CUDA-graph sampler) and the achieved
FLOP/s as a fraction of --peak-tflops. SynthER needs `pip install einops gin-config ema-pytorch`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .harness import DeviceArgs, interleaved, medians, seconds, step_rates, time_round
from .synther import import_synther, quiet, same_maths


@dataclass
class Args(DeviceArgs):
    """ocrl's diffusion training and sampling against SynthER's code (--synther-path)."""

    synther_path: str = "../SynthER"
    """folder holding SynthER's source tree (its synther/ package): `git clone https://github.com/conglu1997/SynthER ../SynthER`"""
    width: int = 256
    """residual-MLP width (algos/diffusion.py's cpu-small preset: 256; SynthER: 1024/2048)"""
    depth: int = 4
    """residual blocks (cpu-small: 4; SynthER: 6)"""
    d_in: int = 27
    """row size (Hopper [s, a, r, s', terminal]: 11 + 3 + 1 + 11 + 1)"""
    batch_size: int = 256
    """training minibatch size"""
    train_steps: int = 100
    """training steps per timed round"""
    rounds: int = 5
    """interleaved training rounds per variant; the median is reported"""
    sample_batch: int = 10_000
    """rows per sampling pass"""
    sample_steps: int = 128
    """Heun steps N of the sampler (2N - 1 network evaluations per row)"""
    sample_rounds: int = 3
    """interleaved sampling passes per variant; the median is reported"""
    compile: bool = True
    """on CUDA, also time the CUDA-graph (torch.compile reduce-overhead) sampler"""
    peak_tflops: float = 989.0
    """the device's dense bf16 matmul peak in TFLOP/s for the roofline fraction (H100/H200 SXM: 989)"""


def resmlp_macs(d_in: int, width: int, depth: int, dim_t: int, fourier: int = 16) -> int:
    """Multiply-accumulates of one residual-MLP evaluation (one row)."""
    return (
        (fourier + 1) * dim_t
        + dim_t * dim_t
        + d_in * dim_t
        + dim_t * width
        + depth * width**2
        + width * d_in
    )


def synther_variant(synther, raw: torch.Tensor, raw_dev: torch.Tensor, args: Args, device):
    """(train step, sampling pass) of SynthER's Trainer.train_on_batch and EMA sampler."""
    from ema_pytorch import EMA as SynEMA

    ElucidatedDiffusion, SynResMLP, SynNormalizer = synther
    d_in, batch = args.d_in, args.batch_size
    net = SynResMLP(d_in, dim_t=128, mlp_width=args.width, num_layers=args.depth, layer_norm=False)
    syn_norm = quiet(SynNormalizer, raw, skip_dims=[d_in - 1])
    model = ElucidatedDiffusion(net, normalizer=syn_norm, event_shape=[d_in]).to(device)
    # Trainer.__init__: AdamW over two (weight-decay 0) groups, betas (0.9, 0.99), lr 3e-4 (SynthER's
    # offline config), ema_pytorch EMA 0.995 every 10, CosineAnnealingLR over the training steps.
    no_decay = ["bias", "LayerNorm.weight", "norm.weight", ".g"]
    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": 0.0},
         {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.99),
    )  # fmt: skip
    ema = SynEMA(model, beta=0.995, update_every=10)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100_000)

    def synther_step(_: int) -> None:  # Trainer.train_on_batch without wandb/accelerate
        data = raw_dev[torch.randint(len(raw_dev), (batch,), device=device)]
        loss = model(data)
        loss.item()  # train_on_batch reads the loss every step (total_loss += loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.update()
        sched.step()

    def synther_sample() -> torch.Tensor:
        return ema.ema_model.sample(
            args.sample_batch, num_sample_steps=args.sample_steps, clamp=False, disable_tqdm=True
        )

    return synther_step, synther_sample


def main(args: Args) -> dict[str, float]:
    from ocrl.algos import diffusion as algo
    from ocrl.nets.diffusion import (
        DiffusionNormalizer,
        EDMConfig,
        EDMDenoiser,
        build_network,
        heun_sample,
    )

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    d_in, width, depth, dim_t = args.d_in, args.width, args.depth, 128
    batch, steps, n_sample = args.batch_size, args.sample_steps, args.sample_batch
    synther = import_synther(args.synther_path)
    if synther is None:
        print(f"\nSynthER not found at {args.synther_path}: only ocrl's numbers")
    # Hopper-sized rows [s, a, r, s', terminal] (11 + 3 + 1 + 11 + 1 = 27 by default), on the device.
    gen = np.random.default_rng(0)
    rows = gen.standard_normal((100_000, d_in)).astype(np.float32) * 2 + 0.5
    rows[:, -1] = gen.random(100_000) < 0.01
    raw = torch.from_numpy(rows)
    normalizer = DiffusionNormalizer.fit(raw, skip=(d_in - 1,))
    raw_dev, norm_dev = raw.to(device), normalizer.normalize(raw).to(device)

    # ---- ours: algos/diffusion.py's Diffusion agent (cpu-small network), fp32 and (CUDA) bf16 autocast
    def ours_agent(bf16: bool):
        precision = "bf16" if bf16 else "fp32"
        dargs = algo.Args(
            width=width, depth=depth, dim_t=dim_t, total_steps=100_000, precision=precision
        )
        kwargs = dict(d_in=d_in, width=width, depth=depth, dim_t=dim_t, layer_norm=False)
        return algo.Diffusion(dargs, build_network("resmlp", kwargs), normalizer, device)

    def tf32(on: bool) -> None:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = on
            torch.backends.cudnn.allow_tf32 = on

    train: dict[str, Callable[[int], None]] = {}
    sample: dict[str, Callable[[], torch.Tensor]] = {}
    agent = ours_agent(bf16=False)

    def ours_step(_: int, agent=agent) -> None:
        agent.update(norm_dev[torch.randint(len(norm_dev), (batch,), device=device)])

    def ours_sample(net=EDMDenoiser(agent.ema.ema_model, EDMConfig()), gen=None) -> torch.Tensor:
        g = gen or torch.Generator(device).manual_seed(0)
        x = heun_sample(net, (n_sample, d_in), steps, device=device, generator=g)
        return agent.normalizer.unnormalize(x)

    if synther is not None:
        train["SynthER"], sample["SynthER"] = synther_variant(synther, raw, raw_dev, args, device)
    train["ocrl fp32"], sample["ocrl fp32"] = ours_step, ours_sample
    if cuda:
        agent16 = ours_agent(bf16=True)
        den16 = EDMDenoiser(agent16.ema.ema_model, EDMConfig(), torch.bfloat16)

        def ours16_step(it: int) -> None:
            tf32(True)
            ours_step(it, agent16)
            tf32(False)

        def ours16_sample(net=den16) -> torch.Tensor:
            tf32(True)
            x = ours_sample(net)
            tf32(False)
            return x

        train["ocrl bf16+TF32"], sample["ocrl bf16+TF32"] = ours16_step, ours16_sample
        if args.compile:
            compiled = torch.compile(den16, mode="reduce-overhead", dynamic=False)
            sample["ocrl bf16+TF32 compiled"] = lambda: ours16_sample(compiled)

    macs = resmlp_macs(d_in, width, depth, dim_t)
    print(f"\nDiffusion (SynthER residual MLP: d_in {d_in}, width {width}, depth {depth}, dim_t {dim_t}, no "
          f"LayerNorm; {macs * 1e-6:.2f}M MACs/row) on {device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    if synther is not None:
        print("same maths (SynthER's weights loaded into ours):")
        for line in same_maths(d_in, width, depth, steps, synther).splitlines():
            print(f"  {line}")
    tf32(False)
    for step in train.values():  # warm-up (compilation; also the EMA's first copies)
        time_round(step, 20, device)
    for name, fn in sample.items():
        if "compiled" in name:
            fn()
    # Interleaved: a training round of every variant in turn, then one sampling pass of each in turn.
    t_med = step_rates(train, args.train_steps, args.rounds, device)
    s_med = medians(interleaved(
        {n: lambda fn=fn: n_sample / seconds(fn, device) for n, fn in sample.items()},
        args.sample_rounds,
    ))  # fmt: skip
    base_name = "SynthER" if synther is not None else "ocrl fp32"
    # FLOPs: a training step is forward + backward (~3x the forward MACs) on `batch` rows; sampling is
    # (2N - 1) forward evaluations per row.
    t_flop = 2 * 3 * macs * batch
    s_flop = 2 * macs * (2 * steps - 1)

    def roof(flops: float) -> str:
        return f"{flops / 1e12:.3f} TFLOP/s" + (
            f" = {flops / (args.peak_tflops * 1e12):.1%} of peak" if cuda else ""
        )

    print(f"| variant | train steps/s (batch {batch}) | ratio vs {base_name} | achieved | "
          f"samples/s ({n_sample} rows, {steps} steps) | ratio vs {base_name} | achieved |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    out: dict[str, float] = {}
    for name in dict.fromkeys([*train, *sample]):
        tr, sr = t_med.get(name), s_med.get(name)
        cells = []
        for rate, base, flop in (
            (tr, t_med.get(base_name), t_flop),
            (sr, s_med.get(base_name), s_flop),
        ):
            if rate is None:
                cells += ["", "", ""]
            else:
                cells += [f"{rate:.1f}", f"{rate / base:.2f}x", roof(rate * flop)]
        print(f"| {name} | " + " | ".join(cells) + " |")
        if tr is not None:
            out[f"train {name}"] = tr
        if sr is not None:
            out[f"sample {name}"] = sr
    print(f"(median of {args.rounds} interleaved rounds of {args.train_steps} steps and "
          f"{args.sample_rounds} interleaved sampling passes; ocrl trains on pre-normalised rows "
          "as algos/diffusion.py does, SynthER normalises inside forward)")  # fmt: skip
    if cuda:
        print(
            f"roofline: achieved = 2 x MACs x evaluations / time against --peak-tflops {args.peak_tflops}"
        )
    else:
        print("CUDA: not measured: no device")
    return out
