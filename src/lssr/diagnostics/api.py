"""``lssr.diagnose``: the interaction-aware sharpness diagnostics of any model on any data, in one call.

One pass over the training set (n samples, m trainable parameters) shares the work of
:func:`.moments.gradient_moments`: ‖H‖ (LOBPCG, warm-startable), tr S_1, tr S_n, tr(H S_1) ± se, tr(H S_n)
and the simple noise scale B_simple = (tr S_1 − tr S_n)/tr S_n; every batch size b then follows by
identity (1) (:meth:`Diagnostics.at`). The data is read once into host memory and streamed to the model's
device in chunks; the model is evaluated through ``torch.func`` with detached parameters, and its mode,
``.grad``, buffers and the global random state are as before the call.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config import ProbeConfig, RunConfig
from ..curvature import HVP_MODES, BatchNormModeError, ForwardAdapter, GraphTooLarge, LossOperator, hvp_fn, hvp_rev_fn
from ..curvature.functions import per_sample_jvp_fn
from ..errors import LssrError
from ..losses import PerSampleLoss
from ..memory import device_memory
from ..scaling import gamma
from .batches import as_pair, collect
from .inputs import check_finite, check_lengths, check_loss_shape
from .moments import Moments, gradient_moments, moments_frame, per_b
from .uncertainty import fd_trace_error, with_fd_error

Tensor = torch.Tensor

BN_OPTIONS = ("refuse", "eval")
DROPOUT_OPTIONS = ("refuse", "off")
#: Defaults of :func:`diagnose`: the pipeline's (lssr.config: ProbeConfig, RunConfig.chunk_size), and the
#: eigen-solver's HVP cap of :func:`.moments.gradient_moments`.
PROBES, STAGE1, REL_SE, EIG_TOL = ProbeConfig.probes, ProbeConfig.stage1, ProbeConfig.rel_se, ProbeConfig.eig_tol
CHUNK = RunConfig.chunk_size
EIG_MAX_HVPS = 60
#: The pipeline's cap on the per-sample gradients the sketch keeps in memory (MiB), and :func:`diagnose`'s for a
#: model with forward-mode derivatives; without them it is raised to a quarter of the memory available on the
#: device (:func:`store_limit_mb`). See :func:`default_store_mb`.
STORE_MB = 1024
STORE_FRACTION = 0.25


class RandomForwardError(LssrError):
    """The model's forward pass is random (active dropout, noise), so L and H are not defined."""


@dataclass(frozen=True)
class Cost:
    """What one :func:`diagnose` call spent: HVPs, full gradients, per-sample passes and loss passes over the n
    samples, wall seconds, the wall time in gradient-equivalents (seconds / the time of one full gradient
    ∇L timed in the same call), the HVP mode and, for ``fd``, the measured relative error bound of its HVPs,
    how per-sample gradients were computed (``vmap``, or ``loop`` for a model that vmap cannot batch), for
    ``graph`` how many times the kept graph of ∇L was built (each about one gradient), and the forward-mode
    directional derivatives of the per-sample losses (``jvps``, each a pass over the n samples) that replaced
    per-sample passes when the per-sample gradients were not kept."""

    hvps: int
    gradients: int
    per_sample_passes: int
    loss_passes: int
    seconds: float
    grad_seconds: float
    gradient_equivalents: float
    hvp_mode: str
    fd_rel_error: float = math.nan
    per_sample_mode: str = "vmap"
    graph_builds: int = 0
    jvps: int = 0


@dataclass(frozen=True)
class AtB:
    """The diagnostics at batch size b (identity (1)): tr S_b, tr(H S_b), ρ_b = tr S_n/tr S_b, ‖H‖_{S_b} =
    tr(H S_b)/tr S_b (``ias_b``) and the instability ratio tr(H S_b)/tr S_n (one SGD step raises the loss in
    expectation when it exceeds 2/η), each with its standard error (0 for exact quantities)."""

    b: int
    replacement: bool
    tr_S_b: float
    tr_S_b_se: float
    tr_HS_b: float
    tr_HS_b_se: float
    rho_b: float
    rho_b_se: float
    ias_b: float
    ias_b_se: float
    instability_b: float
    instability_b_se: float

    def stable(self, lr: float) -> bool:
        """True when the instability ratio tr(H S_b)/tr S_n is at most 2/η (plain SGD, no momentum)."""
        return self.instability_b <= 2.0 / lr


