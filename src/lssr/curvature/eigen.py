"""‖H‖, the top eigenvalue of the full training-loss Hessian: LOBPCG with block size 1 on Hessian-vector
products (:func:`lobpcg_top`, optionally keeping a known subspace in every Rayleigh–Ritz basis), and
:func:`top_eigenvalue` on a model."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..errors import LssrError
from .functions import Params
from .linalg import Basis, Pair, dot, drop_tolerance, orth_against, orthonormal_pairs, rayleigh_ritz
from .operator import LossOperator

Tensor = torch.Tensor


class TopEig(NamedTuple):
    """Result of :func:`top_eigenvalue` / :func:`lobpcg_top`.

    value: the Ritz value λ (a Rayleigh quotient, so λ ≤ ‖H‖); vector: the unit Ritz vector x (flat);
    hvp_count: products made by the solver; residual: ‖Hx − λx‖/|λ|; converged: residual ≤ tol;
    hvector: H x (maintained by the recurrences); grad: ∇L, the primal output of the first HVP (or None);
    subspace: (V, HV), the last Rayleigh–Ritz basis (orthonormal rows) and its H-images, usable for
    deflation (None with ``keep``, whose basis may be large); history: [(products so far, λ, relative
    residual)] per iteration.
    """

    value: float
    vector: Tensor
    hvp_count: int
    residual: float = math.nan
    converged: bool = False
    hvector: Tensor | None = None
    grad: Tensor | None = None
    subspace: tuple[Tensor, Tensor] | None = None
    history: list | None = None


def lobpcg_top(
    matvec: Callable[[Tensor], Tensor],
    x0: Tensor | None = None,
    *,
    tol: float = 1e-3,
    max_matvecs: int = 60,
    first: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    subspace: tuple[Tensor, Tensor] | None = None,
    keep: bool = False,
    max_basis: int = 48,
) -> TopEig:
    """Largest algebraic eigenvalue of a symmetric operator H by LOBPCG with block size 1.

    Each iteration does Rayleigh–Ritz on span{x, r, p} — the Ritz vector, the residual r = Hx − λx and the
    previous search direction p — at the cost of one product, H r (H x and H p follow from the
    recurrences). Stops when ‖Hx − λx‖ ≤ tol·|λ| or after ``max_matvecs`` products.

    Convergence criterion. For symmetric H the residual criterion is rigorous in this sense: some
    eigenvalue λ_j satisfies |λ − λ_j| ≤ ‖r‖ ≤ tol·|λ| (and |λ − λ_j| ≤ ‖r‖²/δ with δ the gap from λ_j to
    the rest of the spectrum, so the eigenvalue is usually far more accurate than tol); since λ is a
    Rayleigh quotient, λ ≤ ‖H‖. That λ_j is the *top* eigenvalue is, as for every Krylov-type method,
    guaranteed only when the start is not orthogonal to q_1.

    Options: ``first`` computes the first product and returns (H x0, extra), e.g. the gradient that a
    forward-over-reverse HVP yields for free (returned in ``grad``). ``subspace`` = (V, HV) are vectors whose
    images are already known (e.g. ∇L and sketch vectors): they stay in every Rayleigh–Ritz basis and the
    start is the top Ritz vector of span(V ∪ {x0}) (x0 may then be None). ``keep`` also keeps every
    residual direction (the basis grows by one vector per product, up to ``max_basis``, then restarts from the
    kept subspace and the current Ritz vector: an unpreconditioned Davidson/Lanczos variant, never worse than
    LOBPCG's three-term basis; :func:`_davidson_top`).
    """
    if keep:
        return _davidson_top(matvec, x0, tol, max_matvecs, first, subspace, max_basis)
    ref = x0 if x0 is not None else subspace[0] if subspace is not None else None
    drop = drop_tolerance(ref.dtype) if ref is not None else 1e-6
    kept = orthonormal_pairs(*subspace, rtol=drop) if subspace is not None else []
    x, Hx, count, extra = _start(matvec, x0, first, kept, drop)
    lam = float(dot(x, Hx))
    p = Hp = None
    res = math.inf
    history: list = []
    last_basis: list[Pair] = [(x, Hx)]
    while True:
        r = Hx - lam * x
        res = float(r.norm())
        scale = max(abs(lam), torch.finfo(x.dtype).tiny)
        history.append((count, lam, res / scale))
        if res <= tol * scale or count >= max_matvecs or not math.isfinite(lam):
            break
        local, x_idx = _search_pairs(x, Hx, p, Hp, kept, drop)
        w, _ = orth_against(r, None, kept + local)
        wn = float(w.norm())
        if not wn > 1e-10 * res:
            break
        w = w / wn
        hw = matvec(w)
        count += 1
        basis = kept + local + [(w, hw)]
        update = _ritz_update(basis, x_idx, x.dtype)
        if update is None:  # Gram matrix not positive definite: numerically dependent basis
            break
        x, Hx, p, Hp = update
        lam = float(dot(x, Hx))
        last_basis = basis
    ok = res <= tol * max(abs(lam), 1e-300)
    sub = (torch.stack([u for u, _ in last_basis]), torch.stack([hu for _, hu in last_basis]))
    return TopEig(lam, x, count, res / max(abs(lam), 1e-300), ok, Hx, extra, sub, history)


def _davidson_top(matvec, x0, tol, max_matvecs, first, subspace, max_basis) -> TopEig:
    """:func:`lobpcg_top` with ``keep``: Rayleigh–Ritz on span(subspace, x0, every residual so far), solved in
    the small coordinates of :class:`.linalg.Basis` (no orthogonalisation in R^m: each product costs two
    matrix-vector products with the basis). A residual is orthogonal to the current span in exact
    arithmetic, so the Gram matrix stays well conditioned; dependent directions are dropped by the whitening."""
    ref = x0 if x0 is not None else subspace[0] if subspace is not None else None
    if ref is None:
        raise LssrError("lobpcg_top: give a start vector x0 or a subspace")
    drop = drop_tolerance(ref.dtype)
    n_sub = subspace[0].shape[0] if subspace is not None else 0
    basis = Basis(ref, capacity=min(max_basis, n_sub + 16) + 1)
    if subspace is not None:
        basis.extend(subspace[0], subspace[1])
    extra = None
    count = 0
    if x0 is not None:
        x = x0.reshape(-1) / x0.norm()
        Hx, extra = first(x) if first is not None else (matvec(x), None)
        count = 1
        basis.extend(x, Hx)
    if len(basis) == 0:
        raise LssrError("lobpcg_top: the start vector and the subspace are all zero or not finite")
    r0 = len(basis)  # the subspace and the start: every restart keeps them
    lam, x, Hx = _ritz(basis, drop)
    res = math.inf
    history: list = []
    while True:
        r = torch.add(Hx, x, alpha=-lam)
        res = float(r.norm())
        scale = max(abs(lam), torch.finfo(x.dtype).tiny)
        history.append((count, lam, res / scale))
        if res <= tol * scale or count >= max_matvecs or not math.isfinite(lam) or not res > 0:
            break
        if len(basis) >= max(max_basis, r0 + 2):  # restart: the kept subspace, the start and the Ritz vector
            basis.truncate(r0)
            basis.extend(x, Hx)
        w = r.div_(res)
        hw = matvec(w)
        count += 1
        if basis.extend(w, hw) == 0:
            break
        lam, x, Hx = _ritz(basis, drop)
    ok = res <= tol * max(abs(lam), 1e-300)
    return TopEig(lam, x, count, res / max(abs(lam), 1e-300), ok, Hx, extra, None, history)


def _ritz(basis: Basis, drop: float) -> tuple[float, Tensor, Tensor]:
    """(λ, x, Hx): the top Ritz vector of the basis's span, normalised, and its Rayleigh quotient."""
    c, _ = basis.top_ritz(drop)
    x, Hx = basis.combine(c)
    nrm = x.norm()
    x, Hx = x.div_(nrm), Hx.div_(nrm)
    return float(dot(x, Hx)), x, Hx


def _start(matvec, x0, first, kept: list[Pair], drop: float) -> tuple[Tensor, Tensor, int, object]:
    """LOBPCG's start (x, Hx, products made, ``first``'s extra output): x0 normalised (one product), or the
    first kept vector; with a kept subspace, the top Ritz vector of span(kept ∪ {x0})."""
    extra = None
    count = 0
    if x0 is not None:
        x = x0 / x0.norm()
        if first is not None:
            Hx, extra = first(x)
        else:
            Hx = matvec(x)
        count = 1
    elif kept:
        x, Hx = kept[0]
    else:
        raise LssrError("lobpcg_top: give a start vector x0 or a subspace")
    if kept:
        basis = list(kept)
        xo, hxo = orth_against(x, Hx, kept)
        if float(xo.norm()) > drop:
            basis.append((xo / xo.norm(), hxo / xo.norm()))
        c, _, _ = rayleigh_ritz(basis)
        c = c.to(x.dtype)
        x = sum(ci * u for ci, (u, _) in zip(c, basis))
        Hx = sum(ci * hu for ci, (_, hu) in zip(c, basis))
        nrm = x.norm()
        x, Hx = x / nrm, Hx / nrm
    return x, Hx, count, extra


def _search_pairs(x, Hx, p, Hp, kept: list[Pair], drop: float) -> tuple[list[Pair], int]:
    """The Ritz vector x and the search direction p orthonormalised against ``kept`` (and each other), with
    their images; also the position of (the part of) x outside span(kept) in kept + local (-1: none)."""
    local: list[Pair] = []
    x_idx = -1
    for j, (u, hu) in enumerate(((x, Hx), (p, Hp))):
        if u is None:
            continue
        n0 = float(u.norm())
        u, hu = orth_against(u, hu, kept + local)
        nu = float(u.norm())
        if nu > drop * max(n0, 1e-300):
            if j == 0:
                x_idx = len(kept)
            local.append((u / nu, hu / nu))
    return local, x_idx


def _ritz_update(basis: list[Pair], x_idx: int, dtype: torch.dtype):
    """(x, Hx, p, Hp) from the top Ritz vector of span(basis), normalised; LOBPCG's p is the new Ritz vector
    without its component along the old x. None when the basis is numerically dependent."""
    try:
        c, _, _ = rayleigh_ritz(basis)
    except RuntimeError:
        return None
    c = c.to(dtype)
    x_new = sum(ci * u for ci, (u, _) in zip(c, basis))
    Hx_new = sum(ci * hu for ci, (_, hu) in zip(c, basis))
    p = sum(ci * u for j, (ci, (u, _)) in enumerate(zip(c, basis)) if j != x_idx)
    Hp = sum(ci * hu for j, (ci, (_, hu)) in enumerate(zip(c, basis)) if j != x_idx)
    nrm = x_new.norm()
    return x_new / nrm, Hx_new / nrm, p / nrm, Hp / nrm


def random_unit(dim: int, *, dtype: torch.dtype, device, generator: torch.Generator | None = None) -> Tensor:
    """A random unit vector, drawn on the CPU from ``generator`` (never the global RNG when one is given)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    v = torch.randn(dim, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / v.norm()


def top_eigenvalue_op(
    op: LossOperator,
    *,
    tol: float = 1e-3,
    init: Tensor | Params | None = None,
    max_hvps: int = 60,
    generator: torch.Generator | None = None,
    with_grad: bool = True,
) -> TopEig:
    """:func:`top_eigenvalue` on an existing :class:`LossOperator`."""
    if isinstance(init, dict):
        init = op.space.flatten(init)
    if init is None or not torch.isfinite(init).all() or float(init.norm()) == 0.0:
        x0 = random_unit(op.space.dim, dtype=op.dtype, device=op.device, generator=generator)
    else:
        x0 = init.detach().to(op.device, op.dtype).reshape(-1)
        if x0.numel() != op.space.dim:
            raise LssrError(f"top_eigenvalue: init has {x0.numel()} entries, the model has {op.space.dim} parameters")
    first = (lambda v: op.hvp(v, return_grad=True)) if with_grad else None
    return lobpcg_top(op.hvp, x0, tol=tol, max_matvecs=max_hvps, first=first)


def top_eigenvalue(
    model: nn.Module,
    loss_fn: Callable,
    inputs: Tensor,
    targets: Tensor,
    *,
    tol: float = 1e-3,
    init: Tensor | Params | None = None,
    max_hvps: int = 60,
    chunk_size: int = 512,
    generator: torch.Generator | None = None,
) -> TopEig:
    """‖H‖, the largest (algebraic) eigenvalue of the full training-loss Hessian H = ∇²L(θ).

    LOBPCG with block size 1 (:func:`lobpcg_top`) on forward-over-reverse HVPs over the whole training
    set (in memory chunks of ``chunk_size``), warm-startable from ``init`` (e.g. the previous step's
    ``vector``), stopped when ‖Hx − λx‖ ≤ tol·|λ| or after ``max_hvps`` HVPs. A cold start draws a random
    unit vector from ``generator`` (a fixed seed when None). Returns ``TopEig(value, vector, hvp_count,
    residual, converged, hvector, grad, subspace, history)``.
    """
    op = LossOperator(model, loss_fn, inputs, targets, chunk_size=chunk_size, where="top_eigenvalue")
    return top_eigenvalue_op(op, tol=tol, init=init, max_hvps=max_hvps, generator=generator)
