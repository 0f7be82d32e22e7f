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
tr(H S_1) is exact (``exact=True``: one HVP per sample, n HVPs) or estimated without bias by the
*exchangeable deflated sketch* of :mod:`.exchangeable` (:func:`gradient_moments`): random-sign combinations
Y_k = n^{-1/2} Σ_i z_ik g_i of the per-sample gradients, each used both as a deflation direction for the
others and as a Hutchinson sample of what they leave, with a control variate on the exactly known residual
gradient energy, over a base of directions that do not depend on the signs (∇L, whose image gives
tr(H S_n), and the previous step's top eigenvector). The standard error is the delete-one jackknife over
the probes (conservative in expectation); with ``rel_se`` probes are added until se ≤ rel_se·|estimate|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import pandas as pd
import torch

from ..curvature import LossOperator, TopEig, lobpcg_top, top_eigenvalue_op
from ..curvature.linalg import drop_tolerance, gram64
from ..errors import LssrError
from ..scaling import batch_weight, concentration, instability_ratio, interaction_aware_sharpness, trace_b
from .exchangeable import exchangeable_trace

Tensor = torch.Tensor

#: When the per-sample gradients are not kept, the first pass forms Y_k for the first ``UPFRONT_PROBES``·stage1
#: probes only; each later probe is the gradient of the sign-weighted loss n^{-1/2} Σ_i z_ik ℓ_i (one gradient,
#: the same Y_k up to rounding). A column formed in the pass costs a read and a write of all the others for every
#: block of per-sample gradients, so one formed and never used (``probes`` is a cap) is paid for nothing.
UPFRONT_PROBES = 2

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
    block_hvps: int = 0  # sketch: the HVPs of the first block H[x0, ∇L, Y_1..stage1]
    residual_energy: float = math.nan  # sketch: mean over probes of E_J = (1/n) Σ ‖(I − P_J) g_i‖²


def rademacher(n: int, k: int, generator: torch.Generator) -> Tensor:
    """(n, k) independent ±1 signs drawn on the CPU from ``generator``."""
    return torch.randint(0, 2, (n, k), generator=generator, dtype=torch.int64).double().mul_(2).sub_(1)


def gradient_moments(
    op: LossOperator,
    *,
    exact: bool = False,
    probes: int = 16,
    stage1: int = 6,
    generator: torch.Generator | None = None,
    top: bool = True,
    eig_init: Tensor | None = None,
    eig_tol: float = 1e-3,
    eig_max_hvps: int = 60,
    weights: Tensor | None = None,
    rel_se: float | None = None,
    hvp_batch: int | None = None,
    store_mb: float = 1024,
    jvp_products: bool = False,
) -> Moments:
    """tr S_1, tr S_n, tr(H S_1), tr(H S_n) at the operator's θ, and ‖H‖ when ``top`` (see the module docstring).

    Exact mode: one pass of per-sample gradients with one HVP each (n HVPs); ‖H‖ by LOBPCG warm-started
    from ``eig_init``. Sketch mode (``exact=False``):

    1. one pass of per-sample gradients: ‖g_i‖², ∇L = mean g_i and ``probes`` random-sign combinations
       Y_k = n^{-1/2} Σ_i z_ik g_i (the signs from ``generator``; a fixed seed when None, never the global RNG;
       when the per-sample gradients are not kept, the first ``UPFRONT_PROBES``·``stage1`` only, each later
       one a gradient of the sign-weighted loss when it is needed);
    2. one batch of HVPs on the base [x0, ∇L] (x0 = ``eig_init`` when given and ``top``) and the first
       ``stage1`` probes;
    3. ‖H‖: LOBPCG started from the top Ritz vector of span(x0, ∇L, Y), keeping that span and every residual
       direction in its Rayleigh–Ritz basis (:func:`lobpcg_top` with ``subspace``/``keep``);
    4. the per-sample products G[D; HD]ᵀ (free when the per-sample gradients fit in ``store_mb`` MiB and were
       kept from step 1, else one more per-sample pass) and :func:`.exchangeable.exchangeable_trace`; with
       ``rel_se``, more probes until se ≤ rel_se·|estimate| or ``probes`` are used (all of them when
       ``rel_se`` is None): one at a time when G is stored, two when each round costs a per-sample pass.
       With ``jvp_products`` and G not stored, the products are directional derivatives of the per-sample
       losses instead (one forward-mode pass per new direction, no per-sample pass; the same numbers up to
       rounding).

    ``weights`` (n, k) asks for Σ_i W_ik g_i (e.g. batch gradients), accumulated in step 1 and returned in
    ``weighted_grads``.
    """
    dev, dt = op.device, op.dtype
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    hvps0 = op.counts["hvp"]
    W = None if weights is None else weights.to(dev, dt)
    if exact:
        return _exact_moments(op, W, gen, top, eig_init, eig_tol, eig_max_hvps, hvp_batch, hvps0)
    if probes < 3 or stage1 < 3:
        raise LssrError(
            f"gradient_moments: the sketch needs at least 3 probes (jackknife standard error with a control "
            f"variate), got probes={probes}, stage1={stage1}"
        )
    eig_args = (top, eig_init, eig_tol, eig_max_hvps)
    return _sketch_moments(
        op, W, gen, hvps0, min(stage1, probes), probes, eig_args, rel_se, hvp_batch, store_mb, jvp_products
    )


def _sketch_moments(
    op: LossOperator, W, gen, hvps0, stage1, probes, eig_args, rel_se, hvp_batch, store_mb, jvp_products=False
):
    """Sketch mode of :func:`gradient_moments` (its steps 1-4); ``eig_args``: top, eig_init, eig_tol, eig_max_hvps."""
    n = op.n
    top, eig_init, eig_tol, eig_max_hvps = eig_args
    Z = (rademacher(n, probes, gen) / math.sqrt(n)).to(op.device, op.dtype)
    upfront = probes if _fits(op, store_mb) else min(probes, UPFRONT_PROBES * stage1)
    sq, grad, GW, stored = _sketch_pass1(op, W, Z[:, :upfront], store_mb)
    weighted = None if W is None else GW[upfront:]
    if not torch.isfinite(grad).all() or not torch.isfinite(sq).all():
        nan = math.nan
        return Moments(
            n, float(sq.mean()), nan, nan, nan, nan, grad, torch.full_like(grad, nan), "sketch", weighted_grads=weighted
        )
    Y = GW[:upfront]
    T, HT, r, eig = _first_block(op, grad, Y[:stage1], top, eig_init, eig_tol, eig_max_hvps, hvp_batch)
    hgrad = HT[r - 1]
    grams, products = _Grams(), _SampleProducts(op, stored, jvp_products)
    rtol = max(drop_tolerance(op.dtype) ** 2, 1e-10)
    used, new, Hnew = stage1, T, HT
    while True:
        M, DH = grams.add(new, Hnew)
        G_D, G_HD = products.add(new, Hnew)
        est = exchangeable_trace(M, DH, G_D, G_HD, sq, r, rtol)
        done = used >= probes or (rel_se is not None and est.se <= rel_se * abs(est.value))
        if done or not math.isfinite(est.value):
            break
        k = min(1 if products.cheap() else 2, probes - used)  # else each round costs a per-sample pass too
        new = Y[used : used + k]
        if new.shape[0] < k:  # probes past the first pass: gradients of the sign-weighted loss
            new = torch.cat([new, op.weighted_gradients(Z[:, used + new.shape[0] : used + k].T)])
        Hnew = op.hvp_many(new, batch=hvp_batch)
        used += k
    return Moments(
        n,
        float(sq.mean()),
        float(grad @ grad),
        est.value,
        est.se,
        float(grad @ hgrad),
        grad,
        hgrad,
        "sketch",
        probes=used,
        hvps=op.counts["hvp"] - hvps0,
        weighted_grads=weighted,
        exact_part=est.exact_part,
        subspace_dim=r + used - 1,
        eig=eig,
        block_hvps=r + stage1,
        residual_energy=est.residual_energy,
    )


def _exact_moments(op: LossOperator, W, gen, top, eig_init, eig_tol, eig_max_hvps, hvp_batch, hvps0) -> Moments:
    """Exact mode of :func:`gradient_moments`: tr(H S_1) = (1/n) Σ g_iᵀHg_i with one HVP per sample."""
    n, dev, dt = op.n, op.device, op.dtype
    sq = torch.zeros(n, dtype=dt, device=dev)
    quad = torch.zeros(n, dtype=dt, device=dev)
    gsum, hsum = op.space.zeros(), op.space.zeros()
    GW = None if W is None else op.space.zeros(W.shape[1])
    for sl, Gc in op.per_sample_grads(reuse=True):
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


def _fits(op: LossOperator, store_mb: float) -> bool:
    """True when the (n, m) matrix of per-sample gradients fits in ``store_mb`` MiB (and is kept)."""
    return op.n * op.row_bytes <= store_mb * 2**20


def _sketch_pass1(op: LossOperator, W, Z, store_mb: float):
    """The per-sample pass of the sketch: (‖g_i‖², ∇L, [Y; G W] with Y = Zᵀ G, i.e. Y_k = Σ_i Z_ik g_i, and G,
    the (n, m) matrix of per-sample gradients, when it fits in ``store_mb`` MiB, else None).

    Per-sample gradients are written into a block of as many rows as fit ``store_mb`` (at least one chunk);
    each full block is reduced by one matrix product, so [Y; G W; Σ g_i] costs one pass over G whatever the
    chunk, accumulated in place (no new memory per block)."""
    n, dev, dt = op.n, op.device, op.dtype
    ones = torch.ones(n, 1, dtype=dt, device=dev)  # its row of G W1 is Σ g_i
    W1 = torch.cat([Z, ones] if W is None else [Z, W, ones], dim=1)
    rows = min(n, max(op.per_sample_chunk, int(store_mb * 2**20 // max(op.row_bytes, 1))))
    block = torch.empty(rows, op.space.dim, dtype=dt, device=dev)
    sq = torch.zeros(n, dtype=dt, device=dev)
    GW = torch.zeros(W1.shape[1], op.space.dim, dtype=dt, device=dev)
    start = 0  # first sample of the block

    def flush(end: int):
        B = block[: end - start]
        sq[start:end] = torch.linalg.vector_norm(B, dim=1).square()
        GW.addmm_(W1[start:end].T, B)

    def rows_of(sl: slice) -> Tensor:  # where the chunk's g_i are written: the block, reduced first when full
        nonlocal start
        if sl.stop - start > rows:
            flush(sl.start)
            start = sl.start
        return block[sl.start - start : sl.stop - start]

    for _ in op.per_sample_grads(out=rows_of):
        pass
    flush(n)
    stored = block if _fits(op, store_mb) else None  # then the block has all n rows
    return sq, GW[-1] / n, GW[:-1], stored


def _first_block(op: LossOperator, grad, Y, top, eig_init, eig_tol, eig_max_hvps, hvp_batch):
    """One batch of HVPs on T = [x0, ∇L, Y] (x0 = ``eig_init`` when given and ``top``) and, when ``top``, ‖H‖
    by LOBPCG keeping that span and every residual direction. Returns (T, HT, r, TopEig or None) where the
    first r rows of T, [x0, ∇L], are the directions that do not depend on the probes' signs."""
    dev, dt = op.device, op.dtype
    x0 = None
    if top and eig_init is not None and torch.isfinite(eig_init).all() and float(eig_init.norm()) > 0:
        x0 = (eig_init / eig_init.norm()).to(dev, dt).reshape(1, -1)
    base = torch.cat([t for t in (x0, grad.reshape(1, -1)) if t is not None])
    T = torch.cat([base, Y])
    HT = op.hvp_many(T, batch=hvp_batch)
    r = base.shape[0]
    eig = None
    if top:
        eig = lobpcg_top(op.hvp, None, subspace=(T, HT), keep=True, tol=eig_tol, max_matvecs=eig_max_hvps)
        eig = eig._replace(hvp_count=eig.hvp_count + (1 if x0 is not None else 0))
    return T, HT, r, eig


class _Grams:
    """M = D Dᵀ and DH = D HDᵀ (float64) for directions D that arrive a few rows at a time: each call computes
    only the products that involve the new rows, and no matrix in R^m is concatenated."""

    def __init__(self):
        self.D, self.HD = [], []
        self.M = self.DH = None

    def add(self, D: Tensor, HD: Tensor) -> tuple[Tensor, Tensor]:
        if self.M is None:
            self.M, self.DH = gram64(D, D), gram64(D, HD)
        else:
            k = D.shape[0]
            both = torch.cat([D, HD])
            old = torch.cat([gram64(b, both) for b in self.D])  # one read of each old block
            old_D, old_H = old[:, :k], old[:, k:]  # D_old D_newᵀ, D_old HD_newᵀ
            new_H = torch.cat([gram64(D, b) for b in self.HD], dim=1)  # D_new HD_oldᵀ
            self.M = torch.cat([torch.cat([self.M, old_D], 1), torch.cat([old_D.T, gram64(D, D)], 1)])
            self.DH = torch.cat([torch.cat([self.DH, old_H], 1), torch.cat([new_H, gram64(D, HD)], 1)])
        self.D.append(D)
        self.HD.append(HD)
        return self.M, self.DH


class _SampleProducts:
    """G Vᵀ for the rows V of [D; HD], D given a few rows at a time (:meth:`add`): from the stored per-sample
    gradients G (n, m); else, with ``jvp``, as directional derivatives g_iᵀv of the per-sample losses (one
    forward-mode pass per direction, no per-sample gradients; a model without forward-mode derivatives falls
    back to the next); else one per-sample pass per call."""

    def __init__(self, op: LossOperator, stored: Tensor | None, jvp: bool = False):
        self.op, self.stored, self.jvp = op, stored, jvp
        self.G_D = self.G_HD = None

    def cheap(self) -> bool:
        """True when a call costs no per-sample pass."""
        return self.stored is not None or self.jvp

    def _by_jvp(self, new: list[Tensor]) -> Tensor | None:
        try:
            return torch.cat([self.op.per_sample_jvp(v.reshape(1, -1)) for V in new for v in V], dim=1)
        except torch.OutOfMemoryError:
            raise
        except (NotImplementedError, RuntimeError):
            self.jvp = False
            return None

    def add(self, D: Tensor, HD: Tensor) -> tuple[Tensor, Tensor]:
        """(G D_allᵀ, G HD_allᵀ) after appending the rows D (new directions) and HD (their images)."""
        out = self._by_jvp([D, HD]) if self.stored is None and self.jvp else None
        if out is None:
            new = torch.cat([D, HD]).T  # one read of G for both
            if self.stored is not None:
                out = self.stored @ new
            else:
                out = torch.zeros(self.op.n, new.shape[1], dtype=D.dtype, device=D.device)
                for sl, Gc in self.op.per_sample_grads(reuse=True):
                    out[sl] = Gc @ new
        k = D.shape[0]
        a, b = out[:, :k], out[:, k:]
        self.G_D = a if self.G_D is None else torch.cat([self.G_D, a], 1)
        self.G_HD = b if self.G_HD is None else torch.cat([self.G_HD, b], 1)
        return self.G_D, self.G_HD


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
