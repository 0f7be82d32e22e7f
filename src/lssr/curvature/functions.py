"""Pure ``torch.func`` functions of (params, buffers, x, y) for one data chunk: ℓ_i, Σ ℓ_i, ∇ and H·v of
Σ ℓ_i (forward-over-reverse or reverse-over-reverse), per-sample gradients g_i and directional derivatives
g_iᵀu; and the batch-norm guard they need.

With a plain module, x is the input tensor and y the targets. With a :class:`ForwardAdapter` (a model plus a
``forward(model, batch) -> (outputs, targets)``), x is the whole batch (any nest of tensors with a leading
sample dimension: a dict, a tuple of several inputs ...) and y is unused (None)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.utils._pytree import tree_map

from ..errors import LssrError

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


class ForwardAdapter(nn.Module):
    """``model`` and a ``forward(model, batch) -> (outputs, targets)`` as one module mapping a batch to
    (outputs, targets): dict batches and multi-input models. Its parameters are the model's, named
    ``model.<name>``."""

    def __init__(self, model: nn.Module, forward: Callable):
        super().__init__()
        self.model = model
        self._user_forward = forward

    def forward(self, batch):
        out = self._user_forward(self.model, batch)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise LssrError(
                f"forward(model, batch) must return (outputs, targets), got {type(out).__name__}; "
                f"fix: return a pair, e.g. lambda model, batch: (model(batch['x']), batch['y'])"
            )
        return out[0], out[1]


def model_outputs(model: nn.Module, params: Params, buffers: Params, x, y) -> tuple[Tensor, Tensor]:
    """(f(x), targets) of one chunk: the adapter's pair, or the plain module's output and ``y``."""
    out = functional_call(model, (params, buffers), (x,))
    return out if isinstance(model, ForwardAdapter) else (out, y)


def per_sample_losses_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """f(params, buffers, x, y) -> (ℓ_i)_i for the samples of one chunk."""

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor) -> Tensor:
        return per_sample(*model_outputs(model, params, buffers, x, y))

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


def hvp_rev_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """As :func:`hvp_fn` by reverse-over-reverse (``vjp`` of ``grad``; H is symmetric, so vᵀH = Hv): for models
    with an operation that has no forward-mode derivative."""
    g = grad(loss_sum_fn(model, per_sample))

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor, v: Params) -> tuple[Params, Params]:
        gv, pull = vjp(lambda p: g(p, buffers, x, y), params)
        return gv, pull(v)[0]

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
    (``F.one_hot`` in MSE) work under ``vmap``. With a :class:`ForwardAdapter` each sample of the batch is
    passed through ``forward`` alone (a batch of one) and scored against the targets it returns."""
    if isinstance(model, ForwardAdapter):
        return _per_sample_grads_adapter(model, per_sample)

    def one(params: Params, buffers: Params, x: Tensor, e: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        losses = per_sample(out.expand(y.shape[0], *out.shape[1:]), y)
        return (losses * e).sum()

    g = vmap(grad(one), in_dims=(None, None, 0, 0, None))

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor) -> Params:
        eye = torch.eye(x.shape[0], dtype=next(iter(params.values())).dtype, device=x.device)
        return g(params, buffers, x, eye, y)

    return f


def _per_sample_grads_adapter(model: ForwardAdapter, per_sample: Callable) -> Callable:
    def one(params: Params, buffers: Params, sample) -> Tensor:
        batch = tree_map(lambda t: t.unsqueeze(0), sample)
        return per_sample(*functional_call(model, (params, buffers), (batch,))).sum()

    g = vmap(grad(one), in_dims=(None, None, 0))

    def f(params: Params, buffers: Params, x, y=None) -> Params:
        return g(params, buffers, x)

    return f


def per_sample_jvp_fn(model: nn.Module, per_sample: Callable) -> Callable:
    """f(params, buffers, x, y, U) -> (k, chunk) directional derivatives g_iᵀu_j of every per-sample
    loss along every tangent u_j (leading dim k): one forward-mode pass per tangent, vmapped."""
    losses = per_sample_losses_fn(model, per_sample)

    def f(params: Params, buffers: Params, x: Tensor, y: Tensor, U: Params) -> Tensor:
        return vmap(lambda u: jvp(lambda p: losses(p, buffers, x, y), (params,), (u,))[1])(U)

    return f
