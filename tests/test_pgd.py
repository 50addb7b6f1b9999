"""algos/pgd.py: the guidance gradient and schedule, the sampler hook, mixing and regeneration, the agents'
update maths, and the run contract (smoke, tags, bit-exact resume, bad flags) with a tiny trajectory model."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ocrl.algos import diffusion as diffusion_algo
from ocrl.algos import pgd
from ocrl.data import Batch, ReplayBuffer
from ocrl.data.windows import windows_to_transitions
from ocrl.experiment import load_checkpoint
from ocrl.nets import edm_runs
from ocrl.nets.diffusion import (
    EMA,
    DiffusionNormalizer,
    EDMTrainer,
    ResidualMLPDenoiser,
    build_network,
    heun_sample,
    model_state,
)
from ocrl.nets.edm_runs import load_trajectory_model, regeneration_seed


@pytest.fixture(scope="session")
def tiny_model(hopper_random_file, tmp_path_factory) -> str:
    """A 20-step trajectory U-Net (windows of 8 rows) of the small Hopper file, as algos/diffusion.py saves it."""
    run_dir = tmp_path_factory.mktemp("pgd_model") / "run"
    diffusion_algo.main(
        diffusion_algo.Args(
            level="trajectory", unet_features=16, unet_blocks=2, trajectory_length=8,
            total_steps=20, batch_size=8, num_samples=70, sample_batch_size=10, sample_steps=4,
            quality_samples=0, dataset=hopper_random_file, run_dir=str(run_dir), progress=False,
        )
    )  # fmt: skip
    return str(run_dir / "model.pt")


def tiny_args(data: str, model: str, **over) -> pgd.Args:
    fields = dict(
        dataset=data, diffusion_model=model, total_steps=40, eval_every=20, log_every=10,
        hidden=(16, 16), batch_size=16, synth_batch_size=12, synth_dataset_lifetime=15,
        num_synth_trajectories=12, sample_batch_size=8, sample_steps=4, guidance_coef=0.5,
        eval_episodes=1, progress=False,
    )  # fmt: skip
    fields.update(over)
    return pgd.Args(**fields)


# ------------------------------------------------------------------------------- guidance maths
def fp64_setup(agent: str, normalize: bool = False, eps_in_denominator: bool = False, jac=False):
    """A Guidance in float64 on a random (B=3, L=5) model-space batch, with its plain log-likelihood."""
    torch.manual_seed(0)
    o, a, length = 4, 2, 5
    channels = o + a + 2
    args = pgd.Args(
        agent=agent, guidance_coef=1.0, sample_steps=8, normalize_action_guidance=normalize,
        guidance_norm_eps_in_denominator=eps_in_denominator, tanh_jacobian=jac, hidden=(8,),
    )  # fmt: skip
    normalizer = DiffusionNormalizer(torch.randn(channels), torch.rand(channels) + 0.5).double()
    model = pgd.TrajectoryModel(None, normalizer, o, a, length)  # type: ignore[arg-type]
    low, high = -torch.ones(a), torch.ones(a)
    if agent == "td3_bc":
        from ocrl.nets import DeterministicActor

        actor = DeterministicActor(o, a, (8,), low, high).double()
    else:
        actor = pgd.GaussianActor(o, a, (8,), low, high).double()
        with torch.no_grad():
            actor.log_std.copy_(torch.tensor([-0.3, 0.4]))
    obs_mean, obs_std = torch.randn(o).double(), (torch.rand(o) + 0.5).double()
    guide = pgd.Guidance(args, model, actor, (obs_mean, obs_std))
    traj = torch.randn(3, length, channels, dtype=torch.float64)
    m, s = normalizer.mean, normalizer.std

    def plain_log_likelihood(act_model: torch.Tensor) -> torch.Tensor:
        """sum_t log pi(tanh(a~ std + mean) | (s std + mean - mu_obs) / sd_obs), written out."""
        states = ((traj[..., :o] * s[:o] + m[:o]) - obs_mean) / obs_std
        actions = torch.tanh(act_model * s[o : o + a] + m[o : o + a])
        if agent == "td3_bc":
            logp = -0.5 * (actions - actor(states)) ** 2 - 0.5 * math.log(2 * math.pi)
        else:
            mean = torch.tanh(actor.net(states))
            std = torch.exp(actor.log_std)
            logp = -0.5 * ((actions - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)  # fmt: skip
            if jac:
                logp = logp + torch.log(1 - actions**2 + 1e-6)
        return logp.sum(dim=(1, 2))

    return guide, traj, plain_log_likelihood, (o, a)


@pytest.mark.parametrize("agent, jac", [("td3_bc", False), ("iql", False), ("iql", True)])
def test_guidance_gradient_matches_central_finite_differences_in_fp64(agent, jac):
    guide, traj, plain, (o, a) = fp64_setup(agent, jac=jac)
    g = guide.gradient(traj)
    act = traj[..., o : o + a].clone()
    fd = torch.zeros_like(act)
    h = 1e-6
    with torch.no_grad():
        for idx in torch.cartesian_prod(*(torch.arange(n) for n in act.shape)):
            i = tuple(idx.tolist())
            up, down = act.clone(), act.clone()
            up[i] += h
            down[i] -= h
            fd[i] = (plain(up)[i[0]] - plain(down)[i[0]]) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)
    assert g.abs().max() > 1e-3  # not a vacuous zero gradient
    # The log-likelihood itself is the plain formula.
    torch.testing.assert_close(guide.log_likelihood(traj, act), plain(act))


@pytest.mark.parametrize("eps_in_denominator", [False, True])
def test_normalised_guidance_is_per_trajectory_frobenius_with_the_codes_epsilon(eps_in_denominator):
    guide, traj, _, _ = fp64_setup("iql")
    raw = guide.gradient(traj)
    guide_n, _, _, _ = fp64_setup("iql", normalize=True, eps_in_denominator=eps_in_denominator)
    got = guide_n.gradient(traj)
    for b in range(traj.shape[0]):
        norm = math.sqrt(float((raw[b] ** 2).sum()))
        expected = raw[b] / (norm + 1e-8) if eps_in_denominator else raw[b] / norm + 1e-8
        torch.testing.assert_close(got[b], expected, rtol=1e-12, atol=1e-15)  # fp64: 1e-8 shows
    if not eps_in_denominator:  # the code's precedence shifts every entry by +1e-8
        assert not torch.equal(got, raw / raw.flatten(1).norm(dim=1).view(-1, 1, 1))


def test_normalised_guidance_of_a_saturated_trajectory_is_finite():
    # At sigma ~ 80 every tanh of a short window can saturate: g = 0 exactly, and the code's g / ||g||
    # is NaN. Here that trajectory gets no shift (the code's + 1e-8), the others are normalised.
    guide, traj, _, (o, a) = fp64_setup("td3_bc", normalize=True)
    traj = traj.float()
    guide.model.normalizer.float(), guide.actor.float()
    guide.obs_mean, guide.obs_std = guide.obs_mean.float(), guide.obs_std.float()
    traj[0, :, o : o + a] = 500.0  # tanh(u) == 1 in float32 for every entry of trajectory 0
    g = guide.gradient(traj)
    assert torch.isfinite(g).all()
    assert torch.equal(g[0], torch.full_like(g[0], 1e-8))
    assert float(g[1].norm()) == pytest.approx(1.0, abs=1e-5)


def test_lambda_schedule_shape_and_formula():
    n, coef = 256, 2.0
    for c_cos in (0.3, 0.5):
        lam = pgd.guidance_schedule(coef, c_cos, n)
        assert len(lam) == n and lam[-1] == 0.0  # the last step is never guided
        for k in (0, 1, 85, 200, n - 2):
            expected = coef * ((1 - k / n) + c_cos * math.sin(math.pi * (k + 1) / n))
            assert lam[k] == pytest.approx(expected, rel=1e-12)
        assert lam[0] / coef == pytest.approx(1.0, abs=0.01)
        assert lam[n - 2] / coef < 0.02  # about 0 before the unguided last step
    # The released code's c_cos = 0.3 gives a schedule that only decreases (d/dx [1 - x + 0.3 sin(pi x)]
    # = -1 + 0.3 pi cos(pi x) < 0): its peak is lambda_0. The "peak ~1.1 near N/3" of the reference page
    # is the shape for c_cos = 0.5 (a peak of 1.105 at k ~ 0.28 N).
    lam = pgd.guidance_schedule(coef, 0.3, n)
    assert all(a >= b for a, b in zip(lam, lam[1:], strict=False))
    lam = pgd.guidance_schedule(coef, 0.5, n)
    peak = max(range(n), key=lambda k: lam[k])
    assert lam[peak] / coef == pytest.approx(1.1, abs=0.01) and abs(peak - n / 3) < n / 10


def test_hook_shifts_only_the_action_channels_by_lambda_k_g():
    guide, traj, _, (o, a) = fp64_setup("td3_bc")
    k = 3
    out = guide(k, traj, torch.tensor(1.0))
    expected = traj.clone()
    expected[..., o : o + a] += guide.lambdas[k] * guide.gradient(traj)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert not torch.equal(out, traj)
    assert torch.equal(guide(len(guide.lambdas) - 1, traj, torch.tensor(0.1)), traj)  # last step


def test_denoised_guidance_evaluates_the_policy_at_d_of_x(tiny_model):
    model = load_trajectory_model(tiny_model, torch.device("cpu"), "fp32")
    actor = pgd.GaussianActor(11, 3, (8,), -torch.ones(3), torch.ones(3))
    args = pgd.Args(agent="iql", guidance_coef=1.0, sample_steps=4, denoised_guidance=True)
    guide = pgd.Guidance(args, model, actor, (None, None))
    x = torch.randn(2, 8, 16)
    sigma = torch.tensor(2.0)
    out = guide(0, x, sigma)
    d = model.denoiser(x, sigma.expand(2))
    expected = x.clone()
    expected[..., 11:14] += guide.lambdas[0] * guide.gradient(d)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(guide.gradient(d), guide.gradient(x))


# ------------------------------------------------------------------- unguided = the plain sampler
class RaisingActor(torch.nn.Module):
    def forward(self, obs):
        raise AssertionError("the actor was called with --guidance-coef 0")

    log_prob = forward


def test_coefficient_zero_is_bit_identical_to_the_unguided_sampler_and_never_calls_the_actor(
    tiny_model,
):
    model = load_trajectory_model(tiny_model, torch.device("cpu"), "fp32")
    args = pgd.Args(
        guidance_coef=0.0, sample_steps=5, num_synth_trajectories=6, sample_batch_size=4
    )
    guide = pgd.Guidance(args, model, RaisingActor(), (None, None))
    shape = (4, 8, 16)
    plain = heun_sample(
        model.denoiser, shape, 5, device="cpu", generator=torch.Generator().manual_seed(1),
        euler_origin="x_i",
    )  # fmt: skip
    hooked = heun_sample(
        model.denoiser, shape, 5, device="cpu", generator=torch.Generator().manual_seed(1),
        euler_origin="x_i", pre_step=guide,
    )  # fmt: skip
    assert torch.equal(plain, hooked)
    # ... and a non-zero coefficient changes the samples, so the comparison can fail.
    args_on = dataclasses.replace(args, guidance_coef=0.5)
    actor = pgd.GaussianActor(11, 3, (8,), -torch.ones(3), torch.ones(3))
    guided = heun_sample(
        model.denoiser, shape, 5, device="cpu", generator=torch.Generator().manual_seed(1),
        euler_origin="x_i", pre_step=pgd.Guidance(args_on, model, actor, (None, None)),
    )  # fmt: skip
    assert not torch.equal(plain, guided)


def test_run_with_coefficient_zero_regenerates_the_unguided_samples_without_the_actor(
    hopper_random_file, tiny_model, tmp_path, monkeypatch
):
    args = tiny_args(hopper_random_file, tiny_model, guidance_coef=0.0, total_steps=16,
                     run_dir=str(tmp_path / "run"), agent="iql")  # fmt: skip
    seen = {}
    real_fill = pgd.SyntheticSet.fill

    def fill(self, t, mean, std):
        seen[self.regenerations] = {k: v.clone() for k, v in t.items()}
        real_fill(self, t, mean, std)

    def raising(self, *a, **k):
        raise AssertionError("actor called for guidance")

    monkeypatch.setattr(pgd.SyntheticSet, "fill", fill)
    monkeypatch.setattr(pgd.Guidance, "gradient", raising)
    pgd.main(args)
    assert set(seen) == {0, 1}
    model = load_trajectory_model(tiny_model, torch.device("cpu"), "fp32")
    gen = torch.Generator().manual_seed(regeneration_seed(args.seed, 1))
    windows = model.sample_n(
        args.num_synth_trajectories, args.sample_batch_size, args.sample_steps, 8, device="cpu",
        generator=gen, euler_origin=args.euler_origin, churn=args.churn,
    )  # fmt: skip
    expected = windows_to_transitions(windows, 11, 3)
    for key, value in expected.items():
        assert torch.equal(seen[1][key], value), key


# ----------------------------------------------------------------------- mixing and regeneration
def test_every_batch_holds_exactly_synth_batch_size_synthetic_transitions():
    real = ReplayBuffer.from_arrays(
        torch.zeros(50, 3), torch.zeros(50, 2), torch.ones(50), torch.zeros(50, 3), torch.zeros(50)
    )
    syn = ReplayBuffer.from_arrays(
        torch.zeros(30, 3), torch.zeros(30, 2), -torch.ones(30), torch.zeros(30, 3), torch.zeros(30)
    )
    for n in (0, 1, 240, 256):
        batch = pgd.mixed_batch(real, syn, 256, n)
        assert all(len(t) == 256 for t in batch)
        assert int((batch.rewards < 0).sum()) == n and bool((batch.rewards[:n] < 0).all())


def test_regeneration_happens_every_lifetime_steps_but_not_at_step_0_and_feeds_the_batches(
    hopper_random_file, tiny_model, tmp_path, monkeypatch
):
    args = tiny_args(hopper_random_file, tiny_model, total_steps=25, synth_dataset_lifetime=10,
                     agent="td3_bc", run_dir=str(tmp_path / "run"))  # fmt: skip
    updates = {"n": 0}
    calls = []
    real_sample, real_update = pgd.TrajectoryModel.sample_n, pgd.TD3BC.update
    synth_obs = {}

    def sample(model, n, batch_size, steps, rows, **kwargs):
        calls.append((updates["n"], kwargs["pre_step"] is not None, rows))
        return real_sample(model, n, batch_size, steps, rows, **kwargs)

    def update(self, batch):
        updates["n"] += 1
        buf = self.synthetic.buffer
        synth_obs["ok"] = synth_obs.get("ok", True) and all(
            bool((buf.observations == row).all(dim=1).any()) for row in batch.observations[:12]
        )
        return real_update(self, batch)

    monkeypatch.setattr(pgd.TrajectoryModel, "sample_n", sample)
    monkeypatch.setattr(pgd.TD3BC, "update", update)
    metrics = pgd.main(args)
    # Windows of the model's training length (8 rows) by default, not the code's 129.
    assert calls == [(0, False, 8), (10, True, 8), (20, True, 8)]
    assert metrics["regenerations"] == 2
    assert synth_obs["ok"]  # the first synth_batch_size rows come from the current synthetic set


# ---------------------------------------------------------------------------- the agents' maths
def make_agent(cls, **over):
    args = pgd.Args(hidden=(16, 16), critic_updates=1, **over)
    torch.manual_seed(0)
    return cls(args, 3, 2, -torch.ones(2), torch.ones(2), torch.device("cpu"))


def test_td3_bc_update_is_the_written_formula(fixed_batch):
    batch = fixed_batch(3, 2, 8)
    agent = make_agent(pgd.TD3BC)
    before = copy.deepcopy(agent)
    torch.manual_seed(5)
    metrics = agent.update(batch)

    obs, act, rew, nxt, term = batch
    pi = before.actor(obs)
    q1 = before.critic.member(obs, pi, 0)
    lmbda = 2.5 / (q1.abs().mean() + 1e-7)
    actor_loss = -lmbda * q1.mean() + ((pi - act) ** 2).mean()
    torch.testing.assert_close(metrics["actor_loss"], actor_loss.detach())
    torch.manual_seed(5)
    noise = (torch.randn_like(act) * 0.2).clamp(-0.5, 0.5)
    next_a = (before.actor_target(nxt) + noise).clamp(-1, 1)
    tq = before.critic_target(nxt, next_a)
    y = rew + 0.99 * (1 - term) * torch.minimum(tq[0], tq[1])
    q = before.critic(obs, act)
    critic_loss = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
    torch.testing.assert_close(metrics["critic_loss"], critic_loss.detach())


def test_targets_move_at_the_start_of_each_step(fixed_batch):
    batch = fixed_batch(3, 2, 8)
    for cls in (pgd.TD3BC, pgd.IQL):
        agent = make_agent(cls)
        theta0 = copy.deepcopy(agent.critic.state_dict())
        agent.update(batch)
        for k, v in agent.critic_target.state_dict().items():
            torch.testing.assert_close(v, theta0[k])  # step 0: the copy
        theta1 = copy.deepcopy(agent.critic.state_dict())
        agent.update(batch)
        for k, v in agent.critic_target.state_dict().items():
            torch.testing.assert_close(v, 0.995 * theta0[k] + 0.005 * theta1[k])
        assert any(not torch.equal(theta0[k], theta1[k]) for k in theta0)  # the critic moved


def test_td3_bc_runs_critic_updates_critic_steps_after_one_actor_step(fixed_batch):
    batch = fixed_batch(3, 2, 8)
    agent = make_agent(pgd.TD3BC, batch_size=8)
    agent.args.critic_updates = 2
    steps = {"actor": 0, "critic": 0}
    for name in ("actor", "critic"):
        opt = getattr(agent, f"{name}_opt")
        real = opt.step

        def counted(*a, _real=real, _name=name, **k):
            steps[_name] += 1
            return _real(*a, **k)

        opt.step = counted
    agent.update(batch)
    assert steps == {"actor": 1, "critic": 2}


def test_iql_update_is_the_written_formula(fixed_batch):
    batch = fixed_batch(3, 2, 8)
    agent = make_agent(pgd.IQL)
    with torch.no_grad():
        agent.actor.log_std.copy_(torch.tensor([0.2, -0.4]))
    before = copy.deepcopy(agent)
    metrics = agent.update(batch)

    obs, act, rew, nxt, term = batch
    tq = before.critic_target(obs, act)
    adv = torch.minimum(tq[0], tq[1]) - before.value(obs).squeeze(-1)
    value_loss = (torch.abs(0.7 - (adv < 0).float()) * adv**2).mean()
    y = rew + 0.99 * (1 - term) * before.value(nxt).squeeze(-1)
    q = before.critic(obs, act)
    critic_loss = (((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()) / 2
    mean = torch.tanh(before.actor.net(obs))
    std = torch.exp(before.actor.log_std)
    log_pi = (-((act - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)  # fmt: skip
    weight = torch.clamp(torch.exp(3.0 * adv), max=100.0)
    actor_loss = (weight * -log_pi).mean()
    torch.testing.assert_close(metrics["value_loss"], value_loss.detach())
    torch.testing.assert_close(metrics["critic_loss"], critic_loss.detach())
    torch.testing.assert_close(metrics["actor_loss"], actor_loss.detach())


def test_decode_cuts_each_window_after_its_first_done():
    o, a = 2, 1
    w = torch.zeros(2, 4, o + a + 2)
    w[..., 0] = torch.arange(4.0)  # obs[0] = row index
    w[0, 1, -1] = 1.0  # window 0: done at row 1 -> transitions 0, 1
    t = windows_to_transitions(w, o, a)
    assert t["observations"][:, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 2.0]
    assert t["next_observations"][:, 0].tolist() == [1.0, 2.0, 1.0, 2.0, 3.0]
    assert t["terminals"].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------- the run contract
def tags(run_dir) -> set[str]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.parametrize("agent", ["td3_bc", "iql"])
def test_smoke_run_writes_the_run_folder(agent, hopper_random_file, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    metrics = pgd.main(tiny_args(hopper_random_file, tiny_model, agent=agent, run_dir=str(run_dir)))
    assert metrics["steps"] == 40 and metrics["regenerations"] == 2
    assert isinstance(metrics["normalized_score"], float)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["return"] == pytest.approx(metrics["return"])
    expected = {"eval/return", "charts/updates_per_s", "losses/critic_loss", "losses/actor_loss"}
    assert expected <= tags(run_dir)


@pytest.mark.parametrize("agent", ["td3_bc", "iql"])
def test_resume_after_interruption_is_bit_exact(
    agent, hopper_random_file, tiny_model, tmp_path, interrupt_evaluation, assert_same_checkpoints
):
    # Interrupted after the evaluation at step 20, with a regeneration at 15 before it and one at 30 after.
    base = tiny_args(hopper_random_file, tiny_model, agent=agent, save_model=True, seed=3)
    straight = pgd.main(dataclasses.replace(base, run_dir=str(tmp_path / "straight")))
    interrupt_evaluation(2)
    with pytest.raises(KeyboardInterrupt):
        pgd.main(dataclasses.replace(base, run_dir=str(tmp_path / "interrupted")))
    interrupt_evaluation(0)
    assert load_checkpoint(tmp_path / "interrupted")["step"] == 20
    resumed = pgd.main(pgd.Args(resume=str(tmp_path / "interrupted"), total_steps=40))
    assert resumed["resumed_from"] == 20 and resumed["steps"] == 40
    assert "synthetic" in load_checkpoint(tmp_path / "straight")
    assert assert_same_checkpoints(tmp_path / "straight", tmp_path / "interrupted") > 10
    assert resumed["return"] == straight["return"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--batch-size", "0"], "--batch-size 0"),
        (["--synth-batch-size", "300"], "--synth-batch-size 300"),
        (["--synth-dataset-lifetime", "0"], "--synth-dataset-lifetime 0"),
        (["--sample-steps", "1"], "--sample-steps 1"),
        (["--env-id", "Hoper-v4"], "did you mean 'Hopper-v4'"),
        (["--guidance-coef", "nan"], "--guidance-coef nan"),
        ([], "python algos/diffusion.py --preset pgd-unguided"),  # no --diffusion-model
        (["--diffusion-model", "/nonexistent/model.pt"], "no such file"),
        (["--diffusion-steps", "5", "--diffusion-model", "m.pt"], "give one"),
        (["--diffusion-steps", "-1"], "--diffusion-steps -1"),
        (["--diffusion-steps", "5", "--unet-features", "12"], "--unet-features 12"),
        (["--diffusion-steps", "5", "--trajectory-length", "1"], "--trajectory-length 1"),
        (["--diffusion-steps", "5", "--diffusion-lr", "0"], "--diffusion-lr 0"),
        (["--diffusion-steps", "5", "--trajectory-length", "100000"], "no episode"),
    ],
)
def test_bad_flag_is_one_line_exit_2_and_no_folder(argv, expected, tmp_path, run_algorithm):
    run_dir = tmp_path / "run"
    code, err = run_algorithm(pgd, [*argv, "--run-dir", str(run_dir), "--no-progress"])
    assert code == 2 and err.startswith("error:") and "\n" not in err and expected in err, err
    assert not run_dir.exists()


def test_a_file_that_is_not_a_trajectory_model_is_refused(
    hopper_random_file, tmp_path, run_algorithm
):
    path = tmp_path / "model.pt"
    torch.save({"format": "ocrl-diffusion-1", "level": "transition"}, path)
    argv = ["--dataset", hopper_random_file, "--diffusion-model", str(path), "--run-dir",
            str(tmp_path / "run")]  # fmt: skip
    code, err = run_algorithm(pgd, argv)
    assert code == 2 and "not a trajectory diffusion model" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_model_of_other_dims_is_refused(hopper_random_file, tmp_path, run_algorithm):
    kwargs = dict(channels=7, features=16, num_blocks=2)
    net = build_network("unet", kwargs)
    state = model_state("unet", kwargs, EMA(net), DiffusionNormalizer.fit(torch.randn(4, 8, 7)),
                        "trajectory", 3, 2, trajectory_length=8)  # fmt: skip
    torch.save(state, tmp_path / "model.pt")
    argv = ["--dataset", hopper_random_file, "--diffusion-model", str(tmp_path / "model.pt"),
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    code, err = run_algorithm(pgd, argv)
    assert code == 2 and "trained on obs/act dims 3/2, the data has 11/3" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_garbage_checkpoint_for_resume_is_refused(
    hopper_random_file, tiny_model, tmp_path, capsys, run_algorithm
):
    run_dir = tmp_path / "run"
    pgd.main(tiny_args(hopper_random_file, tiny_model, run_dir=str(run_dir), total_steps=20))
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    before = sorted(p.name for p in run_dir.iterdir())
    capsys.readouterr()
    code, err = run_algorithm(pgd, ["--resume", str(run_dir), "--no-progress"])
    assert code == 2 and "\n" not in err and "checkpoint.pt" in err, err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_diverging_losses_stop_the_run_with_the_projects_message(
    hopper_random_file, tiny_model, tmp_path, monkeypatch
):
    real_update = pgd.IQL.update

    def exploding(self, batch):
        out = real_update(self, batch)
        out["value_loss"] = out["value_loss"] * float("inf")
        return out

    monkeypatch.setattr(pgd.IQL, "update", exploding)
    with pytest.raises(FloatingPointError):
        pgd.main(
            tiny_args(hopper_random_file, tiny_model, agent="iql", run_dir=str(tmp_path / "r"))
        )


def test_synth_batch_size_0_is_the_real_data_baseline_and_generates_nothing(
    hopper_random_file, tiny_model, tmp_path, monkeypatch
):
    def no_sampling(*a, **k):
        raise AssertionError("sampled with --synth-batch-size 0")

    monkeypatch.setattr(pgd.TrajectoryModel, "sample_n", no_sampling)
    args = tiny_args(hopper_random_file, tiny_model, synth_batch_size=0, save_model=True,
                     run_dir=str(tmp_path / "run"))  # fmt: skip
    metrics = pgd.main(args)
    assert metrics["regenerations"] == 0 and metrics["synthetic_transitions"] == 0
    resumed = pgd.main(pgd.Args(resume=str(tmp_path / "run"), total_steps=50))
    assert resumed["steps"] == 50


def test_batch_is_a_batch():  # the mixed batch is the project's Batch, so agents see named fields
    b = pgd.mixed_batch(
        ReplayBuffer.from_arrays(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4), torch.zeros(4, 1), torch.zeros(4)),  # fmt: skip
        ReplayBuffer.from_arrays(torch.ones(4, 1), torch.ones(4, 1), torch.ones(4), torch.ones(4, 1), torch.ones(4)),  # fmt: skip
        6, 2,
    )  # fmt: skip
    assert isinstance(b, Batch) and b.terminals.tolist() == [1, 1, 0, 0, 0, 0]


# ------------------------------------------------------------------- the model trained in this file
TINY_UNET = dict(unet_features=16, unet_blocks=2, trajectory_length=8, window_stride=8)


def test_diffusion_steps_trains_through_the_code_algos_diffusion_uses_with_its_pgd_preset(
    hopper_random_file, tmp_path, monkeypatch
):
    # Both files train with ocrl.nets.edm_model.EDMTrainer; pgd's settings are diffusion.py's pgd-unguided.
    settings: dict[str, list] = {"diffusion": [], "pgd": []}
    updates = {"diffusion": 0, "pgd": 0}
    real_init, real_update = EDMTrainer.__init__, EDMTrainer.update
    signature = inspect.signature(real_init)
    current = ["diffusion"]

    def init(self, network, **kwargs):
        bound = signature.bind(self, network, **kwargs)
        bound.apply_defaults()
        settings[current[0]].append({**bound.arguments, "self": None, "network": None})
        real_init(self, network, **kwargs)

    def update(self, x):
        updates[current[0]] += 1
        return real_update(self, x)

    monkeypatch.setattr(EDMTrainer, "__init__", init)
    monkeypatch.setattr(EDMTrainer, "update", update)
    preset = {**diffusion_algo.PRESETS["pgd-unguided"], **TINY_UNET}
    preset.update(total_steps=30, batch_size=8, num_samples=10, sample_batch_size=10)
    preset.update(sample_steps=2)
    diffusion_algo.main(
        diffusion_algo.Args(
            **preset, quality_samples=0, dataset=hopper_random_file, seed=5,
            run_dir=str(tmp_path / "diffusion"), progress=False,
        )
    )  # fmt: skip
    current[0] = "pgd"
    args = tiny_args(hopper_random_file, None, diffusion_steps=30, diffusion_batch_size=8, seed=5,
                     total_steps=20, run_dir=str(tmp_path / "pgd"), **TINY_UNET)  # fmt: skip
    metrics = pgd.main(args)
    assert metrics["diffusion_model"] == str(tmp_path / "pgd" / "model.pt")
    assert len(settings["pgd"]) == len(settings["diffusion"]) == 1
    assert settings["pgd"] == settings["diffusion"]
    assert updates == {"diffusion": 30, "pgd": 30}
    ours = load_checkpoint(tmp_path / "pgd" / "model.pt")
    theirs = load_checkpoint(tmp_path / "diffusion" / "model.pt")
    assert ours.keys() == theirs.keys() and ours["network_kwargs"] == theirs["network_kwargs"]
    assert ours["trajectory_length"] == theirs["trajectory_length"] == 8
    # The EMA moved away from the initial weights: 30 steps of training happened.
    init_state = build_network("unet", ours["network_kwargs"]).state_dict()
    assert any(not torch.equal(init_state[k], v) for k, v in ours["ema"].items())


def test_edm_trainer_fit_draws_batches_of_the_data_and_reports_the_interval_means(monkeypatch):
    trainer = EDMTrainer(ResidualMLPDenoiser(3, width=8, depth=1, dim_t=4), lr=1e-3, total_steps=5)
    data = torch.arange(12.0).view(4, 3)
    seen, logs = [], []

    def update(self, x):
        seen.append(x.clone())
        return {"denoiser_loss": x.sum()}

    monkeypatch.setattr(EDMTrainer, "update", update)
    trainer.fit(data, 5, 2, 2, lambda step, loss: logs.append((step, loss)), progress=False)
    assert len(seen) == 5
    assert all(
        x.shape == (2, 3) and all(bool((data == row).all(1).any()) for row in x) for x in seen
    )
    sums = [float(x.sum()) for x in seen]
    assert [step for step, _ in logs] == [2, 4, 5]  # every log_every steps and at the last
    expected = [(sums[0] + sums[1]) / 2, (sums[2] + sums[3]) / 2, sums[4]]
    assert [loss for _, loss in logs] == pytest.approx(expected)


def test_a_trained_model_leaves_the_agent_as_a_loaded_one_and_resume_reloads_it(
    hopper_random_file, tmp_path, monkeypatch
):
    trained_dir, loaded_dir = tmp_path / "trained", tmp_path / "loaded"
    common = dict(total_steps=20, save_model=True, seed=2, **TINY_UNET)
    args = tiny_args(hopper_random_file, None, diffusion_steps=20, diffusion_batch_size=8,
                     run_dir=str(trained_dir), **common)  # fmt: skip
    pgd.main(args)
    model = str(trained_dir / "model.pt")
    pgd.main(tiny_args(hopper_random_file, model, run_dir=str(loaded_dir), **common))
    a = load_checkpoint(trained_dir)
    b = load_checkpoint(loaded_dir)
    for part in ("actor", "critic", "actor_opt"):
        for key, tensor in a[part].items():
            if isinstance(tensor, torch.Tensor):
                torch.testing.assert_close(b[part][key], tensor, rtol=0, atol=0, msg=part + key)

    def no_training(*a, **k):
        raise AssertionError("a resumed run trained its trajectory model again")

    monkeypatch.setattr(edm_runs, "fit_model", no_training)
    before = (trained_dir / "model.pt").stat().st_mtime_ns
    resumed = pgd.main(pgd.Args(resume=str(trained_dir), total_steps=40))
    assert resumed["steps"] == 40 and resumed["regenerations"] == 2
    assert (trained_dir / "model.pt").stat().st_mtime_ns == before


def test_a_diverging_trajectory_model_stops_before_the_agent_and_writes_no_model(
    hopper_random_file, tmp_path
):
    args = tiny_args(hopper_random_file, None, diffusion_steps=20, diffusion_batch_size=8,
                     diffusion_lr=1e30, log_every=10, run_dir=str(tmp_path / "run"), **TINY_UNET)  # fmt: skip
    with pytest.raises(FloatingPointError, match="trajectory model loss"):
        pgd.main(args)
    assert not (tmp_path / "run" / "model.pt").exists()
