"""The model guards of :func:`lssr.diagnose`: the module inside a wrapper (:func:`unwrap`), the batch-norm and
dropout policies, the model's modes, ``.grad``, buffers and the global random state as before the call
(:func:`restoring`, :func:`preserved_rng`), and the refusal of a random forward pass (:func:`check_deterministic`)."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..curvature import BatchNormModeError, LossOperator
from ..errors import LssrError
from .options import BN_OPTIONS, DROPOUT_OPTIONS, check_choice


class RandomForwardError(LssrError):
    """The model's forward pass is random (active dropout, noise), so L and H are not defined."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def active_dropout(model: nn.Module) -> list[str]:
    """The names of the dropout modules of ``model`` in train mode with p > 0."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and float(m.p) > 0
    ]


def train_mode_bn(model: nn.Module) -> list[str]:
    """The names of the batch-norm modules of ``model`` in train mode."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]


def check_policies(bn: str, dropout: str, where: str = "diagnose", batch: bool = True) -> None:
    """Refuses an unknown ``bn`` (:data:`.options.BN_OPTIONS`; ``batch`` only where the caller measures the loss
    of batches normalised with their own statistics, ``batch=True``) or ``dropout``
    (:data:`.options.DROPOUT_OPTIONS`)."""
    check_choice(where, "bn", bn, BN_OPTIONS if batch else tuple(o for o in BN_OPTIONS if o != "batch"))
    check_choice(where, "dropout", dropout, DROPOUT_OPTIONS)


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


def _apply_policies(model: nn.Module, bn: str, dropout: str) -> None:
    bns = train_mode_bn(model)
    if bns and bn == "refuse":
        raise BatchNormModeError(
            f"diagnose: batch norm in train mode ({bns[0]}): per-sample losses would depend on the other samples "
            f"of the chunk; fix: model.eval() before the call, or diagnose(..., bn='eval') to use the running "
            f"statistics"
        )
    drops = active_dropout(model)
    if drops and dropout == "refuse":
        raise RandomForwardError(
            f"diagnose: dropout is active ({drops[0]}), so L and H would be random; fix: model.eval() before "
            f"the call, or diagnose(..., dropout='off')"
        )
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or (
            isinstance(m, nn.modules.batchnorm._BatchNorm) and bn != "batch"
        ):
            m.eval()


@contextmanager
def restoring(model: nn.Module, bn: str, dropout: str):
    """Applies the ``bn`` / ``dropout`` policies for the duration of the call and restores afterwards every
    module's train flag, every parameter's ``.grad``, the buffers' values and the global random states.

    ``bn="batch"`` leaves batch norm in the mode it has: in train mode each forward pass normalises with the
    statistics of its own chunk of samples (a batch of SGD) and, for the duration, updates no running statistics
    (``track_running_stats`` off, as torch.func transforms need)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    tracking = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        _apply_policies(model, bn, dropout)
        if bn == "batch":
            for m, _ in tracking:
                m.track_running_stats = not m.training and m.track_running_stats
        with preserved_rng():
            yield
    finally:
        for m, was in modes:
            m.training = was
        for m, was in tracking:
            m.track_running_stats = was
        for p, g in grads:
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def check_deterministic(op: LossOperator, k: int = 8) -> None:
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
