"""The exchangeable deflated sketch of tr(H S_1) = (1/n) Σ_i g_iᵀHg_i, computed in small coordinates.

Directions D = [d_1 … d_r (base), Y_1 … Y_s (probes)] with known images HD. The base must not depend on the
probes' signs (e.g. ∇L and the previous step's top eigenvector); the probes are random-sign combinations
Y_k = n^{-1/2} Σ_i z_ik g_i with independent Rademacher z. For each probe k let J be every direction but
Y_k, P_J the orthogonal projector onto span(D_J) and r_i = (I − P_J) g_i. Then

    g_iᵀHg_i = 2 (P_J g_i)ᵀH g_i − (P_J g_i)ᵀH (P_J g_i) + r_iᵀHr_i            (exact, for any J),

and the first two terms are known for every sample from the per-sample products A = G Dᵀ, B = G (HD)ᵀ
(``exact_J``). The last is sketched by the probe left out: y = (I − P_J) Y_k = n^{-1/2} Σ_i z_ik r_i has
E[yᵀHy | D_J] = (1/n) Σ r_iᵀHr_i and E[‖y‖² | D_J] = E_J = (1/n) Σ ‖r_i‖², which is known exactly. So

    T_k = exact_J + yᵀHy − c_k (‖y‖² − E_J)

is an unbiased estimate of tr(H S_1) for any slope c_k independent of z_k; c_k is the Rayleigh slope
Σ_j t_j / Σ_j e_j of the other probes' residuals against J without themselves (a control variate that
removes the χ²-like spread of a random-sign sample when the residual curvature is even). Every probe is
both a deflation direction for the others and a Hutchinson sample (the exchangeable construction of
XTrace, Epperly, Tropp & Webber 2024, here on the n × n matrix GᵀHG/n). The estimate is the mean of the
T_k. Its standard error is the delete-one jackknife over the probes, which is conservative in expectation
(the Efron–Stein inequality): the naive sd(T_k)/√s ignores that the T_k share most of their deflation
subspace: its rms was 0.54–0.85 of the actual spread on explicit problems (``make bench-se``, benchmarks/README.md).

All functions are pure and run in float64 on (r + s)-sized matrices plus n × (r + s) products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Array = np.ndarray


@dataclass(frozen=True)
class TraceEstimate:
    """tr(H S_1) from :func:`exchangeable_trace`: the estimate, its jackknife se, the per-probe T_k, the
    mean exact part (1/s) Σ_k exact_J and the mean residual energy (1/s) Σ_k E_J."""

    value: float
    se: float
    samples: Array
    exact_part: float
    residual_energy: float


def small_products(M: torch.Tensor, DH: torch.Tensor, G_D: torch.Tensor, G_HD: torch.Tensor):
    """(M, C, A, B, norms²) in float64 with the rows of D rescaled to unit norm, from the Gram matrices
    M = D Dᵀ and DH = D HDᵀ: C = ½(DH + DHᵀ), A = G Dᵀ and B = G HDᵀ (``G_D``, ``G_HD``: the per-sample
    products, (n, d))."""
    M, C = M.double().cpu().numpy(), DH.double().cpu().numpy()
    C = 0.5 * (C + C.T)
    sq = np.clip(np.diag(M).copy(), 0.0, None)
    scale = np.where(sq > 0, 1.0 / np.sqrt(np.where(sq > 0, sq, 1.0)), 0.0)
    S = np.outer(scale, scale)
    A = G_D.double().cpu().numpy() * scale
    B = G_HD.double().cpu().numpy() * scale
    return M * S, C * S, A, B, sq


def pinv_psd(M: Array, rtol: float) -> Array:
    """Pseudo-inverse of a symmetric positive semi-definite Gram matrix, dropping eigenvalues ≤ rtol·max."""
    if M.size == 0:
        return M.copy()
    w, V = np.linalg.eigh(M)
    keep = w > rtol * max(float(w[-1]), 0.0)
    return (V[:, keep] / w[keep]) @ V[:, keep].T


class _Small:
    """The small-coordinate quantities of one set of directions (unit-norm rows; probe scales in ``sq``)."""

    def __init__(self, M, C, A, B, sq, sq_g, rtol):
        self.M, self.C, self.A, self.B, self.sq, self.sq_g, self.rtol = M, C, A, B, sq, sq_g, rtol
        self._inv: dict[tuple, Array] = {}

    def inv(self, J: tuple) -> Array:
        if J not in self._inv:
            self._inv[J] = pinv_psd(self.M[np.ix_(J, J)], self.rtol)
        return self._inv[J]

    def exact_and_energy(self, J: tuple) -> tuple[float, float]:
        """exact_J = (1/n) Σ (2 (P_J g_i)ᵀHg_i − (P_J g_i)ᵀH(P_J g_i)) and E_J = (1/n) Σ ‖(I − P_J) g_i‖²."""
        if not J:
            return 0.0, float(self.sq_g.mean())
        AJ = self.A[:, J]
        coef = AJ @ self.inv(J)  # P_J g_i = D_Jᵀ coef_i
        exact = (2.0 * (coef * self.B[:, J]).sum(1) - ((coef @ self.C[np.ix_(J, J)]) * coef).sum(1)).mean()
        return float(exact), float((self.sq_g - (coef * AJ).sum(1)).mean())

    def residual(self, J: tuple, k: int) -> tuple[float, float]:
        """(yᵀHy, ‖y‖²) for y = (I − P_J) d_k at d_k's own scale, from M and C alone."""
        if not J:
            return float(self.C[k, k]) * self.sq[k], float(self.M[k, k]) * self.sq[k]
        u = self.inv(J) @ self.M[list(J), k]  # P_J d_k = D_Jᵀ u
        CJ, MJ = self.C[np.ix_(J, J)], self.M[np.ix_(J, J)]
        t = self.C[k, k] - 2.0 * u @ self.C[list(J), k] + u @ CJ @ u
        e = self.M[k, k] - 2.0 * u @ self.M[list(J), k] + u @ MJ @ u
        return float(t) * self.sq[k], float(e) * self.sq[k]

    def samples(self, active: list[int], base: tuple) -> tuple[Array, Array, Array]:
        """T_k for each probe k in ``active`` (deflating by ``base`` and the other active probes), with the
        exact parts and residual energies."""
        T, parts, energies = [], [], []
        for k in active:
            J = base + tuple(j for j in active if j != k)
            t, e = self.residual(J, k)
            num = den = 0.0
            for j in active:
                if j != k:
                    tj, ej = self.residual(tuple(i for i in J if i != j), j)
                    num, den = num + tj, den + ej
            c = num / den if den > 0 else 0.0
            exact, energy = self.exact_and_energy(J)
            T.append(exact + t - c * (e - energy))
            parts.append(exact)
            energies.append(energy)
        return np.asarray(T), np.asarray(parts), np.asarray(energies)