@dataclass(frozen=True)
class Diagnostics:
    """The result of :func:`diagnose` at one θ.

    n samples, m trainable parameters (``m_frozen`` entries with ``requires_grad=False`` left out), the loss
    L = (1/n) Σ ℓ_i, ‖H‖ (``top_eig``, with the LOBPCG relative residual and HVPs; ``eigenvector`` is q_1
    with q_1ᵀ∇L ≥ 0, usable as the next call's ``eig_init``), tr S_1, tr S_n, tr(H S_1) ± se, tr(H S_n),
    ‖H‖_{S_n} = tr(H S_n)/tr S_n and B_simple = (tr S_1 − tr S_n)/tr S_n. ``reduction``: how the given
    loss reduced a batch (``sum``: an optimiser step on b samples moves b times as far as the mean's).
    ``tr_HS_1_se``: the sketch's jackknife se (0 for the exact estimator); with finite-difference HVPs
    (``cost.hvp_mode == 'fd'``) combined in quadrature with their measured error (:mod:`.uncertainty`: the larger
    of cost.fd_rel_error·|tr_HS_1| and the Richardson difference of the first samples' g_iᵀ H g_i)."""

    n: int
    m: int
    m_frozen: int
    loss: float
    top_eig: float
    top_eig_residual: float
    top_eig_hvps: int
    tr_S_1: float
    tr_S_n: float
    tr_HS_1: float
    tr_HS_1_se: float
    tr_HS_n: float
    ias_n: float
    b_simple: float
    estimator: str
    probes: int
    batch_sizes: tuple[int, ...]
    replacement: bool
    reduction: str
    n_total: int
    cost: Cost
    eigenvector: Tensor | None = field(default=None, repr=False, compare=False)

    def _moments(self) -> Moments:
        empty = torch.zeros(0, dtype=torch.float64)
        return Moments(
            self.n, self.tr_S_1, self.tr_S_n, self.tr_HS_1, self.tr_HS_1_se, self.tr_HS_n, empty, empty, self.estimator
        )

    def at(self, b: int, replacement: bool | None = None) -> AtB:
        """The diagnostics at batch size b (see :class:`AtB`); ``replacement`` defaults to the call's."""
        rep = self.replacement if replacement is None else bool(replacement)
        b = int(b)
        if b < 1 or (not rep and b > self.n):
            raise LssrError(f"batch size {b} is out of range: need 1 <= b <= n = {self.n} (without replacement)")
        d = per_b(self._moments(), b, rep)
        return AtB(replacement=rep, **d)

    def frame(self, batch_sizes: Iterable[int] | None = None, replacement: bool | None = None) -> pd.DataFrame:
        """One row per b (default: the call's ``batch_sizes``): b, tr S_b, tr(H S_b), ρ_b, ‖H‖_{S_b}, the
        instability ratio, tr S_1, tr S_n, tr(H S_1), tr(H S_n), each with a ``_se`` column."""
        rep = self.replacement if replacement is None else bool(replacement)
        bs = self.batch_sizes if batch_sizes is None else tuple(int(b) for b in batch_sizes)
        return moments_frame(self._moments(), bs, rep)

    def scalars(self) -> dict:
        """The numbers that do not depend on b (and the cost), as plain Python values."""
        out = {
            k: getattr(self, k)
            for k in (
                "n",
                "m",
                "m_frozen",
                "loss",
                "top_eig",
                "top_eig_residual",
                "top_eig_hvps",
                "tr_S_1",
                "tr_S_n",
                "tr_HS_1",
                "tr_HS_1_se",
                "tr_HS_n",
                "ias_n",
                "b_simple",
                "estimator",
                "probes",
                "replacement",
                "reduction",
                "n_total",
            )
        }
        out.update({f"cost_{k}": v for k, v in asdict(self.cost).items()})
        return out

    def to_dict(self, prefix: str = "") -> dict:
        """A flat dict for loggers: the scalars, then every quantity of each b in ``batch_sizes`` named
        ``<quantity>_<b>`` (``ias_b_32``, ``tr_HS_b_32_se``), each key with ``prefix`` in front."""
        out = {f"{prefix}{k}": v for k, v in self.scalars().items() if k != "replacement"}
        for b in self.batch_sizes:
            d = asdict(self.at(b))
            for k, v in d.items():
                if k in ("b", "replacement"):
                    continue
                name = f"{k[:-3]}_{b}_se" if k.endswith("_se") else f"{k}_{b}"
                out[f"{prefix}{name}"] = v
        return out


