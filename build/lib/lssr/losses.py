"""Loss registry. Each loss maps (outputs f(x), integer labels y) to per-sample losses ℓ_i;
``mean`` reductions give the training loss L = mean_i ℓ_i.

- ``ce``: cross-entropy.
- ``mse``: ½‖f(x) − onehot(y)‖² per sample (Cohen et al.'s convention), averaged over samples.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import LssrError


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
