"""``lssr.diagnose(..., bn="batch")``: the diagnostics of the loss SGD descends with batch norm in train mode.

With batch norm in train mode a batch B of b samples is normalised with its own statistics, so its loss
ℓ(θ; B) (the mean per-sample loss of the forward pass of B) is not a mean of per-sample losses, and a training
loop descends L_b(θ) = E_B ℓ(θ; B), B a uniformly random set of b distinct samples of the n given. With
g_B = ∇ℓ(θ; B), S_b = E[g_B g_Bᵀ] and H = ∇²L_b:

- tr S_b = E‖g_B‖²: the mean over K independently drawn batches (``Estimator.batches``);
- tr S_n = ‖∇L_b‖²: the U-statistic Σ_{j≠k} g_jᵀg_k / (K(K−1)) over the same K batch gradients;
- tr(H S_b) = E[g_Bᵀ H g_B]: the K batches are dealt round-robin into P ≤ ``Estimator.probes`` groups G_s
  (P = K, one batch a group, when ``Estimator.exact(K)``), and each group gives one random-sign sketch
  v_s = Σ_{k∈G_s} z_k g_k / √|G_s| and the form v_sᵀ H_s v_s, with H_s the Hessian of the mean of ℓ over its own
  seeded random partition of the n samples into ⌊n/b⌋ batches (n − ⌊n/b⌋·b remainder samples left out of it).
  Each batch of a partition is marginally a uniform b-subset, so E[H_s] = H, and E[v_sᵀ H_s v_s] =
  E[g_Bᵀ H g_B]: the P forms are independent and unbiased, and their spread gives a standard error that counts
  the batch draws, the signs and the partitions;
- ‖H‖: the top eigenvalue of the first partition loss's Hessian H_1 by LOBPCG (λ_max is convex, so
  E λ_max(H_1) ≥ λ_max(H): a partition of few batches reads high); with ``Eigen(heldout=k)`` also its eigenvector
  u's Rayleigh quotient on k independent random batches (:func:`heldout_quotient`), unbiased for uᵀHu ≤ λ_max(H):
  the two bracket ‖H‖ on average;
- ρ_b = tr S_n/tr S_b, ‖H‖_{S_b} = tr(H S_b)/tr S_b, the instability ratio tr(H S_b)/tr S_n, and what identity (1)
  with replacement implies: tr S_1 := tr S_n + b(tr S_b − tr S_n) and B_simple := b(tr S_b − tr S_n)/tr S_n
  (McCandlish et al.'s B_simple from batches of b). With batch norm in train mode a sample has no loss of its
  own, so no per-sample S_1 exists: these two are what a per-sample model with the same S_b would have.

Every standard error is the delete-a-group jackknife over the P groups (each group's batches and sketch left
out in turn), which for the ratios is the delta method with the covariance of numerator and denominator.
NaN: tr(H S_1), which only per-sample gradients define (identity (1) would give it from tr(H S_n)), and
tr(H S_n) = ∇L_bᵀ H ∇L_b and ‖H‖_{S_n}, which this route does not measure. The pure functions are
:func:`draw_batches`, :func:`draw_partition`, :func:`group_estimates`; :func:`batch_diagnose` is the thin
wrapper that :func:`lssr.diagnose` routes ``bn="batch"`` to.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Iterable

import pandas as pd
import torch
from torch import nn

from ..curvature import LossOperator, choose_hvp_mode, fd_tune, memory_budget, top_eigenvalue_op
from ..errors import LssrError
from .guards import check_deterministic, restoring, train_mode_bn
from .inputs import check_finite, check_loss_shape
from .moments import FRAME_COLUMNS, Moments
from .options import STORE_MB, Compute, Eigen, Estimator
from .results import AtB, Cost, Diagnostics

Tensor = torch.Tensor

#: The quantities :func:`group_estimates` returns (each with a ``_se``).
QUANTITIES = ("tr_S_b", "tr_S_n", "tr_HS_b", "tr_S_1", "b_simple", "rho_b", "ias_b", "instability_b")


def check_batch_call(model: nn.Module, batch_sizes: Iterable[int], n: int, replacement: bool) -> int:
    """The b of a ``bn="batch"`` call, after refusing what it cannot measure (one-line :class:`LssrError`)."""
    bs = tuple(sorted({int(b) for b in batch_sizes}))
    if len(bs) != 1:
        raise LssrError(
            f"diagnose: bn='batch' measures the loss of one batch size b, got batch_sizes={list(bs)}; fix: "
            f"batch_sizes=[b] with the b of your training loop"
        )
    b = bs[0]
    if b < 2 or b > n:
        raise LssrError(
            f"diagnose: bn='batch' needs 2 <= b <= n = {n} (batch norm over one sample is undefined), got "
            f"batch_sizes=[{b}]; fix: a batch size in that range"
        )
    if replacement:
        raise LssrError(
            "diagnose: bn='batch' draws batches of b distinct samples, so replacement=True does not apply; fix: "
            "replacement=False (the default)"
        )
    if not train_mode_bn(model):
        raise LssrError(
            "diagnose: bn='batch' but the model has no batch norm in train mode, so a batch's loss is the mean of "
            "per-sample losses; fix: bn='refuse' (the default) for the per-sample diagnostics"
        )
    return b


def draw_batches(n: int, b: int, k: int, generator: torch.Generator) -> Tensor:
    """(k, b) sample indices: k independent uniformly random sets of b distinct samples of n."""
    return torch.stack([torch.randperm(n, generator=generator)[:b] for _ in range(k)])


def draw_partition(n: int, b: int, generator: torch.Generator) -> Tensor:
    """⌊n/b⌋·b sample indices: a uniformly random partition of n samples into ⌊n/b⌋ consecutive batches of b
    (the n − ⌊n/b⌋·b samples left over are not used); each batch is marginally a uniform b-subset."""
    return torch.randperm(n, generator=generator)[: (n // b) * b]


def _values(sizes: Tensor, sq: Tensor, gram: Tensor, quad: Tensor, b: int) -> dict:
    """The :data:`QUANTITIES` from per-group sums: batches |G_s|, Σ‖g_k‖², the Gram matrix of the group sums
    A_s = Σ_{k∈G_s} g_k and the sketch forms v_sᵀ H_s v_s."""
    K, Q = float(sizes.sum()), float(sq.sum())
    tr_S_b = Q / K
    tr_S_n = (float(gram.sum()) - Q) / (K * (K - 1))
    tr_HS_b = float(quad.mean())
    ratio = lambda a, c: a / c if c != 0 else math.nan  # noqa: E731
    return {
        "tr_S_b": tr_S_b,
        "tr_S_n": tr_S_n,
        "tr_HS_b": tr_HS_b,
        "tr_S_1": tr_S_n + b * (tr_S_b - tr_S_n),
        "b_simple": ratio(b * (tr_S_b - tr_S_n), tr_S_n),
        "rho_b": ratio(tr_S_n, tr_S_b),
        "ias_b": ratio(tr_HS_b, tr_S_b),
        "instability_b": ratio(tr_HS_b, tr_S_n),
    }


def group_estimates(sizes: Tensor, sq: Tensor, gram: Tensor, quad: Tensor, b: int) -> dict:
    """Each of :data:`QUANTITIES` and its ``_se``, the delete-a-group jackknife over the P ≥ 2 groups (see
    :func:`_values` for the arguments, all float64)."""
    P = sizes.shape[0]
    full = _values(sizes, sq, gram, quad, b)
    loo = []
    for s in range(P):
        keep = torch.arange(P) != s
        loo.append(_values(sizes[keep], sq[keep], gram[keep][:, keep], quad[keep], b))
    out = {}
    for name, value in full.items():
        x = torch.tensor([d[name] for d in loo], dtype=torch.float64)
        out[name] = value
        out[f"{name}_se"] = math.sqrt((P - 1) / P * float(((x - x.mean()) ** 2).sum()))
    return out


@dataclass(frozen=True)
class BatchMoments:
    """What ``bn="batch"`` measured at one b (the module docstring): ``estimates`` (:func:`group_estimates`),
    K batches, P sketches (groups), the samples a partition leaves out."""

    b: int
    batches: int
    sketches: int
    unused: int
    estimates: dict
    #: ‖H‖'s eigenvector u scored on ``heldout`` independent batches (``Eigen(heldout=...)``): the mean of uᵀH_Bu
    #: and its standard error (NaN and 0 when not measured)
    top_eig_heldout: float = math.nan
    top_eig_heldout_se: float = math.nan
    heldout: int = 0

    def at(self, b: int) -> AtB:
        """The measured :class:`AtB` (b must be the measured one)."""
        if int(b) != self.b:
            raise LssrError(f"batch size {b}: bn='batch' measured b = {self.b} only; fix: diagnose again with [{b}]")
        e = self.estimates
        return AtB(b=self.b, replacement=False, **{k: e[k] for k in AtB.__dataclass_fields__ if k in e})

    def frame(self) -> pd.DataFrame:
        """One row: the columns of :data:`.moments.FRAME_COLUMNS` with ``_se`` (tr(H S_1), tr(H S_n) NaN)."""
        row = {**asdict(self.at(self.b)), **self.estimates, "tr_HS_1": math.nan, "tr_HS_n": math.nan}
        row.update(tr_HS_1_se=math.nan, tr_HS_n_se=math.nan)
        cols = []
        for c in FRAME_COLUMNS:
            cols += [c] if c == "b" else [c, f"{c}_se"]
        return pd.DataFrame([row], columns=cols)

    def scalars(self) -> dict:
        """The standard errors of tr S_1, tr S_n and B_simple, K, P, the unused samples and ‖H‖'s held-out
        quotient with its standard error."""
        e = self.estimates
        out = {f"{k}_se": e[f"{k}_se"] for k in ("tr_S_1", "tr_S_n", "b_simple")}
        out |= {"batches": self.batches, "sketches": self.sketches, "partition_unused": self.unused}
        return out | {"top_eig_heldout": self.top_eig_heldout, "top_eig_heldout_se": self.top_eig_heldout_se}


@contextmanager
def _bn_eval(model: nn.Module):
    """Batch norm in eval mode for the duration (the loss's shape check, which scores a single sample)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    try:
        for m in bns:
            m.eval()
        yield
    finally:
        for m in bns:
            m.train()


def _operator(prep, index: Tensor, b: int) -> LossOperator:
    """The :class:`LossOperator` of the samples ``index`` in that order, in chunks of b (one batch each)."""
    pick = lambda t: t[index] if isinstance(t, Tensor) else t  # noqa: E731
    x = torch.utils._pytree.tree_map(pick, prep.inputs)
    y = None if prep.targets is None else prep.targets[index]
    return replace(prep, inputs=x, targets=y).operator(chunk_size=b, batch_stats=True)


def _batch_gradients(op: LossOperator, batches: Tensor, groups: int, gen: torch.Generator):
    """Per group s of the batches dealt round-robin: (|G_s|, Σ‖g_k‖², A_s = Σ g_k, v_s = Σ z_k g_k/√|G_s|), the
    g_k the gradients of ℓ(θ; B_k) (one forward/backward of b samples each) and z_k random signs."""
    K, b = batches.shape
    z = torch.randint(0, 2, (K,), generator=gen).double().mul_(2).sub_(1)
    sizes = torch.zeros(groups, dtype=torch.float64)
    sq = torch.zeros(groups, dtype=torch.float64)
    A, V = op.space.zeros(groups), op.space.zeros(groups)
    for k in range(K):
        s = k % groups
        g = op.space.flatten(op._grad(op.params, op.buffers, *op.take(batches[k]))) / b
        sizes[s] += 1
        sq[s] += float(g.double() @ g.double())
        A[s] += g
        V[s] += float(z[k]) * g
    V /= sizes.sqrt().to(V.device, V.dtype).unsqueeze(1)
    return sizes, sq, A, V


def _sketch_forms(prep, V: Tensor, b: int, comp: Compute, gen: torch.Generator):
    """v_sᵀ H_s v_s with H_s the Hessian of its own random partition's loss, one partition's operator alive at a
    time (a kept graph of ∇L is as large as the partition's activations); the first partition (its index), the
    HVP mode chosen on it (the others use the same), its finite-difference step, the fd error bound (NaN unless
    ``fd``) and the operators' summed counts."""
    quad = torch.zeros(V.shape[0], dtype=torch.float64)
    first, fd_err, fd_step, mode, counts = None, math.nan, None, comp.hvp_mode, {}
    for s in range(V.shape[0]):
        index = draw_partition(prep.n_used, b, gen)
        op = _operator(prep, index, b)
        if first is None:
            with _bn_eval(prep.model):
                check_loss_shape(op)
            check_finite(op)
            check_deterministic(op)
            mode = choose_hvp_mode(op, comp.hvp_mode, memory_budget(op.device, STORE_MB))
            fd_err = fd_tune(op, gen, b) if mode == "fd" else math.nan
            first, fd_step = index, op.fd_step
        elif mode != op.hvp_mode:
            op.set_hvp_mode(mode, "diagnose", graph_budget=memory_budget(op.device, STORE_MB))
            op.fd_step = fd_step
        quad[s] = float(V[s].double() @ op.hvp(V[s]).detach().double())
        counts = {k: counts.get(k, 0) + v for k, v in op.counts.items()}
        del op  # its kept graph, if any, before the next partition's
    return quad, (first, mode, fd_step, counts), fd_err


def _operator_in(prep, index: Tensor, b: int, mode: str, fd_step: float) -> LossOperator:
    """:func:`_operator` in the HVP mode and finite-difference step chosen on the first partition."""
    op = _operator(prep, index, b)
    if mode != op.hvp_mode:
        op.set_hvp_mode(mode, "diagnose", graph_budget=memory_budget(op.device, STORE_MB))
    op.fd_step = fd_step
    return op


def _first_operator(prep, b: int, first: tuple) -> LossOperator:
    """The first partition's operator again (for ‖H‖, L and the timed gradient), in the chosen HVP mode, its
    counts those of every partition so far."""
    index, mode, fd_step, counts = first
    op = _operator_in(prep, index, b, mode, fd_step)
    for k, v in counts.items():
        op.counts[k] += v
    return op


def heldout_quotient(prep, first: LossOperator, u: Tensor, b: int, k: int, gen: torch.Generator) -> tuple[float, float]:
    """(mean, se) of uᵀH_Bu/‖u‖² over k independent random batches B of b samples (:func:`draw_batches`), each
    normalised with its own statistics, in the HVP mode of ``first`` (whose counts they join): the mean is unbiased
    for the Rayleigh quotient of u under ∇²L_b, a lower bound of ‖∇²L_b‖; se = sd/√k (NaN for k = 1)."""
    u = u / u.norm()
    q = []
    for index in draw_batches(prep.n_used, b, k, gen):
        op = _operator_in(prep, index, b, first.hvp_mode, first.fd_step)
        q.append(float(u.double() @ op.hvp(u.to(op.dtype)).detach().double()))
        for key, v in op.counts.items():
            first.counts[key] += v
        del op
    v = torch.tensor(q, dtype=torch.float64)
    return float(v.mean()), float(v.std() / math.sqrt(k)) if k > 1 else math.nan


def batch_diagnose(prep, b: int, est: Estimator, eig: Eigen | None, comp: Compute, seed: int, dropout: str):
    """:func:`lssr.diagnose` with ``bn="batch"`` on the samples ``prep`` (:func:`.engine.prepare`) at batch
    size b: the module docstring's quantities in a :class:`Diagnostics` (``batch`` holds the measured b; its
    ``loss`` is the first partition's mean of ℓ(θ; B), an unbiased estimate of L_b)."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    K = est.batches
    P = K if est.exact(K) else min(est.probes, K)
    with restoring(prep.model, "batch", dropout):
        with torch.autocast(prep.device_type, enabled=False):
            op_all = _operator(prep, torch.arange(prep.n_used), b)
            batches = draw_batches(prep.n_used, b, K, gen)
            sizes, sq, A, V = _batch_gradients(op_all, batches, P, gen)
            quad, first, fd_err = _sketch_forms(prep, V, b, comp, gen)
            op = _first_operator(prep, b, first)
            gram = (A.double() @ A.double().T).cpu()
            est_ = group_estimates(sizes, sq, gram, quad, b)
            top = None
            if eig is not None:
                init = eig.init.eigenvector if isinstance(eig.init, Diagnostics) else eig.init
                top = top_eigenvalue_op(
                    op, tol=eig.tol, init=init, max_hvps=eig.max_hvps, generator=gen, with_grad=False
                )
            held = (math.nan, math.nan)
            if top is not None and eig.heldout:
                held = heldout_quotient(prep, op, top.vector, b, eig.heldout, gen)
            loss = op.loss()
            seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            op.gradient()
            grad_seconds = time.perf_counter() - t1
    bm = BatchMoments(b=b, batches=K, sketches=P, unused=prep.n_used - op.n, estimates=est_)
    if eig is not None and eig.heldout:
        bm = replace(bm, top_eig_heldout=held[0], top_eig_heldout_se=held[1], heldout=eig.heldout)
    cost = _cost(op, K * b / prep.n_used, seconds, grad_seconds, fd_err)
    return _result(prep, bm, top, A.sum(0) / K, loss, cost)


def _cost(op: LossOperator, batch_grads: float, seconds: float, grad_seconds: float, fd_err: float) -> Cost:
    """The :class:`Cost`: HVPs and loss passes over ⌊n/b⌋·b samples, ``gradients`` the K batch gradients in
    units of a full gradient (K·b/n)."""
    c = op.counts
    return Cost(
        hvps=c["hvp"],
        gradients=batch_grads,
        per_sample_passes=0,
        loss_passes=c["loss"],
        seconds=seconds,
        grad_seconds=grad_seconds,
        gradient_equivalents=seconds / grad_seconds if grad_seconds > 0 else math.nan,
        hvp_mode=op.hvp_mode,
        fd_rel_error=fd_err,
        per_sample_mode="none",
        graph_builds=c["graph"],
    )


def _result(prep, bm: BatchMoments, top, grad: Tensor, loss: float, cost: Cost) -> Diagnostics:
    e, nan = bm.estimates, math.nan
    empty = torch.zeros(0, dtype=torch.float64)
    mom = Moments(prep.n_used, e["tr_S_1"], e["tr_S_n"], nan, nan, nan, empty, empty, "batch", probes=bm.sketches)
    vec = None
    if top is not None:
        vec = top.vector if float(top.vector @ grad.to(top.vector)) >= 0 else -top.vector
    return Diagnostics(
        moments=mom,
        m=int(grad.numel()),
        m_frozen=prep.frozen,
        loss=loss,
        top_eig=top.value if top is not None else nan,
        top_eig_residual=top.residual if top is not None else nan,
        top_eig_hvps=top.hvp_count if top is not None else 0,
        ias_n=nan,
        b_simple=e["b_simple"],
        batch_sizes=(bm.b,),
        replacement=False,
        reduction=prep.loss_fn.reduction,
        n_total=prep.n_total,
        cost=cost,
        eigenvector=vec,
        batch=bm,
    )
