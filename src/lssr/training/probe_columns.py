"""The per-step probe's columns beyond :func:`lssr.diagnostics.engine.measure`'s: the sampled batches (drawn
as weight columns of the one pass of per-sample gradients), every b by identity (1) and from the sampled batches
(R̄_b², the Monte-Carlo tr S_b and ρ_b), the expected one-step loss change, the Figure-3 valley probes and the
cosine of consecutive step gradients."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .. import columns
from ..curvature import LossOperator
from ..diagnostics.moments import Moments
from ..diagnostics.results import Diagnostics
from ..scaling import gamma

Tensor = torch.Tensor


def cos(a: Tensor, b: Tensor) -> float:
    """cos(a, b) (NaN when either is zero)."""
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan


class Sampled(NamedTuple):
    """The sampled batches of one probed step as weight columns 1_B/b (n, k) of the pass of per-sample
    gradients, and where each batch sits: the step's own, the expected-change ones, the resultant ones per b."""

    weights: Tensor | None
    step: int | None
    expected: list[int]
    resultant: dict[int, list[int]]


class BatchDraws:
    """Batches of b of the n training samples drawn from ``generator``, as the run draws them (with or without
    ``replacement``)."""

    def __init__(self, generator: torch.Generator, replacement: bool):
        self.generator, self.replacement = generator, replacement

    def batch(self, n: int, b: int) -> Tensor:
        if self.replacement:
            return torch.randint(n, (b,), generator=self.generator)
        if b == n:
            return torch.arange(n)
        return torch.randperm(n, generator=self.generator)[:b]

    def whole_set(self, b: int, n: int) -> bool:
        """γ_{n,b} = 0: every batch of b is the whole training set (b = n without replacement), so S_b = S_n
        and g_B = ∇L exactly."""
        return gamma(n, b, self.replacement) == 0.0

    def columns(self, n: int, step_idx: Tensor | None, b_run: int, k_expected: int, k_resultant: int, bs) -> Sampled:
        """The step's own batch (``step_idx``; None for GD), ``k_expected`` batches of b_run and ``k_resultant``
        of every b in ``bs`` (none for the whole set), so that each g_B comes out of the one per-sample pass."""
        cols: list[Tensor] = []

        def add(idx: Tensor) -> int:
            cols.append(torch.bincount(idx.reshape(-1).cpu(), minlength=n).double() / idx.numel())
            return len(cols) - 1

        step_col = None if step_idx is None else add(step_idx)
        exp_cols = [add(self.batch(n, b_run)) for _ in range(k_expected)]
        res_cols: dict[int, list[int]] = {}
        if k_resultant > 0:
            for b in bs:
                if not self.whole_set(b, n):
                    res_cols[b] = [add(self.batch(n, b)) for _ in range(k_resultant)]
        weights = torch.stack(cols, dim=1) if cols else None
        return Sampled(weights, step_col, exp_cols, res_cols)


def per_b_columns(row: dict, diag: Diagnostics, mom: Moments, sampled: Sampled, draws: BatchDraws, kr: int) -> None:
    """Every b of ``diag.batch_sizes``: tr S_b, tr(H S_b), ρ_b, ‖H‖_{S_b}, instability by identity (1)
    (``diag.at(b)``); from the ``kr`` sampled batches R̄_b² and the Monte-Carlo tr(S_b), ρ_b (exact for the whole
    set: g_B = ∇L)."""
    for b in diag.batch_sizes:
        d = diag.at(b)
        for k in ("tr_S_b", "tr_HS_b", "tr_HS_b_se", "rho_b", "ias_b", "instability_b"):
            row[columns.per_b(k, b)] = getattr(d, k)
        if draws.whole_set(b, diag.n):
            row[columns.per_b("resultant_b", b)] = 1.0 if kr > 0 else math.nan
            if kr > 0:  # the only batch is the full set: g_B = ∇L exactly
                row[columns.per_b("tr_S_b_mc", b)] = mom.tr_S_n
                row[columns.per_b("tr_S_b_mc_se", b)] = 0.0
                row[columns.per_b("rho_b_mc", b)] = 1.0
                row[columns.per_b("norm_g_b_mc", b)] = math.sqrt(mom.tr_S_n)
        elif b in sampled.resultant and kr >= 2:
            sampled_b(row, mom, mom.weighted_grads[sampled.resultant[b]], b)


