"""How long a training job takes: the ``runtime`` (minutes) the workflow asks the scheduler for.

Pure arithmetic on a run config (no torch): seconds = steps x per-step cost + evaluations + probes, then
minutes = ⌈2 x seconds / 60⌉ + 10 (the margin: a factor 2 on the estimate plus 10 minutes for the process
start, subset loading and writing outputs), capped by ``resources.runtime`` when the workflow config sets
it (a job that hits the cap is killed, and resumes from its checkpoint when retried).

- per step: ``STEP_OVERHEAD_S`` (host dispatch / kernel launches, whatever b) + members x b x F / rate,
  with F the forward+backward FLOPs of one sample (:data:`FWD_BWD_GFLOPS` at the model's reference image
  size, scaled with the pixel count: the convolutions dominate) and ``rate`` the effective FLOP/s of the
  device (:data:`FLOPS_PER_S`; per thread on the CPU);
- evaluation, every ``eval_every`` steps and at the end: members x (n + test-set size) x F / 3 (forward
  only);
- probes (single runs only), every ``probe.every`` steps: :data:`PROBE_GRADIENTS` full-batch gradients
  (n x F) plus two batch gradients per sampled batch (``expected_change_batches``, ``resultant_batches``).

An upper bound in steps: every member trains its whole budget (diverged runs stop early). The rates are
assumptions (docs/PERFORMANCE.md: 25 TFLOP/s is the assumed H100 rate for these small convolutions; the
CPU rate and the 13.8 ms host overhead per batched step were measured on the 2-core test machine).
"""

from __future__ import annotations

import math
from typing import Sequence

from .config import RunConfig

#: Forward+backward GFLOPs of one sample (batch norm, train mode) at (reference pixels, channels), counted
#: with torch.utils.flop_counter (tests/test_cost.py recounts them).
FWD_BWD_GFLOPS = {
    "cnn6": (32, 3, 0.4318),
    "resnet9": (32, 3, 0.8027),
    "wrn28_2": (32, 3, 1.2852),
    "digits_cnn": (8, 1, 0.0010237),
}
#: Image side of each source (``data.resize`` overrides it); imagefolder: an assumption.
NATIVE_PIXELS = {"cifar10": 32, "cifar100": 32, "stl10": 96, "tinyimagenet": 64, "digits": 8, "imagefolder": 64}
#: Size of the test split each evaluation also runs over.
TEST_SET_SIZE = {
    "cifar10": 10000,
    "cifar100": 10000,
    "stl10": 8000,
    "tinyimagenet": 10000,
    "digits": 773,
    "imagefolder": 10000,
}
#: Effective forward+backward FLOP/s (the CPU's per thread).
FLOPS_PER_S = {"cuda": 25e12, "cpu": 30e9}
STEP_OVERHEAD_S = 0.0138
PROBE_GRADIENTS = 100
MARGIN_FACTOR, MARGIN_MIN = 2.0, 10


def flops_per_sample(model: str, pixels: int) -> float:
    """Forward+backward FLOPs of one sample of ``model`` on ``pixels`` x ``pixels`` images."""
    ref_px, _, gflops = FWD_BWD_GFLOPS[model]
    return gflops * 1e9 * (pixels / ref_px) ** 2


def total_steps(cfg: RunConfig) -> int:
    """The step budget T (as :func:`lssr.training.total_steps`, with n // b steps an epoch)."""
    spe = max(cfg.data.n // cfg.batch_size, 1)
    limits = [s for s in (cfg.stop.steps,) if s is not None]
    if cfg.stop.epochs is not None:
        limits.append(math.ceil(cfg.stop.epochs * spe))
    return min(limits)


def job_seconds(cfgs: Sequence[RunConfig], threads: int = 1) -> float:
    """Estimated seconds of one job training ``cfgs`` (one run, or a batched group of runs that differ only
    in η / seed / stop thresholds), on the device the configs name (``auto`` counts as the CPU)."""
    cfg = cfgs[0]
    members, n, b, T = len(cfgs), cfg.data.n, cfg.batch_size, total_steps(cfg)
    source = cfg.data.dataset
    F = flops_per_sample(cfg.model.name, cfg.data.resize or NATIVE_PIXELS.get(source, 64))
    rate = FLOPS_PER_S["cuda"] if cfg.device.startswith("cuda") else FLOPS_PER_S["cpu"] * threads
    steps = T * (STEP_OVERHEAD_S + members * b * F / rate)
    evals = (T // cfg.eval_every + 1) * members * (n + TEST_SET_SIZE.get(source, 10000)) * F / 3 / rate
    probes = 0.0
    if cfg.probe is not None:
        p = cfg.probe
        per_probe = PROBE_GRADIENTS * n * F + 2 * (p.expected_change_batches + p.resultant_batches) * b * F
        probes = (T // p.every + 1) * per_probe / rate
    return steps + evals + probes


def runtime_minutes(seconds: float, cap: int | None = None) -> int:
    """The ``runtime`` resource: ⌈2 x seconds / 60⌉ + 10 minutes, at most ``cap`` when given."""
    minutes = math.ceil(MARGIN_FACTOR * seconds / 60) + MARGIN_MIN
    return minutes if cap is None else min(minutes, cap)
