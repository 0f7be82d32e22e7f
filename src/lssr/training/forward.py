"""The training forward pass: how many samples per pass (batch-norm statistics over the whole mini-batch),
and activation checkpointing (``torch.utils.checkpoint``, ``use_reentrant=False``) over segments of the
layer chain, for one model (:func:`checkpointed_forward`) and for the stacked model of a batched group
(:func:`stacked_checkpointed_forward`).

Checkpointing recomputes each segment's forward pass in the backward pass. The recomputation gives the
same outputs (batch norm in train mode normalises with the batch's own statistics), but it would update
the batch-norm running statistics a second time; :func:`backward_keeping_buffers` restores them to their
values after the forward pass, so a checkpointed step leaves exactly the state of a plain one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils.checkpoint import checkpoint

from .. import memory
from ..config import RunConfig
from ..data import Subset
from ..models import forward_layers


@dataclass
class StepPlan:
    """How a job's training step runs: samples per forward pass, checkpointed segments (None: plain)."""

    per_pass: int
    segments: list[tuple[int, int]] | None
    estimate: memory.Estimate
    bn_statistics: str  # "batch" (the whole mini-batch), "ghost" (bn_ghost_batch) or "none" (no batch norm)

    @property
    def checkpointing(self) -> bool:
        return self.segments is not None

    def record(self) -> dict:
        """The ``training_forward`` entry of run.json."""
        return {
            "training_forward": {
                "samples_per_pass": self.per_pass,
                "bn_statistics": self.bn_statistics,
                "activation_checkpointing": self.checkpointing,
                "memory_estimate_gib": round(self.estimate.peak / memory.GIB, 4),
            }
        }


def model_profile(model: nn.Module, data: Subset) -> memory.Profile:
    """The per-sample memory :class:`~lssr.memory.Profile` of the model training built, at the data's image size
    and dtype (:func:`lssr.memory.profile_model`: measured on a CPU copy, the model and global RNG untouched)."""
    x = data.x_train
    return memory.profile_model(model, x.shape[1], x.shape[-1], x.dtype)


def plan_step(
    cfg: RunConfig, data: Subset, members: int, device: torch.device, run: str, profile: memory.Profile
) -> StepPlan:
    """The pre-flight check (:func:`lssr.memory.preflight`, which refuses a job that will not fit) and the plan,
    from ``profile``, the :func:`model_profile` of the model training built."""
    x = data.x_train
    est = memory.preflight(
        cfg,
        tuple(x.shape[1:]),
        data.num_classes,
        len(data.y_test),
        members,
        x.dtype,
        device,
        run=run,
        model_profile=profile,
    )
    segments = memory.segments_for(profile) if est.checkpointing else None
    stats = "none" if not cfg.model.batch_norm else ("ghost" if cfg.bn_ghost_batch is not None else "batch")
    return StepPlan(memory.samples_per_pass(cfg), segments, est, stats)


def _segment_modules(model: nn.Module, segments: list[tuple[int, int]]) -> list[tuple[nn.Sequential, list]]:
    """Each segment as a Sequential sharing the model's layers, with its names in the model (local, global)."""
    layers = forward_layers(model)
    out = []
    for a, b in segments:
        seq = nn.Sequential(*[m for _, m in layers[a:b]])
        names = []
        for j, (q, m) in enumerate(layers[a:b]):
            names += [(f"{j}.{k}", f"{q}.{k}") for k, _ in m.named_parameters()]
            names += [(f"{j}.{k}", f"{q}.{k}") for k, _ in m.named_buffers()]
        out.append((seq, names))
    return out


def checkpointed_forward(model: nn.Module, segments: list[tuple[int, int]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.forward`` with every segment but the last checkpointed."""
    seqs = [s for s, _ in _segment_modules(model, segments)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for s in seqs[:-1]:
            x = checkpoint(s, x, use_reentrant=False)
        return seqs[-1](x)

    return forward


def stacked_checkpointed_forward(stack, segments: list[tuple[int, int]]) -> Callable:
    """``stack.forward(x, x_batched)`` of a :class:`~lssr.training.stack.Stack` with every segment but the last
    checkpointed; the stacked parameters and buffers are looked up by name at each call."""
    segs = _segment_modules(stack.template, segments)

    def run_segment(seq: nn.Sequential, names: list, x: torch.Tensor, x_batched: bool) -> torch.Tensor:
        params = {loc: stack.params[glob] for loc, glob in names if glob in stack.params}
        bufs = {loc: stack.buffers[glob] for loc, glob in names if glob in stack.buffers}

        def f(p: dict, b: dict, xx: torch.Tensor) -> torch.Tensor:
            call = lambda pp, bb, xi: functional_call(seq, (pp, bb), (xi,))  # noqa: E731
            return vmap(call, in_dims=(0, 0, 0 if x_batched else None))(p, b, xx)

        return f, params, bufs

    def forward(x: torch.Tensor, x_batched: bool) -> torch.Tensor:
        for i, (seq, names) in enumerate(segs):
            f, params, bufs = run_segment(seq, names, x, x_batched)
            x = f(params, bufs, x) if i == len(segs) - 1 else checkpoint(f, params, bufs, x, use_reentrant=False)
            x_batched = True
        return x

    return forward


def backward_keeping_buffers(loss: torch.Tensor, buffers: list[torch.Tensor] | None) -> None:
    """``loss.backward()``; with ``buffers`` (checkpointing), put them back to their values before the
    backward pass, whose recomputation of the forward pass updated batch-norm running statistics again."""
    if buffers is None:
        loss.backward()
        return
    kept = [b.clone() for b in buffers]
    loss.backward()
    with torch.no_grad():
        for b, k in zip(buffers, kept):
            b.copy_(k)
