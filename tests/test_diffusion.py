"""EDM maths, the Heun sampler, the denoisers, EMA and normaliser (ocrl.nets.diffusion), and algos/diffusion.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ocrl.algos import diffusion as algo
from ocrl.data import load_dataset
from ocrl.nets.diffusion import (
    EMA,
    DiffusionModel,
    DiffusionNormalizer,
    EDMDenoiser,
    ResidualMLPDenoiser,
    TemporalUNet,
    churn_gammas,
    heun_sample,
    loss_weight,
    model_state,
    preconditioning,
    sigma_schedule,
)


# ------------------------------------------------------------------------------------------ EDM maths
def test_loss_weight_times_c_out_squared_is_one():
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    for sigma_data in (1.0, 0.5):
        _, c_out, _, _ = preconditioning(sigma, sigma_data)
        torch.testing.assert_close(
            loss_weight(sigma, sigma_data) * c_out**2, torch.ones_like(sigma)
        )


def test_preconditioning_matches_edm_table_1():
    sigma = torch.tensor([0.01, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, 0.5)
    torch.testing.assert_close(c_skip, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / torch.sqrt(sigma**2 + 0.25))
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma**2 + 0.25))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)


def test_denoiser_is_the_identity_as_sigma_goes_to_zero():
    torch.manual_seed(0)
    denoiser = EDMDenoiser(ResidualMLPDenoiser(5, width=32, depth=2, dim_t=16))
    x = torch.randn(64, 5)
    out = denoiser(x, torch.full((64,), 1e-6))
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)
    # ... and not at a large sigma, so the check can fail.
    assert (denoiser(x, torch.full((64,), 5.0)) - x).abs().max() > 0.1


def test_loss_on_a_fixed_batch_is_edm_weighted_mse():
    torch.manual_seed(0)
    denoiser = EDMDenoiser(ResidualMLPDenoiser(4, width=16, depth=1, dim_t=8))
    x = torch.randn(6, 4)
    got = denoiser.loss(x, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(6, generator=g))
    noise = torch.randn(6, 4, generator=g)
    c_skip = 1 / (sigma**2 + 1)
    c_out = sigma / torch.sqrt(sigma**2 + 1)
    c_in = 1 / torch.sqrt(sigma**2 + 1)
    noisy = x + sigma[:, None] * noise
    d = c_skip[:, None] * noisy + c_out[:, None] * denoiser.net(
        c_in[:, None] * noisy, torch.log(sigma) / 4
    )
    expected = ((sigma**2 + 1) / sigma**2 * ((d - x) ** 2).mean(dim=1)).mean()
    torch.testing.assert_close(got, expected)


def test_sigma_schedule_and_churn_are_edm_eq_5_and_algorithm_2():
    n = 128
    sigmas = sigma_schedule(n).double()
    i = torch.arange(n, dtype=torch.float64)
    expected = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(sigmas[:-1], expected, rtol=1e-6, atol=0)
    assert sigmas[-1] == 0 and sigmas.numel() == n + 1
    gammas = churn_gammas(sigma_schedule(n))
    inside = (expected >= 0.05) & (expected <= 50)
    assert torch.allclose(
        gammas[inside].double(), torch.full_like(expected[inside], math.sqrt(2) - 1)
    )
    assert (gammas[~inside] == 0).all() and inside.any() and (~inside).any()
    assert churn_gammas(sigma_schedule(256)).max().item() == pytest.approx(80 / 256)


# ---------------------------------------------------------------------------------------- the sampler
MEANS = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])
MODE_STD = 0.3


def mixture_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for x0 ~ equal mixture of N(mean_k, 0.3^2 I), x = x0 + sigma n: the ideal denoiser."""
    var = MODE_STD**2 + sigma[:, None] ** 2  # (B, 1)
    d2 = ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)  # (B, K)
    w = torch.softmax(-d2 / (2 * var), dim=1)
    posterior = MEANS[None] + (MODE_STD**2 / var)[:, :, None] * (x[:, None, :] - MEANS[None])
    return (w[:, :, None] * posterior).sum(1)


def mode_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    nearest = ((x[:, None, :] - MEANS[None]) ** 2).sum(-1).argmin(1)
    fractions = torch.bincount(nearest, minlength=4).float() / len(x)
    spread = (x - MEANS[nearest]).std()
    return fractions, spread


@pytest.mark.parametrize("churn", [True, False])
def test_heun_sampler_with_the_ideal_denoiser_recovers_a_gaussian_mixture(churn):
    x = heun_sample(
        mixture_denoiser, (4000, 2), 32, generator=torch.Generator().manual_seed(0), churn=churn
    )
    fractions, spread = mode_stats(x)
    assert torch.allclose(fractions, torch.full((4,), 0.25), atol=0.03), fractions
    assert abs(spread.item() - MODE_STD) < 0.03, spread


