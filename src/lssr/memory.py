"""Pre-flight estimate of a training job's peak memory, and the decision to checkpoint activations.

Before any training step, :func:`preflight` estimates the peak memory of one job (a run, or one pass of
a batched group: ``members`` stacked runs) from

- a **profile** of the model at the data's image size and dtype (:func:`profile`): one forward pass of 1
  and of 2 samples on the CPU under ``torch.autograd.graph.saved_tensors_hooks``, layer by layer along
  :func:`lssr.models.forward_layers`, counting the bytes each layer saves for the backward pass (each
  storage once, parameters excluded) and the bytes of its output; the difference of the two passes is
  the per-sample cost;
- the samples per training forward pass: b for a model with batch norm (statistics over the whole
  mini-batch), ``bn_ghost_batch`` when that is set, ``chunk_size`` for a model without batch norm;
- activation checkpointing (:func:`segments_for`): the layer chain cut into segments; only each
  segment's input is kept, and one segment's saved tensors are recomputed at a time in the backward pass.

The estimate (:class:`Estimate`) is resident bytes (weights, their gradients, buffers, the training and
test data on the device) plus the step's activations: the peak over the backward pass of the saved
tensors still live (each is freed once its layer's backward has run; with checkpointing, the kept
segment inputs plus the saved tensors of the segment being recomputed) plus the gradients of the
current layer's output and input, times samples per pass times members.
Evaluation runs without autograd in ``chunk_size`` chunks and is counted when it is larger.

Checked against measured peaks on the CPU in tests/test_memory.py (peak RSS of a subprocess, within
25%); on a GPU add the CUDA context and cuDNN workspaces, which :data:`CUDA_RESERVE` covers roughly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from .errors import LssrError

#: A job is refused when its estimate exceeds this fraction of the device's free memory.
USABLE_FRACTION = 0.9
#: Bytes kept aside on a CUDA device for cuDNN workspaces and allocator fragmentation (not measured).
CUDA_RESERVE = 1 << 30
GIB = float(1 << 30)


class DoesNotFitError(LssrError):
    """A job that will not fit its device: the message names the run, the estimate, the memory and the knobs."""


@dataclass(frozen=True)
class Profile:
    """Per-sample bytes of one model at one input shape and dtype, per layer of the forward chain."""

    saved: tuple[int, ...]  # bytes saved for backward, per layer (each storage counted at its first saver)
    out: tuple[int, ...]  # bytes of each layer's output
    input: int  # bytes of one input sample
    param_bytes: int
    buffer_bytes: int


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _layer_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[int], list[int]]:
    """Bytes saved for backward and bytes of the output, per layer, for one forward of ``x``."""
    from .models import forward_layers

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[tuple[int, int]] = set()
    saved: list[int] = []
    out: list[int] = []
    current = [0]

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if key[0] not in params and key not in seen:
            seen.add(key)
            current[0] += key[1]
        return t

    h = x.requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _, layer in forward_layers(model):
            current[0] = 0
            h = layer(h)
            saved.append(current[0])
            out.append(h.numel() * h.element_size())
    return saved, out


@lru_cache(maxsize=64)
def profile(model_name: str, batch_norm: bool, channels: int, pixels: int, classes: int, dtype: torch.dtype) -> Profile:
    """The per-sample :class:`Profile` of a registered model (measured on the CPU, a few forward passes)."""
    from .models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, channels, classes, batch_norm).to(dtype=dtype).train()
    runs = []
    for k in (2, 3):  # two samples at least: batch norm in train mode needs them on a 1x1 feature map
        runs.append(_layer_bytes(model, torch.randn(k, channels, pixels, pixels, dtype=dtype)))
    (s1, o1), (s2, o2) = runs
    saved = tuple(max(b - a, 0) for a, b in zip(s1, s2))
    out = tuple(b - a for a, b in zip(o1, o2))
    size = torch.empty((), dtype=dtype).element_size()
    return Profile(
        saved=saved,
        out=out,
        input=channels * pixels * pixels * size,
        param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
    )


def segments_for(p: Profile) -> list[tuple[int, int]]:
    """Cut the layer chain into contiguous segments [start, stop) that minimise the checkpointed activation
    bytes (segment inputs kept + the largest segment's saved tensors); each segment is roughly equal in bytes."""
    best, best_cost = [(0, len(p.saved))], math.inf
    total = sum(p.saved)
    for k in range(1, len(p.saved) + 1):
        segs, start, acc = [], 0, 0
        for i, s in enumerate(p.saved):
            if acc and acc + s > total / k:
                segs.append((start, i))
                start, acc = i, 0
            acc += s
        segs.append((start, len(p.saved)))
        cost = checkpointed_bytes(p, segs)
        if cost < best_cost:
            best, best_cost = segs, cost
    return best


def _segment_input(p: Profile, start: int) -> int:
    return p.input if start == 0 else p.out[start - 1]


def _backward_peak(p: Profile, segs: list[tuple[int, int]]) -> int:
    """Per-sample peak of forward + backward along the chain cut into ``segs`` (one segment: no checkpointing).

    The backward pass runs the segments last to first; while segment s runs, the inputs of segments 1..s
    are still kept (later ones are freed) and its layers' saved tensors are freed as their backward runs,
    so at layer l the live bytes are the saved tensors of the segment's layers up to l plus the gradients
    of l's output and input. The batch's own input (gathered from the training set) is counted once."""
    peak, kept = 0, 0
    for i, (a, b) in enumerate(segs):
        if i > 0:
            kept += _segment_input(p, a)
        saved = 0
        for k in range(a, b):
            saved += p.saved[k]
            peak = max(peak, kept + saved + p.out[k] + _segment_input(p, k))
    return p.input + peak


def checkpointed_bytes(p: Profile, segs: list[tuple[int, int]]) -> int:
    """Per-sample activation bytes of a step with checkpointed segments (the last segment is not checkpointed)."""
    return _backward_peak(p, segs)


def plain_bytes(p: Profile) -> int:
    """Per-sample activation bytes of a plain step (every saved tensor kept until its backward runs)."""
    return _backward_peak(p, [(0, len(p.saved))])


def eval_bytes(p: Profile) -> int:
    """Per-sample bytes of a forward pass without autograd: the largest input + output pair."""
    ins = [p.input, *p.out[:-1]]
    return max(i + o for i, o in zip(ins, p.out))


@dataclass(frozen=True)
class Estimate:
    """Peak memory of one job, in bytes: resident (weights, gradients, buffers, data) + the step's activations."""

    resident: int
    step_plain: int  # activations of a plain step
    step_checkpointed: int  # activations with checkpointing
    eval: int
    checkpointing: bool  # the one the job will use

    @property
    def step(self) -> int:
        return self.step_checkpointed if self.checkpointing else self.step_plain

    @property
    def peak(self) -> int:
        return self.resident + max(self.step, self.eval)

    def peak_with(self, checkpointing: bool) -> int:
        return self.resident + max(self.step_checkpointed if checkpointing else self.step_plain, self.eval)


def samples_per_pass(cfg) -> int:
    """Samples per training forward pass: ``bn_ghost_batch`` when set, b for a batch-norm model (statistics
    over the whole mini-batch), ``chunk_size`` for a model without batch norm."""
    b = cfg.batch_size
    if cfg.model.batch_norm:
        return min(b, cfg.bn_ghost_batch) if cfg.bn_ghost_batch is not None else b
    return min(b, cfg.chunk_size)


def estimate(
    cfg,
    image_shape: tuple[int, ...],
    classes: int,
    n_test: int,
    members: int,
    dtype: torch.dtype,
    checkpointing: bool = False,
) -> Estimate:
    """The :class:`Estimate` of a job training ``members`` runs of ``cfg`` on images of ``image_shape``."""
    c, h = image_shape[0], image_shape[-1]
    p = profile(cfg.model.name, cfg.model.batch_norm, c, h, classes, dtype)
    per_pass = samples_per_pass(cfg)
    resident = members * (2 * p.param_bytes + 2 * p.buffer_bytes) + (cfg.data.n + n_test) * p.input
    return Estimate(
        resident=resident,
        step_plain=members * per_pass * plain_bytes(p),
        step_checkpointed=members * per_pass * checkpointed_bytes(p, segments_for(p)),
        eval=members * min(cfg.chunk_size, max(cfg.data.n, n_test)) * eval_bytes(p),
        checkpointing=checkpointing,
    )


def device_memory(device: torch.device) -> int | None:
    """Bytes the job may use: free memory of a CUDA device, available RAM on the CPU (None if unknown)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(free - CUDA_RESERVE, 0)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is a dependency of the test extra only: read Linux's own estimate
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None


def _gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def preflight(
    cfg,
    image_shape: tuple[int, ...],
    classes: int,
    n_test: int,
    members: int,
    dtype: torch.dtype,
    device: torch.device,
    run: str,
    available: int | None = None,
) -> Estimate:
    """Decide on activation checkpointing and refuse a job that will not fit.

    ``activation_checkpointing``: ``never`` / ``always`` as told; ``auto`` checkpoints only a batch-norm model
    whose plain step does not fit (a model without batch norm is bounded by ``chunk_size`` instead).
    Raises :class:`DoesNotFitError` naming ``run``, the estimate, the device's memory and the knobs."""
    mode = cfg.activation_checkpointing
    est = estimate(cfg, image_shape, classes, n_test, members, dtype, checkpointing=mode == "always")
    avail = device_memory(device) if available is None else available
    if avail is None:
        return est
    budget = int(USABLE_FRACTION * avail)
    if mode == "auto" and est.peak > budget and cfg.model.batch_norm and est.step_checkpointed < est.step_plain:
        est = estimate(cfg, image_shape, classes, n_test, members, dtype, checkpointing=True)
    if est.peak <= budget:
        return est
    ck = "on" if est.checkpointing else "off"
    raise DoesNotFitError(
        f"{run}: estimated peak memory {_gib(est.peak)} (activation checkpointing {ck}; "
        f"{_gib(est.peak_with(True))} with it, {_gib(est.peak_with(False))} without; {members} member(s), "
        f"{samples_per_pass(cfg)} samples per forward pass, {cfg.model.name} at {image_shape[-1]} px) exceeds "
        f"{USABLE_FRACTION:.0%} of the {_gib(avail)} free on {device}. Knobs: fewer members per pass "
        f"(`lssr train-batch --members-per-pass K`), activation_checkpointing: always, a device with more memory "
        f"or data-parallel training over more GPUs (experiments.fig5.data_parallel; docs/SCALING.md)"
    )
