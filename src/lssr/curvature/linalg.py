"""Small dense linear algebra on flat vectors that carry their H-images along: Gram–Schmidt (the one
implementation, used by the eigen-solver and the deflated sketch of tr(H S_1)) and Rayleigh–Ritz."""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
Pair = tuple[Tensor, Tensor]  # (v, H v)


def drop_tolerance(dtype: torch.dtype) -> float:
    """Relative norm below which an orthogonalised vector counts as dependent: √eps of the dtype
    (3.5e-4 in float32, 1.5e-8 in float64)."""
    return max(math.sqrt(torch.finfo(dtype).eps), 1e-10)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """aᵀb of two tensors read as flat vectors."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def orth_against(v: Tensor, hv: Tensor | None, basis: list[Pair]) -> tuple[Tensor, Tensor | None]:
    """v − Σ (uᵀv) u over an orthonormal basis, twice (classical Gram–Schmidt with re-orthogonalisation);
    the same combination is applied to the image ``hv`` when given."""
    for _ in range(2):
        for u, hu in basis:
            c = dot(u, v)
            v = v - c * u
            if hv is not None:
                hv = hv - c * hu
    return v, hv


def orthonormal_pairs(vecs, hvecs, rtol: float | None = None) -> list[Pair]:
    """Gram–Schmidt (twice, :func:`orth_against`) on ``vecs`` in order, applying the same linear operations
    to their H-images ``hvecs``. Skips a missing or non-finite pair and a zero vector, and drops a vector
    whose norm falls to ``rtol`` (default √eps of the dtype) of its original norm or below: its image,
    formed by the same cancelling combination, would be dominated by rounding errors."""
    vecs, hvecs = list(vecs), list(hvecs)
    if rtol is None:
        rtol = drop_tolerance(vecs[0].dtype) if vecs else 1e-6
    basis: list[Pair] = []
    for v, hv in zip(vecs, hvecs):
        if v is None or hv is None or not torch.isfinite(v).all() or not torch.isfinite(hv).all():
            continue
        n0 = float(v.norm())
        if n0 == 0.0:
            continue
        v, hv = orth_against(v, hv, basis)
        nv = float(v.norm())
        if nv <= rtol * n0:
            continue
        basis.append((v / nv, hv / nv))
    return basis


def orthonormalize(vecs: list[Tensor], hvecs: list[Tensor], rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """:func:`orthonormal_pairs` stacked: (Q, HQ), each (r, m) with orthonormal rows Q (r may be 0)."""
    basis = orthonormal_pairs(vecs, hvecs, rtol)
    if not basis:
        m = vecs[0].numel() if vecs else 0
        dt = vecs[0] if vecs else torch.zeros(0)
        return dt.new_zeros(0, m), dt.new_zeros(0, m)
    return torch.stack([q for q, _ in basis]), torch.stack([hq for _, hq in basis])


def rayleigh_ritz(basis: list[Pair]) -> tuple[Tensor, Tensor, Tensor]:
    """Top Ritz pair of span(basis): returns (coefficients c, all Ritz values, Gram matrix) with the
    basis treated as orthonormal up to rounding (a Cholesky factor of the Gram matrix corrects it)."""
    V = torch.stack([u for u, _ in basis])
    HV = torch.stack([hu for _, hu in basis])
    A = (V @ HV.T).double()
    A = 0.5 * (A + A.T)
    G = (V @ V.T).double()
    G = 0.5 * (G + G.T)
    L = torch.linalg.cholesky(G)
    Li = torch.linalg.inv(L)
    evals, evecs = torch.linalg.eigh(Li @ A @ Li.T)
    return Li.T @ evecs[:, -1], evals, G
