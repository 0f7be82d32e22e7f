"""``lssr.diagnose``: the interaction-aware sharpness diagnostics of any model on any data, in one call.

One pass over the training set (n samples, m trainable parameters) shares the work of
:func:`.moments.gradient_moments`: ‖H‖ (LOBPCG, warm-startable), tr S_1, tr S_n, tr(H S_1) ± se, tr(H S_n)
and the simple noise scale B_simple = (tr S_1 − tr S_n)/tr S_n; every batch size b then follows by
identity (1) (:meth:`.results.Diagnostics.at`). The data is read once into host memory and streamed to the model's
device in chunks; the model is evaluated through ``torch.func`` with detached parameters, and its mode,
``.grad``, buffers and the global random state are as before the call. The options are grouped in
:mod:`.options` (:class:`Estimator`, :class:`Eigen`, :class:`Compute`); the result types are in :mod:`.results`,
the model guards in :mod:`.guards`, the engine in :mod:`.engine`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..curvature import LossOperator, choose_hvp_mode, default_store_mb, fd_tune
from ..curvature import memory_budget as _budget
from ..scaling import gamma
from .batchstats import batch_diagnose, check_batch_call
from .engine import Facts, Measurement, measure, prepare
from .guards import check_deterministic, check_policies, restoring
from .inputs import check_finite, check_loss_shape
from .options import DIAGNOSE_ESTIMATOR, STORE_MB, Compute, Eigen, Estimator, OptionError
from .results import AtB, Cost, Diagnostics
from .uncertainty import fd_trace_error

__all__ = ["AtB", "Compute", "Cost", "Diagnostics", "Eigen", "Estimator", "Measurement", "diagnose", "measure"]


def memory_budget(device: torch.device) -> int:
    """Bytes one structure kept by :func:`diagnose` may take (:func:`lssr.curvature.memory_budget` with the floor
    :data:`.options.STORE_MB`)."""
    return _budget(device, STORE_MB)


def _set_hvp_mode(op: LossOperator, mode: str) -> str:
    """:func:`lssr.curvature.choose_hvp_mode` within :func:`memory_budget`."""
    return choose_hvp_mode(op, mode, memory_budget(op.device))


#: The keywords of earlier versions and where each one is now.
MOVED = {
    "exact": 'estimator="exact" or "sketch"',
    "probes": "estimator=Estimator(probes=...)",
    "stage1": "estimator=Estimator(stage1=...)",
    "rel_se": "estimator=Estimator(rel_se=...)",
    "top": "eigen=False",
    "eig_init": "eigen=Eigen(init=...)",
    "eig_tol": "eigen=Eigen(tol=...)",
    "eig_max_hvps": "eigen=Eigen(max_hvps=...)",
    "chunk_size": "compute=Compute(chunk_size=...)",
    "per_sample_chunk": "compute=Compute(per_sample_chunk=...)",
    "dtype": "compute=Compute(dtype=...)",
    "hvp_mode": "compute=Compute(hvp_mode=...)",
    "store_mb": "compute=Compute(store_mb=...)",
    "generator": "seed= (the one source of the call's randomness)",
}


def check_moved(where: str, given: dict) -> None:
    """Refuses the keywords of earlier versions (:data:`MOVED`) and any other unknown one, naming the new place."""
    for key in given:
        if key in MOVED:
            raise OptionError(f"{where}: {key}= moved: {MOVED[key]}")
        raise OptionError(f"{where}: unknown keyword {key}=; see help(lssr.diagnose)")


def diagnose(
    model: nn.Module,
    loss: str | Callable | nn.Module,
    data: Any,
    *,
    batch_sizes: Iterable[int] = (),
    n: int | None = None,
    seed: int = 0,
    forward: Callable | None = None,
    replacement: bool = False,
    estimator: str | Estimator = DIAGNOSE_ESTIMATOR,
    eigen: bool | Eigen = True,
    compute: Compute | None = None,
    bn: str = "refuse",
    dropout: str = "refuse",
    **moved: Any,
) -> Diagnostics:
    """‖H‖, tr S_1, tr S_n, tr(H S_1) ± se, tr(H S_n), B_simple and, by identity (1), tr S_b, tr(H S_b),
    ‖H‖_{S_b}, ρ_b and tr(H S_b)/tr S_n for every b, of ``model`` on the training loss L = (1/n) Σ ℓ_i.

    data: (inputs, targets) tensors, a Dataset, a DataLoader or an iterable of batches; ``n`` a seeded
        (``seed``) subset. Read once into host memory, streamed to the model's device in chunks; the result
        does not depend on the chunking.
    loss: a name (``ce``, ``mse``), a ``torch.nn`` loss module (its reduction honoured) or a callable
        (outputs, targets) -> loss (a scalar: each sample is scored alone; or one value per sample).
    forward: ``forward(model, batch) -> (outputs, targets)`` for dict batches and multi-input models
        (default: a batch is (inputs, targets) and outputs = model(inputs)).
    batch_sizes / replacement: the b of :meth:`Diagnostics.frame` and how its batches are drawn.
    estimator: tr(H S_1) ``exact`` (one HVP per sample), by the ``sketch``, or ``auto`` (exact when n ≤ probes);
        :class:`Estimator` for the sketch's probes and precision.
    eigen: ‖H‖ by LOBPCG (True), not measured (False), or :class:`Eigen` (tolerance, HVP cap, warm start).
    compute: :class:`Compute` (chunk sizes, dtype, HVP mode, the sketch's store); None: its defaults.
    bn: ``refuse`` batch norm in train mode, ``eval``: use its running statistics, or ``batch``: the
        diagnostics of L_b = E_B ℓ(θ; B), each batch of b samples normalised with its own statistics, at the one
        b of ``batch_sizes`` (:mod:`.batchstats`). dropout: ``refuse`` active dropout, or ``off``.
    seed: the one source of the call's randomness (the subset, the sketch's signs, the solver's start).
    The keywords of earlier versions (``probes=``, ``top=``, ``chunk_size=`` ...) are refused, each naming
    its new place.
    """
    t0 = time.perf_counter()
    check_moved("diagnose", moved)
    check_policies(bn, dropout)
    est, eig, comp = Estimator.of(estimator), Eigen.of(eigen), Compute.of(compute)
    if eig is not None and eig.heldout and bn != "batch":
        raise OptionError(
            f"diagnose: Eigen(heldout={eig.heldout}) scores ‖H‖'s eigenvector on independent batches of the loss "
            f"L_b, which only bn='batch' measures (bn={bn!r}); fix: bn='batch', or Eigen(heldout=0)"
        )
    prep = prepare(model, loss, data, n=n, seed=seed, forward=forward, chunk_size=comp.chunk_size, dtype=comp.dtype)
    if bn == "batch":
        b = check_batch_call(prep.model, batch_sizes, prep.n_used, replacement)
        return batch_diagnose(prep, b, est, eig, comp, seed, dropout)
    gen = torch.Generator().manual_seed(int(seed))
    bs = tuple(sorted({int(b) for b in batch_sizes}))
    for b in bs:
        gamma(prep.n_used, b, replacement)  # a clear error for b out of range, before any work
    with restoring(prep.model, bn, dropout), torch.autocast(prep.device_type, enabled=False):
        op = prep.operator(chunk_size=comp.chunk_size, per_sample_chunk=comp.per_sample_chunk)
        check_loss_shape(op)
        check_finite(op)
        check_deterministic(op)
        counts0 = dict(op.counts)
        mode = _set_hvp_mode(op, comp.hvp_mode)
        fd_err = fd_tune(op, gen, comp.chunk_size) if mode == "fd" else math.nan
        fd_trace = fd_trace_error(op) if mode == "fd" else 0.0
        facts = Facts(prep.frozen, prep.loss_fn.reduction, prep.n_total, fd_err, t0, counts0, fd_trace)
        return measure(
            op,
            estimator=est,
            eigen=eig,
            generator=gen,
            batch_sizes=bs,
            replacement=replacement,
            store_mb=default_store_mb(op, STORE_MB) if comp.store_mb is None else comp.store_mb,
            jvp_products=True,
            facts=facts,
        ).result
