"""Curvature primitives of the full training loss L(θ) = (1/n) Σ_i ℓ_i(θ), built on ``torch.func``.

Notation (the paper's): θ ∈ R^m the parameters, g_i = ∇ℓ_i(θ) the per-sample gradients,
∇L = (1/n) Σ_i g_i, H = ∇²L the Hessian of the *full* training loss, ‖H‖ its largest eigenvalue.

Design
------
- Pure functions of ``(params, buffers, x, y)`` made from a module with
  :func:`torch.func.functional_call` (:func:`loss_sum_fn`, :func:`hvp_fn`, :func:`per_sample_grads_fn`,
  :func:`per_sample_jvp_fn`), and one thin wrapper, :class:`LossOperator`, that binds a model, a loss
  and a training set and works on flat parameter vectors (length m).
- Device and dtype come from the parameters (a float64 model gives float64 results; inputs are cast
  to the parameter dtype). Nothing here calls ``.cuda()``.
- Memory chunking is separate from any SGD batch size: a full-loss quantity is accumulated as
  Σ_chunks Σ_{i∈chunk} (...) and divided by n once.
- Hessian-vector products are forward-over-reverse (``jvp`` of ``grad``); several vectors at once go
  through ``vmap`` over the tangents (the primal forward/backward is then shared).
- The parameters are never modified and batch-norm running statistics are never updated: the
  functional calls use detached parameter tensors and refuse a model whose batch-norm layers are in
  train mode (:class:`BatchNormModeError`; the fix for a run is ``bn_mode: eval``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from . import LssrError

Tensor = torch.Tensor
Params = dict[str, Tensor]


class BatchNormModeError(LssrError):
    """A Hessian / per-sample-gradient measurement was asked of a model with batch norm in train mode."""


BN_FIX = (
    "set `bn_mode: eval` in the run config (the diagnostics then evaluate the model in eval mode, with "
    "its running statistics, so that per-sample losses and the Hessian of L are well defined), or call "
    "model.eval() before using lssr.curvature directly"
)


def batch_norm_in_train_mode(model: nn.Module) -> bool:
    """True when some batch-norm layer of ``model`` is in train mode (batch statistics)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def check_functional_mode(model: nn.Module, where: str = "lssr.curvature") -> None:
    """Refuse train-mode batch norm: ℓ_i would depend on the other samples of the chunk, and a
    functional call would update the running statistics."""
    if batch_norm_in_train_mode(model):
        raise BatchNormModeError(
            f"{where}: the model has batch-norm layers in train mode, so per-sample losses ℓ_i and the "
            f"Hessian of L are not defined (they depend on the batch); fix: {BN_FIX}"
        )


