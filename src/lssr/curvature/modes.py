"""How a :class:`.operator.LossOperator` forms H·v and what it may keep in memory: the HVP mode a model supports
(:func:`choose_hvp_mode`), the finite-difference step and its error bound (:func:`fd_tune`), and the memory
budget of one kept structure (the graph of ∇L, the per-sample gradients: :func:`memory_budget`,
:func:`default_store_mb`). None of them changes what is computed beyond round-off (``fd``: beyond the bound)."""

from __future__ import annotations

import math

import torch

from ..errors import LssrError
from ..memory import device_memory
from .functions import hvp_fn, hvp_rev_fn, per_sample_jvp_fn
from .operator import GraphTooLarge, LossOperator

#: The share of the memory available on the device that one kept structure may take.
STORE_FRACTION = 0.25


def memory_budget(device: torch.device, floor_mb: float) -> int:
    """Bytes one kept structure (the per-sample gradients, the graph of ∇L) may take: ``STORE_FRACTION`` of the
    memory available on ``device`` now (:func:`lssr.memory.device_memory`), at least ``floor_mb`` MiB."""
    free = device_memory(device)
    return int(max(floor_mb * 2**20, 0 if free is None else STORE_FRACTION * free))


def store_limit_mb(device: torch.device, floor_mb: float) -> float:
    """:func:`memory_budget` in MiB: the cap on the per-sample gradients kept in memory."""
    return memory_budget(device, floor_mb) / 2**20


def default_store_mb(op: LossOperator, forward_mb: float) -> float:
    """The cap (MiB) on the per-sample gradients kept: ``forward_mb`` when the per-sample losses have
    forward-mode derivatives (tried on the first two samples), else :func:`store_limit_mb` (at least
    ``forward_mb``). With forward mode, the sketch's products with per-sample gradients that are not kept come
    from directional derivatives, which cost less than writing and re-reading many more: resnet18 on 128 images
    on a CPU took 48 s with them and 62 s with the 5.3 GiB of gradients kept, the same numbers. Without forward
    mode, every round of added probes would cost a per-sample pass, so as many gradients are kept as memory
    allows."""
    x, y = op.take(slice(0, min(op.n, 2)))
    U = {k: torch.zeros_like(t).unsqueeze(0) for k, t in op.params.items()}
    try:
        per_sample_jvp_fn(op.model, op.per_sample)(op.params, op.buffers, x, y, U)
    except torch.OutOfMemoryError:
        raise
    except (NotImplementedError, RuntimeError):
        return store_limit_mb(op.device, forward_mb)
    return float(forward_mb)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def choose_hvp_mode(op: LossOperator, mode: str, budget: int, where: str = "diagnose") -> str:
    """Sets and returns the operator's HVP mode. ``auto``: ``graph`` (the first-order graph of ∇L kept, one
    backward pass per H·v) when the model has second derivatives in reverse mode and the graph fits ``budget``
    bytes; else forward-over-reverse when the model supports it, else reverse-over-reverse, else ``fd`` (support
    tried on the first two samples). An explicit ``graph`` that does not fit is an error."""
    if mode != "auto":
        op.set_hvp_mode(mode, where, graph_budget=budget)
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
            op.set_hvp_mode("graph", where, graph_budget=budget)
            return "graph"
        except GraphTooLarge:
            pass
    if supported:
        op.set_hvp_mode(supported[0], where)
        return supported[0]
    try:
        op._grad(op.params, op.buffers, x, y)
    except (NotImplementedError, RuntimeError) as e:
        raise LssrError(f"{where}: the model's gradient cannot be computed: {_first_line(e)}") from None
    op.set_hvp_mode("fd", where)
    return "fd"


def fd_tune(op: LossOperator, generator: torch.Generator, chunk: int, where: str = "diagnose") -> float:
    """Picks the central difference's step (``op.fd_step`` among ∛eps·4^-j, j = 0..3) and returns a bound on
    the relative error of its HVPs: the max over two directions (a random one and ∇L) of
    ‖D(2ε) − D(ε)‖/‖D(ε)‖ on the first chunk, i.e. three times the Richardson estimate of D(ε)'s O(ε²)
    error, plus the rounding noise of both."""
    x, y = op.take(slice(0, min(op.n, chunk)))
    sub = LossOperator(
        op.model, op.loss_fn, x, y, chunk_size=op.chunk_size, where=where, dtype=op.dtype, batch_stats=op.batch_stats
    )
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
