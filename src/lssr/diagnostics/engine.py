"""The engine behind :func:`lssr.diagnose`: the samples read once into host memory (:func:`prepare`), the
gradient moments, ‖H‖ and L on a :class:`LossOperator` turned into :class:`.results.Diagnostics`
(:func:`measure`, also the pipeline's per-step probe's), and the unit of the cost, one full gradient
(:func:`gradient_seconds`)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch import nn

from ..curvature import ForwardAdapter, LossOperator
from ..errors import LssrError
from ..losses import PerSampleLoss
from ..scaling import gamma
from .batches import as_pair, collect
from .guards import restoring, unwrap
from .inputs import check_lengths
from .moments import Moments, gradient_moments
from .options import CHUNK, STORE_MB, Eigen, Estimator
from .results import Cost, Diagnostics, scalar_moments
from .uncertainty import with_fd_error

Tensor = torch.Tensor


class Measurement(NamedTuple):
    """:func:`measure`'s result: the :class:`Diagnostics` and the :class:`.moments.Moments` behind them (∇L,
    H∇L, the batch gradients Σ_i W_ik g_i asked for, the eigen-solver's output)."""

    result: Diagnostics
    moments: Moments


@dataclass(frozen=True)
class Facts:
    """What :func:`measure` records beside the moments: the frozen parameter entries, the loss's reduction, N
    (None: n), the ``fd`` error bound, when and at which operator counts the caller's work began (None: now), and
    the ``fd`` error measured on tr(H S_1)'s own terms (:mod:`.uncertainty`)."""

    m_frozen: int = 0
    reduction: str = "mean"
    n_total: int | None = None
    fd_rel_error: float = math.nan
    started: float | None = None
    counts_before: dict | None = None
    fd_trace: float = 0.0


def measure(
    op: LossOperator,
    *,
    estimator: Estimator = Estimator(),
    eigen: Eigen | None = Eigen(),
    generator: torch.Generator | None = None,
    batch_sizes: Iterable[int] = (),
    replacement: bool = False,
    weights: Tensor | None = None,
    store_mb: float = STORE_MB,
    timing: bool = True,
    jvp_products: bool = False,
    facts: Facts = Facts(),
) -> Measurement:
    """The engine of :func:`diagnose` on a :class:`LossOperator` already built (the pipeline's probe calls it
    with the training set in memory): :func:`.moments.gradient_moments` (``estimator``; ‖H‖ by ``eigen``,
    None: not measured; the sketch's signs and the solver's start from ``generator``), L, and the
    :class:`Diagnostics` they give. ``weights`` (n, k) asks for the batch gradients Σ_i W_ik g_i (in
    ``moments.weighted_grads``); ``timing`` times one more full gradient for ``cost.gradient_equivalents``
    (NaN without it). ``jvp_products``: when the per-sample gradients are not kept, the sketch's per-sample
    products by forward mode instead of more per-sample passes (:func:`.moments.gradient_moments`)."""
    t0 = time.perf_counter() if facts.started is None else facts.started
    bs = tuple(sorted({int(b) for b in batch_sizes}))
    for b in bs:
        gamma(op.n, b, replacement)  # a clear error for b out of range
    counts0 = dict(op.counts if facts.counts_before is None else facts.counts_before)
    eig = Eigen() if eigen is None else eigen
    init = eig.init.eigenvector if isinstance(eig.init, Diagnostics) else eig.init
    mom = gradient_moments(
        op,
        exact=estimator.exact(op.n),
        probes=estimator.probes,
        stage1=estimator.stage1,
        generator=generator,
        top=eigen is not None,
        eig_init=init if eigen is not None else None,
        eig_tol=eig.tol,
        eig_max_hvps=eig.max_hvps,
        weights=weights,
        rel_se=estimator.rel_se,
        store_mb=store_mb,
        jvp_products=jvp_products,
    )
    L = op.loss()
    seconds = time.perf_counter() - t0
    counts = {k: op.counts[k] - counts0[k] for k in op.counts}
    grad_seconds = math.nan
    if timing:
        t1 = time.perf_counter()
        op.gradient()
        grad_seconds = time.perf_counter() - t1
    cost = Cost(
        hvps=counts["hvp"],
        gradients=counts["grad"],
        per_sample_passes=counts["per_sample_pass"],
        loss_passes=counts["loss"],
        seconds=seconds,
        grad_seconds=grad_seconds,
        gradient_equivalents=seconds / grad_seconds if grad_seconds > 0 else math.nan,
        hvp_mode=op.hvp_mode,
        fd_rel_error=facts.fd_rel_error,
        per_sample_mode=op.per_sample_mode,
        graph_builds=counts["graph"],
        jvps=counts["jvp"],
    )
    return Measurement(_diagnostics(op, mom, L, cost, bs, replacement, facts), mom)