def test_a_trained_residual_mlp_samples_the_mixture():
    # Measured (seed 0, 1500 steps, ~10 s): mode fractions 0.23-0.27, spread 0.31-0.33.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = MEANS[torch.randint(4, (8192,), generator=g)] + MODE_STD * torch.randn(
        8192, 2, generator=g
    )
    denoiser = EDMDenoiser(ResidualMLPDenoiser(2, width=128, depth=3, dim_t=32))
    opt = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    for _ in range(1500):
        loss = denoiser.loss(data[torch.randint(8192, (256,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = heun_sample(denoiser, (2000, 2), 32, generator=torch.Generator().manual_seed(0))
    fractions, spread = mode_stats(x)
    assert torch.allclose(fractions, torch.full((4,), 0.25), atol=0.06), fractions
    assert 0.2 < spread.item() < 0.5, spread


def test_pre_step_hook_sees_every_step_and_an_identity_hook_changes_nothing():
    calls = []

    def hook(k, x, sigma):
        calls.append((k, float(sigma)))
        return x

    kw = dict(generator=torch.Generator().manual_seed(5))
    plain = heun_sample(mixture_denoiser, (64, 2), 16, **kw)
    hooked = heun_sample(
        mixture_denoiser, (64, 2), 16, generator=torch.Generator().manual_seed(5), pre_step=hook
    )
    assert torch.equal(plain, hooked)  # guidance with coefficient 0 == unguided, bit for bit
    assert [k for k, _ in calls] == list(range(16))
    assert [s for _, s in calls] == pytest.approx(sigma_schedule(16)[:-1].tolist())
    shifted = heun_sample(
        mixture_denoiser, (64, 2), 16, generator=torch.Generator().manual_seed(5),
        pre_step=lambda k, x, s: x + 0.5 if k == 0 else x,
    )  # fmt: skip
    assert not torch.equal(plain, shifted)


def test_euler_origin_matters_only_with_churn():
    def run(origin, churn):
        g = torch.Generator().manual_seed(2)
        return heun_sample(
            mixture_denoiser, (32, 2), 8, generator=g, euler_origin=origin, churn=churn
        )

    assert torch.equal(run("x_hat", False), run("x_i", False))
    assert not torch.allclose(run("x_hat", True), run("x_i", True))


# ---------------------------------------------------------------------------------------- networks
def test_parameter_counts_match_the_reference_estimates():
    with torch.device("meta"):
        unet = TemporalUNet(25, features=1024, num_blocks=3)
        mlp_2048 = ResidualMLPDenoiser(42, width=2048, depth=6)
        mlp_1024 = ResidualMLPDenoiser(42, width=1024, depth=6)

    def count(m):
        return sum(p.numel() for p in m.parameters()) / 1e6

    assert count(unet) == pytest.approx(177.7, abs=0.1)
    assert count(mlp_2048) == pytest.approx(25.5, abs=0.1)
    assert count(mlp_1024) == pytest.approx(6.5, abs=0.05)


def test_unet_keeps_the_window_shape_for_odd_and_even_lengths():
    net = TemporalUNet(7, features=16, num_blocks=3)
    for length in (16, 17, 32):
        assert net(torch.randn(3, length, 7), torch.randn(3)).shape == (3, length, 7)


def test_per_timestep_groupnorm_normalises_each_step_alone():
    net = TemporalUNet(7, features=16, num_blocks=2, groupnorm="per-timestep")
    norm = net.encoder[0][0].norm
    x = torch.randn(2, 16, 5) * torch.arange(1, 6).float()  # each time step its own scale
    y = norm(x)
    for t in range(5):
        torch.testing.assert_close(y[:, :, t], norm.norm(x[:, :, t]))
    seq = TemporalUNet(7, features=16, num_blocks=2, groupnorm="per-sequence").encoder[0][0].norm
    assert not torch.allclose(seq(x), y)


def test_normalizer_round_trips_and_skips_the_terminal():
    data = torch.randn(500, 4) * torch.tensor([3.0, 0.1, 1.0, 1.0]) + 5
    data[:, 2] = 7.0  # constant: std 1, not a division by ~0
    data[:, 3] = (torch.rand(500) < 0.2).float()
    norm = DiffusionNormalizer.fit(data, skip=(3,))
    z = norm.normalize(data)
    torch.testing.assert_close(norm.unnormalize(z), data, atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, 0].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert norm.std[2] == 1.0 and torch.equal(z[:, 3], data[:, 3])
    assert abs(z[:, 1].std().item() - 1.0) < 1e-3


def test_ema_follows_ema_pytorch_warmup_then_plain_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, beta=0.995, update_every=10, update_after_step=100)
    expected = []
    for calls in range(400):
        if calls <= 100:
            expected.append(0.0)
        else:
            expected.append(min(0.995, 1 - (1 + calls - 100) ** (-2 / 3)))
    assert [ema.decay(c) for c in range(400)] == pytest.approx(expected)
    ema_weight = 0.0
    for calls in range(400):
        with torch.no_grad():
            model.weight.fill_(float(calls))
        ema.update()
        if calls == 0 or calls % 10 == 0:
            d = expected[calls]
            ema_weight = d * ema_weight + (1 - d) * calls
    assert ema.ema_model.weight.item() == pytest.approx(ema_weight, rel=1e-5)
    plain = EMA(model, beta=0.9, update_every=1, warmup="plain")
    assert plain.decay(0) == 0.9 == plain.decay(50)


# ------------------------------------------------------------------------------------ the algorithm
def test_model_sample_is_one_heun_sample_per_batch_size_unnormalised():
    torch.manual_seed(0)
    denoiser = EDMDenoiser(ResidualMLPDenoiser(5, width=16, depth=1, dim_t=8).eval())
    normalizer = DiffusionNormalizer(torch.arange(5.0), torch.full((5,), 2.0))
    model = DiffusionModel(denoiser, normalizer, 1, 1, None, "transition")
    gen = torch.Generator().manual_seed(3)
    got = list(model.sample([3, 2], 4, device="cpu", generator=gen, euler_origin="x_i"))
    gen = torch.Generator().manual_seed(3)
    for n, x in zip([3, 2], got, strict=True):
        want = heun_sample(denoiser, (n, 5), 4, generator=gen, euler_origin="x_i")
        assert torch.equal(x, want * 2.0 + torch.arange(5.0))
    unet = EDMDenoiser(TemporalUNet(5, features=16, num_blocks=2).eval())
    windows = DiffusionModel(unet, normalizer, 1, 1, 6).sample([2], 4, rows=6, device="cpu")
    assert next(windows).shape == (2, 6, 5)


def test_model_load_reads_model_state_and_refuses_what_was_not_asked_for(tmp_path):
    torch.manual_seed(0)
    net = ResidualMLPDenoiser(5, width=16, depth=1, dim_t=8)
    normalizer = DiffusionNormalizer(torch.arange(5.0), torch.full((5,), 2.0))
    path = tmp_path / "model.pt"
    torch.save(model_state("resmlp", dict(d_in=5, width=16, depth=1, dim_t=8), EMA(net),
                           normalizer, "transition", 1, 1), path)  # fmt: skip
    model = DiffusionModel.load(path, "cpu", level="transition", dims=(1, 1))
    assert (model.obs_dim, model.act_dim, model.level, model.channels) == (1, 1, "transition", 5)
    want = net.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.denoiser.net.state_dict().items())
    assert not any(p.requires_grad for p in model.denoiser.parameters())
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    torch.save({"format": "something else", "level": "transition"}, tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        DiffusionModel.load(tmp_path / "missing.pt", "cpu")
    for name, over, message in [
        ("garbage.pt", {}, "not a diffusion model file"),
        ("other.pt", {}, "not a diffusion model file"),
        ("model.pt", {"level": "trajectory"}, "not a trajectory diffusion model"),
        ("model.pt", {"dims": (1, 2)}, "trained on obs/act dims 1/1, the data has 1/2"),
    ]:
        with pytest.raises(ValueError, match=message):
            DiffusionModel.load(tmp_path / name, "cpu", **over)


def tiny_args(data: str, tmp_path, **over) -> algo.Args:
    fields = dict(
        dataset=data, width=32, depth=2, dim_t=16, total_steps=60, batch_size=64, log_every=20,
        sample_steps=4, num_samples=500, sample_batch_size=200, quality_samples=100,
        run_dir=str(tmp_path / "run"), progress=False,
    )  # fmt: skip
    fields.update(over)
    return algo.Args(**fields)


def test_transition_level_writes_a_dataset_td3_bc_can_load(hopper_random_file, tmp_path):
    metrics = algo.main(tiny_args(hopper_random_file, tmp_path))
    out = tmp_path / "run" / "synthetic.hdf5"
    assert metrics["synthetic_dataset"] == str(out) and out.is_file()
    ds = load_dataset(str(out))
    real = load_dataset(hopper_random_file)
    assert len(ds.transitions()) == 500 and ds.env_id == "Hopper-v4"
    assert (ds.ref_min_score, ds.ref_max_score) == pytest.approx((-20.272305, 3234.3))
    assert ds.metadata["ocrl_source_dataset"] == real.name
    assert ds.metadata["ocrl_num_synthetic"] == 500 and ds.metadata["ocrl_level"] == "transition"
    assert json.loads(ds.metadata["ocrl_obs_mean"]) == pytest.approx(
        real.transitions().obs_mean_std()[0].tolist(), rel=1e-5
    )
    assert (tmp_path / "run" / "model.pt").is_file()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["dynamics_normalized_mse_real"] < saved["dynamics_normalized_mse_synthetic"]
    from ocrl.algos import td3_bc

    td3 = td3_bc.main(
        td3_bc.Args(
            dataset=str(out),
            total_steps=20,
            eval_every=20,
            log_every=10,
            hidden=(16, 16),
            eval_episodes=1,
            progress=False,
            run_dir=str(tmp_path / "td3"),
        )  # fmt: skip
    )
    assert isinstance(td3["normalized_score"], float)


def test_mix_real_appends_the_real_transitions(hopper_random_file, tmp_path):
    algo.main(tiny_args(hopper_random_file, tmp_path, mix_real=True, total_steps=20))
    ds = load_dataset(str(tmp_path / "run" / "synthetic.hdf5"))
    real = load_dataset(hopper_random_file).transitions()
    t = ds.transitions()
    assert len(t) == 500 + len(real)
    np.testing.assert_array_equal(t.observations[500:], real.observations)
    np.testing.assert_array_equal(t.next_observations[500:], real.next_observations)


def test_sampling_from_a_saved_model_reproduces_the_trained_run(hopper_random_file, tmp_path):
    first = algo.main(tiny_args(hopper_random_file, tmp_path))
    again = algo.main(
        tiny_args(hopper_random_file, tmp_path, model=first["model"], run_dir=str(tmp_path / "b"))
    )
    a = load_dataset(first["synthetic_dataset"]).transitions()
    b = load_dataset(again["synthetic_dataset"]).transitions()
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.terminals, b.terminals)


def test_trajectory_level_trains_a_unet_and_writes_consecutive_transitions(
    hopper_random_file, tmp_path
):
    metrics = algo.main(
        tiny_args(
            hopper_random_file,
            tmp_path,
            level="trajectory",
            unet_features=16,
            unet_blocks=2,
            trajectory_length=8,
            batch_size=8,
            num_samples=140,
            sample_batch_size=10,
        )  # fmt: skip
    )
    t = load_dataset(metrics["synthetic_dataset"]).transitions()
    assert 0 < len(t) <= 140
    assert np.abs(t.actions).max() <= 1.0  # decoded through tanh


def test_resume_after_interruption_is_bit_exact(hopper_random_file, tmp_path, monkeypatch):
    over = dict(total_steps=40, log_every=10, save_model=True)
    straight = algo.main(tiny_args(hopper_random_file, tmp_path, **over))
    real_update, calls = algo.Diffusion.update, {"n": 0}

    def interrupting(self, x):
        calls["n"] += 1
        if calls["n"] == 26:
            raise KeyboardInterrupt
        return real_update(self, x)

    monkeypatch.setattr(algo.Diffusion, "update", interrupting)
    cut = str(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        algo.main(tiny_args(hopper_random_file, tmp_path, run_dir=cut, **over))
    monkeypatch.setattr(algo.Diffusion, "update", real_update)
    assert torch.load(f"{cut}/checkpoint.pt", weights_only=True)["step"] == 20
    resumed = algo.main(algo.Args(resume=cut, total_steps=40, progress=False))
    assert resumed["resumed_from"] == 20 and resumed["steps"] == 40
    a = torch.load(straight["model"], weights_only=True)["ema"]
    b = torch.load(resumed["model"], weights_only=True)["ema"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    np.testing.assert_array_equal(
        load_dataset(straight["synthetic_dataset"]).transitions().observations,
        load_dataset(resumed["synthetic_dataset"]).transitions().observations,
    )


def test_existing_out_path_is_refused_before_anything_is_written(hopper_random_file, tmp_path):
    out = tmp_path / "taken.hdf5"
    out.write_bytes(b"keep me")
    from ocrl.experiment import UsageError

    with pytest.raises(UsageError, match="exists already"):
        algo.main(tiny_args(hopper_random_file, tmp_path, out=str(out)))
    assert out.read_bytes() == b"keep me" and not (tmp_path / "run").exists()
