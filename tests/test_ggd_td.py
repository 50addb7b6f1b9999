"""GGD-TD (algos/ggd_td.py): the GGD maths, MBBE, the xi solvers and the critic update against formulas
written here in float64, the beta floor, flag checks, and a learning test."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from formulas import one_seed, stream_draws
from scipy import stats

from ocrl.algos import ggd_td
from ocrl.data import Batch
from ocrl.experiment import UsageError
from ocrl.nets import TanhGaussianActor, ggd
from ocrl.nets.core import EnsembleLinear
from ocrl.nets.seeds import seed_member

OBS, ACT, B, E = 3, 2, 12, 5
LOW, HIGH = torch.tensor([-2.0, -0.5]), torch.tensor([2.0, 1.5])


# ------------------------------------------------------------------ GGD maths
def test_power_form_at_beta_2_is_the_gaussian_nll_with_variance_one_half():
    delta = torch.linspace(-3, 3, 41, dtype=torch.float64).reshape(1, -1)  # one member (weight 1)
    beta = torch.full_like(delta, 2.0)
    _, terms = ggd.ggd_nll(delta, beta, form="power")
    # N(0, 1/2): -log p = 0.5 log(2 pi / 2) + delta^2 / (2 * 1/2); the code drops the GGD's log 2.
    gauss = 0.5 * math.log(math.pi) + delta**2
    torch.testing.assert_close(terms + math.log(2.0), gauss, rtol=0, atol=1e-12)
    # Any beta: the power form + log 2 is -log of scipy's generalised normal density (scale 1).
    for b in (0.5, 1.0, 1.5, 3.0, 8.0):
        _, terms = ggd.ggd_nll(delta, torch.full_like(delta, b), form="power")
        expected = -stats.gennorm.logpdf(delta.numpy(), b)
        np.testing.assert_allclose(terms.numpy() + math.log(2.0), expected, rtol=1e-10, atol=1e-12)


def test_product_form_and_risk_averse_weight_match_the_released_loss():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(2, E, 7, generator=g, dtype=torch.float64)
    beta = torch.rand(2, E, 7, generator=g, dtype=torch.float64) * 3 + 0.1
    loss, _ = ggd.ggd_nll(delta, beta, form="product")
    for t in range(
        2
    ):  # losses/mle.py: sum over members of (|d| b - log b + lgamma(1/b)) b / sum b, batch mean
        per_sample = [
            sum(
                (abs(delta[t, e, i]) * beta[t, e, i] - math.log(beta[t, e, i])
                 + math.lgamma(1 / beta[t, e, i])) * beta[t, e, i] / beta[t, :, i].sum()
                for e in range(E)
            )
            for i in range(7)
        ]  # fmt: skip
        assert float(loss[t]) == pytest.approx(float(np.mean(per_sample)), rel=1e-12)


def test_variance_is_gamma_3_over_beta_over_gamma_1_over_beta():
    table = {0.5: 120, 1: 2.0, 1.5: 0.739, 2: 0.5, 3: 0.373, 4: 0.338, 8: 0.315}  # the spec's table
    beta = torch.tensor(list(table), dtype=torch.float64)
    var = ggd.ggd_variance(beta)
    np.testing.assert_allclose(var.numpy(), list(table.values()), rtol=2e-3)
    np.testing.assert_allclose(var.numpy(), stats.gennorm.var(beta.numpy()), rtol=1e-10)
    plain = [math.gamma(3 / b) / math.gamma(1 / b) for b in table]
    np.testing.assert_allclose(var.numpy(), plain, rtol=1e-12)
    assert (var[1:] < var[:-1]).all()  # decreasing in beta


def test_mbbe_variance_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    for n in (4, 5, 10):
        td = rng.standard_t(3, size=(3, n, 50))  # heavy tails: kurtosis matters
        got = ggd.mbbe_variance(torch.from_numpy(td)).numpy()
        kappa = stats.kurtosis(td, axis=1, fisher=True, bias=False)  # the released code's call
        expected = np.var(td, axis=1, ddof=0) / (kappa / n + (n + 1) / (n - 1))
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        # The same kurtosis written out: ((n+1) g2 + 6)(n-1) / ((n-2)(n-3)), g2 = m4 / m2^2 - 3.
        c = td - td.mean(axis=1, keepdims=True)
        g2 = (c**4).mean(axis=1) / (c**2).mean(axis=1) ** 2 - 3
        kappa_plain = ((n + 1) * g2 + 6) * (n - 1) / ((n - 2) * (n - 3))
        np.testing.assert_allclose(kappa, kappa_plain, rtol=1e-10)
        plain_var = ggd.mbbe_variance(torch.from_numpy(td), mbbe=False).numpy()
        np.testing.assert_allclose(plain_var, np.var(td, axis=1), rtol=1e-12)


# ------------------------------------------------------------------ xi
def test_bisection_xi_equals_nelder_mead_xi_on_random_batches():
    # Measured over 659 solved rows (seed 1, B in {256, 64, 17}, log-normal variances, sigma 1..4,
    # scales 1e-2..1e2): |xi_bisection - xi_nm| <= 0.3% of xi where xi > 1e-2, and <= 3.1e-5 below
    # (Nelder-Mead from 0 moves in steps of 2.5e-4 / 2^k and stops at xatol 1e-4).
    g = torch.Generator().manual_seed(2)
    solved = 0
    for trial in range(30):
        n = (256, 64, 17)[trial % 3]
        m = float(min(n - 1, 16))
        sigma = 1 + 3 * torch.rand(1, generator=g).item()
        scale = 10 ** (4 * torch.rand(1, generator=g).item() - 2)
        var = torch.exp(sigma * torch.randn(4, n, generator=g, dtype=torch.float64)) * scale
        xb, ran_b = ggd.xi_bisection(var, m)
        xn, ran_n = ggd.xi_nelder_mead(var, m)
        assert torch.equal(ran_b, ran_n)
        ess0 = ggd.effective_batch_size(var, torch.zeros(4, 1, dtype=torch.float64))[:, 0]
        assert torch.equal(ran_b, ess0 < m)
        assert (xb[~ran_b] == 0).all() and (xn[~ran_n] == 0).all()
        # Bisection: ESS(var + xi) = m (1 / sum w^2 written out here).
        for k in torch.nonzero(ran_b).flatten().tolist():
            w = 1 / (var[k] + xb[k])
            w = w / w.sum()
            assert float(1 / (w**2).sum()) == pytest.approx(m, rel=1e-6)
            assert abs(float(xb[k] - xn[k])) <= 0.01 * float(xb[k]) + 1e-4
            solved += 1
    assert solved > 50


def test_bisection_xi_is_zero_when_the_batch_is_already_large_enough():
    var = torch.ones(2, 256)
    xi, ran = ggd.xi_bisection(var, 16.0)
    assert not ran.any() and (xi == 0).all()


# ------------------------------------------------------------------ the update
def plain_q(critic, j: int, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, raw) of member j (= twin * E + e): x W + b, tanh between layers."""
    linears = [m for m in critic.net if isinstance(m, EnsembleLinear)]
    x = torch.cat([s, a], dim=1).double()
    for k, lin in enumerate(linears):
        x = x @ lin.weight[j].double() + lin.bias[j, 0].double()
        if k < len(linears) - 1:
            x = torch.tanh(x)
    return x[:, 0], x[:, 1]