# ---------------------------------------------------------------------------------------------
# Policies: wrappers, batch norm, dropout and randomness; restoring the model and the random state
# ---------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _active_dropout(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and float(m.p) > 0
    ]


def _train_mode_bn(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]


@contextmanager
def preserved_rng():
    """Restores the torch (CPU and initialised CUDA), ``random`` and NumPy global random states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(npy)


@contextmanager
def _restoring(model: nn.Module, bn: str, dropout: str):
    """Applies the ``bn`` / ``dropout`` policies for the duration of the call and restores afterwards every
    module's train flag, every parameter's ``.grad``, the buffers' values and the global random states."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        bns = _train_mode_bn(model)
        if bns and bn == "refuse":
            raise BatchNormModeError(
                f"diagnose: batch norm in train mode ({bns[0]}): per-sample losses would depend on the other samples "
                f"of the chunk; fix: model.eval() before the call, or diagnose(..., bn='eval') to use the running "
                f"statistics"
            )
        drops = _active_dropout(model)
        if drops and dropout == "refuse":
            raise RandomForwardError(
                f"diagnose: dropout is active ({drops[0]}), so L and H would be random; fix: model.eval() before "
                f"the call, or diagnose(..., dropout='off')"
            )
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) or isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        with preserved_rng():
            yield
    finally:
        for m, was in modes:
            m.training = was
        for p, g in grads:
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _check_deterministic(op: LossOperator, k: int = 8) -> None:
    """Refuses a random forward pass: two evaluations of the same samples at the same θ must agree."""
    x, y = op.take(slice(0, min(op.n, k)))
    with torch.no_grad():
        a = op._losses(op.params, op.buffers, x, y)
        b = op._losses(op.params, op.buffers, x, y)
    tol = 1e3 * torch.finfo(op.dtype).eps
    if not torch.allclose(a, b, rtol=tol, atol=tol * float(a.abs().max().clamp_min(1e-30))):
        raise RandomForwardError(
            "diagnose: two evaluations of the same samples at the same parameters differ, so the forward pass is "
            "random (dropout in a functional call, noise, stochastic depth ...); fix: turn that randomness off "
            "for the call (e.g. model.eval())"
        )


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _set_hvp_mode(op: LossOperator, mode: str) -> str:
    """Sets and returns the operator's HVP mode. ``auto``: ``graph`` (the first-order graph of ∇L kept, one
    backward pass per H·v) when the model has second derivatives in reverse mode and the graph fits
    :func:`memory_budget`; else forward-over-reverse when the model supports it, else reverse-over-reverse,
    else ``fd`` (support tried on the first two samples). An explicit ``graph`` that does not fit is an error."""
    budget = memory_budget(op.device)
    if mode != "auto":
        op.set_hvp_mode(mode, "diagnose", graph_budget=budget)
        return mode
    x, y = op.take(slice(0, min(op.n, 2)))
    v = {k: torch.ones_like(t) for k, t in op.params.items()}
    supported = []
    for name, make in (("forward", hvp_fn), ("reverse", hvp_rev_fn)):
        try:
            make(op.model, op.per_sample)(op.params, op.buffers, x, y, v)
            supported.append(name)
        except torch.OutOfMemoryError:
            raise
        except (NotImplementedError, RuntimeError):
            continue
    if "reverse" in supported:
        try:
            op.set_hvp_mode("graph", "diagnose", graph_budget=budget)
            return "graph"
        except GraphTooLarge:
            pass
    if supported:
        op.set_hvp_mode(supported[0], "diagnose")
        return supported[0]
    try:
        op._grad(op.params, op.buffers, x, y)
    except (NotImplementedError, RuntimeError) as e:
        raise LssrError(f"diagnose: the model's gradient cannot be computed: {_first_line(e)}") from None
    op.set_hvp_mode("fd", "diagnose")
    return "fd"


