"""Loss registry. Each loss maps (outputs f(x), integer labels y) to per-sample losses ℓ_i;
``mean`` reductions give the training loss L = mean_i ℓ_i.

- ``ce``: cross-entropy.
- ``mse``: ½‖f(x) − onehot(y)‖² per sample (Cohen et al.'s convention), averaged over samples.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .errors import LssrError


def ce_per_sample(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def mse_per_sample(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    onehot = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
    return 0.5 * (outputs - onehot).pow(2).sum(dim=-1)


PER_SAMPLE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": ce_per_sample,
    "mse": mse_per_sample,
}


def per_sample_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The per-sample loss ℓ_i for a registered loss name."""
    try:
        return PER_SAMPLE[name]
    except KeyError:
        raise LssrError(f"unknown loss {name!r}; known: {', '.join(sorted(PER_SAMPLE))}") from None


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mean-reduced loss L = mean_i ℓ_i for a registered loss name."""
    fn = per_sample_loss(name)

    def mean_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return fn(outputs, targets).mean()

    mean_loss.__name__ = f"{name}_mean"
    mean_loss.per_sample = fn  # type: ignore[attr-defined]
    return mean_loss


class PerSampleLoss:
    """A loss given as a name, a ``torch.nn`` loss module or a callable, as what the curvature code needs:
    ``per_sample(outputs, targets) -> (ℓ_i)_i`` (no Python loop over samples) and the mean L = mean_i ℓ_i
    (``__call__``). ``reduction`` records how the given loss reduced a batch: ``mean`` (its batch value is
    mean_i ℓ_i), ``sum`` (Σ_i ℓ_i: an optimiser step on a batch of b then moves b times as far) or ``none``.

    A sample's loss ℓ_i is the loss of that sample alone: a module's elementwise losses
    (``reduction='none'``) reduced over the non-batch dimensions by its own reduction (mean or sum; ``none``:
    mean); a callable returning one value per sample is taken as is; a callable returning a scalar is
    vmapped over the samples, each scored as a batch of one."""

    def __init__(self, loss, where: str = "loss"):
        self.name = getattr(loss, "__name__", type(loss).__name__)
        if isinstance(loss, str):
            self.per_sample, self.reduction, self.name = per_sample_loss(loss), "mean", loss
        elif isinstance(loss, torch.nn.modules.loss._Loss):
            self.per_sample, self.reduction = _module_per_sample(loss, where), loss.reduction
        elif callable(loss):
            ps = getattr(loss, "per_sample", None)
            self.per_sample = ps if ps is not None else _callable_per_sample(loss)
            self.reduction = getattr(loss, "reduction", "mean")
        else:
            raise LssrError(
                f"{where}: got {type(loss).__name__}; give a loss name ({', '.join(sorted(PER_SAMPLE))}), a "
                f"torch.nn loss module or a callable (outputs, targets) -> loss"
            )

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample(outputs, targets).mean()


def _reduce_rest(values: torch.Tensor, how: str) -> torch.Tensor:
    """Per-sample values from elementwise ones (leading dim = samples): mean or sum over the rest."""
    if values.dim() <= 1:
        return values
    flat = values.reshape(values.shape[0], -1)
    return flat.sum(1) if how == "sum" else flat.mean(1)


def _module_per_sample(module: torch.nn.Module, where: str) -> Callable:
    import copy

    if getattr(module, "weight", None) is not None and module.reduction == "mean":
        raise LssrError(
            f"{where}: {type(module).__name__}(weight=..., reduction='mean') divides by the batch's total weight, "
            f"so its batch loss is not a mean of per-sample losses; fix: pass reduction='sum' (ℓ_i = w_(y_i)·loss_i)"
        )
    elementwise = copy.copy(module)
    elementwise.reduction = "none"
    how = module.reduction

    def per_sample(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _reduce_rest(elementwise(outputs, targets), how)

    return per_sample


def _callable_per_sample(fn: Callable) -> Callable:
    from torch.func import vmap

    def one(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fn(o.unsqueeze(0), t.unsqueeze(0)).reshape(())

    def per_sample(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = fn(outputs, targets)
        if out.dim() >= 1:  # one value (or one row of elementwise values) per sample
            return _reduce_rest(out, "mean")
        return out.reshape(1) if outputs.shape[0] == 1 else vmap(one)(outputs, targets)

    return per_sample
