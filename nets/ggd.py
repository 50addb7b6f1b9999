"""The GGD-TD family's numerical machinery (Kim et al., arXiv 2408.02295; released code ait-lab/ggtde): the
risk-averse generalised-Gaussian NLL, the MBBE-corrected error variance of BIEV, the batch inverse-variance
weights with their xi solvers, and the weighted regulariser. Used by algos/ggd_td.py and algos/ggd_ppo.py;
each file keeps its own targets, value loss choice and update; `GGDArgs` holds the flags of this machinery that
both files share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class GGDArgs:
    """The GGD critic's flags, the same in algos/ggd_td.py and algos/ggd_ppo.py (each file's `Args` extends it)."""

    ensemble_size: int = 5
    """value members E (ggd_td: per twin critic; ggd_ppo: heads on the critic trunk), each with a mean and a raw-shape output (ggd_ppo's --loss mse: the mean alone, as released)"""
    loss: Literal["ggd", "gaussian", "mse"] = "ggd"
    """value loss: ggd (risk-averse GGD NLL), gaussian (variance head: the released gd-sac / GD_PPO), mse (plain SAC / PPO)"""
    reg: Literal["auto", "none", "biv", "biev"] = "auto"
    """batch inverse-variance regulariser: biev (the TD-error variance over the members), biv (the prediction variance), none; auto = biev for --loss ggd, none otherwise"""
    reg_loss: Literal["auto", "mae", "mse", "huber"] = "auto"
    """the regulariser's per-sample loss; auto = mae for --loss ggd, mse otherwise (as the released variants)"""
    uncertainty_temperature: float = 0.1
    """lambda, the regulariser's weight"""
    min_batch_size: int = 16
    """minimum effective batch size m (capped at batch_size - 1) that xi restores"""
    ggd_form: Literal["product", "power"] = "product"
    """GGD term: product |delta| * beta (released code) or power |delta|^beta (the paper's Eq. 4)"""
    beta_eps: float = 0.0
    """beta = softplus(raw) + beta_eps; 0 is the released code (beta can underflow to 0 and the loss to NaN); 1e-6 keeps it finite"""
    detach_ra_weight: bool = False
    """detach the risk-averse weight beta_e / sum_e' beta_e' (the released code does not)"""
    biev_mbbe: bool = True
    """BIEV variance with the MBBE kurtosis correction (released code); --no-biev-mbbe is the paper text's plain V[delta]"""
    reg_scale: Literal["code", "sum"] = "code"
    """code: mean_i(w_i l_i), i.e. lambda / B times the weighted sum (released); sum: sum_i w_i l_i"""
    xi_solver: Literal["bisection", "nelder-mead"] = "bisection"
    """xi by a bracketing search on the device, or by scipy's Nelder-Mead on the CPU (the released solver; a host sync per minibatch)"""


def ggd_nll(
    delta: torch.Tensor, beta: torch.Tensor, form: str = "product", detach_weight: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_e mean_i of the risk-averse-weighted GGD NLL, the unweighted terms); delta, beta: (..., E, B)."""
    err = delta.abs() * beta if form == "product" else delta.abs().pow(beta)
    terms = err - beta.log() + torch.lgamma(1.0 / beta)
    weight = beta / beta.sum(dim=-2, keepdim=True)
    if detach_weight:
        weight = weight.detach()
    return (terms * weight).mean(-1).sum(-1), terms


def ggd_variance(beta: torch.Tensor) -> torch.Tensor:
    """Variance of a GGD with scale 1: Gamma(3/beta) / Gamma(1/beta)."""
    return torch.exp(torch.lgamma(3.0 / beta) - torch.lgamma(1.0 / beta))


def mbbe_variance(td: torch.Tensor, mbbe: bool = True) -> torch.Tensor:
    """Over the members (dim -2) of td (..., E, B): Var^{ddof 0} / (kappa / E + (E+1)/(E-1)), kappa the unbiased excess kurtosis."""
    n = td.shape[-2]
    centred = td - td.mean(dim=-2, keepdim=True)
    m2 = centred.pow(2).mean(dim=-2)
    if not mbbe:
        return m2
    m4 = centred.pow(4).mean(dim=-2)
    kurtosis = ((n * n - 1) * m4 / m2**2 - 3 * (n - 1) ** 2) / ((n - 2) * (n - 3))
    corrected = m2 / (kurtosis / n + (n + 1) / (n - 1))
    # Identical members: 0/0, clipped to a floor by the caller.
    return torch.where(m2 > 0, corrected, torch.zeros_like(m2))


def effective_batch_size(var: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """ESS = 1 / sum_i w_i^2 with w_i proportional to 1 / (var_i + xi); var (..., B), xi (..., K) -> (..., K)."""
    inv = 1.0 / (var.unsqueeze(-2) + xi.unsqueeze(-1))
    return inv.sum(-1) ** 2 / inv.pow(2).sum(-1)


def _bracket(var: torch.Tensor, grid: torch.Tensor, m: float):
    """The grid interval (lo, up] where the ESS (non-decreasing in xi) first reaches m, and the ESS at its ends."""
    ess = effective_batch_size(var, grid)
    k = (ess >= m).int().argmax(dim=-1, keepdim=True).clamp_min(1)
    return grid.gather(-1, k - 1), grid.gather(-1, k), ess.gather(-1, k - 1), ess.gather(-1, k)


def xi_bisection(
    var: torch.Tensor, m: float, points: int = 64, rounds: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """(xi, ran) per row of var (..., B), on var's device: xi = 0 where ESS(var) >= m, else the root of ESS(var + xi) = m."""
    v = var.double()
    n = v.shape[-1]
    ess0 = effective_batch_size(v, v.new_zeros(*v.shape[:-1], 1))[..., 0]
    # With xi >= max(var) / (sqrt(n/m) - 1) the weights differ by at most sqrt(n/m), so ESS >= m.
    hi = 2.0 * v.amax(dim=-1, keepdim=True) / (math.sqrt(n / m) - 1.0)
    unit = torch.logspace(-12, 0, points - 1, dtype=v.dtype, device=v.device)
    lo, up, e_lo, e_up = _bracket(v, hi * torch.cat([unit.new_zeros(1), unit]), m)
    steps = torch.linspace(0.0, 1.0, points, dtype=v.dtype, device=v.device)
    for _ in range(rounds):
        lo, up, e_lo, e_up = _bracket(v, lo + (up - lo) * steps, m)
    xi = lo + (m - e_lo) / (e_up - e_lo).clamp_min(1e-12) * (up - lo)
    ran = ess0 < m
    return torch.where(ran, xi[..., 0], torch.zeros_like(ess0)).to(var.dtype), ran


def xi_nelder_mead(var: torch.Tensor, m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The released solver, per row of var (..., B) on the CPU: Nelder-Mead on |ESS(var + |xi|) - m| from 0 (fatol 1, maxiter 100)."""
    from scipy.optimize import minimize

    rows = var.detach().double().cpu().numpy().reshape(-1, var.shape[-1])

    def ess(v: np.ndarray) -> float:
        w = (1.0 / v) / np.sum(1.0 / v)
        return 1.0 / np.sum(w**2)

    xis, ran = [], []
    for v in rows:
        xi = 0.0
        if ess(v) < m:
            res = minimize(lambda x, v=v: abs(ess(v + abs(x[0])) - m), 0.0, method="Nelder-Mead",
                           options={"fatol": 1, "maxiter": 100})  # fmt: skip
            xi = abs(float(res.x[0]))
        xis.append(xi)
        ran.append(ess(v) < m)
    shape = var.shape[:-1]
    return (
        torch.tensor(xis, dtype=var.dtype).reshape(shape).to(var.device),
        torch.tensor(ran).reshape(shape).to(var.device),
    )


def inverse_variance_weights(
    var: torch.Tensor, m: float, solver: str = "bisection"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w, xi, ran) per row of var (..., B): w_i = (1/(var_i + xi)) / sum_j 1/(var_j + xi), xi from `solver` so that ESS >= m."""
    solve = xi_bisection if solver == "bisection" else xi_nelder_mead
    xi, ran = solve(var, m)
    inv = 1.0 / (var + xi.unsqueeze(-1))
    return inv / inv.sum(-1, keepdim=True), xi, ran


def resolved_reg(reg: str, loss: str) -> str:
    """--reg with auto resolved: biev for --loss ggd (the released full method), none otherwise."""
    if reg != "auto":
        return reg
    return "biev" if loss == "ggd" else "none"


def resolved_reg_loss(reg_loss: str, loss: str) -> str:
    """--reg-loss with auto resolved: mae for --loss ggd, mse otherwise (as the released variants)."""
    if reg_loss != "auto":
        return reg_loss
    return "mae" if loss == "ggd" else "mse"


def regulariser_misfit(
    reg: str, biev_mbbe: bool, ensemble_size: int, batch_size: int, members: str = "heads"
) -> str | None:
    """Why the (resolved) regulariser cannot run with these sizes, as a one-line flag message, or None."""
    need = 4 if reg == "biev" and biev_mbbe else 2
    if reg != "none" and ensemble_size < need:
        why = (
            "the kurtosis correction divides by (E-2)(E-3)"
            if need == 4
            else f"a variance over {members}"
        )
        return (
            f"--ensemble-size {ensemble_size}: --reg {reg} needs at least {need} {members} ({why}); "
            "use --ensemble-size 5 or --reg none"
        )
    if reg != "none" and batch_size < 2:
        return f"--batch-size {batch_size}: --reg {reg} needs at least 2; use --reg none"
    return None


def inverse_variance_regulariser(
    pred: torch.Tensor, target: torch.Tensor, reg: str, *, biev_mbbe: bool, discount: float,
    min_ess: float, solver: str, loss: str, scale: str, floor: float = 1e-6,
    spread: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """BIEV/BIV: the batch inverse-variance weighted loss of pred against target, both (..., E, B), and what it
    kept (xi, ran, ess, reg_var). The variance per sample: BIEV the MBBE variance of the errors over E; BIV
    discount^2 times the variance over E of pred (or of `spread`, e.g. target critics); floored at `floor`."""
    with torch.no_grad():
        if reg == "biev":
            var = mbbe_variance(pred.detach() - target, biev_mbbe)
        else:
            source = pred.detach() if spread is None else spread
            var = discount**2 * source.var(dim=-2, correction=1)
        var = var.clamp_min(floor)
        weights, xi, ran = inverse_variance_weights(var, min_ess, solver)
        kept = {"xi": xi, "ran": ran, "ess": 1.0 / weights.pow(2).sum(-1), "reg_var": var}
    return weighted_regulariser(pred, target, weights, loss, scale), kept


def weighted_regulariser(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, kind: str, scale: str
) -> torch.Tensor:
    """sum_e mean_i (scale code) or sum_e sum_i (scale sum) of w_i * l(pred, target); pred, target (..., E, B), weights (..., B)."""
    if kind == "mse":
        per = (pred - target).pow(2)
    elif kind == "mae":
        per = (pred - target).abs()
    else:
        per = F.huber_loss(pred, target.expand_as(pred), reduction="none")
    per = per * weights.unsqueeze(-2)
    return per.mean(-1).sum(-1) if scale == "code" else per.sum(-1).sum(-1)


@torch.no_grad()
def ggd_diagnostics(
    name: str, param: torch.Tensor | None = None, td_var: torch.Tensor | None = None,
    nonfinite: torch.Tensor | None = None, xi: torch.Tensor | None = None,
    ran: torch.Tensor | None = None, ess: torch.Tensor | None = None,
    reg_var: torch.Tensor | None = None, seeds: bool = False,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The reference's checks as ggd/* logs: statistics of the heads' shapes or variances `param` (..., E, B) named
    `name` ('beta' or 'var'), their correlation over B with the errors' variance td_var (..., B), the non-finite
    NLL terms (a count or a mask), and the regulariser's xi, solver use, ESS and variances (None: not logged).
    `seeds`: every tensor has a leading seed axis and each log is (N,), one value per seed."""

    def per(t: torch.Tensor) -> torch.Tensor:  # all values (of each seed), on the last axis
        return t.flatten(1) if seeds else t.reshape(-1)

    stats = {}
    if param is not None:
        p = per(param)
        mean, std = p.mean(-1), p.std(-1)
        stats.update({
            f"ggd/{name}_mean": mean, f"ggd/{name}_std": std, f"ggd/{name}_min": p.amin(-1),
            f"ggd/{name}_max": p.amax(-1), f"ggd/{name}_cv": std / mean,
        })  # fmt: skip
        if td_var is not None:
            # Correlation over the samples of the heads' mean shape with the variance of their errors.
            a, b = param.mean(dim=-2), td_var
            a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
            corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
            stats[f"ggd/{name}_tdvar_corr"] = per(corr).mean(-1)
        if name == "beta":
            stats["ggd/beta_le2_fraction"] = ((p > 0) & (p <= 2)).float().mean(-1)
            stats["ggd/nonfinite"] = per(nonfinite).sum(-1).float()
    if xi is not None:
        stats.update({
            "ggd/xi": per(xi).mean(-1), "ggd/solver_ran": per(ran).float().mean(-1),
            "ggd/ess": per(ess).mean(-1), "ggd/reg_var_mean": per(reg_var).mean(-1),
        })  # fmt: skip
    return stats