def _fd_tune(op: LossOperator, generator: torch.Generator, chunk: int) -> float:
    """Picks the central difference's step (``op.fd_step`` among ∛eps·4^-j, j = 0..3) and returns a bound on
    the relative error of its HVPs: the max over two directions (a random one and ∇L) of
    ‖D(2ε) − D(ε)‖/‖D(ε)‖ on the first chunk, i.e. three times the Richardson estimate of D(ε)'s O(ε²)
    error, plus the rounding noise of both."""
    x, y = op.take(slice(0, min(op.n, chunk)))
    sub = LossOperator(op.model, op.loss_fn, x, y, chunk_size=op.chunk_size, where="diagnose", dtype=op.dtype)
    sub.theta, sub.params = op.theta, op.params
    v = torch.randn(op.space.dim, generator=generator, dtype=torch.float64).to(op.device, op.dtype)
    dirs = [d / d.norm() for d in (v, sub.gradient()) if float(d.norm()) > 0]
    best = (math.inf, op.fd_step)
    for j in range(4):
        sub.fd_step = op.fd_step * 4.0**-j
        worst = 0.0
        for d in dirs:
            eps = sub.fd_epsilon(d)
            h1, h2 = sub.hvp_fd(d, eps), sub.hvp_fd(d, 2 * eps)
            worst = max(worst, float((h2 - h1).norm()) / max(float(h1.norm()), 1e-300))
        best = min(best, (worst, sub.fd_step))
    op.fd_step = best[1]
    return best[0]


# ---------------------------------------------------------------------------------------------
# The call
# ---------------------------------------------------------------------------------------------


class Measurement(NamedTuple):
    """:func:`measure`'s result: the :class:`Diagnostics` and the :class:`.moments.Moments` behind them (∇L,
    H∇L, the batch gradients Σ_i W_ik g_i asked for, the eigen-solver's output)."""

    result: Diagnostics
    moments: Moments


