"""How long a training job takes: the ``runtime`` (minutes) the workflow asks the scheduler for.

Pure arithmetic on a run config (no torch): seconds = steps x per-step cost + evaluations + probes, then
minutes = ⌈2 x seconds / 60⌉ + 10 (the margin: a factor 2 on the estimate plus 10 minutes for the process
start, subset loading and writing outputs), capped by ``resources.runtime`` when the workflow config sets
it (a job that hits the cap is killed, and resumes from its checkpoint when retried).

- per step: ``STEP_OVERHEAD_S`` (host dispatch / kernel launches, whatever b) + members x b x F / rate,
  with F the forward+backward FLOPs of one sample (:data:`FWD_BWD_GFLOPS` at the model's reference image
  size, scaled with the pixel count: the convolutions dominate) and ``rate`` the effective FLOP/s of the
  device (:data:`FLOPS_PER_S`; per thread on the CPU, times the model's :data:`CPU_EFFICIENCY`);
- evaluation, every ``eval_every`` steps and at the end: members x (n + test-set size) x F / 3 (forward
  only); goal checks (``goal_every``) between them: members x n x F / 3 (the training set only; the test set
  where a member stops is the evaluation at the end of this upper bound);
- probes (single runs only), at every step the probe schedule names (:func:`probed_steps`: every step of the
  dense window ``[start, dense_until)``, then every ``probe.every`` steps): :data:`PROBE_GRADIENTS` full-batch
  gradients (n x F) plus two batch gradients per sampled batch (``expected_change_batches``,
  ``resultant_batches``).

:func:`training_jobs` and :func:`gpu_hours` sum the same estimate (without the margin) over every training job
of a workflow plan: the GPU-hour estimate of each figure that docs/PERFORMANCE.md and docs/CLUSTER.md quote
(``python benchmarks/gpu_hours.py`` prints it).

An upper bound in steps: every member trains its whole budget (diverged runs stop early). The rates are
assumptions (docs/PERFORMANCE.md: 25 TFLOP/s is the assumed H100 rate for these small convolutions; the
CPU rate, digits_cnn's CPU efficiency and the 13.8 ms host overhead per batched step were measured on the 2-core
test machine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .config import ProbeConfig, RunConfig, config_from_dict

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
#: The fraction of the CPU rate a model reaches (default 1: cnn6 and resnet9 at 32-96 px ran at 23-41 GFLOP/s per
#: thread, benchmarks/README.md "per-sample"). digits_cnn's small convolutions are memory-bound: a batched group of
#: 105 members at b = 512 on 8-px images trained at 0.144 s per member and epoch on one thread
#: (results/bench/fig5_checks_105.json), 1024 x 1.0237 MFLOP / 0.144 s = 7.3 GFLOP/s, 0.24 of the rate.
CPU_EFFICIENCY = {"digits_cnn": 0.24}
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


def probed_steps(p: ProbeConfig, T: int) -> int:
    """How many of the steps 0..T the probe schedule ``p`` probes (as ``DiagnosticsProbe.scheduled``): every step
    in [start, dense_until), then start, start + every, ..., before ``stop``."""
    end = T + 1 if p.stop is None else min(p.stop, T + 1)
    if end <= p.start:
        return 0
    dense_end = min(max(p.dense_until, p.start), end)
    dense = dense_end - p.start
    # start + k * every in [dense_end, end)
    first_k = -(-(dense_end - p.start) // p.every)
    last_k = (end - 1 - p.start) // p.every
    return dense + max(last_k - first_k + 1, 0)


def evaluation_steps(cfg: RunConfig, T: int) -> tuple[int, int]:
    """Of the steps 0..T, how many evaluate the training and test sets (every ``eval_every`` steps, and T) and how
    many are goal checks alone (every ``goal_every`` steps, the others), as ``lssr.training.core`` schedules them."""
    e, g = cfg.eval_every, cfg.goal_every
    full = T // e + 1 + (T % e != 0)
    if g is None:
        return full, 0
    both = T // math.lcm(e, g) + 1  # multiples of eval_every and goal_every (0 among them)
    checks = T // g + 1 - both - (T % g == 0 and T % e != 0)
    return full, checks


def job_seconds(cfgs: Sequence[RunConfig], threads: int = 1) -> float:
    """Estimated seconds of one job training ``cfgs`` (one run, or a batched group of runs that differ only
    in η / seed / stop thresholds), on the device the configs name (``auto`` counts as the CPU)."""
    cfg = cfgs[0]
    members, n, b, T = len(cfgs), cfg.data.n, cfg.batch_size, total_steps(cfg)
    source = cfg.data.dataset
    F = flops_per_sample(cfg.model.name, cfg.data.resize or NATIVE_PIXELS.get(source, 64))
    if cfg.device.startswith("cuda"):
        rate = FLOPS_PER_S["cuda"]
    else:
        rate = FLOPS_PER_S["cpu"] * threads * CPU_EFFICIENCY.get(cfg.model.name, 1.0)
    steps = T * (STEP_OVERHEAD_S + members * b * F / rate)
    full, checks = evaluation_steps(cfg, T)
    evals = members * (full * (n + TEST_SET_SIZE.get(source, 10000)) + checks * n) * F / 3 / rate
    probes = 0.0
    if cfg.probe is not None:
        p = cfg.probe
        per_probe = PROBE_GRADIENTS * n * F + 2 * (p.expected_change_batches + p.resultant_batches) * b * F
        probes = probed_steps(p, T) * per_probe / rate
    return steps + evals + probes


def runtime_minutes(seconds: float, cap: int | None = None) -> int:
    """The ``runtime`` resource: ⌈2 x seconds / 60⌉ + 10 minutes, at most ``cap`` when given."""
    minutes = math.ceil(MARGIN_FACTOR * seconds / 60) + MARGIN_MIN
    return minutes if cap is None else min(minutes, cap)


@dataclass(frozen=True)
class JobEstimate:
    """One training job of a workflow plan: a single run or a Figure-5 group, its estimated seconds on one
    device (:func:`job_seconds`; a data-parallel group shares them over its ``gpus``)."""

    name: str
    figure: str  # "fig5" for a Figure-5 group (or run), else the figures the run serves, joined by "+"
    dataset: str  # the subset the job trains on (e.g. cifar10-8k-seed0)
    runs: int
    gpus: int
    seconds: float


def training_jobs(plan) -> list[JobEstimate]:
    """Every training job of ``plan`` (a :class:`lssr.workflow.Plan`) with its :func:`job_seconds`."""
    threads = plan.resources.threads
    cfgs = {rid: config_from_dict(raw) for rid, raw in plan.runs.items()}
    serves: dict[str, list[str]] = {}
    for fig, rids in plan.figures.items():
        for rid in rids:
            serves.setdefault(rid, []).append(fig)
    jobs = []
    grouped = plan.grouped_runs
    for g, rids in plan.groups.items():
        if plan.settings.batch_runs:
            c = [cfgs[r] for r in rids]
            gpus = plan.data_parallel.get(g, 1)
            jobs.append(JobEstimate(g, "fig5", plan.run_subset[rids[0]], len(c), gpus, job_seconds(c, threads)))
    for rid, c in cfgs.items():
        if rid in grouped:
            continue
        figure = "+".join(sorted(serves.get(rid, []))) or "none"
        figure = "fig5" if "fig5" in serves.get(rid, []) else figure
        jobs.append(JobEstimate(rid, figure, plan.run_subset[rid], 1, 1, job_seconds([c], threads)))
    return jobs


def gpu_hours(plan) -> dict[str, dict]:
    """The GPU-hour estimate of ``plan``, in two parts: ``"Figure 5"`` (its jobs) and ``"Figures 1-4, C.5, S1"``
    (every other training job): per part the number of jobs and runs, the hours (sum of :func:`job_seconds` /
    3600), the hours per data set and the longest job."""
    parts: dict[str, list[JobEstimate]] = {"Figure 5": [], "Figures 1-4, C.5, S1": []}
    for j in training_jobs(plan):
        parts["Figure 5" if j.figure == "fig5" else "Figures 1-4, C.5, S1"].append(j)
    out = {}
    for label, jobs in parts.items():
        if not jobs:
            continue
        by_set: dict[str, float] = {}
        for j in jobs:
            by_set[j.dataset] = by_set.get(j.dataset, 0.0) + j.seconds / 3600
        longest = max(jobs, key=lambda j: j.seconds)
        out[label] = {
            "jobs": len(jobs),
            "runs": sum(j.runs for j in jobs),
            "hours": sum(j.seconds for j in jobs) / 3600,
            "by_dataset": by_set,
            "longest": {"name": longest.name, "hours": longest.seconds / 3600},
        }
    return out