def plain_policy(actor, s: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, log pi(a|s)) with tanh hidden layers, u = mu + sigma eps, a = tanh(u) scale + bias."""
    h = s.double()
    for lin in (m for m in actor.trunk if isinstance(m, torch.nn.Linear)):
        h = torch.tanh(h @ lin.weight.double().T + lin.bias.double())
    mu = h @ actor.mean.weight.double().T + actor.mean.bias.double()
    raw = h @ actor.log_std.weight.double().T + actor.log_std.bias.double()
    log_std = -5.0 + 0.5 * 7.0 * (torch.tanh(raw) + 1.0)
    u = mu + log_std.exp() * eps.double()
    scale, bias = (HIGH - LOW).double() / 2, (HIGH + LOW).double() / 2
    gauss = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return torch.tanh(u) * scale + bias, (gauss - torch.log(scale * (1 - torch.tanh(u) ** 2))).sum(
        1
    )


def plain_xi(var: np.ndarray, m: float) -> float:
    """The root of 1 / sum w^2 = m, w proportional to 1 / (var + xi), by plain bisection; 0 if already >= m."""

    def ess(xi: float) -> float:
        w = 1 / (var + xi)
        return w.sum() ** 2 / (w**2).sum()

    if ess(0.0) >= m:
        return 0.0
    lo, hi = 0.0, 1.0
    while ess(hi) < m:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ess(mid) < m else (lo, mid)
    return (lo + hi) / 2


def plain(actor) -> TanhGaussianActor:
    """The (N = 1) seed-stacked actor as a plain single-seed TanhGaussianActor with its weights."""
    single = TanhGaussianActor(OBS, ACT, (8, 8), LOW, HIGH, activation=torch.nn.Tanh)
    return seed_member(actor, single, 0, 1)


def make_agent(**overrides) -> ggd_td.GGDSAC:
    torch.manual_seed(0)
    args = ggd_td.Args(
        hidden=(8, 8), discount=0.9, tau=0.1, device="cpu", batch_size=B, **overrides
    )
    return ggd_td.GGDSAC(args, OBS, ACT, LOW, HIGH, torch.device("cpu"))


def make_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(
        observations=torch.randn(B, OBS, generator=g),
        actions=torch.rand(B, ACT, generator=g) * (HIGH - LOW) + LOW,
        rewards=torch.randn(B, generator=g),
        next_observations=torch.randn(B, OBS, generator=g),
        terminals=(torch.arange(B) % 4 == 1).float(),
    )


@pytest.mark.parametrize("loss, reg", [("ggd", "biev"), ("ggd", "biv"), ("gaussian", "none"), ("mse", "none")])  # fmt: skip
def test_critic_update_matches_the_released_loss_and_its_gradient(loss, reg):
    agent = make_agent(loss=loss, reg=reg, min_batch_size=16)
    with torch.no_grad():
        agent.log_alpha.fill_(math.log(0.3))
        for p in agent.critic_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = make_batch()
    s, a, r, s2, d = batch
    before, target_before = copy.deepcopy(agent.critic), copy.deepcopy(agent.critic_target)
    (eps,) = stream_draws(agent, 1, (B, ACT))
    metrics = agent.update(one_seed(batch), actor_steps=0)

    m = float(min(B - 1, 16))
    with torch.no_grad():
        a2, logp2 = plain_policy(plain(agent.actor), s2, eps)
        next_q = torch.stack([torch.stack([plain_q(target_before, t * E + e, s2, a2)[0]
                                           for e in range(E)]) for t in range(2)])  # fmt: skip
        y = r.double() + 0.9 * (1 - d.double()) * (next_q.min(0).values - 0.3 * logp2)  # (E, B)
    total = 0.0
    for t in range(2):
        outs = [plain_q(before, t * E + e, s, a) for e in range(E)]
        q = torch.stack([o[0] for o in outs])
        raw = torch.stack([o[1] for o in outs])
        delta = q - y
        if loss == "mse":
            value = sum((delta[e] ** 2).mean() for e in range(E))
        elif loss == "gaussian":
            var = torch.log1p(torch.exp(raw))
            value = sum((0.5 * (var[e].log() + delta[e] ** 2 / var[e])).mean() for e in range(E))
        else:
            beta = torch.log1p(torch.exp(raw))
            nll = delta.abs() * beta - beta.log() + torch.lgamma(1 / beta)
            value = sum((nll[e] * beta[e] / beta.sum(0)).mean() for e in range(E))
        reg_term = 0.0
        if reg != "none":
            dd = delta.detach().numpy()
            if reg == "biev":
                v = np.var(dd, axis=0) / (
                    stats.kurtosis(dd, axis=0, bias=False) / E + (E + 1) / (E - 1)
                )
                ell = delta.abs()  # MAE for the GGD loss
            else:
                v = 0.81 * np.var(q.detach().numpy(), axis=0, ddof=1)
                ell = delta.abs()
            v = np.clip(v, 1e-6, None)
            xi = plain_xi(v, m)
            w = torch.from_numpy((1 / (v + xi)) / (1 / (v + xi)).sum())
            reg_term = sum((w * ell[e]).mean() for e in range(E))
        total = total + 0.5 * (value + 0.1 * reg_term)
    params = list(before.parameters())
    grads = torch.autograd.grad(total, params, allow_unused=True)

    assert float(metrics["critic_loss"]) == pytest.approx(float(total.detach()), rel=1e-5)
    for p_new, g in zip(agent.critic.parameters(), grads, strict=True):
        g = torch.zeros_like(p_new.grad.double()) if g is None else g.double()
        torch.testing.assert_close(p_new.grad.double(), g, rtol=1e-4, atol=1e-6)
    if reg != "none":  # the batch is small and the variances spread: the solver ran for both twins
        assert float(agent.diagnostics()["ggd/solver_ran"]) == 1.0


def test_actor_loss_is_the_min_over_twins_of_the_member_mean():
    agent = make_agent()
    batch = make_batch()
    s = batch.observations
    _, eps_pi = stream_draws(agent, 2, (B, ACT))
    actor_before = plain(copy.deepcopy(agent.actor))
    metrics = agent.update(one_seed(batch), actor_steps=1)
    a_pi, logp = plain_policy(actor_before, s, eps_pi)
    q_twins = [
        torch.stack([plain_q(agent.critic, t * E + e, s, a_pi)[0] for e in range(E)]).mean(0)
        for t in range(2)
    ]
    expected = (1.0 * logp - torch.minimum(*q_twins)).mean()
    assert float(metrics["actor_loss"]) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_beta_underflow_gives_nan_without_the_floor_and_finite_terms_with_it():
    for beta_eps in (0.0, 1e-6):
        agent = make_agent(beta_eps=beta_eps)
        with torch.no_grad():
            agent.critic.net[-1].bias[..., 1] = -200.0  # softplus(-200) underflows to 0 in float32
        metrics = agent.update(one_seed(make_batch()), actor_steps=0) | agent.diagnostics()
        if beta_eps == 0.0:
            assert math.isnan(float(metrics["critic_loss"])) and float(metrics["ggd/nonfinite"]) > 0
        else:
            assert math.isfinite(float(metrics["critic_loss"]))
            assert float(metrics["ggd/nonfinite"]) == 0 and float(metrics["ggd/beta_min"]) > 0


def tiny(tmp_path, **over) -> ggd_td.Args:
    fields = dict(
        env_id="Pendulum-v1", total_steps=100, learning_starts=40, eval_every=100, log_every=20,
        batch_size=16, hidden=(16, 16), eval_episodes=1, progress=False, run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    return ggd_td.Args(**(fields | over))


def test_a_diverging_run_stops_with_the_divergence_message(tmp_path, monkeypatch):
    q_and_raw = ggd_td.GGDSAC.q_and_raw

    def underflowing(self, critic, obs, action):
        q, raw = q_and_raw(self, critic, obs, action)
        return q, raw - 200.0

    monkeypatch.setattr(ggd_td.GGDSAC, "q_and_raw", underflowing)
    with pytest.raises(FloatingPointError, match="training diverged at step 60"):
        ggd_td.main(tiny(tmp_path))
    metrics = ggd_td.main(tiny(tmp_path, beta_eps=1e-6, run_dir=str(tmp_path / "floored")))
    assert metrics["steps"] == 100


def test_nelder_mead_solver_runs_end_to_end(tmp_path):
    metrics = ggd_td.main(tiny(tmp_path, xi_solver="nelder-mead"))
    assert metrics["steps"] == 100


@pytest.mark.parametrize(
    "over, message",
    [
        (dict(ensemble_size=3), "--ensemble-size 3: --reg biev needs at least 4"),
        (dict(ensemble_size=1, reg="biv"), "--ensemble-size 1: --reg biv needs at least 2"),
        (dict(beta_eps=-1.0), "--beta-eps -1.0"),
        (dict(min_batch_size=0), "--min-batch-size 0"),
        (dict(uncertainty_temperature=-0.1), "--uncertainty-temperature -0.1"),
        (dict(compile=True, xi_solver="nelder-mead"), "--compile"),
        (dict(policy_freq=0), "--policy-freq 0"),
    ],
)
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, over, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        ggd_td.main(tiny(tmp_path, **over))
    assert not any(tmp_path.iterdir())
    # --ensemble-size 3 is fine without the kurtosis correction or the regulariser.
    if over == dict(ensemble_size=3):
        ggd_td.check_ggd_args(tiny(tmp_path, ensemble_size=3, biev_mbbe=False))
        ggd_td.check_ggd_args(tiny(tmp_path, ensemble_size=1, loss="mse"))


def test_presets_differ_only_in_the_training_setup():
    base, clean = ggd_td.Args(), ggd_td.Args(**ggd_td.PRESETS["cleanrl-default"])
    changed = {k for k in vars(base) if getattr(base, k) != getattr(clean, k)}
    assert changed == {"num_envs", "learning_starts", "q_lr", "policy_freq", "activation",
                       "time_feature", "total_steps"}  # fmt: skip
    assert base.loss == clean.loss == "ggd" and ggd.resolved_reg(base.reg, base.loss) == "biev"


def test_time_feature_counts_down_to_the_time_limit():
    from ocrl.envs import TimeFeature, make_env

    env = TimeFeature(make_env("Pendulum-v1"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,) and obs[-1] == 1.0 and env.observation_space.contains(obs)
    for t in range(1, 201):
        obs, _, _, truncated, _ = env.step(env.action_space.sample())
        assert truncated == (t == 200) and obs[-1] == pytest.approx(1 - t / 200)


# ------------------------------------------------------------------ learning
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ggd_sac_learns_pendulum(tmp_path, precision):
    # cleanrl-default setting (1 env, lr 1e-3 critics, ReLU), hidden (64, 64), 1,000 random steps; measured
    # final evaluation returns (seeds 1, 2, 3): -129, -369, -364 after 4,000 steps (about 30 s each on
    # the shared 2-core CPU) and -601, -397, -111 after 6,000: Pendulum's final evaluation is noisy.
    # The untrained actor scores about -1,400. Threshold -800.
    flags = ggd_td.PRESETS["cleanrl-default"] | dict(
        env_id="Pendulum-v1", total_steps=4_000, learning_starts=1_000, eval_every=4_000,
        hidden=(64, 64), seed=1, run_dir=str(tmp_path), progress=False, precision=precision,
    )  # fmt: skip
    metrics = ggd_td.main(ggd_td.Args(**flags))
    assert metrics["return"] >= -800, metrics