def per_sample_loss_of(loss_fn: Callable) -> Callable[[Tensor, Tensor], Tensor]:
    """The per-sample loss ℓ_i of a mean-reduced ``loss_fn``: its ``.per_sample`` attribute when
    present (``lssr.losses.get_loss``), else ``loss_fn`` applied to one sample at a time (slow; a fallback)."""
    ps = getattr(loss_fn, "per_sample", None)
    if ps is not None:
        return ps

    def per_sample(outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.stack([loss_fn(outputs[i : i + 1], targets[i : i + 1]) for i in range(outputs.shape[0])])

    return per_sample


def split_state(model: nn.Module) -> tuple[Params, Params]:
    """(trainable parameters, everything else: buffers and frozen parameters), all detached."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    others = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    others.update({k: v.detach() for k, v in model.named_buffers()})
    return params, others


# ---------------------------------------------------------------------------------------------
# Pure torch.func functions of (params, buffers, x, y)
# ---------------------------------------------------------------------------------------------


def per_sample_losses_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """f(params, buffers, x, y) -> (ℓ_i)_i for the samples of one chunk."""

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor) -> Tensor:
        return per_sample(functional_call(model, (params, buffers), (x,)), y)

    return f


def loss_sum_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """f(params, buffers, x, y) -> Σ_{i ∈ chunk} ℓ_i (a sum, so chunks add up; divide by n once)."""
    losses = per_sample_losses_fn(model, per_sample)

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor) -> Tensor:
        return losses(params, buffers, x, y).sum()

    return f


def hvp_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """f(params, buffers, x, y, v) -> (Σ_chunk ∇ℓ_i, Σ_chunk ∇²ℓ_i v): forward-over-reverse, i.e.
    ``jvp`` of ``grad``; the gradient comes for free as the primal output."""
    g = grad(loss_sum_fn(model, per_sample))

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor, v: Params) -> tuple[Params, Params]:
        return jvp(lambda p: g(p, buffers, x, y), (params,), (v,))

    return f


def hvp_many_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """f(params, buffers, x, y, V) -> Σ_chunk ∇²ℓ_i V for a batch of tangents (leading dim k), via ``vmap``."""
    single = hvp_fn(model, per_sample)

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor, V: Params) -> Params:
        return vmap(lambda v: single(params, buffers, x, y, v)[1])(V)

    return f


def per_sample_grads_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """f(params, buffers, x, y) -> {name: (chunk, *shape)}: g_i for every sample of the chunk (vmap of grad).

    Only the inputs are vmapped: sample i's output is scored against the whole (unbatched) target
    chunk and the i-th loss is picked with a one-hot weight, so losses that inspect target values
    (``F.one_hot`` in MSE) work under ``vmap``."""

    def one(params: Params, buffers: Params, x: Tensor, e: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        losses = per_sample(out.expand(y.shape[0], *out.shape[1:]), y)
        return (losses * e).sum()

    g = vmap(grad(one), in_dims=(None, None, 0, 0, None))

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor) -> Params:
        eye = torch.eye(x.shape[0], dtype=next(iter(params.values())).dtype, device=x.device)
        return g(params, buffers, x, eye, y)

    return f


def per_sample_jvp_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """f(params, buffers, x, y, U) -> (k, chunk) directional derivatives g_iᵀu_j of every per-sample
    loss along every tangent u_j (leading dim k): one forward-mode pass per tangent, vmapped."""
    losses = per_sample_losses_fn(model, per_sample)

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor, U: Params) -> Tensor:
        return vmap(lambda u: jvp(lambda p: losses(p, buffers, x, y), (params,), (u,))[1])(U)

    return f


# ---------------------------------------------------------------------------------------------
# Flat parameter vectors
# ---------------------------------------------------------------------------------------------


class ParamSpace:
    """Maps a parameter dict to flat vectors of length m and back (also batched: (k, m))."""

    def __init__(self, params: Params):
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.numels = [params[k].numel() for k in self.names]
        self.dim = int(sum(self.numels))
        first = next(iter(params.values()))
        self.dtype, self.device = first.dtype, first.device

    def flatten(self, d: Params) -> Tensor:
        return torch.cat([d[k].reshape(-1) for k in self.names])

    def flatten_batched(self, d: Params) -> Tensor:
        k = d[self.names[0]].shape[0]
        return torch.cat([d[name].reshape(k, -1) for name in self.names], dim=1)

    def unflatten(self, v: Tensor) -> Params:
        lead = v.shape[:-1]
        parts = v.split(self.numels, dim=-1)
        return {k: p.reshape(*lead, *s) for k, p, s in zip(self.names, parts, self.shapes)}

    def zeros(self, *lead: int) -> Tensor:
        return torch.zeros(*lead, self.dim, dtype=self.dtype, device=self.device)


# ---------------------------------------------------------------------------------------------
# The operator: model + loss + training set
# ---------------------------------------------------------------------------------------------


class LossOperator:
    """The training loss L, its gradient, its Hessian H and per-sample gradients at θ, on flat vectors.

    Counts what it evaluates (``counts``: full-data gradients, HVPs, loss passes, per-sample passes,
    per-sample JVP directions), in units of full passes over the n samples.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        inputs: Tensor,
        targets: Tensor,
        *,
        chunk_size: int = 512,
        per_sample_chunk: int | None = None,
        params: Tensor | None = None,
        vmap_budget: int = 1024,
        where: str = "lssr.curvature",
    ):
        check_functional_mode(model, where)
        self.model = model
        self.loss_fn = loss_fn
        self.per_sample = per_sample_loss_of(loss_fn)
        p, self.buffers = split_state(model)
        if not p:
            raise LssrError(f"{where}: the model has no trainable parameters")
        self.space = ParamSpace(p)
        self.dtype, self.device = self.space.dtype, self.space.device
        self.theta = self.space.flatten(p) if params is None else params.to(self.device, self.dtype)
        self.params = self.space.unflatten(self.theta)
        x = inputs.to(self.device)
        self.x = x.to(self.dtype) if x.is_floating_point() else x
        self.y = targets.to(self.device)
        self.n = int(self.x.shape[0])
        if self.n < 1 or self.y.shape[0] != self.n:
            raise LssrError(f"{where}: need n >= 1 inputs and as many targets, got {self.n} and {self.y.shape[0]}")
        self.chunk_size = int(chunk_size)
        self.per_sample_chunk = int(per_sample_chunk or min(self.chunk_size, 64))
        self.vmap_budget = max(int(vmap_budget), 1)  # samples × tangents per vmapped call (bounds memory)
        self.default_hvp_batch = 8 if self.device.type == "cuda" else 1
        self._losses = per_sample_losses_fn(model, self.per_sample)
        self._grad = grad(loss_sum_fn(model, self.per_sample))
        self._hvp = hvp_fn(model, self.per_sample)
        self._hvp_many = hvp_many_fn(model, self.per_sample)
        self._psg = per_sample_grads_fn(model, self.per_sample)
        self._psjvp = per_sample_jvp_fn(model, self.per_sample)
        self.counts = {"grad": 0, "hvp": 0, "loss": 0, "per_sample_pass": 0, "jvp": 0}

    # -- helpers -----------------------------------------------------------------------------
    def at(self, theta: Tensor) -> "LossOperator":
        """The same operator at other parameters θ' (a flat vector); shares data and counters."""
        other = object.__new__(LossOperator)
        other.__dict__.update(self.__dict__)
        other.theta = theta.to(self.device, self.dtype)
        other.params = self.space.unflatten(other.theta)
        return other

    def chunks(self, size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        size = size or self.chunk_size
        for s in range(0, self.n, size):
            yield self.x[s : s + size], self.y[s : s + size]

    def _vmap_chunk(self, k: int) -> int:
        """Data chunk for a call vmapped over k tangents: at most ``vmap_budget`` samples × tangents."""
        return max(1, min(self.chunk_size, self.vmap_budget // max(k, 1)))

    # -- full-data quantities ---------------------------------------------------------------
    @torch.no_grad()
    def losses(self) -> Tensor:
        """(ℓ_i)_i, length n."""
        self.counts["loss"] += 1
        return torch.cat([self._losses(self.params, self.buffers, x, y) for x, y in self.chunks()])

    def loss(self) -> float:
        """L(θ) = (1/n) Σ ℓ_i."""
        return float(self.losses().sum()) / self.n

    def gradient(self) -> Tensor:
        """∇L (flat)."""
        self.counts["grad"] += 1
        total = self.space.zeros()
        for x, y in self.chunks():
            total += self.space.flatten(self._grad(self.params, self.buffers, x, y))
        return total / self.n

    def hvp(self, v: Tensor, return_grad: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """H v (flat); with ``return_grad`` also ∇L, the primal output of the same pass."""
        self.counts["hvp"] += 1
        vt = self.space.unflatten(v.to(self.device, self.dtype))
        g_tot, h_tot = self.space.zeros(), self.space.zeros()
        for x, y in self.chunks():
            g, h = self._hvp(self.params, self.buffers, x, y, vt)
            h_tot += self.space.flatten(h)
            if return_grad:
                g_tot += self.space.flatten(g)
        if return_grad:
            return h_tot / self.n, g_tot / self.n
        return h_tot / self.n

    def hvp_many(self, V: Tensor, batch: int | None = None) -> Tensor:
        """H V for k vectors (rows of V, shape (k, m)), ``batch`` tangents per vmap call (data chunks shrink
        so that samples × tangents ≤ ``vmap_budget``); ``batch`` 1 loops over single HVPs. The default
        (``default_hvp_batch``) is 8 on CUDA and 1 on the CPU, where vmapped tangents measured no faster
        per HVP than single ones on cnn6 (docs/PERFORMANCE.md)."""
        k = V.shape[0]
        if k == 0:
            return V.clone()
        batch = batch or self.default_hvp_batch
        if batch <= 1:
            return torch.stack([self.hvp(v) for v in V])
        out = []
        for s in range(0, k, batch):
            Vb = V[s : s + batch].to(self.device, self.dtype)
            self.counts["hvp"] += Vb.shape[0]
            vt = self.space.unflatten(Vb)
            tot = self.space.zeros(Vb.shape[0])
            for x, y in self.chunks(self._vmap_chunk(Vb.shape[0])):
                tot += self.space.flatten_batched(self._hvp_many(self.params, self.buffers, x, y, vt))
            out.append(tot / self.n)
        return torch.cat(out)

    def hvp_double_backward(self, v: Tensor) -> Tensor:
        """H v by double backward (``autograd.grad`` with ``create_graph=True`` twice); for comparison."""
        self.counts["hvp"] += 1
        vt = self.space.unflatten(v.to(self.device, self.dtype))
        total = self.space.zeros()
        with torch.enable_grad():
            for x, y in self.chunks():
                p = {k: t.detach().requires_grad_(True) for k, t in self.params.items()}
                loss = self.per_sample(functional_call(self.model, (p, self.buffers), (x,)), y).sum()
                gs = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                dot = sum((g * vt[k]).sum() for g, k in zip(gs, p))
                hs = torch.autograd.grad(dot, list(p.values()))
                total += torch.cat([h.reshape(-1) for h in hs])
        return total / self.n

    # -- per-sample quantities --------------------------------------------------------------
    def per_sample_grads(self, chunk: int | None = None) -> Iterator[tuple[slice, Tensor]]:
        """Yield (slice of sample indices, G_c) with G_c of shape (chunk, m): the rows are g_iᵀ."""
        chunk = chunk or self.per_sample_chunk
        self.counts["per_sample_pass"] += 1
        for s in range(0, self.n, chunk):
            sl = slice(s, min(s + chunk, self.n))
            g = self._psg(self.params, self.buffers, self.x[sl], self.y[sl])
            yield sl, self.space.flatten_batched(g).detach()

    def per_sample_jvp(self, U: Tensor) -> Tensor:
        """(n, k) matrix of g_iᵀu_j for the rows u_j of U (k, m): forward mode, no per-sample gradients."""
        self.counts["jvp"] += U.shape[0]
        Ut = self.space.unflatten(U.to(self.device, self.dtype))
        size = self._vmap_chunk(U.shape[0])
        return torch.cat([self._psjvp(self.params, self.buffers, x, y, Ut).T for x, y in self.chunks(size)])


# ---------------------------------------------------------------------------------------------
# Top eigenvalue: LOBPCG (block size 1)
# ---------------------------------------------------------------------------------------------


class TopEig(NamedTuple):
    """Result of :func:`top_eigenvalue` / :func:`lobpcg_top`.

    value: the Ritz value λ (a Rayleigh quotient, so λ ≤ ‖H‖); vector: the unit Ritz vector x (flat);
    hvp_count: products made by the solver; residual: ‖Hx − λx‖/|λ|; converged: residual ≤ tol;
    hvector: H x (maintained by the recurrences); grad: ∇L, the primal output of the first HVP (or None);
    subspace: (V, HV), the last Rayleigh–Ritz basis (orthonormal rows) and its H-images, usable for
    deflation; history: [(products so far, λ, relative residual)] per iteration.
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


def drop_tolerance(dtype: torch.dtype) -> float:
    """Relative norm below which an orthogonalised vector counts as dependent: √eps of the dtype
    (3.5e-4 in float32, 1.5e-8 in float64)."""
    return max(math.sqrt(torch.finfo(dtype).eps), 1e-10)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _orth_against(v: Tensor, hv: Tensor | None, basis: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor | None]:
    """v − Σ (uᵀv) u over an orthonormal basis, twice (classical Gram–Schmidt with re-orthogonalisation);
    the same combination is applied to the image ``hv`` when given."""
    for _ in range(2):
        for u, hu in basis:
            c = _dot(u, v)
            v = v - c * u
            if hv is not None:
                hv = hv - c * hu
    return v, hv


def _rayleigh_ritz(basis: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
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
    residual direction (the basis grows by one vector per product, up to ``max_basis``: an unpreconditioned
    Davidson/Lanczos variant, never worse than LOBPCG's three-term basis).
    """
    history: list = []
    extra = None
    count = 0
    kept: list[tuple[Tensor, Tensor]] = []
    ref = x0 if x0 is not None else subspace[0] if subspace is not None else None
    # a vector that loses more than this share of its norm to orthogonalisation is dropped: its image,
    # formed by the same cancelling combination, would be dominated by rounding errors
    drop = drop_tolerance(ref.dtype) if ref is not None else 1e-6
    if subspace is not None:
        V, HV = subspace
        for v, hv in zip(V, HV):
            n0 = float(v.norm())
            if n0 == 0.0 or not torch.isfinite(v).all() or not torch.isfinite(hv).all():
                continue
            v, hv = _orth_against(v, hv, kept)
            nv = float(v.norm())
            if nv > drop * n0:
                kept.append((v / nv, hv / nv))
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
        xo, hxo = _orth_against(x, Hx, kept)
        if float(xo.norm()) > drop:
            basis.append((xo / xo.norm(), hxo / xo.norm()))
            if keep:
                kept.append(basis[-1])
        c, _, _ = _rayleigh_ritz(basis)
        c = c.to(x.dtype)
        x = sum(ci * u for ci, (u, _) in zip(c, basis))
        Hx = sum(ci * hu for ci, (_, hu) in zip(c, basis))
        nrm = x.norm()
        x, Hx = x / nrm, Hx / nrm
    lam = float(_dot(x, Hx))
    p = Hp = None
    res = math.inf
    last_basis: list[tuple[Tensor, Tensor]] = [(x, Hx)]
    while True:
        r = Hx - lam * x
        res = float(r.norm())
        scale = max(abs(lam), torch.finfo(x.dtype).tiny)
        history.append((count, lam, res / scale))
        if res <= tol * scale or count >= max_matvecs or not math.isfinite(lam):
            break
        local: list[tuple[Tensor, Tensor]] = []
        x_idx = -1  # position of (the part of) x outside span(kept) in the basis, if any
        for j, (u, hu) in enumerate(((x, Hx), (p, Hp))):
            if u is None:
                continue
            n0 = float(u.norm())
            u, hu = _orth_against(u, hu, kept + local)
            nu = float(u.norm())
            if nu > drop * max(n0, 1e-300):
                if j == 0:
                    x_idx = len(kept)
                local.append((u / nu, hu / nu))
        w, _ = _orth_against(r, None, kept + local)
        wn = float(w.norm())
        if not wn > 1e-10 * res:
            break
        w = w / wn
        hw = matvec(w)
        count += 1
        basis = kept + local + [(w, hw)]
        try:
            c, _, _ = _rayleigh_ritz(basis)
        except RuntimeError:  # Gram matrix not positive definite: numerically dependent basis
            break
        c = c.to(x.dtype)
        x_new = sum(ci * u for ci, (u, _) in zip(c, basis))
        Hx_new = sum(ci * hu for ci, (_, hu) in zip(c, basis))
        # LOBPCG's p: the new Ritz vector without its component along the old x
        p = sum(ci * u for j, (ci, (u, _)) in enumerate(zip(c, basis)) if j != x_idx)
        Hp = sum(ci * hu for j, (ci, (_, hu)) in enumerate(zip(c, basis)) if j != x_idx)
        nrm = x_new.norm()
        x, Hx, p, Hp = x_new / nrm, Hx_new / nrm, p / nrm, Hp / nrm
        lam = float(_dot(x, Hx))
        last_basis = basis
        if keep and len(kept) < max_basis:
            kept = kept + local + [(w, hw)]
    ok = res <= tol * max(abs(lam), 1e-300)
    sub = (torch.stack([u for u, _ in last_basis]), torch.stack([hu for _, hu in last_basis]))
    return TopEig(lam, x, count, res / max(abs(lam), 1e-300), ok, Hx, extra, sub, history)


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