def measure(
    op: LossOperator,
    *,
    batch_sizes: Iterable[int] = (),
    replacement: bool = False,
    exact: bool | None = None,
    probes: int = PROBES,
    stage1: int = STAGE1,
    rel_se: float | None = REL_SE,
    top: bool = True,
    eig_init: Tensor | Diagnostics | None = None,
    eig_tol: float = EIG_TOL,
    eig_max_hvps: int = EIG_MAX_HVPS,
    generator: torch.Generator | None = None,
    weights: Tensor | None = None,
    store_mb: float = STORE_MB,
    timing: bool = True,
    m_frozen: int = 0,
    reduction: str = "mean",
    n_total: int | None = None,
    fd_rel_error: float = math.nan,
    fd_trace: float = 0.0,
    started: float | None = None,
    counts_before: dict | None = None,
    jvp_products: bool = False,
) -> Measurement:
    """The engine of :func:`diagnose` on a :class:`LossOperator` already built (the pipeline's probe calls it
    with the training set in memory): :func:`.moments.gradient_moments` (exact when ``exact``, or when None
    and n ≤ ``probes``), L, and the :class:`Diagnostics` they give. ``weights`` (n, k) asks for the batch
    gradients Σ_i W_ik g_i (in ``moments.weighted_grads``); ``timing`` times one more full gradient for
    ``cost.gradient_equivalents`` (NaN without it). ``started`` / ``counts_before``: the clock and the
    operator's counts when the caller's work began (default: now). ``jvp_products``: when the per-sample
    gradients are not kept, the sketch's per-sample products by forward mode instead of more per-sample passes
    (:func:`.moments.gradient_moments`)."""
    t0 = time.perf_counter() if started is None else started
    bs = tuple(sorted({int(b) for b in batch_sizes}))
    for b in bs:
        gamma(op.n, b, replacement)  # a clear error for b out of range
    counts0 = dict(op.counts if counts_before is None else counts_before)
    init = eig_init.eigenvector if isinstance(eig_init, Diagnostics) else eig_init
    mom = gradient_moments(
        op,
        exact=op.n <= probes if exact is None else bool(exact),
        probes=probes,
        stage1=stage1,
        generator=generator,
        top=top,
        eig_init=init,
        eig_tol=eig_tol,
        eig_max_hvps=eig_max_hvps,
        weights=weights,
        rel_se=rel_se,
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
    eig = mom.eig
    vec = None
    if eig is not None:
        vec = eig.vector if float(eig.vector @ mom.grad) >= 0 else -eig.vector
    cost = Cost(
        hvps=counts["hvp"],
        gradients=counts["grad"],
        per_sample_passes=counts["per_sample_pass"],
        loss_passes=counts["loss"],
        seconds=seconds,
        grad_seconds=grad_seconds,
        gradient_equivalents=seconds / grad_seconds if grad_seconds > 0 else math.nan,
        hvp_mode=op.hvp_mode,
        fd_rel_error=fd_rel_error,
        per_sample_mode=op.per_sample_mode,
        graph_builds=counts["graph"],
        jvps=counts["jvp"],
    )
    result = Diagnostics(
        n=op.n,
        m=op.space.dim,
        m_frozen=m_frozen,
        loss=L,
        top_eig=eig.value if eig is not None else math.nan,
        top_eig_residual=eig.residual if eig is not None else math.nan,
        top_eig_hvps=eig.hvp_count if eig is not None else 0,
        tr_S_1=mom.tr_S_1,
        tr_S_n=mom.tr_S_n,
        tr_HS_1=mom.tr_HS_1,
        tr_HS_1_se=with_fd_error(mom.tr_HS_1_se, mom.tr_HS_1, fd_rel_error, fd_trace),
        tr_HS_n=mom.tr_HS_n,
        ias_n=mom.tr_HS_n / mom.tr_S_n if mom.tr_S_n > 0 else math.nan,
        b_simple=(mom.tr_S_1 - mom.tr_S_n) / mom.tr_S_n if mom.tr_S_n > 0 else math.nan,
        estimator=mom.estimator,
        probes=mom.probes,
        batch_sizes=bs,
        replacement=bool(replacement),
        reduction=reduction,
        n_total=op.n if n_total is None else n_total,
        cost=cost,
        eigenvector=vec,
    )
    return Measurement(result, mom)


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

    def operator(self, chunk_size: int = CHUNK, per_sample_chunk: int | None = None) -> LossOperator:
        """The :class:`LossOperator` of L = (1/n) Σ ℓ_i on these samples (call it under the bn / dropout policy)."""
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
    """Checks and reads what :func:`diagnose` measures on (its arguments of the same names)."""
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
    with _restoring(prep.model, bn, dropout), torch.autocast(prep.device_type, enabled=False):
        prep.operator(chunk_size=chunk_size).gradient()
    return clock() - t0


def memory_budget(device: torch.device) -> int:
    """Bytes :func:`diagnose` may use for one kept structure (the per-sample gradients, the graph of ∇L):
    ``STORE_FRACTION`` of the memory available on ``device`` now (:func:`lssr.memory.device_memory`), at least
    ``STORE_MB`` MiB."""
    free = device_memory(device)
    return int(max(STORE_MB * 2**20, 0 if free is None else STORE_FRACTION * free))


def store_limit_mb(device: torch.device) -> float:
    """The default cap (MiB) on the per-sample gradients :func:`diagnose` keeps (:func:`memory_budget`)."""
    return memory_budget(device) / 2**20


def default_store_mb(op: LossOperator) -> float:
    """:func:`diagnose`'s default ``store_mb``: ``STORE_MB`` when the per-sample losses have forward-mode
    derivatives (tried on the first two samples), else :func:`store_limit_mb`. With forward mode, the sketch's
    products with per-sample gradients that are not kept come from directional derivatives, which cost less
    than writing and re-reading many more: resnet18 on 128 images on a CPU took 48 s with them and 62 s with
    the 5.3 GiB of gradients kept, the same numbers. Without forward mode, every round of added probes would
    cost a per-sample pass, so as many gradients are kept as memory allows."""
    x, y = op.take(slice(0, min(op.n, 2)))
    U = {k: torch.zeros_like(t).unsqueeze(0) for k, t in op.params.items()}
    try:
        per_sample_jvp_fn(op.model, op.per_sample)(op.params, op.buffers, x, y, U)
    except torch.OutOfMemoryError:
        raise
    except (NotImplementedError, RuntimeError):
        return store_limit_mb(op.device)
    return float(STORE_MB)


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
    exact: bool | None = None,
    probes: int = PROBES,
    stage1: int = STAGE1,
    rel_se: float | None = REL_SE,
    top: bool = True,
    eig_init: Tensor | Diagnostics | None = None,
    eig_tol: float = EIG_TOL,
    eig_max_hvps: int = EIG_MAX_HVPS,
    chunk_size: int = CHUNK,
    per_sample_chunk: int | None = None,
    dtype: torch.dtype | None = None,
    bn: str = "refuse",
    dropout: str = "refuse",
    hvp_mode: str = "auto",
    generator: torch.Generator | None = None,
    store_mb: float | None = None,
) -> Diagnostics:
    """‖H‖, tr S_1, tr S_n, tr(H S_1) ± se, tr(H S_n), B_simple and, by identity (1), tr S_b, tr(H S_b),
    ‖H‖_{S_b}, ρ_b and tr(H S_b)/tr S_n for every b, of ``model`` on the training loss L = (1/n) Σ ℓ_i.

    data: (inputs, targets) tensors, a Dataset, a DataLoader or an iterable of batches; ``n`` a seeded
        (``seed``) subset. Read once into host memory, streamed to the model's device ``chunk_size``
        samples at a time (``per_sample_chunk`` for per-sample gradients); the result does not depend on the
        chunking.
    loss: a name (``ce``, ``mse``), a ``torch.nn`` loss module (its reduction honoured) or a callable
        (outputs, targets) -> loss (a scalar: each sample is scored alone; or one value per sample).
    forward: ``forward(model, batch) -> (outputs, targets)`` for dict batches and multi-input models
        (default: a batch is (inputs, targets) and outputs = model(inputs)).
    exact: tr(H S_1) with one HVP per sample (True), or the sketch with ``probes`` random-sign probes (first
        ``stage1``, more while se > ``rel_se``·|estimate|); None: exact when n ≤ ``probes``. Randomness only
        from ``seed``.
    top / eig_init / eig_tol / eig_max_hvps: ‖H‖ by LOBPCG to relative residual ``eig_tol``, warm-started from
        a vector or an earlier result's ``eigenvector``.
    dtype: the compute dtype (default the parameters', float32 for float16 / bfloat16 models).
    bn: ``refuse`` batch norm in train mode, or ``eval``: use its running statistics. dropout: ``refuse``
        active dropout, or ``off``. hvp_mode: ``auto`` (``graph``: the first-order graph of ∇L kept in
        memory and each H·v one backward pass through it, when the model has reverse-mode second derivatives
        and the graph fits a quarter of the memory available; else forward-over-reverse, else
        reverse-over-reverse, else ``fd``, a central difference of gradients with a measured error bound), or
        one of them.
    generator: draw the sketch's signs and the eigen-solver's start from this generator (advancing it)
        instead of one seeded with ``seed``.
    store_mb: the sketch keeps the per-sample gradients (n·m numbers) in memory when they take at most this
        many MiB; else its later products with them are directional derivatives (forward mode), or, for a model
        without forward mode, a per-sample pass in every round of added probes. None: 1024 for a model with
        forward mode, else a quarter of the memory available on the device, at least 1024
        (:func:`default_store_mb`). Kept or not, the numbers are the same.
    """
    t0 = time.perf_counter()
    for name, value, known in (("bn", bn, BN_OPTIONS), ("dropout", dropout, DROPOUT_OPTIONS)):
        if value not in known:
            raise LssrError(f"diagnose: unknown {name}={value!r}; known: {', '.join(known)}")
    if hvp_mode not in ("auto", *HVP_MODES):
        raise LssrError(f"diagnose: unknown hvp_mode={hvp_mode!r}; known: auto, {', '.join(HVP_MODES)}")
    prep = prepare(model, loss, data, n=n, seed=seed, forward=forward, chunk_size=chunk_size, dtype=dtype)
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    bs = tuple(sorted({int(b) for b in batch_sizes}))
    for b in bs:
        gamma(prep.n_used, b, replacement)  # a clear error for b out of range, before any work
    with _restoring(prep.model, bn, dropout), torch.autocast(prep.device_type, enabled=False):
        op = prep.operator(chunk_size=chunk_size, per_sample_chunk=per_sample_chunk)
        check_loss_shape(op)
        check_finite(op)
        _check_deterministic(op)
        counts0 = dict(op.counts)
        mode = _set_hvp_mode(op, hvp_mode)
        fd_err = _fd_tune(op, gen, chunk_size) if mode == "fd" else math.nan
        fd_trace = fd_trace_error(op) if mode == "fd" else 0.0
        return measure(
            op,
            batch_sizes=bs,
            replacement=replacement,
            exact=exact,
            probes=probes,
            stage1=stage1,
            rel_se=rel_se,
            top=top,
            eig_init=eig_init,
            eig_tol=eig_tol,
            eig_max_hvps=eig_max_hvps,
            generator=gen,
            store_mb=default_store_mb(op) if store_mb is None else store_mb,
            m_frozen=prep.frozen,
            reduction=prep.loss_fn.reduction,
            n_total=prep.n_total,
            fd_rel_error=fd_err,
            fd_trace=fd_trace,
            started=t0,
            counts_before=counts0,
            jvp_products=True,
        ).result
