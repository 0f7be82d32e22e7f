"""One run: vanilla SGD / GD, θ ← θ − η g_b, constant η, no momentum, no weight decay.

- b from 1 to n (b = n is full-batch GD). A model with batch norm runs the forward pass over the whole
  mini-batch, so its statistics are those of the b samples (``bn_ghost_batch: N`` opts into ghost batches
  of N); activation checkpointing keeps that within memory where the pre-flight estimate says it is
  needed (:mod:`lssr.memory`, :mod:`lssr.training.forward`). A model without batch norm is computed in
  memory chunks of ``chunk_size`` samples (chunk losses summed, divided by b once).
- Sampling without replacement (a fresh permutation each epoch, n // b steps an epoch; default)
  or with replacement (b indices drawn uniformly each step).
- One seed drives the initialisation (global RNG at model build) and the batch sampler (its own
  ``torch.Generator``); the same config gives bit-identical metrics on the CPU.
- Probes (:class:`Probe`) observe θ_t, the batch indices of step t and the full training loss before
  and after the step, at the steps they ask for, without changing the trajectory (their RNG is their
  own; batch-norm buffers are restored after each probe call).
- Outputs in ``out_dir``: ``metrics.csv``, ``run.json`` (config, seeds, versions, device, wall time,
  status ``completed`` | ``diverged``) and ``model.pt`` (final weights), each written atomically.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import pandas as pd
import torch
from torch import nn

from ..config import RunConfig
from ..data import Subset
from ..io import CsvLog
from ..losses import per_sample_loss
from .core import (
    METRIC_COLUMNS,
    RunResult,
    evaluate_members,
    init_model,
    progress_bar,
    record_batch_loss,
    set_up,
    status_of,
    step_loop,
    total_steps,
)
from .forward import backward_keeping_buffers, checkpointed_forward, model_profile, plan_step
from .outputs import CHECKPOINT, fresh_start_warning, git_commit, load_checkpoint, save_checkpoint, write_run_outputs
from .sampler import BatchSampler


def chunked_loss_and_grad(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    loss_per_sample: Callable,
    chunk_size: int,
    forward: Callable | None = None,
) -> torch.Tensor:
    """Accumulate ∇ L_B = ∇ (1/b) Σ_{i∈B} ℓ_i into ``p.grad`` in forward passes of ``chunk_size`` samples;
    return L_B (detached). ``forward`` (default ``model``) may be checkpointed
    (:func:`~lssr.training.forward.checkpointed_forward`): then the batch-norm buffers are kept as the
    forward pass left them. For a batch-norm model in train mode the training step passes chunk_size = b
    (statistics over the whole mini-batch) or ``bn_ghost_batch``."""
    total = torch.zeros((), device=x.device, dtype=x.dtype)
    b = len(idx)
    buffers = None if forward is None else list(model.buffers())
    forward = model if forward is None else forward
    for s in range(0, b, chunk_size):
        j = idx[s : s + chunk_size]
        loss = loss_per_sample(forward(x[j]), y[j]).sum() / b
        backward_keeping_buffers(loss, buffers)
        total += loss.detach()
    return total


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------


@dataclass
class StepContext:
    """What a probe sees at step t. ``model`` holds θ_t in ``before_step`` and θ_{t+1} in ``after_step``."""

    step: int
    model: nn.Module
    batch_idx: torch.Tensor
    lr: float
    data: Subset
    loss_per_sample: Callable
    train_loss_before: float = math.nan  # L(θ_t), full training set
    train_loss_after: float = math.nan  # L(θ_{t+1})


class Probe(Protocol):
    def wants(self, step: int) -> bool: ...

    def before_step(self, ctx: StepContext) -> None: ...

    def after_step(self, ctx: StepContext) -> None: ...

    def close(self) -> None: ...


def _buffers_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def _restore_buffers(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(snap[k])


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


#: What a single run's checkpoint must hold (besides the format tag and identity).
_RUN_STATE = ("step", "elapsed", "model", "optimizer", "sampler", "torch_rng", "metrics_offset")


class _Run:
    """The state of one run between steps: θ_t (model, optimizer), sampler, step t, metrics log."""

    def __init__(self, cfg: RunConfig, data: Subset, out_dir: str | Path | None, probes: list[Probe]):
        self.cfg, self.probes, self.out_dir = cfg, probes, out_dir
        self.device, self.data = set_up(cfg, data)
        self.start = time.time()
        self.n = len(self.data.y_train)
        self.model = init_model(cfg, self.data)
        self.loss_ps = per_sample_loss(cfg.loss)
        self.sampler = BatchSampler(self.n, cfg.batch_size, cfg.optim.replacement, cfg.seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr, momentum=0.0, weight_decay=0.0)
        self.T = total_steps(cfg, self.sampler.steps_per_epoch)
        self.out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="lssr-run-"))
        self.log = CsvLog(self.out / "metrics.csv", METRIC_COLUMNS)
        self.ckpt_path = self.out / CHECKPOINT
        self.step, self.elapsed_before, self.resumed_at = 0, 0.0, 0
        self.stopped_by = "budget"
        self.checkpointing = out_dir is not None and bool(cfg.checkpoint_every)
        # the pre-flight memory check, before any step: samples per forward pass, activation checkpointing
        run = cfg.name or str(out_dir or cfg.model.name)
        self.plan = plan_step(cfg, self.data, 1, self.device, run, model_profile(self.model, self.data))
        segs = self.plan.segments
        self.train_forward = None if segs is None else checkpointed_forward(self.model, segs)

    def identity(self) -> dict:
        return {"kind": "run", "config_hash": self.cfg.hash()}

    def resume_or_reset(self) -> None:
        """Resume from ``checkpoint.pt`` when it is this config's; else (none, or an unusable one: a one-line
        warning) start the metrics log afresh."""
        state = load_checkpoint(self.ckpt_path, self.identity(), _RUN_STATE) if self.checkpointing else None
        partial = self.log.partial
        if state is not None and (not partial.exists() or partial.stat().st_size < state["metrics_offset"]):
            fresh_start_warning(self.ckpt_path, f"{partial} is missing or shorter than the checkpoint says")
            self.ckpt_path.unlink()
            state = None
        if state is None:
            self.log.reset()
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        for p, ps in zip(self.probes, state.get("probes", [])):
            if ps is not None and hasattr(p, "load_state_dict"):
                p.load_state_dict(ps)
        self.log.truncate(state["metrics_offset"])
        self.step, self.elapsed_before = state["step"], state["elapsed"]
        self.resumed_at = self.step

    def checkpoint(self) -> None:
        state = {
            "step": self.step,
            "elapsed": self.elapsed_before + time.time() - self.start,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "probes": [p.state_dict() if hasattr(p, "state_dict") else None for p in self.probes],
            "metrics_offset": self.log.flush(),
        }
        save_checkpoint(self.ckpt_path, self.identity(), state)

    def full_train_loss(self) -> float:
        """L(θ) on the whole training set, batch norm in ``bn_mode``, running statistics left untouched."""
        model, data, chunk, n = self.model, self.data, self.cfg.chunk_size, self.n
        was = model.training
        model.train(self.cfg.bn_mode == "train")
        snap = _buffers_snapshot(model)
        with torch.no_grad():
            x, y = data.x_train, data.y_train
            ps = self.loss_ps
            loss = sum(float(ps(model(x[s : s + chunk]), y[s : s + chunk]).sum()) for s in range(0, n, chunk)) / n
        _restore_buffers(model, snap)
        model.train(was)
        return loss

    def _observe(self, active: list[Probe], ctx: StepContext, hook: str) -> None:
        """Call the probes' ``hook`` (``before_step`` / ``after_step``); batch-norm buffers are restored afterwards."""
        snap = _buffers_snapshot(self.model)
        for p in active:
            getattr(p, hook)(ctx)
        _restore_buffers(self.model, snap)

    def sgd_step(self, row: dict) -> float | None:
        """θ_{t+1} = θ_t − η ∇L_B(θ_t) with the probes around it; the batch loss, None if it diverged."""
        idx = self.sampler.next().to(self.device)
        active = [p for p in self.probes if p.wants(self.step)]
        ctx = None
        if active:
            ctx = StepContext(self.step, self.model, idx, self.cfg.optim.lr, self.data, self.loss_ps)
            ctx.train_loss_before = self.full_train_loss()
            self._observe(active, ctx, "before_step")
        self.optimizer.zero_grad(set_to_none=True)
        data = self.data
        loss = chunked_loss_and_grad(
            self.model, data.x_train, data.y_train, idx, self.loss_ps, self.plan.per_pass, self.train_forward
        )
        batch_loss = float(loss)
        if record_batch_loss(self.cfg, row, self.step, batch_loss):
            return None
        self.optimizer.step()
        if ctx is not None:
            ctx.train_loss_after = self.full_train_loss()
            self._observe(active, ctx, "after_step")
        return batch_loss

    # -- the hooks of core.step_loop ----------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def at_step(self) -> None:
        """A checkpoint every ``checkpoint_every`` steps (not at the step the run resumed at)."""
        if self.checkpointing and self.step % self.cfg.checkpoint_every == 0 and self.step > self.resumed_at:
            self.checkpoint()

    def evaluate(self, train: bool = True, test: bool = True) -> dict:
        """L(θ) and accuracy on the training and / or test sets (eval mode)."""
        model = self.model
        forward = lambda x: model(x).unsqueeze(0)  # noqa: E731 - one member
        return evaluate_members(model, forward, 1, self.data, self.loss_ps, self.cfg.chunk_size, train, test)[0]

    def record(self, row: dict) -> None:
        self.log.append(row)

    def loop(self, bar) -> None:
        """Steps until the stop rule says stop (:func:`~lssr.training.core.step_loop`)."""
        self.model.train()
        step_loop(self, bar)

    def finish(self) -> RunResult:
        """Close the probes, finalize ``metrics.csv`` and write ``model.pt`` and ``run.json``."""
        for p in self.probes:
            p.close()
        wall = self.elapsed_before + time.time() - self.start
        metrics = pd.read_csv(self.log.finalize())
        status = status_of(self.stopped_by)
        if self.out_dir is None:
            shutil.rmtree(self.out, ignore_errors=True)
        else:
            write_run_outputs(
                self.out,
                self.cfg,
                self.model.state_dict(),
                metrics,
                self.data,
                self.device,
                wall,
                status=status,
                steps=self.step,
                stopped_by=self.stopped_by,
                resumed=self.resumed_at > 0,
                extra=self.plan.record(),
            )
            if self.ckpt_path.exists():
                self.ckpt_path.unlink()
        return RunResult(status, self.step, metrics, self.model, wall)


def train(
    cfg: RunConfig,
    data: Subset,
    out_dir: str | Path | None = None,
    probes: list[Probe] | None = None,
    progress: bool = True,
) -> RunResult:
    """Train ``cfg.model`` on ``data`` with vanilla SGD / GD as configured; write outputs to ``out_dir``.

    With ``cfg.checkpoint_every`` and an ``out_dir``, a resumable ``checkpoint.pt`` (weights, sampler
    and RNG states, step counter, probe states, byte offset of the metrics log) is written every
    that many steps; a run restarted on the same folder and config resumes from it, and its final
    tables are byte-identical to an uninterrupted run's.
    """
    git_commit()  # the code this run trains with, read now (cached for the outputs written at its end)
    run = _Run(cfg, data, out_dir, list(probes or []))
    run.resume_or_reset()
    desc = f"train {cfg.name or cfg.model.name} b={cfg.batch_size} η={cfg.optim.lr:g}"
    bar = progress_bar(progress, run.T, desc, initial=run.step)
    run.loop(bar)
    if bar is not None:
        bar.close()
    return run.finish()