def sampled_b(row: dict, mom: Moments, GB: Tensor, b: int) -> None:
    """From K sampled batch gradients g_{B_k} (rows of GB): R̄_b² = (‖Σ_k u_k‖² − K)/(K(K−1)) of the unit
    vectors u_k, tr(S_b) ≈ mean_k ‖g_{B_k}‖² (unbiased, ± se), ρ_b = tr S_n / that and E‖g_b‖ ≈ mean_k ‖g_{B_k}‖."""
    Kr = GB.shape[0]
    nrm = GB.norm(dim=1)
    U = GB / nrm.clamp_min(torch.finfo(GB.dtype).tiny)[:, None]
    s = float(U.sum(0).pow(2).sum())
    row[columns.per_b("resultant_b", b)] = (s - Kr) / (Kr * (Kr - 1))
    sq_b = nrm.double().pow(2).cpu().numpy()  # ‖g_{B_k}‖², unbiased for tr(S_b)
    tr_mc = float(sq_b.mean())
    row[columns.per_b("tr_S_b_mc", b)] = tr_mc
    row[columns.per_b("tr_S_b_mc_se", b)] = float(sq_b.std(ddof=1) / math.sqrt(Kr))
    row[columns.per_b("rho_b_mc", b)] = mom.tr_S_n / tr_mc if tr_mc > 0 else math.nan
    row[columns.per_b("norm_g_b_mc", b)] = float(nrm.double().mean())


def expected_change(row: dict, op: LossOperator, mom: Moments, exp_cols: list[int], L0: float, gd: bool) -> None:
    """E_B[L(θ − η g_B)] − L(θ) over the sampled batches (± se); GD: L(θ − η∇L) − L(θ) exactly."""
    eta, theta = row["lr"], op.theta
    if gd:
        row["expected_change"] = op.at(theta - eta * mom.grad).loss() - L0
        row["expected_change_se"] = 0.0
    elif exp_cols:
        WG = mom.weighted_grads
        d = np.array([op.at(theta - eta * WG[c]).loss() - L0 for c in exp_cols])
        row["expected_change"] = float(d.mean())
        row["expected_change_se"] = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan


def valley(row: dict, op: LossOperator, mom: Moments, L0: float, alphas, s_values) -> None:
    """Figure 3 along −∇L: ‖H_α‖_{S_n}/‖H‖_{S_n} at θ − αη∇L, L(θ − sη∇L) − L(θ) and its quadratic model."""
    eta, theta, grad = row["lr"], op.theta, mom.grad
    gHg, gg = mom.tr_HS_n, mom.tr_S_n
    for a in alphas:
        hga = op.at(theta - a * eta * grad).hvp(grad)
        row[columns.valley_ratio(a)] = float(grad @ hga) / gHg if gHg != 0 else math.nan
    for s in s_values:
        row[columns.valley_dl(s)] = (op.at(theta - s * eta * grad).loss() - L0) if s != 0 else 0.0
        row[columns.valley_quad(s)] = -s * eta * gg + 0.5 * s * s * eta * eta * gHg


class ConsecutiveCosine:
    """cos(g_{t−1}, g_t) of the step gradients of consecutive probed steps, written into row t − 1."""

    def __init__(self):
        self.last_step: int | None = None
        self.last_gb: Tensor | None = None

    def observe(self, step: int, g_step: Tensor, rows: list[dict]) -> None:
        if self.last_step is not None and self.last_step == step - 1 and self.last_gb is not None and rows:
            if rows[-1]["step"] == self.last_step:
                rows[-1]["cos_consecutive"] = cos(self.last_gb, g_step)
        self.last_step, self.last_gb = int(step), g_step.detach().clone()