def exchangeable_trace(
    M: torch.Tensor,
    DH: torch.Tensor,
    G_D: torch.Tensor,
    G_HD: torch.Tensor,
    sq_g: torch.Tensor,
    r: int,
    rtol: float,
) -> TraceEstimate:
    """tr(H S_1) with its jackknife standard error from directions D (the first ``r`` rows are the base, the
    rest the probes n^{-1/2} Σ_i z_ik g_i) and their images HD, given as the Gram matrices M = D Dᵀ and
    DH = D HDᵀ (float64, e.g. :func:`lssr.curvature.linalg.gram64`; a caller that grows D a few rows at a time
    updates them for the new rows only), the per-sample products G_D = G Dᵀ, G_HD = G HDᵀ and the squared
    per-sample gradient norms ``sq_g`` (see the module docstring). ``rtol``: Gram eigenvalues below rtol·max
    count as dependent directions. Needs at least 3 probes (the jackknife drops one and the control variate
    needs another)."""
    small = _Small(*small_products(M, DH, G_D, G_HD), sq_g.double().cpu().numpy(), rtol)
    d = small.M.shape[0]
    probes = list(range(r, d))
    s = len(probes)
    if s < 3:
        raise ValueError(f"exchangeable_trace needs at least 3 probes, got {s}")
    base = tuple(range(r))
    T, parts, energies = small.samples(probes, base)
    loo = np.array([small.samples([k for k in probes if k != j], base)[0].mean() for j in probes])
    se = float(np.sqrt((s - 1) / s * ((loo - loo.mean()) ** 2).sum()))
    return TraceEstimate(float(T.mean()), se, T, float(parts.mean()), float(energies.mean()))
