"""Data-parallel training over R processes (torch.distributed, launched by torchrun), for the Figure-5 cells
whose whole-batch step does not fit one GPU (``experiments.fig5.data_parallel`` in the workflow config).

Launch (the group job of such a cell does exactly this)::

    torchrun --standalone --nproc-per-node R -m lssr train-batch --data-parallel R --config ... --out ...

What a step computes is the single-process step of :func:`~lssr.training.train`, split over the ranks:

- every rank holds the same θ_t (the same seeded initialisation, the same updates) and draws the same batch
  indices B_t (a :class:`~lssr.training.BatchSampler` with the run's seed); rank r takes its contiguous
  shard of B_t (``torch.tensor_split``: shards differ by at most one sample when R does not divide b);
- the loss of a shard is Σ_{i ∈ shard} ℓ_i / b with the *global* b, and the gradients are all-reduced
  (SUM), so every rank gets ∇ L_B = ∇ (1/b) Σ_{i∈B} ℓ_i, and the batch loss L_B likewise;
- batch norm is synchronised: its statistics are those of the whole mini-batch of b samples (all ranks'
  shards). On CUDA with ``nn.SyncBatchNorm`` (``convert_sync_batchnorm``); elsewhere (the gloo tests on the
  CPU, where torch has no kernels for ``nn.SyncBatchNorm``) with :class:`AllReduceBatchNorm`, the same
  statistics from all-reduced sums. In eval mode both normalise with the running statistics, no sync;
- evaluation is sharded: each rank evaluates its contiguous part of the training and test sets and the
  loss sums and correct counts are all-reduced (float64), then divided by n;
- the pre-flight memory check (:mod:`lssr.memory`) sees the per-rank job: ⌈b / R⌉ samples per forward
  pass; the ranks agree on activation checkpointing (if one needs it, all use it: the recomputation of a
  synchronised batch norm is itself a collective) and a refusal on one rank stops all of them.

The members of a group (η, seed) are trained one after another with a plain module (not the vmapped
stack of :mod:`.batched`). Rank 0 writes each member's ``metrics.csv``, ``model.pt`` and ``run.json``
(with ``data_parallel: {world_size, backend}``); the other ranks write nothing. No checkpoint / resume
(``checkpoint_every`` is ignored with a warning, as in ``train-batch``).

Devices: on CUDA each rank takes a GPU of its own (``device: cuda`` / ``auto``: the first free GPU by
:mod:`lssr.gpus`, so local jobs do not collide) and the backend is nccl; on the CPU gloo.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import RunConfig
from ..data import Subset
from ..errors import LssrError
from ..losses import per_sample_loss
from ..memory import DoesNotFitError
from .batched import check_batchable
from .core import (
    METRIC_COLUMNS,
    RunResult,
    init_model,
    progress_bar,
    record_batch_loss,
    resolve_device,
    set_up,
    status_of,
    step_loop,
    total_steps,
)
from .forward import StepPlan, backward_keeping_buffers, checkpointed_forward, model_profile, plan_step
from .outputs import git_commit, write_metrics, write_run_outputs
from .sampler import BatchSampler


class DataParallelError(LssrError):
    """A data-parallel job that cannot run as asked: the message names the setting and the fix."""


def launch_command(world_size: int) -> str:
    """The command that starts ``lssr train-batch`` data-parallel over ``world_size`` processes."""
    return f"torchrun --standalone --nproc-per-node {world_size} -m lssr train-batch --data-parallel {world_size}"


# ---------------------------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def record(self) -> dict:
        """The ``data_parallel`` entry of run.json."""
        return {"data_parallel": {"world_size": self.size, "backend": self.backend}}


def launch_env(world_size: int) -> int:
    """This process's rank, after checking that torchrun started ``world_size`` processes."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        raise DataParallelError(
            f"--data-parallel {world_size}: this process was not started by torchrun (no RANK / WORLD_SIZE in "
            f"its environment); launch it as `{launch_command(world_size)} --config ... --out ...`"
        )
    if int(env["WORLD_SIZE"]) != world_size:
        raise DataParallelError(
            f"--data-parallel {world_size}, but torchrun started {env['WORLD_SIZE']} processes (WORLD_SIZE); "
            f"give torchrun --nproc-per-node {world_size}"
        )
    return int(env["RANK"])


