"""Interaction-aware sharpness diagnostics: moments of the batch-gradient distribution and the Hessian.

Symbols (the paper's): g_i = ∇ℓ_i(θ), ∇L = (1/n) Σ g_i, H = ∇²L (the full training-set Hessian),
S_1 = (1/n) Σ g_i g_iᵀ, S_n = ∇L∇Lᵀ and, for batches of size b,

    S_b = E[g_b g_bᵀ] = (γ/b) S_1 + (1 − γ/b) S_n,   γ = (n − b)/(n − 1) (without), 1 (with replacement),

so every b follows from four numbers: tr S_1 = (1/n) Σ‖g_i‖², tr S_n = ‖∇L‖², tr(H S_1) = (1/n) Σ g_iᵀHg_i
and tr(H S_n) = ∇LᵀH∇L. Derived: ρ_b = tr S_n/tr S_b, ‖H‖_{S_b} = tr(H S_b)/tr S_b (``ias``) and the
instability ratio tr(H S_b)/tr S_n (the step is unstable in expectation when it exceeds 2/η).

Estimators
----------
tr S_1, tr S_n, tr(H S_n) are always exact (per-sample gradient norms, ∇L = mean g_i, one HVP).
tr(H S_1) is exact (``exact=True``: one HVP per sample, n HVPs) or estimated without bias by a
*two-stage deflated random-sign sketch* (:func:`gradient_moments`):

    Let Q (m × r, orthonormal) span directions whose H-images are known, and P = QQᵀ. Writing
    g_i = Q a_i + r_i (a_i = Qᵀg_i, r_i = (I − P) g_i), B = QᵀHQ and b_i = (HQ)ᵀ g_i,

        g_iᵀHg_i = 2 a_iᵀb_i − a_iᵀB a_i + r_iᵀH r_i       (exact identity, for any Q).

    The first two terms are computed exactly for all i from one pass of per-sample gradients (two small
    matrix products per chunk). Only (1/n) Σ r_iᵀHr_i = tr((I−P) H (I−P) S_1) is sketched:
    w = n^{-1/2} (I − P) Σ_i z_i g_i with Rademacher z_i has E[wᵀHw] = that term (one HVP per probe).
    Q is built, before the second pass, from everything the step computes anyway: ∇L (its image gives
    tr(H S_n)), ``stage1`` random combinations n^{-1/2} Σ_i z_i g_i of the first pass (a randomized range
    finder for the per-sample gradients, which concentrate on about as many directions as classes), the
    warm start of the eigen-solver and every LOBPCG residual direction. Since ∇L ∈ span(Q) the residuals
    r_i are centred. The probes are independent of Q (fresh signs), so the estimate is unbiased. A
    leave-one-out control variate on ‖w‖² (whose mean, the residual gradient energy (1/n) Σ‖r_i‖², is
    known exactly) removes most of the probe-to-probe variance (:func:`control_variate_values`); the
    standard error is the sample standard deviation of the per-probe values over √(probes). With
    ``rel_se`` the probes stop once se ≤ rel_se·|estimate| (at least ``min_probes``). This is the Hutch++
    idea (Meyer et al. 2021) applied to the n × n matrix GᵀHG/n.

    Caveat (measured, docs/PERFORMANCE.md): with 4 probes the se is itself noisy and on average 15–20%
    smaller than the true spread (1000 seeds, tiny float64 model), and when the residual is a sizeable
    share of tr(H S_1) a single se can be far off; ``stage1`` of about the number of classes keeps the
    residual to a few percent, which bounds the damage.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import LssrError
from .curvature import (
    BN_FIX,
    BatchNormModeError,
    LossOperator,
    TopEig,
    check_functional_mode,
    drop_tolerance,
    lobpcg_top,
    top_eigenvalue_op,
)
from .scaling import batch_weight

Tensor = torch.Tensor

FRAME_COLUMNS = ["b", "tr_S_b", "tr_HS_b", "rho_b", "ias_b", "instability_b", "tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_n"]


# ---------------------------------------------------------------------------------------------
# Moments of the gradient distribution
# ---------------------------------------------------------------------------------------------


@dataclass
class Moments:
    """tr S_1, tr S_n, tr(H S_1) (± se), tr(H S_n) at one θ, plus what was computed on the way."""

    n: int
    tr_S_1: float
    tr_S_n: float
    tr_HS_1: float
    tr_HS_1_se: float
    tr_HS_n: float
    grad: Tensor  # ∇L
    hgrad: Tensor  # H∇L
    estimator: str  # exact | sketch
    probes: int = 0  # sketch probes used
    hvps: int = 0  # HVPs spent inside gradient_moments (the H∇L product included when computed here)
    weighted_grads: Tensor | None = None  # (k, m): Σ_i W_ik g_i for the requested weight columns
    exact_part: float = math.nan  # sketch: the part of tr(H S_1) computed exactly
    subspace_dim: int = 0
    probe_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eig: TopEig | None = None  # ‖H‖ (when asked for)
    block_hvps: int = 0  # sketch: the HVPs of the shared block H[x0, ∇L, Y]
    plain_values: np.ndarray = field(default_factory=lambda: np.zeros(0))  # Y_kᵀHY_k: plain (undeflated) sketch samples
    residual_energy: float = math.nan  # sketch: E_r = (1/n) Σ ‖(I − P) g_i‖²


def rademacher(n: int, k: int, generator: torch.Generator) -> Tensor:
    """(n, k) independent ±1 signs drawn on the CPU from ``generator``."""
    return torch.randint(0, 2, (n, k), generator=generator, dtype=torch.int64).double().mul_(2).sub_(1)


def orthonormalize(vecs: list[Tensor], hvecs: list[Tensor], rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """Gram–Schmidt (twice) on ``vecs``, applying the same linear operations to their H-images.
    Drops a vector whose norm falls below ``rtol`` (default √eps of the dtype) of its original norm.
    Returns (Q, HQ), each (r, m)."""
    if rtol is None:
        rtol = drop_tolerance(vecs[0].dtype) if vecs else 1e-6
    Q: list[Tensor] = []
    HQ: list[Tensor] = []
    for v, hv in zip(vecs, hvecs):
        if v is None or hv is None or not torch.isfinite(v).all() or not torch.isfinite(hv).all():
            continue
        n0 = float(v.norm())
        if n0 == 0.0:
            continue
        for _ in range(2):
            for q, hq in zip(Q, HQ):
                c = torch.dot(q, v)
                v, hv = v - c * q, hv - c * hq
        nv = float(v.norm())
        if nv <= rtol * n0:
            continue
        Q.append(v / nv)
        HQ.append(hv / nv)
    if not Q:
        m = vecs[0].numel() if vecs else 0
        dt = vecs[0] if vecs else torch.zeros(0)
        return dt.new_zeros(0, m), dt.new_zeros(0, m)
    return torch.stack(Q), torch.stack(HQ)


def control_variate_values(t: np.ndarray, e: np.ndarray, mean_e: float) -> np.ndarray:
    """Unbiased per-probe values t_k − c_{−k}(e_k − E[e]) of a leave-one-out control variate.

    t_k = w_kᵀHw_k are the residual probes and e_k = ‖w_k‖² their squared norms, whose mean E[e] = E_r
    (the residual gradient energy) is known exactly. c_{−k} = Σ_{j≠k} t_j / Σ_{j≠k} e_j (a Rayleigh-quotient
    slope) does not depend on probe k, so E[value_k] = E[t_k]: unbiased. When the residual H-weight sits in
    directions of similar curvature, t_k ∝ e_k and the values barely vary, which removes most of the
    χ²-like tail a random-sign sketch has when the residual is concentrated in few directions."""
    s = t.size
    if s < 2:
        return t.astype(float)
    T, E = t.sum(), e.sum()
    den = E - e
    c = np.where(den > 0, (T - t) / np.where(den > 0, den, 1.0), 0.0)
    return t - c * (e - mean_e)


def gradient_moments(
    op: LossOperator,
    *,
    exact: bool = False,
    probes: int = 32,
    stage1: int = 8,
    generator: torch.Generator | None = None,
    top: bool = True,
    eig_init: Tensor | None = None,
    eig_tol: float = 1e-3,
    eig_max_hvps: int = 60,
    weights: Tensor | None = None,
    rel_se: float | None = None,
    min_probes: int = 4,
    hvp_batch: int | None = None,
    store_mb: float = 512,
) -> Moments:
    """tr S_1, tr S_n, tr(H S_1), tr(H S_n) at the operator's θ, and ‖H‖ when ``top`` (see the module docstring).

    Exact mode: one pass of per-sample gradients with one HVP each (n HVPs); ‖H‖ by LOBPCG warm-started
    from ``eig_init``. Sketch mode (``exact=False``), two passes of per-sample gradients:

    1. pass 1: ‖g_i‖², ∇L = mean g_i, ``stage1`` random-sign combinations Y_k = n^{-1/2} Σ_i z_ik g_i;
    2. one batch of HVPs: H[x0, ∇L, Y] (x0 = ``eig_init`` when given);
    3. ‖H‖: LOBPCG started from the top Ritz vector of span(x0, ∇L, Y), keeping that span and every
       residual direction in its Rayleigh–Ritz basis (:func:`lobpcg_top` with ``subspace``/``keep``);
    4. Q = that whole basis (all H-images known): pass 2 gives a_i = Qᵀg_i, b_i = (HQ)ᵀg_i and ``probes``
       fresh combinations; exact part (1/n) Σ (2a_iᵀb_i − a_iᵀ(QᵀHQ)a_i), residual sketched with one HVP
       per probe, stopping early once se ≤ ``rel_se``·|estimate| (at least ``min_probes``).

    The stage-1 directions are a randomized range finder for the per-sample gradients: with C classes
    the g_i concentrate on about C directions, so stage1 ≈ C leaves a small residual. The signs come
    from ``generator`` (a fixed seed when None), never from the global RNG. ``weights`` (n, k) asks for
    Σ_i W_ik g_i (e.g. batch gradients), accumulated in pass 1 and returned in ``weighted_grads``.
    When all per-sample gradients fit in ``store_mb`` MiB they are kept from pass 1 and pass 2 is only
    matrix products. The residual probes use the leave-one-out control variate of
    :func:`control_variate_values`.
    """
    n, dev, dt = op.n, op.device, op.dtype
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    hvps0 = op.counts["hvp"]
    W = None if weights is None else weights.to(dev, dt)
    if exact:
        sq = torch.zeros(n, dtype=dt, device=dev)
        quad = torch.zeros(n, dtype=dt, device=dev)
        gsum, hsum = op.space.zeros(), op.space.zeros()
        GW = None if W is None else op.space.zeros(W.shape[1])
        for sl, Gc in op.per_sample_grads():
            HG = op.hvp_many(Gc, batch=hvp_batch)
            sq[sl] = (Gc * Gc).sum(1)
            quad[sl] = (Gc * HG).sum(1)
            gsum += Gc.sum(0)
            hsum += HG.sum(0)
            if W is not None:
                GW += W[sl].T @ Gc
        grad, hgrad = gsum / n, hsum / n  # H∇L = (1/n) Σ H g_i: no extra HVP
        eig = None
        if top:
            eig = top_eigenvalue_op(op, tol=eig_tol, init=eig_init, max_hvps=eig_max_hvps, generator=gen, with_grad=False)
        tr_HS_1 = float(quad.mean())
        return Moments(
            n, float(sq.mean()), float(grad @ grad), tr_HS_1, 0.0, float(grad @ hgrad), grad, hgrad, "exact",
            hvps=op.counts["hvp"] - hvps0, weighted_grads=GW, exact_part=tr_HS_1, eig=eig,
        )
    if probes < 2:
        raise LssrError(f"gradient_moments: the sketch needs at least 2 probes for a standard error, got {probes}")
    stage1 = max(int(stage1), 0)
    # pass 1
    Z1 = (rademacher(n, stage1, gen) / math.sqrt(n)).to(dev, dt)
    W1 = Z1 if W is None else torch.cat([Z1, W], dim=1)
    sq = torch.zeros(n, dtype=dt, device=dev)
    gsum = op.space.zeros()
    GW = op.space.zeros(W1.shape[1])
    keep_g = n * op.space.dim * torch.finfo(dt).bits // 8 <= store_mb * 2**20
    stored: list[tuple[slice, Tensor]] = []
    for sl, Gc in op.per_sample_grads():
        sq[sl] = (Gc * Gc).sum(1)
        gsum += Gc.sum(0)
        GW += W1[sl].T @ Gc
        if keep_g:
            stored.append((sl, Gc))
    grad = gsum / n
    if not torch.isfinite(grad).all() or not torch.isfinite(sq).all():
        nan = math.nan
        return Moments(n, float(sq.mean()), nan, nan, nan, nan, grad, torch.full_like(grad, nan), "sketch",
                       weighted_grads=None if W is None else GW[stage1:])
    Y = GW[:stage1]
    # one batch of HVPs on [x0, ∇L, Y]
    x0 = None
    if top and eig_init is not None and torch.isfinite(eig_init).all() and float(eig_init.norm()) > 0:
        x0 = (eig_init / eig_init.norm()).to(dev, dt).reshape(1, -1)
    T = torch.cat([t for t in (x0, grad.reshape(1, -1), Y) if t is not None])
    HT = op.hvp_many(T, batch=hvp_batch)
    hgrad = HT[0 if x0 is None else 1]
    block_hvps = T.shape[0]
    plain_values = (Y * HT[T.shape[0] - stage1 :]).sum(1).cpu().double().numpy() if stage1 > 0 else np.zeros(0)
    eig = None
    if top:
        eig = lobpcg_top(op.hvp, None, subspace=(T, HT), keep=True, tol=eig_tol, max_matvecs=eig_max_hvps)
        eig = eig._replace(hvp_count=eig.hvp_count + (1 if x0 is not None else 0))
        basis = eig.subspace
        Q, HQ = orthonormalize(list(basis[0]) + list(T), list(basis[1]) + list(HT))
    else:
        Q, HQ = orthonormalize(list(T), list(HT))
    r = Q.shape[0]
    # pass 2
    R = torch.cat([Q, HQ])  # (2r, m)
    Z2 = (rademacher(n, probes, gen) / math.sqrt(n)).to(dev, dt)
    AB = torch.zeros(n, 2 * r, dtype=dt, device=dev)
    S = op.space.zeros(probes)
    for sl, Gc in stored if keep_g else op.per_sample_grads():
        AB[sl] = Gc @ R.T
        S += Z2[sl].T @ Gc
    stored.clear()
    A, Bv = AB[:, :r], AB[:, r:]
    B = Q @ HQ.T
    B = 0.5 * (B + B.T)
    exact_part = float((2.0 * (A * Bv).sum(1) - ((A @ B) * A).sum(1)).mean())
    # residual gradient energy E_r = (1/n) Σ ‖(I − P) g_i‖², known exactly: the control variate's mean
    resid_energy = float((sq.double() - A.double().pow(2).sum(1)).mean())
    S = S - (S @ Q.T) @ Q  # (I − P) n^{-1/2} Σ z_i g_i
    t_vals: list[float] = []
    e_vals: list[float] = []
    done = 0
    step = max(min(min_probes, probes), 2) if rel_se is not None else max(hvp_batch or op.default_hvp_batch, 2)
    while done < probes:
        k = min(step, probes - done)
        Sk = S[done : done + k]
        HS = op.hvp_many(Sk, batch=hvp_batch)
        t_vals += [float(v) for v in (Sk * HS).sum(1)]
        e_vals += [float(v) for v in (Sk * Sk).sum(1)]
        done += k
        if rel_se is not None and done >= 2:
            vals = control_variate_values(np.asarray(t_vals), np.asarray(e_vals), resid_energy)
            se = float(vals.std(ddof=1)) / math.sqrt(done)
            if se <= rel_se * abs(exact_part + float(vals.mean())):
                break
    vals = control_variate_values(np.asarray(t_vals), np.asarray(e_vals), resid_energy)
    se = float(vals.std(ddof=1) / math.sqrt(vals.size))
    return Moments(
        n, float(sq.mean()), float(grad @ grad), exact_part + float(vals.mean()), se, float(grad @ hgrad), grad, hgrad,
        "sketch", probes=int(vals.size), hvps=op.counts["hvp"] - hvps0,
        weighted_grads=None if W is None else GW[stage1:], exact_part=exact_part, subspace_dim=r,
        probe_values=np.asarray(t_vals), eig=eig, block_hvps=block_hvps, plain_values=plain_values,
        residual_energy=resid_energy,
    )


# ---------------------------------------------------------------------------------------------
# Per-b quantities
# ---------------------------------------------------------------------------------------------


def per_b(mom: Moments, b: int, replacement: bool) -> dict:
    """tr S_b, tr(H S_b), ρ_b, ‖H‖_{S_b}, instability ratio (and their standard errors) for one b."""
    w = float(batch_weight(mom.n, b, replacement))
    tr_S_b = w * mom.tr_S_1 + (1.0 - w) * mom.tr_S_n
    tr_HS_b = w * mom.tr_HS_1 + (1.0 - w) * mom.tr_HS_n
    se = w * mom.tr_HS_1_se if mom.tr_HS_1_se == mom.tr_HS_1_se else math.nan
    div = lambda a, c: a / c if c != 0 else math.nan  # noqa: E731
    return {
        "b": int(b),
        "tr_S_b": tr_S_b,
        "tr_S_b_se": 0.0,
        "tr_HS_b": tr_HS_b,
        "tr_HS_b_se": se,
        "rho_b": div(mom.tr_S_n, tr_S_b),
        "rho_b_se": 0.0,
        "ias_b": div(tr_HS_b, tr_S_b),
        "ias_b_se": div(se, tr_S_b),
        "instability_b": div(tr_HS_b, mom.tr_S_n),
        "instability_b_se": div(se, mom.tr_S_n),
    }


def moments_frame(mom: Moments, batch_sizes: Iterable[int], replacement: bool = False) -> pd.DataFrame:
    """One row per b: the columns of :data:`FRAME_COLUMNS` plus ``<name>_se`` for each."""
    rows = []
    for b in batch_sizes:
        b = int(b)
        if b < 1 or (not replacement and b > mom.n):
            raise LssrError(f"batch size {b} is out of range: need 1 <= b <= n = {mom.n} (without replacement) or b >= 1")
        row = per_b(mom, b, replacement)
        row.update(
            tr_S_1=mom.tr_S_1, tr_S_1_se=0.0, tr_S_n=mom.tr_S_n, tr_S_n_se=0.0,
            tr_HS_1=mom.tr_HS_1, tr_HS_1_se=mom.tr_HS_1_se, tr_HS_n=mom.tr_HS_n, tr_HS_n_se=0.0,
        )
        rows.append(row)
    cols = []
    for c in FRAME_COLUMNS:
        cols += [c] if c == "b" else [c, f"{c}_se"]
    return pd.DataFrame(rows, columns=cols)


def interaction_stats(
    model: nn.Module,
    loss_fn: Callable,
    inputs: Tensor,
    targets: Tensor,
    batch_sizes: Iterable[int],
    *,
    replacement: bool = False,
    exact: bool = False,
    probes: int = 32,
    stage1: int = 8,
    generator: torch.Generator | None = None,
    chunk_size: int = 512,
    per_sample_chunk: int | None = None,
    rel_se: float | None = None,
) -> pd.DataFrame:
    """tr S_b, tr(H S_b), ρ_b, ‖H‖_{S_b} and tr(H S_b)/tr S_n for every b in ``batch_sizes``.

    ``loss_fn`` is mean-reduced (``lssr.losses.get_loss``; its ``.per_sample`` is used when present); the
    model must not have batch norm in train mode. ``exact=True`` computes tr(H S_1) with one HVP per
    sample; otherwise the two-stage deflated sketch of :func:`gradient_moments` (``stage1`` range-finder
    directions, ``probes`` residual probes, or fewer with ``rel_se``). Results are in the model's dtype;
    ``*_se`` columns hold standard errors (0 for exact quantities). Randomness only from ``generator``.
    """
    op = LossOperator(model, loss_fn, inputs, targets, chunk_size=chunk_size, per_sample_chunk=per_sample_chunk, where="interaction_stats")
    mom = gradient_moments(op, exact=exact, probes=probes, stage1=stage1, generator=generator, top=False, rel_se=rel_se)
    return moments_frame(mom, batch_sizes, replacement)


# ---------------------------------------------------------------------------------------------
# The per-step probe
# ---------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:g}"


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan


def probe_columns(batch_sizes: Iterable[int], valley: bool, alphas: Iterable[float], ss: Iterable[float]) -> list[str]:
    """The column names of ``diagnostics.csv`` in order."""
    cols = [
        "step", "lr", "two_over_eta", "b_run", "loss", "loss_next", "loss_change",
        "tr_S_n", "tr_S_1", "tr_S_1_se", "tr_HS_n", "tr_HS_1", "tr_HS_1_se", "ias_n",
        "top_eig", "top_eig_hvps", "cos_q1_grad", "expected_change", "expected_change_se", "cos_consecutive",
    ]
    for b in batch_sizes:
        cols += [f"tr_S_b_{b}", f"tr_HS_b_{b}", f"tr_HS_b_{b}_se", f"rho_b_{b}", f"ias_b_{b}", f"instability_b_{b}", f"resultant_b_{b}"]
        cols += [f"tr_S_b_mc_{b}", f"tr_S_b_mc_{b}_se", f"rho_b_mc_{b}"]
    if valley:
        cols += [f"valley_ratio_a{_fmt(a)}" for a in alphas]
        for s in ss:
            cols += [f"valley_dL_s{_fmt(s)}", f"valley_quad_s{_fmt(s)}"]
    return cols


class DiagnosticsProbe:
    """Per-step diagnostics for :func:`lssr.train.train` (the ``Probe`` protocol), one row per probed step
    appended to ``csv_path`` (rewritten atomically every ``flush_every`` rows and at ``close``).

    At a probed step t (θ_t in ``before_step``) it measures: ‖H‖ by LOBPCG warm-started from the previous
    probed step, ∇L and tr(H S_n), the gradient moments (exact or sketch, ``cfg.probe.estimator``; ``auto``
    means exact when n ≤ ``probes``), every probed b (``cfg.probe.batch_sizes`` plus the run's own b),
    the expected one-step loss change over ``expected_change_batches`` sampled batches (GD: the exact
    change L(θ − η∇L) − L(θ)), the mean resultant length R̄_b² over ``resultant_batches`` sampled batches
    (unbiased U-statistic (‖Σ_k u_k‖² − K)/(K(K−1)) of the unit batch gradients u_k) and, from the same
    batches, the Monte-Carlo tr(S_b) = mean_k ‖g_{B_k}‖² (+ se) and ρ_b = tr(S_n)/that (independent of
    identity (1), for the eq.-(12) check of Appendix C.5), the cosine between
    consecutive step gradients, and the Figure-3 valley probes along −∇L. ``after_step`` adds L(θ_{t+1}).

    The probe never changes the trajectory: parameters are read through detached tensors and functional
    calls, its randomness comes from its own ``torch.Generator`` seeded with ``cfg.probe.seed``, and a
    model with batch norm is evaluated in eval mode (``bn_mode: eval``; ``bn_mode: train`` is refused).
    The top eigenvector q_1 is oriented so that q_1ᵀ∇L ≥ 0 (``cos_q1_grad`` ≥ 0).
    """

    def __init__(self, cfg, csv_path: str | os.PathLike, *, flush_every: int = 10):
        from .config import ConfigError, ProbeConfig

        self.cfg = cfg
        self.p = cfg.probe if cfg.probe is not None else ProbeConfig()
        self.csv_path = Path(csv_path)
        self.flush_every = max(int(flush_every), 1)
        if cfg.model.batch_norm and cfg.bn_mode != "eval":
            raise BatchNormModeError(
                f"DiagnosticsProbe: model {cfg.model.name!r} has batch norm and bn_mode is {cfg.bn_mode!r}; "
                f"Hessian and per-sample-gradient probes need fixed normalisation statistics. Fix: {BN_FIX}"
            )
        if getattr(self.p, "stage1", 0) < 0:
            raise ConfigError(f"probe.stage1 = {self.p.stage1!r} is invalid: use 0 or more range-finder directions (about the class count)")
        rel = getattr(self.p, "rel_se", None)
        if rel is not None and not rel > 0:
            raise ConfigError(f"probe.rel_se = {rel!r} is invalid: use a positive relative standard error (e.g. 0.05) or null")
        self.b_run = int(cfg.batch_size)
        self.replacement = bool(cfg.optim.replacement)
        self.batch_sizes = sorted({int(b) for b in self.p.batch_sizes} | {self.b_run})
        self.columns = probe_columns(self.batch_sizes, self.p.valley, self.p.valley_alphas, self.p.valley_s)
        self.generator = torch.Generator().manual_seed(int(self.p.seed))
        self.rows: list[dict] = []
        self._unflushed = 0
        self._prev_vec: Tensor | None = None
        self._last_step: int | None = None
        self._last_gb: Tensor | None = None
        self._current: dict | None = None

    # -- protocol ------------------------------------------------------------------------------
    def wants(self, step: int) -> bool:
        """Probe steps start, start + every, ... before ``stop`` (exclusive, like ``range``)."""
        p = self.p
        if step < p.start or (p.stop is not None and step >= p.stop):
            return False
        return (step - p.start) % p.every == 0

    def before_step(self, ctx) -> None:
        model = ctx.model
        was = model.training
        try:
            if self.cfg.bn_mode == "eval":
                model.eval()
            self._current = self._measure(ctx)
        finally:
            model.train(was)

    def after_step(self, ctx) -> None:
        row = self._current
        if row is None:
            return
        row["loss_next"] = float(ctx.train_loss_after)
        row["loss_change"] = row["loss_next"] - row["loss"]
        if self.b_run == self.cfg.data.n and not self.replacement and not math.isfinite(row["expected_change"]):
            row["expected_change"], row["expected_change_se"] = row["loss_change"], 0.0
        self.rows.append(row)
        self._current = None
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def close(self) -> None:
        """Write the final ``diagnostics.csv`` (atomically) and drop the in-progress copy."""
        from .io import write_csv

        write_csv(self.csv_path, pd.DataFrame(self.rows, columns=self.columns))
        partial = self.csv_path.with_name(self.csv_path.name + ".partial")
        if partial.exists():
            partial.unlink()

    def flush(self) -> None:
        """Write the rows so far to ``diagnostics.csv.partial`` (for watching a long run)."""
        from .io import write_csv

        write_csv(self.csv_path.with_name(self.csv_path.name + ".partial"), pd.DataFrame(self.rows, columns=self.columns))
        self._unflushed = 0

    # -- checkpointing (lssr.train saves and restores this with the run) ---------------------------
    def state_dict(self) -> dict:
        return {
            "rows": [dict(r) for r in self.rows],
            "generator": self.generator.get_state(),
            "prev_vec": None if self._prev_vec is None else self._prev_vec.detach().cpu(),
            "last_step": self._last_step,
            "last_gb": None if self._last_gb is None else self._last_gb.detach().cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state["rows"]]
        self.generator.set_state(state["generator"])
        self._prev_vec = state["prev_vec"]
        self._last_step = state["last_step"]
        self._last_gb = state["last_gb"]
        self._unflushed = 0

    # -- measurement ----------------------------------------------------------------------------
    def _sample_batch(self, n: int, b: int) -> Tensor:
        if self.replacement:
            return torch.randint(n, (b,), generator=self.generator)
        if b == n:
            return torch.arange(n)
        return torch.randperm(n, generator=self.generator)[:b]

    def _measure(self, ctx) -> dict:
        p, cfg = self.p, self.cfg
        nan = math.nan
        row: dict = {c: nan for c in self.columns}
        eta = float(ctx.lr)
        row.update(step=int(ctx.step), lr=eta, two_over_eta=2.0 / eta, b_run=self.b_run, loss=float(ctx.train_loss_before))
        if not math.isfinite(row["loss"]):
            self._prev_vec, self._last_step = None, None
            return row
        check_functional_mode(ctx.model, "DiagnosticsProbe (fix: bn_mode: eval)")
        device = next(ctx.model.parameters()).device
        if self._prev_vec is not None:  # restored from a checkpoint on the CPU
            self._prev_vec = self._prev_vec.to(device)
        if self._last_gb is not None:
            self._last_gb = self._last_gb.to(device)
        ps = ctx.loss_per_sample

        def loss_fn(o: Tensor, t: Tensor) -> Tensor:
            return ps(o, t).mean()

        loss_fn.per_sample = ps  # type: ignore[attr-defined]
        x, y = ctx.data.x_train, ctx.data.y_train
        op = LossOperator(ctx.model, loss_fn, x, y, chunk_size=cfg.chunk_size, where="DiagnosticsProbe")
        n = op.n

        gd_run = self.b_run == n and not self.replacement

        # 1. sampled batches (step batch, expected change, resultants) -> weight columns of the one pass
        cols: list[Tensor] = []

        def add(idx: Tensor) -> int:
            cols.append(torch.bincount(idx.reshape(-1).cpu(), minlength=n).double() / idx.numel())
            return len(cols) - 1

        step_col = None if gd_run else add(ctx.batch_idx)
        K = int(p.expected_change_batches)
        exp_cols = [] if (gd_run or K <= 0) else [add(self._sample_batch(n, self.b_run)) for _ in range(K)]
        Kr = int(p.resultant_batches)
        res_cols: dict[int, list[int]] = {}
        if Kr > 0:
            for b in self.batch_sizes:
                if not (b == n and not self.replacement):
                    res_cols[b] = [add(self._sample_batch(n, b)) for _ in range(Kr)]
        weights = torch.stack(cols, dim=1) if cols else None

        # 2. moments and ‖H‖ (LOBPCG warm-started from the previous probed step)
        est = p.estimator
        exact = est == "exact" or (est == "auto" and n <= p.probes)
        mom = gradient_moments(
            op, exact=exact, probes=p.probes, stage1=getattr(p, "stage1", 8), generator=self.generator,
            top=p.top_eigenvalue, eig_init=self._prev_vec, eig_tol=p.eig_tol, weights=weights,
            rel_se=getattr(p, "rel_se", None),
        )
        grad, eig, WG = mom.grad, mom.eig, mom.weighted_grads
        row.update(
            tr_S_n=mom.tr_S_n, tr_S_1=mom.tr_S_1, tr_S_1_se=0.0, tr_HS_n=mom.tr_HS_n, tr_HS_1=mom.tr_HS_1,
            tr_HS_1_se=mom.tr_HS_1_se, ias_n=mom.tr_HS_n / mom.tr_S_n if mom.tr_S_n > 0 else nan,
        )
        if eig is not None:
            q1 = eig.vector if float(eig.vector @ grad) >= 0 else -eig.vector
            self._prev_vec = q1 if math.isfinite(eig.value) else None
            row.update(top_eig=eig.value, top_eig_hvps=eig.hvp_count, cos_q1_grad=_cos(q1, grad))
        self.last_info = {"estimator": mom.estimator, "probes": mom.probes, "hvps": mom.hvps, "block_hvps": mom.block_hvps, "subspace_dim": mom.subspace_dim, "exact_part": mom.exact_part}

        # 3. per-b columns
        for b in self.batch_sizes:
            d = per_b(mom, b, self.replacement)
            for k in ("tr_S_b", "tr_HS_b", "tr_HS_b_se", "rho_b", "ias_b", "instability_b"):
                row[f"{k}_{b}" if not k.endswith("_se") else f"tr_HS_b_{b}_se"] = d[k]
            if b == n and not self.replacement:
                row[f"resultant_b_{b}"] = 1.0 if Kr > 0 else nan
                if Kr > 0:  # the only batch is the full set: g_B = ∇L exactly
                    row.update({f"tr_S_b_mc_{b}": mom.tr_S_n, f"tr_S_b_mc_{b}_se": 0.0, f"rho_b_mc_{b}": 1.0})
            elif b in res_cols and Kr >= 2:
                GB = WG[res_cols[b]]
                nrm = GB.norm(dim=1)
                U = GB / nrm.clamp_min(torch.finfo(GB.dtype).tiny)[:, None]
                s = float(U.sum(0).pow(2).sum())
                row[f"resultant_b_{b}"] = (s - Kr) / (Kr * (Kr - 1))
                sq_b = nrm.double().pow(2).cpu().numpy()  # ‖g_{B_k}‖², unbiased for tr(S_b)
                tr_mc = float(sq_b.mean())
                row[f"tr_S_b_mc_{b}"] = tr_mc
                row[f"tr_S_b_mc_{b}_se"] = float(sq_b.std(ddof=1) / math.sqrt(Kr))
                row[f"rho_b_mc_{b}"] = mom.tr_S_n / tr_mc if tr_mc > 0 else nan

        # 4. expected one-step change of the loss
        L0 = op.loss()
        theta = op.theta
        if gd_run:
            row["expected_change"] = op.at(theta - eta * grad).loss() - L0
            row["expected_change_se"] = 0.0
        elif exp_cols:
            d = np.array([op.at(theta - eta * WG[c]).loss() - L0 for c in exp_cols])
            row["expected_change"] = float(d.mean())
            row["expected_change_se"] = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else nan

        # 5. consecutive step gradients
        g_step = grad if gd_run else WG[step_col]
        if self._last_step is not None and self._last_step == ctx.step - 1 and self._last_gb is not None and self.rows:
            if self.rows[-1]["step"] == self._last_step:
                self.rows[-1]["cos_consecutive"] = _cos(self._last_gb, g_step)
        self._last_step, self._last_gb = int(ctx.step), g_step.detach().clone()

        # 6. valley (Figure 3): along −∇L
        if p.valley:
            gHg = mom.tr_HS_n
            gg = mom.tr_S_n
            for a in p.valley_alphas:
                hga = op.at(theta - a * eta * grad).hvp(grad)
                row[f"valley_ratio_a{_fmt(a)}"] = float(grad @ hga) / gHg if gHg != 0 else nan
            for s in p.valley_s:
                row[f"valley_dL_s{_fmt(s)}"] = (op.at(theta - s * eta * grad).loss() - L0) if s != 0 else 0.0
                row[f"valley_quad_s{_fmt(s)}"] = -s * eta * gg + 0.5 * s * s * eta * eta * gHg
        return row
