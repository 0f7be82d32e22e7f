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
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import LssrError
from ..curvature import LossOperator, TopEig, lobpcg_top, orthonormalize, top_eigenvalue_op
from ..scaling import batch_weight, concentration, instability_ratio, interaction_aware_sharpness, trace_b

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
    eig: TopEig | None = None  # ‖H‖ (when asked for)
    block_hvps: int = 0  # sketch: the HVPs of the shared block H[x0, ∇L, Y]
    plain_values: np.ndarray = field(default_factory=lambda: np.zeros(0))  # Y_kᵀHY_k: plain (undeflated) sketch samples
    residual_energy: float = math.nan  # sketch: E_r = (1/n) Σ ‖(I − P) g_i‖²


def rademacher(n: int, k: int, generator: torch.Generator) -> Tensor:
    """(n, k) independent ±1 signs drawn on the CPU from ``generator``."""
    return torch.randint(0, 2, (n, k), generator=generator, dtype=torch.int64).double().mul_(2).sub_(1)


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
    dev, dt = op.device, op.dtype
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    hvps0 = op.counts["hvp"]
    W = None if weights is None else weights.to(dev, dt)
    if exact:
        return _exact_moments(op, W, gen, top, eig_init, eig_tol, eig_max_hvps, hvp_batch, hvps0)
    if probes < 2:
        raise LssrError(f"gradient_moments: the sketch needs at least 2 probes for a standard error, got {probes}")
    stage1 = max(int(stage1), 0)
    eig_args = (top, eig_init, eig_tol, eig_max_hvps)
    return _sketch_moments(op, W, gen, hvps0, stage1, probes, eig_args, rel_se, min_probes, hvp_batch, store_mb)


def _sketch_moments(op: LossOperator, W, gen, hvps0, stage1, probes, eig_args, rel_se, min_probes, hvp_batch, store_mb):
    """Sketch mode of :func:`gradient_moments` (its steps 1-4); ``eig_args``: top, eig_init, eig_tol, eig_max_hvps."""
    n = op.n
    top, eig_init, eig_tol, eig_max_hvps = eig_args
    sq, grad, GW, stored = _sketch_pass1(op, W, stage1, gen, store_mb)
    if not torch.isfinite(grad).all() or not torch.isfinite(sq).all():
        nan = math.nan
        return Moments(
            n,
            float(sq.mean()),
            nan,
            nan,
            nan,
            nan,
            grad,
            torch.full_like(grad, nan),
            "sketch",
            weighted_grads=None if W is None else GW[stage1:],
        )
    Y = GW[:stage1]
    T, HT, hgrad, eig = _deflation_block(op, grad, Y, top, eig_init, eig_tol, eig_max_hvps, hvp_batch)
    plain_values = (Y * HT[T.shape[0] - stage1 :]).sum(1).cpu().double().numpy() if stage1 > 0 else np.zeros(0)
    if eig is not None:
        basis = eig.subspace
        Q, HQ = orthonormalize(list(basis[0]) + list(T), list(basis[1]) + list(HT))
    else:
        Q, HQ = orthonormalize(list(T), list(HT))
    exact_part, resid_energy, S = _sketch_pass2(op, Q, HQ, sq, probes, gen, stored)
    vals = _residual_probes(op, S, probes, min_probes, rel_se, hvp_batch, exact_part, resid_energy)
    se = float(vals.std(ddof=1) / math.sqrt(vals.size))
    return Moments(
        n,
        float(sq.mean()),
        float(grad @ grad),
        exact_part + float(vals.mean()),
        se,
        float(grad @ hgrad),
        grad,
        hgrad,
        "sketch",
        probes=int(vals.size),
        hvps=op.counts["hvp"] - hvps0,
        weighted_grads=None if W is None else GW[stage1:],
        exact_part=exact_part,
        subspace_dim=Q.shape[0],
        eig=eig,
        block_hvps=T.shape[0],
        plain_values=plain_values,
        residual_energy=resid_energy,
    )


def _exact_moments(op: LossOperator, W, gen, top, eig_init, eig_tol, eig_max_hvps, hvp_batch, hvps0) -> Moments:
    """Exact mode of :func:`gradient_moments`: tr(H S_1) = (1/n) Σ g_iᵀHg_i with one HVP per sample."""
    n, dev, dt = op.n, op.device, op.dtype
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
        n,
        float(sq.mean()),
        float(grad @ grad),
        tr_HS_1,
        0.0,
        float(grad @ hgrad),
        grad,
        hgrad,
        "exact",
        hvps=op.counts["hvp"] - hvps0,
        weighted_grads=GW,
        exact_part=tr_HS_1,
        eig=eig,
    )


def _sketch_pass1(op: LossOperator, W, stage1: int, gen, store_mb: float):
    """Pass 1 of the sketch: (‖g_i‖², ∇L, [Y; G W] with Y_k = n^{-1/2} Σ_i z_ik g_i, the stored chunks of
    per-sample gradients when they fit in ``store_mb`` MiB, else [])."""
    n, dev, dt = op.n, op.device, op.dtype
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
    return sq, grad, GW, stored


