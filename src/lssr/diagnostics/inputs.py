"""Checks of what :func:`lssr.diagnose` measures on, made before any of the work, each failing with a one-line
:class:`~lssr.errors.LssrError` that names the value at fault and the fix:

- :func:`check_lengths`: (inputs, targets) with one target per input;
- :func:`check_loss_shape`: the loss gives a scalar or one value ℓ_i per sample;
- :func:`check_finite`: the parameters θ, the buffers, the samples and every ℓ_i(θ) are finite (L, ∇L and H are
  not defined otherwise).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_leaves

from ..curvature import LossOperator
from ..curvature.functions import model_outputs
from ..errors import LssrError

Tensor = torch.Tensor

#: The loss is tried on chunks of 1 and of this many samples (or n, if fewer).
SHAPE_CHUNK = 8


def check_lengths(data: Any, forward: Callable | None = None, where: str = "diagnose") -> None:
    """With the default ``forward`` (a batch is (inputs, targets)), ``data`` given as a pair of tensors, or the
    samples once read, must hold as many targets as inputs along the first (sample) dimension."""
    if forward is not None or not (isinstance(data, (tuple, list)) and len(data) == 2):
        return
    x, y = data
    if not all(isinstance(t, Tensor) and t.dim() >= 1 for t in (x, y)) or x.shape[0] == y.shape[0]:
        return
    raise LssrError(
        f"{where}: the data holds {x.shape[0]} inputs but {y.shape[0]} targets; fix: give one target per input "
        f"(inputs.shape[0] == targets.shape[0])"
    )


def check_loss_shape(op: LossOperator, where: str = "diagnose") -> None:
    """The loss on the model's outputs of k samples (k = 1 and min(n, :data:`SHAPE_CHUNK`)) gives k values ℓ_i:
    a loss callable must return a scalar (each sample is then scored alone) or one value per sample."""
    for k in sorted({1, min(op.n, SHAPE_CHUNK)}):
        x, y = op.take(slice(0, k))
        with torch.no_grad():
            outputs, targets = model_outputs(op.model, op.params, op.buffers, x, y)
            try:
                values = op.per_sample(outputs, targets)
            except (AttributeError, TypeError) as e:  # e.g. a tuple returned: 'tuple' object has no attribute 'dim'
                raise LssrError(
                    f"{where}: the loss failed on the outputs of {k} sample(s) ({type(e).__name__}: "
                    f"{(str(e).strip().splitlines() or [''])[0][:120]}); fix: return one tensor, a scalar or one "
                    f"value per sample"
                ) from None
        if not (isinstance(values, Tensor) and tuple(values.shape) == (k,)):
            got = f"shape {tuple(values.shape)}" if isinstance(values, Tensor) else type(values).__name__
            raise LssrError(
                f"{where}: the loss returned {got} on a chunk of {k} sample(s), neither a scalar nor one value per "
                f"sample; fix: return the chunk's mean (or sum), or one value per sample, shape (chunk,), e.g. "
                f"F.cross_entropy(outputs, targets, reduction='none')"
            )


def _first_bad(values: Tensor) -> tuple[int, int]:
    """(how many of the rows of ``values`` hold a NaN or an infinity, the index of the first)."""
    bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(1)
    return int(bad.sum()), int(bad.nonzero()[0, 0]) if bool(bad.any()) else -1


def check_finite(op: LossOperator, where: str = "diagnose") -> None:
    """θ, the floating buffers, the floating inputs and targets, and every per-sample loss ℓ_i(θ) (one forward
    pass over the n samples) are finite."""
    for kind, tensors in (("parameter", op.params), ("buffer", op.buffers)):
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                count = int((~torch.isfinite(t)).sum())
                raise LssrError(
                    f"{where}: {kind} {name!r} holds {count} non-finite value(s) (NaN or inf) at θ; fix: load finite "
                    f"weights (e.g. a checkpoint from before a diverged step)"
                )
    leaves = [t for t in tree_leaves((op.x, op.y)) if isinstance(t, Tensor) and t.is_floating_point()]
    for t in leaves:
        count, first = _first_bad(t)
        if count:
            raise LssrError(
                f"{where}: {count} of the n = {op.n} samples hold{'s' * (count == 1)} NaN or inf in their inputs or "
                f"targets (the first: "
                f"sample {first}); fix: drop or repair them before the call (e.g. keep x.isfinite().flatten(1).all(1))"
            )
    losses = op.losses()
    count, first = _first_bad(losses.reshape(-1, 1))
    if count:
        raise LssrError(
            f"{where}: the loss ℓ_i at θ is {float(losses[first])} for {count} of the n = {op.n} samples (the first: "
            f"sample {first}), so L and H are not defined; fix: check those samples' targets and the model's outputs "
            f"on them (e.g. a log of 0), or drop them"
        )
