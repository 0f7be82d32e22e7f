"""Small dense linear algebra on flat vectors that carry their H-images along: Gram–Schmidt, Rayleigh–Ritz,
and :class:`Basis`, a growing orthonormal basis stored as two matrices (the eigen-solver's kept subspace)."""

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


def gram64(X: Tensor, Y: Tensor, block: int = 1 << 18) -> Tensor:
    """X Yᵀ in float64 (X, Y: (d, m) rows), over blocks of ``block`` columns converted to float64 one at a time,
    so no float64 copy of X or Y is made."""
    out = torch.zeros(X.shape[0], Y.shape[0], dtype=torch.float64, device=X.device)
    for s in range(0, X.shape[1], block):
        out += X[:, s : s + block].double() @ Y[:, s : s + block].double().T
    return out


class Basis:
    """A growing set of unit vectors v_1..v_k (rows of ``V``, not orthogonalised) with their images H v_j (rows
    of ``HV``), the Gram matrix M = V Vᵀ and the projected matrix A = V HVᵀ (float64, symmetrised).

    Rayleigh–Ritz is solved in these small coordinates (:meth:`top_ritz` whitens M, dropping dependent
    directions), so adding a vector costs two matrix-vector products with the basis and the vectors are never
    orthogonalised in R^m; the storage grows by doubling."""

    def __init__(self, like: Tensor, capacity: int = 8):
        self.m = like.shape[-1]
        cap = max(int(capacity), 1)
        self.V = like.new_empty(cap, self.m)
        self.HV = like.new_empty(cap, self.m)
        self.A = torch.zeros(cap, cap, dtype=torch.float64, device=like.device)
        self.M = torch.zeros(cap, cap, dtype=torch.float64, device=like.device)
        self.k = 0

    def __len__(self) -> int:
        return self.k

    def _reserve(self, extra: int) -> None:
        cap = self.V.shape[0]
        if self.k + extra <= cap:
            return
        while cap < self.k + extra:
            cap *= 2
        for name in ("V", "HV"):
            new = getattr(self, name).new_empty(cap, self.m)
            new[: self.k] = getattr(self, name)[: self.k]
            setattr(self, name, new)
        for name in ("A", "M"):
            new = torch.zeros(cap, cap, dtype=torch.float64, device=self.V.device)
            new[: self.k, : self.k] = getattr(self, name)[: self.k, : self.k]
            setattr(self, name, new)

    def extend(self, V: Tensor, HV: Tensor) -> int:
        """Append the rows of V scaled to unit norm, with their images (rows that are zero or not finite, or
        whose image is not finite, are skipped); returns the number appended."""
        V, HV = V.reshape(-1, self.m), HV.reshape(-1, self.m)
        n0 = V.norm(dim=1)
        ok = (n0 > 0) & torch.isfinite(n0) & torch.isfinite(HV.norm(dim=1))
        j = int(ok.sum())
        if j == 0:
            return 0
        if not bool(ok.all()):
            V, HV, n0 = V[ok], HV[ok], n0[ok]
        self._reserve(j)
        k = self.k
        torch.div(V, n0[:, None], out=self.V[k : k + j])
        torch.div(HV, n0[:, None], out=self.HV[k : k + j])
        new, hnew = self.V[k : k + j], self.HV[k : k + j]
        a = gram64(self.V[: k + j], hnew)  # (k + j, j): v_iᵀ H v_new
        g = gram64(self.V[: k + j], new)
        a[k:] = 0.5 * (a[k:] + a[k:].T)
        self.A[: k + j, k : k + j] = a
        self.A[k : k + j, : k + j] = a.T
        self.M[: k + j, k : k + j] = g
        self.M[k : k + j, : k + j] = g.T
        self.k = k + j
        return j

    def truncate(self, k: int) -> None:
        """Keep the first k vectors."""
        self.k = min(self.k, int(k))

    def top_ritz(self, rtol: float) -> tuple[Tensor, Tensor]:
        """Top Ritz pair of the span: (coefficients c in float64 with Vᵀc the Ritz vector, all Ritz values).
        M is whitened by its eigendecomposition; directions with eigenvalue ≤ rtol²·max (numerically
        dependent vectors, whose images would be dominated by rounding) are dropped."""
        k = self.k
        M = self.M[:k, :k]
        w, U = torch.linalg.eigh(M)
        keep = w > rtol**2 * max(float(w[-1]), 0.0)
        B = U[:, keep] / w[keep].sqrt()
        evals, evecs = torch.linalg.eigh(B.T @ self.A[:k, :k] @ B)
        return B @ evecs[:, -1], evals

    def combine(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """(Vᵀc, HVᵀc): the vector with coefficients c and its image."""
        c = c.to(self.V.dtype).to(self.V.device)
        return self.V[: self.k].T @ c, self.HV[: self.k].T @ c