def _deflation_block(op: LossOperator, grad, Y, top, eig_init, eig_tol, eig_max_hvps, hvp_batch):
    """One batch of HVPs on T = [x0, ∇L, Y] (x0 = ``eig_init`` when given and ``top``) and, when ``top``,
    ‖H‖ by LOBPCG keeping span(T) and every residual direction: (T, HT, H∇L, TopEig or None)."""
    dev, dt = op.device, op.dtype
    x0 = None
    if top and eig_init is not None and torch.isfinite(eig_init).all() and float(eig_init.norm()) > 0:
        x0 = (eig_init / eig_init.norm()).to(dev, dt).reshape(1, -1)
    T = torch.cat([t for t in (x0, grad.reshape(1, -1), Y) if t is not None])
    HT = op.hvp_many(T, batch=hvp_batch)
    hgrad = HT[0 if x0 is None else 1]
    eig = None
    if top:
        eig = lobpcg_top(op.hvp, None, subspace=(T, HT), keep=True, tol=eig_tol, max_matvecs=eig_max_hvps)
        eig = eig._replace(hvp_count=eig.hvp_count + (1 if x0 is not None else 0))
    return T, HT, hgrad, eig


def _sketch_pass2(op: LossOperator, Q, HQ, sq, probes: int, gen, stored: list):
    """Pass 2: a_i = Qᵀg_i, b_i = (HQ)ᵀg_i and ``probes`` fresh combinations. Returns the exact part
    (1/n) Σ (2a_iᵀb_i − a_iᵀ(QᵀHQ)a_i), the residual energy E_r = (1/n) Σ ‖(I − P) g_i‖² and the residual
    probes (I − P) n^{-1/2} Σ_i z_i g_i (rows)."""
    n, dev, dt = op.n, op.device, op.dtype
    r = Q.shape[0]
    R = torch.cat([Q, HQ])  # (2r, m)
    Z2 = (rademacher(n, probes, gen) / math.sqrt(n)).to(dev, dt)
    AB = torch.zeros(n, 2 * r, dtype=dt, device=dev)
    S = op.space.zeros(probes)
    for sl, Gc in stored or op.per_sample_grads():  # pass 1's chunks when they were kept
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
    return exact_part, resid_energy, S


def _residual_probes(op: LossOperator, S, probes, min_probes, rel_se, hvp_batch, exact_part, resid_energy):
    """The control-variate values of the residual probes w_kᵀHw_k (one HVP each), stopping early once
    se ≤ ``rel_se``·|estimate| (at least ``min_probes``)."""
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
    return control_variate_values(np.asarray(t_vals), np.asarray(e_vals), resid_energy)


# ---------------------------------------------------------------------------------------------
# Per-b quantities
# ---------------------------------------------------------------------------------------------


def per_b(mom: Moments, b: int, replacement: bool) -> dict:
    """tr S_b and tr(H S_b) by identity (1) (:func:`lssr.scaling.trace_b`), ρ_b = tr S_n/tr S_b,
    ‖H‖_{S_b} = tr(H S_b)/tr S_b and the instability ratio tr(H S_b)/tr S_n (with standard errors) for one b."""
    w = float(batch_weight(mom.n, b, replacement))
    tr_S_b = trace_b(mom.tr_S_1, mom.tr_S_n, mom.n, b, replacement)
    tr_HS_b = trace_b(mom.tr_HS_1, mom.tr_HS_n, mom.n, b, replacement)
    se = w * mom.tr_HS_1_se if mom.tr_HS_1_se == mom.tr_HS_1_se else math.nan
    return {
        "b": int(b),
        "tr_S_b": tr_S_b,
        "tr_S_b_se": 0.0,
        "tr_HS_b": tr_HS_b,
        "tr_HS_b_se": se,
        "rho_b": concentration(mom.tr_S_n, tr_S_b),
        "rho_b_se": 0.0,
        "ias_b": interaction_aware_sharpness(tr_HS_b, tr_S_b),
        "ias_b_se": interaction_aware_sharpness(se, tr_S_b),
        "instability_b": instability_ratio(tr_HS_b, mom.tr_S_n),
        "instability_b_se": instability_ratio(se, mom.tr_S_n),
    }


def moments_frame(mom: Moments, batch_sizes: Iterable[int], replacement: bool = False) -> pd.DataFrame:
    """One row per b: the columns of :data:`FRAME_COLUMNS` plus ``<name>_se`` for each."""
    rows = []
    for b in batch_sizes:
        b = int(b)
        if b < 1 or (not replacement and b > mom.n):
            raise LssrError(
                f"batch size {b} is out of range: need 1 <= b <= n = {mom.n} (without replacement) or b >= 1"
            )
        row = per_b(mom, b, replacement)
        row.update(
            tr_S_1=mom.tr_S_1,
            tr_S_1_se=0.0,
            tr_S_n=mom.tr_S_n,
            tr_S_n_se=0.0,
            tr_HS_1=mom.tr_HS_1,
            tr_HS_1_se=mom.tr_HS_1_se,
            tr_HS_n=mom.tr_HS_n,
            tr_HS_n_se=0.0,
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
    op = LossOperator(
        model,
        loss_fn,
        inputs,
        targets,
        chunk_size=chunk_size,
        per_sample_chunk=per_sample_chunk,
        where="interaction_stats",
    )
    mom = gradient_moments(op, exact=exact, probes=probes, stage1=stage1, generator=generator, top=False, rel_se=rel_se)
    return moments_frame(mom, batch_sizes, replacement)