def init_world(cfg: RunConfig, world_size: int) -> World:
    """Join the process group (nccl on CUDA, gloo on the CPU); each rank on a device of its own."""
    if world_size < 2:
        raise DataParallelError(f"--data-parallel {world_size}: give 2 or more processes (1 is `train-batch`)")
    rank = launch_env(world_size)
    if re.fullmatch(r"cuda:\d+", cfg.device):
        raise DataParallelError(
            f"device: {cfg.device} would put every rank on one GPU; use device: cuda (each rank claims its own)"
        )
    device = resolve_device(cfg.device)  # several visible GPUs: each rank claims a free one (lssr.gpus)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    devices: list = [None] * world_size
    dist.all_gather_object(devices, str(device))
    if device.type == "cuda" and len(set(devices)) < world_size:
        raise DataParallelError(
            f"--data-parallel {world_size} needs {world_size} GPUs, one per rank, but the ranks got {devices}; "
            f"make {world_size} GPUs visible (CUDA_VISIBLE_DEVICES) or free them"
        )
    return World(rank, world_size, device, backend)


def shard(length: int, world: World) -> tuple[int, int]:
    """[start, stop) of rank ``world.rank``'s contiguous part of ``length`` items (sizes differ by at most 1)."""
    base, extra = divmod(length, world.size)
    start = world.rank * base + min(world.rank, extra)
    return start, start + base + (1 if world.rank < extra else 0)


# ---------------------------------------------------------------------------------------------
# Synchronised batch norm
# ---------------------------------------------------------------------------------------------


class AllReduceBatchNorm(_BatchNorm):
    """Batch norm in train mode over the union of every rank's samples: the mean from the all-reduced sums,
    then the (biased) variance from the all-reduced centred squares, differentiable through
    ``torch.distributed.nn.functional.all_reduce``; the running statistics are updated as ``F.batch_norm``
    does (unbiased variance, ``momentum``). In eval mode: plain batch norm with the running statistics.
    Used off CUDA, where ``nn.SyncBatchNorm`` has no kernels."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count)
        mean = all_reduce(x.sum(dims)) / n
        xc = x - mean.view(shape)
        var = all_reduce((xc * xc).sum(dims)) / n
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        return y


def _all_reduce_bn(module: nn.Module) -> nn.Module:
    """``module`` with every batch-norm layer replaced by an :class:`AllReduceBatchNorm` holding its state."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        out = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        out.load_state_dict(module.state_dict())
        out = out.to(device=module.running_mean.device, dtype=module.running_mean.dtype).train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _all_reduce_bn(child))
    return out


def synchronise_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm over the whole batch of all ranks: ``nn.SyncBatchNorm`` on CUDA, :class:`AllReduceBatchNorm`
    elsewhere. The state-dict keys stay those of the plain model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _all_reduce_bn(model)


# ---------------------------------------------------------------------------------------------
# One member, data-parallel
# ---------------------------------------------------------------------------------------------


