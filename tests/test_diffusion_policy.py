"""The DDPM/VP chain of diffusion policies (nets.diffusion, EXPO's base policy): schedule, loss, sampler, a toy fit."""

from __future__ import annotations

import math

import pytest
import torch

from ocrl.nets.ddpm import imitation_training
from ocrl.nets.diffusion import DDPM, LNResNetEpsNet, vp_beta_schedule


def tiny_ddpm(obs_dim: int = 3, act_dim: int = 2, steps: int = 10) -> DDPM:
    torch.manual_seed(0)
    return DDPM(LNResNetEpsNet(obs_dim, act_dim, width=16, blocks=2, time_dim=8), act_dim, steps)


def test_vp_schedule_is_the_formula():
    # beta_t = 1 - exp(-b_min / T - 0.5 (b_max - b_min)(2t - 1) / T^2), t = 1..T, b_min 0.1, b_max 10.
    T = 10
    expected = [1 - math.exp(-0.1 / T - 0.5 * 9.9 * (2 * t - 1) / T**2) for t in range(1, T + 1)]
    torch.testing.assert_close(vp_beta_schedule(T), torch.tensor(expected), rtol=1e-6, atol=0)
    ddpm = tiny_ddpm(steps=T)
    alpha_hat = 1.0
    for t in range(T):
        alpha_hat *= 1 - expected[t]
        assert ddpm.alphas[t].item() == pytest.approx(1 - expected[t], rel=1e-6)
        assert ddpm.alpha_hats[t].item() == pytest.approx(alpha_hat, rel=1e-5)
    assert ddpm.alpha_hats[-1].item() < 1e-2  # the chain ends close to pure noise


def test_loss_on_a_fixed_batch_is_the_formula():
    ddpm = tiny_ddpm()
    g = torch.Generator().manual_seed(3)
    s, a = torch.randn(5, 3, generator=g), torch.rand(5, 2, generator=g) * 2 - 1
    t, eps = torch.tensor([0, 3, 9, 5, 1]), torch.randn(5, 2, generator=g)
    loss = ddpm.loss(s, a, t, eps)
    total = 0.0
    for i in range(5):
        ahat = ddpm.alpha_hats[t[i]].item()
        x_t = math.sqrt(ahat) * a[i] + math.sqrt(1 - ahat) * eps[i]
        pred = ddpm.eps_net(x_t[None], s[i][None], torch.tensor([[float(t[i])]]))[0]
        total += float(((eps[i] - pred) ** 2).sum().detach())  # summed over action dims
    assert loss.item() == pytest.approx(total / 5, rel=1e-5)  # averaged over the batch


def test_one_reverse_step_is_the_ddpm_update():
    # T = 1: x_0 = clip((x_1 - (1 - alpha_0) / sqrt(1 - ahat_0) * eps(x_1, s, 0)) / sqrt(alpha_0)), no noise.
    ddpm = tiny_ddpm(steps=1)
    s = torch.randn(4, 3)
    x1 = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    out = ddpm.sample(s, generator=torch.Generator().manual_seed(5))
    alpha = 1 - vp_beta_schedule(1)[0].item()
    eps = ddpm.eps_net(x1, s, torch.zeros(4, 1)).detach()
    expected = ((x1 - (1 - alpha) / math.sqrt(1 - alpha) * eps) / math.sqrt(alpha)).clamp(-1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_sampler_shape_range_and_generator():
    ddpm = tiny_ddpm()
    with torch.no_grad():  # large output weights: unclipped samples would leave [-1, 1]
        ddpm.eps_net.output.weight.mul_(50)
    s = torch.randn(64, 3)
    a = ddpm.sample(s, generator=torch.Generator().manual_seed(1))
    b = ddpm.sample(s, generator=torch.Generator().manual_seed(1))
    assert a.shape == (64, 2) and torch.equal(a, b)
    assert a.abs().max() <= 1.0 and (a.abs() == 1.0).any()
    ddpm.clip = False
    assert (
        ddpm.sample(s, generator=torch.Generator().manual_seed(1)).abs().max() <= 1.0
    )  # final clip


def test_fit_reproduces_both_modes_of_a_bimodal_toy():
    # 1-D actions at -0.6 or +0.6 (std 0.05) for one constant state. 600 Adam steps, ~3 s on one core.
    # Measured (seed 0): 45.6% / 42.3% of 2,000 samples within 0.2 of each mode, 7.9% with |a| < 0.3
    # (7-10% from 300 to 1,000 steps and widths 64-128: the 10-step chain's own spread). A single
    # Gaussian fitted to these data would put 38% there.
    torch.manual_seed(0)
    ddpm = DDPM(LNResNetEpsNet(1, 1, width=64, blocks=2, time_dim=16), 1, steps=10)
    opt = torch.optim.Adam(ddpm.parameters(), lr=1e-3)
    for _ in range(600):
        a = torch.where(torch.rand(256, 1) < 0.5, -0.6, 0.6) + 0.05 * torch.randn(256, 1)
        loss = ddpm.loss(torch.zeros(256, 1), a)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = ddpm.sample(torch.zeros(2000, 1), generator=torch.Generator().manual_seed(0))[:, 0]
    low, high = ((x + 0.6).abs() < 0.2).float().mean(), ((x - 0.6).abs() < 0.2).float().mean()
    middle = (x.abs() < 0.3).float().mean()
    assert low > 0.35 and high > 0.35 and middle < 0.15, (low, high, middle)


def test_sampling_compiles_with_a_dynamic_batch_size():
    # EXPO's --compile acts at batch 1 and backs up at 256; randn's generator overload took no symbolic sizes.
    torch.manual_seed(0)
    ddpm = tiny_ddpm(3, 2, steps=3)
    compiled = torch.compile(ddpm.sample, backend="eager", dynamic=True)
    for batch in (1, 5):
        torch.manual_seed(1)
        got = compiled(torch.randn(batch, 3))
        torch.manual_seed(1)
        want = ddpm.sample(torch.randn(batch, 3))
        torch.testing.assert_close(got, want)


def test_imitation_training_is_adamw_a_cosine_lr_and_a_plain_ema():
    ddpm = tiny_ddpm()
    ema, opt, schedule = imitation_training(ddpm, 1e-3, 1e-4, decay_steps=4, ema_rate=0.25)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 1e-4
    before = [p.detach().clone() for p in ema.ema_model.parameters()]
    obs, actions = torch.randn(8, 3), torch.rand(8, 2) * 2 - 1
    for step in range(1, 5):
        opt.zero_grad()
        ddpm.loss(obs, actions).backward()
        opt.step(), schedule.step()
        cosine = 0.5 * (1 + math.cos(math.pi * step / 4))
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * cosine)
        ema.update()
        # decay 1 - ema_rate from the first update: ema <- 0.75 ema + 0.25 model
        for e, b, p in zip(ema.ema_model.parameters(), before, ddpm.parameters(), strict=True):
            torch.testing.assert_close(e, 0.75 * b + 0.25 * p.detach())
        before = [p.detach().clone() for p in ema.ema_model.parameters()]