def _diagnostics(op: LossOperator, mom: Moments, L: float, cost: Cost, bs, replacement, facts: Facts) -> Diagnostics:
    eig = mom.eig
    vec = None
    if eig is not None:
        vec = eig.vector if float(eig.vector @ mom.grad) >= 0 else -eig.vector
    return Diagnostics(
        moments=dataclasses.replace(
            scalar_moments(mom),
            tr_HS_1_se=with_fd_error(mom.tr_HS_1_se, mom.tr_HS_1, facts.fd_rel_error, facts.fd_trace),
        ),
        m=op.space.dim,
        m_frozen=facts.m_frozen,
        loss=L,
        top_eig=eig.value if eig is not None else math.nan,
        top_eig_residual=eig.residual if eig is not None else math.nan,
        top_eig_hvps=eig.hvp_count if eig is not None else 0,
        ias_n=mom.tr_HS_n / mom.tr_S_n if mom.tr_S_n > 0 else math.nan,
        b_simple=(mom.tr_S_1 - mom.tr_S_n) / mom.tr_S_n if mom.tr_S_n > 0 else math.nan,
        batch_sizes=bs,
        replacement=bool(replacement),
        reduction=facts.reduction,
        n_total=op.n if facts.n_total is None else facts.n_total,
        cost=cost,
        eigenvector=vec,
    )


@dataclass(frozen=True)
class Prepared:
    """The model, the per-sample loss and the samples of one :func:`diagnose` call, read into host memory."""

    model: nn.Module
    loss_fn: PerSampleLoss
    module: nn.Module
    inputs: Any
    targets: Any
    n_total: int
    n_used: int
    frozen: int
    dtype: torch.dtype
    device_type: str

    def operator(
        self, chunk_size: int = CHUNK, per_sample_chunk: int | None = None, batch_stats: bool = False
    ) -> LossOperator:
        """The :class:`LossOperator` of L = (1/n) Σ ℓ_i on these samples (call it under the bn / dropout policy);
        ``batch_stats``: each chunk of ``chunk_size`` samples is one batch, batch norm in train mode normalising it
        with its own statistics (under the ``bn="batch"`` policy)."""
        return LossOperator(
            self.module,
            self.loss_fn,
            self.inputs,
            self.targets,
            chunk_size=chunk_size,
            per_sample_chunk=per_sample_chunk,
            where="diagnose",
            stream=True,
            dtype=self.dtype,
            batch_stats=batch_stats,
        )


def prepare(
    model: nn.Module,
    loss: str | Callable | nn.Module,
    data: Any,
    *,
    n: int | None = None,
    seed: int = 0,
    forward: Callable | None = None,
    chunk_size: int = CHUNK,
    dtype: torch.dtype | None = None,
) -> Prepared:
    """Checks and reads what :func:`diagnose` measures on (its arguments of the same names; ``chunk_size`` and
    ``dtype`` as in :class:`.options.Compute`)."""
    model = unwrap(model)
    if not isinstance(model, nn.Module):
        raise LssrError(f"diagnose: model must be a torch.nn.Module, got {type(model).__name__}")
    loss_fn = PerSampleLoss(loss, where="diagnose")
    check_lengths(data, forward)
    batch, n_total = collect(data, n=n, seed=seed, chunk=chunk_size)
    if forward is None:
        pair = as_pair(batch)
        if pair is None:
            raise LssrError(
                "diagnose: batches are not (inputs, targets) pairs; fix: pass forward=lambda model, batch: "
                "(model(batch['x']), batch['y']) (naming your batch's keys)"
            )
        check_lengths(pair)
        module, inputs, targets = model, pair[0], pair[1]
    else:
        module, inputs, targets = ForwardAdapter(model, forward), batch, None
    params = [p for p in model.parameters()]
    if not params:
        raise LssrError("diagnose: the model has no parameters")
    if dtype is None:
        dt = params[0].dtype
        dtype = torch.float32 if dt in (torch.float16, torch.bfloat16) else dt
    return Prepared(
        model=model,
        loss_fn=loss_fn,
        module=module,
        inputs=inputs,
        targets=targets,
        n_total=n_total,
        n_used=int(next(t for t in torch.utils._pytree.tree_leaves(batch) if isinstance(t, Tensor)).shape[0]),
        frozen=sum(p.numel() for p in params if not p.requires_grad),
        dtype=dtype,
        device_type=params[0].device.type,
    )


def gradient_seconds(
    model: nn.Module,
    loss: str | Callable | nn.Module,
    data: Any,
    *,
    forward: Callable | None = None,
    bn: str = "refuse",
    dropout: str = "refuse",
    chunk_size: int = CHUNK,
    dtype: torch.dtype | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The wall seconds (by ``clock``) of reading ``data`` and computing one full gradient ∇L on it as
    :func:`diagnose` does (same arguments), under the same guard: modes, ``.grad``, buffers and the global
    random states are as before. The unit of ``Cost.gradient_equivalents``."""
    t0 = clock()
    prep = prepare(model, loss, data, forward=forward, chunk_size=chunk_size, dtype=dtype)
    with restoring(prep.model, bn, dropout), torch.autocast(prep.device_type, enabled=False):
        prep.operator(chunk_size=chunk_size).gradient()
    return clock() - t0