def _agreed_plan(cfg: RunConfig, data: Subset, device: torch.device, run: str, profile) -> StepPlan:
    """The pre-flight plan of this rank's job (``profile``: the memory profile of its model); all ranks refuse
    together and checkpoint together."""
    try:
        plan, refused = plan_step(cfg, data, 1, device, run, profile), None
    except DoesNotFitError as exc:
        plan, refused = None, exc
    checkpointing = plan is not None and plan.checkpointing
    flags = torch.tensor([int(refused is not None), int(checkpointing)], dtype=torch.int64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if bool(flags[0]):
        raise refused or DataParallelError(f"{run}: another rank's pre-flight check refused the job (see its log)")
    if bool(flags[1]) and not plan.checkpointing:
        plan = plan_step(dataclasses.replace(cfg, activation_checkpointing="always"), data, 1, device, run, profile)
    return plan


class _Member:
    """One run trained data-parallel: every rank holds θ_t; rank r computes on its shard of B_t."""

    def __init__(self, cfg: RunConfig, data: Subset, world: World, out_dir: str | Path | None):
        self.cfg, self.world, self.out_dir = cfg, world, out_dir
        self.start = time.time()
        _, self.data = set_up(cfg, data)  # the n check; the data on this rank's device (set by init_world)
        self.device = world.device
        name = cfg.name or f"{cfg.model.name} b={cfg.batch_size} η={cfg.optim.lr:g}"
        self.b = b = cfg.batch_size
        if b < world.size:
            raise DataParallelError(f"{name}: b = {b} < {world.size} ranks; every rank needs a sample of the batch")
        if cfg.model.batch_norm and cfg.bn_ghost_batch is not None:
            raise DataParallelError(
                f"{name}: bn_ghost_batch: {cfg.bn_ghost_batch} with data-parallel training; synchronised batch "
                "norm is over the whole batch, so drop bn_ghost_batch or train on one device"
            )
        model = init_model(cfg, self.data)
        profile = model_profile(model, self.data)  # measured before its batch norm is synchronised across ranks
        self.model = synchronise_batch_norm(model, self.device)
        self.loss_ps = per_sample_loss(cfg.loss)
        self.sampler = BatchSampler(cfg.data.n, b, cfg.optim.replacement, cfg.seed)
        self.T = total_steps(cfg, self.sampler.steps_per_epoch)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr, momentum=0.0, weight_decay=0.0)
        self.shard = shard(b, world)
        # the pre-flight check of this rank's job: ⌈b / R⌉ samples
        per_rank = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, batch_size=math.ceil(b / world.size)))
        self.plan = _agreed_plan(
            per_rank, self.data, self.device, f"{name} (rank {world.rank} of {world.size})", profile
        )
        segs = self.plan.segments
        self.forward = self.model if segs is None else checkpointed_forward(self.model, segs)
        self.keep = None if segs is None else list(self.model.buffers())
        self.rows: list[dict] = []
        self.step, self.stopped_by = 0, "budget"

    def sgd_step(self, row: dict) -> float | None:
        """θ ← θ − η ∇L_B(θ), the gradient all-reduced over the ranks; the batch loss, None if it diverged."""
        idx = self.sampler.next().to(self.device)
        a, z = self.shard
        mine, x, y = idx[a:z], self.data.x_train, self.data.y_train
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device, dtype=x.dtype)
        for s in range(0, len(mine), self.plan.per_pass):
            j = mine[s : s + self.plan.per_pass]
            loss = self.loss_ps(self.forward(x[j]), y[j]).sum() / self.b  # the global b
            backward_keeping_buffers(loss, self.keep)
            total += loss.detach()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([total.view(1)] + [g.reshape(-1) for g in grads])
        dist.all_reduce(flat)  # SUM: the gradient of the whole batch, and L_B
        with torch.no_grad():
            offset = 1
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        batch_loss = float(flat[0])
        if record_batch_loss(self.cfg, row, self.step, batch_loss):
            return None
        self.optimizer.step()
        return batch_loss

    @torch.no_grad()
    def evaluate(self, train: bool = True, test: bool = True) -> dict:
        """L(θ) and accuracy on the training and / or test sets (eval mode), sharded over the ranks, all-reduced."""
        model, chunk, d = self.model, self.cfg.chunk_size, self.data
        splits = [
            (name, x, y)
            for name, x, y, wanted in (("train", d.x_train, d.y_train, train), ("test", d.x_test, d.y_test, test))
            if wanted
        ]
        model.eval()
        sums = []
        for _, x, y in splits:
            a, z = shard(len(x), self.world)
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.float64, device=self.device)
            for s in range(a, z, chunk):
                e = min(s + chunk, z)
                out = model(x[s:e])
                loss_sum += self.loss_ps(out, y[s:e]).sum().double()
                correct += (out.argmax(-1) == y[s:e]).sum().double()
            sums += [loss_sum, correct]
        t = torch.stack(sums)
        dist.all_reduce(t)
        model.train()
        t = t.tolist()
        row = {}
        for i, (name, x, _) in enumerate(splits):
            m = max(len(x), 1)
            row.update({f"{name}_loss": t[2 * i] / m, f"{name}_acc": t[2 * i + 1] / m})
        return row

    # -- the hooks of core.step_loop (no checkpoints on this path) -----------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def at_step(self) -> None:
        pass

    def record(self, row: dict) -> None:
        self.rows.append(row)

    def loop(self, bar) -> None:
        """:func:`~lssr.training.train`'s loop (:func:`~lssr.training.core.step_loop`) on this rank's shard."""
        self.model.train()
        step_loop(self, bar)

    def finish(self) -> RunResult:
        """Rank 0 writes ``metrics.csv``, ``model.pt`` and ``run.json``; every rank returns the result."""
        wall = time.time() - self.start
        status = status_of(self.stopped_by)
        if self.world.is_main and self.out_dir is not None:
            out = Path(self.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            metrics = write_metrics(out / "metrics.csv", self.rows)
            write_run_outputs(
                out,
                self.cfg,
                self.model.state_dict(),
                metrics,
                self.data,
                self.device,
                wall,
                status=status,
                steps=self.step,
                stopped_by=self.stopped_by,
                extra={**self.plan.record(), **self.world.record()},
            )
        else:
            metrics = pd.DataFrame(self.rows, columns=METRIC_COLUMNS)
        return RunResult(status, self.step, metrics, self.model, wall)


def train_data_parallel(
    cfgs: list[RunConfig],
    data: Subset,
    out_dirs: Sequence[str | Path | None],
    world_size: int,
    progress: bool = True,
    world: World | None = None,
) -> list[RunResult]:
    """Train the members ``cfgs`` of a group one after another, each data-parallel over the ranks."""
    git_commit()  # the code these runs train with, read now (cached for the outputs written at their end)
    check_batchable(cfgs, [c.name or f"config #{i}" for i, c in enumerate(cfgs)])
    world = world or init_world(cfgs[0], world_size)
    if cfgs[0].checkpoint_every and world.is_main:
        warnings.warn("checkpoint_every is set but data-parallel training writes no checkpoints", stacklevel=2)
    results = []
    for cfg, out in zip(cfgs, out_dirs):
        member = _Member(cfg, data, world, out)
        desc = f"train-dp[{world.size}] {cfg.model.name} b={cfg.batch_size} η={cfg.optim.lr:g}"
        bar = progress_bar(progress and world.is_main, member.T, desc)
        member.loop(bar)
        if bar is not None:
            bar.close()
        results.append(member.finish())
    return results


def run_data_parallel_from_configs(
    cfgs: list[RunConfig],
    out_dirs: Sequence[str | Path],
    world_size: int,
    data_dir: str | Path | None = None,
    progress: bool = True,
    where: Sequence[str] | None = None,
) -> list[RunResult]:
    """The ``lssr train-batch --data-parallel R`` entry point (under torchrun): join the process group, load and
    check the subset, train; the results on rank 0 (an empty list on the others)."""
    from ..data import load_subset
    from .entry import check_subset_matches, subset_for

    check_batchable(cfgs, where)
    world = init_world(cfgs[0], world_size)
    try:
        if data_dir is not None:
            data = load_subset(data_dir)
            for cfg, w in zip(cfgs, where or [str(data_dir)] * len(cfgs)):
                check_subset_matches(cfg, data, f"{data_dir} (for {w})")
        else:
            if world.is_main:
                subset_for(cfgs[0])  # built once, by rank 0
            dist.barrier()
            data = subset_for(cfgs[0])
        results = train_data_parallel(cfgs, data, list(out_dirs), world_size, progress, world)
    finally:
        dist.destroy_process_group()
    return results if world.is_main else []
