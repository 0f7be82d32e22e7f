"""Batched training: many runs that differ only in η (and optionally the seed) as one stacked model.

A Figure-5 grid trains, for each (data set, b), about ten runs that differ only in the learning rate.
:func:`train_batched` trains such a group in one process as one *stacked* model: every parameter and
buffer gets a leading member axis (``torch.func.stack_module_state`` layout) and the forward pass is
``torch.func.vmap`` over ``torch.func.functional_call`` of one template module. A convolution whose
weight carries the member axis becomes one grouped convolution, so M small runs cost about one run
with M times the width: much better use of a GPU (and of the CPU for small models) than M processes.

Equivalence with :func:`~lssr.training.train` (tested member by member in float64, within float64 round-off;
see tests/test_batched.py for why float32 runs may part at a max-pooling near-tie):

- the same initialisation: :func:`~lssr.training.core.init_model` per member, as ``train()``;
- the same batches: one :class:`~lssr.training.BatchSampler` with the same seed (members with different
  seeds get one sampler each, and the data are gathered per member);
- the same training forward pass (:mod:`lssr.training.forward`): the whole mini-batch for a batch-norm model
  (its statistics over the b samples; ghost batches of ``bn_ghost_batch`` only when set), ``chunk_size``
  chunks for a model without batch norm, activation checkpointing where the pre-flight estimate needs it;
- the same evaluation schedule (every ``eval_every`` steps and at the last step; goal checks every
  ``goal_every`` steps, the training set only and the test set for the members that stop there), the same stop rule
  (:func:`~lssr.training.core.stop_verdict`: divergence of the training loss, loss / accuracy goals, step
  budget; :func:`~lssr.training.core.record_batch_loss`: divergence of the batch loss),
  the same ``metrics.csv`` columns and rows, ``run.json`` fields (plus a ``batched`` entry) and
  ``model.pt`` keys, written atomically through :mod:`lssr.io` into each member's own folder as soon as
  that member stops.

Batch norm: ``running_mean`` / ``running_var`` / ``num_batches_tracked`` are stacked per member and
passed to ``functional_call`` as vmapped (batched) tensors, so the in-place running-statistics update
inside ``F.batch_norm`` is a batched-into-batched in-place update, which vmap supports (the
``replace_all_batch_norm_modules_`` patch of the torch.func docs is only needed when the running
stats are *not* batched, and it drops them, which would break evaluation in eval mode).

Masking instead of stopping: a member whose batch loss is non-finite or above its
``stop.divergence_bound`` gets a zero update (its gradient is masked to 0, so NaN never leaks
into its parameters) and its running statistics frozen after that step's forward pass (as ``train()``,
which breaks after the forward pass that diverged). The check runs on the device; the host reads the
batch losses only at evaluation steps (every ``eval_every`` and ``goal_every`` steps), where it replays ``train()``'s
stopping logic per member, writes the finished members' outputs and drops them from the stack (so a
diverged or finished member costs nothing afterwards). Between evaluations the step loop makes no
device-to-host transfer; the batch indices of a whole evaluation interval are drawn up front and copied
to the device in one transfer.

Requirements (checked by :func:`check_batchable`, which names the first differing key): members may
differ only in ``optim.lr``, ``seed``, ``name`` and the per-member stopping thresholds
``stop.train_loss_goal``, ``stop.train_acc_goal``, ``stop.divergence_bound``; no ``probe`` section
(use ``lssr train`` for runs with diagnostics).

Checkpoints: with ``checkpoint_every`` (and an output folder for every member), every that many steps
the group writes one ``checkpoint.pt`` into its first member's folder: the stacked weights and buffers of
the members still in the stack, η / bound / alive per member, the sampler states, the byte offset of every
member's row log (its rows go to ``metrics.csv.partial`` in its folder as they are made, so the checkpoint
does not grow with the steps) and, for the members that have stopped, their final weights, status and wall
time. The step loop
syncs with the host at checkpoint steps as at evaluation steps (reading the batch losses), but members are
dropped from the stack only at evaluation steps, as without checkpoints, so the stack (and with it the
numbers) is the same with or without checkpointing. A group restarted on the same folders and configs
resumes from it (cutting each row log back to its offset, rewriting the outputs of stopped members that a
scheduler deleted from their logs, which stay until the whole group is done), and each member's
``metrics.csv`` and ``run.json`` (apart from wall time and ``resumed``) are byte-identical to an
uninterrupted run's. With ``members_per_pass``, each pass keeps its own checkpoint (in its first member's
folder) until the whole group is done.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from ..config import RunConfig
from ..data import Subset
from ..errors import LssrError
from ..io import atomic_path
from ..losses import per_sample_loss
from .core import (
    METRIC_COLUMNS,
    RunResult,
    evaluate_members,
    has_values,
    init_model,
    is_eval_step,
    is_test_step,
    metrics_row,
    next_eval_step,
    progress_bar,
    record_batch_loss,
    set_up,
    status_of,
    stop_verdict,
    total_steps,
)
from .forward import StepPlan, backward_keeping_buffers, model_profile, plan_step, stacked_checkpointed_forward
from .outputs import CHECKPOINT, fresh_start_warning, git_commit, load_checkpoint, save_checkpoint, write_run_outputs
from .sampler import BatchSampler, steps_per_epoch
from .stack import Member, Stack

PARTIAL = "metrics.csv.partial"  # a member's row log (lssr.io.CsvLog) while the group trains

#: Config keys (dotted) that may differ between the members of one batched group.
MAY_DIFFER = frozenset(
    {"optim.lr", "seed", "name", "stop.train_loss_goal", "stop.train_acc_goal", "stop.divergence_bound"}
)


class BatchConfigError(LssrError):
    """Configs that cannot be trained as one batched group; the message names the differing key."""


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_batchable(cfgs: Sequence[RunConfig], names: Sequence[str] | None = None) -> None:
    """Raise :class:`BatchConfigError` unless ``cfgs`` differ only in the keys of :data:`MAY_DIFFER`."""
    if not cfgs:
        raise BatchConfigError("train-batch needs at least one run config")
    names = list(names) if names is not None else [f"config #{i}" for i in range(len(cfgs))]
    for name, cfg in zip(names, cfgs):
        if cfg.probe is not None:
            raise BatchConfigError(
                f"{name}: key 'probe' is set, but batched training runs no probes; remove the probe section "
                f"or train this run alone with `lssr train`"
            )
    ref = _flatten(cfgs[0].to_dict())
    for name, cfg in zip(names[1:], cfgs[1:]):
        other = _flatten(cfg.to_dict())
        for key in sorted(set(ref) | set(other)):
            if key in MAY_DIFFER:
                continue
            if ref.get(key) != other.get(key):
                raise BatchConfigError(
                    f"{name}: key '{key}' = {other.get(key)!r} differs from {names[0]}'s {ref.get(key)!r}; the members "
                    f"of one batched group may differ only in {', '.join(sorted(MAY_DIFFER))}. Train them in "
                    f"separate groups."
                )


# ---------------------------------------------------------------------------------------------
# The batched run
# ---------------------------------------------------------------------------------------------


def train_batched(
    cfgs: list[RunConfig],
    data: Subset,
    out_dirs: Sequence[str | Path | None] | None = None,
    progress: bool = True,
    members_per_pass: int | None = None,
) -> list[RunResult]:
    """Train the runs ``cfgs`` (differing only in η, seed, name, stop thresholds) as one stacked model.

    Returns one :class:`~lssr.training.RunResult` per config, in order; writes ``metrics.csv``,
    ``run.json`` and ``model.pt`` into ``out_dirs[i]`` (skipped where it is ``None``).
    ``members_per_pass`` bounds memory: the group is split into passes of at most that many members,
    trained one after another (activation memory grows with members x ``chunk_size``).
    """
    git_commit()  # the code this run trains with, read now (cached for the outputs written at its end)
    cfgs = list(cfgs)
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(cfgs)
    if len(out_dirs) != len(cfgs):
        raise BatchConfigError(
            f"got {len(cfgs)} configs but {len(out_dirs)} output folders; give one --out per --config"
        )
    given = [str(Path(d).resolve()) for d in out_dirs if d is not None]
    if len(set(given)) != len(given):
        raise BatchConfigError("two members write to the same output folder; give each --config its own --out")
    check_batchable(cfgs, [c.name or f"config #{i}" for i, c in enumerate(cfgs)])
    if members_per_pass is not None and members_per_pass < 1:
        raise BatchConfigError(f"members_per_pass = {members_per_pass} must be >= 1")
    per_pass = members_per_pass or len(cfgs)
    passes = [slice(s, s + per_pass) for s in range(0, len(cfgs), per_pass)]
    results: list[RunResult] = []
    for part in passes:
        results += _train_group(cfgs[part], data, out_dirs[part], progress, keep_checkpoint=len(passes) > 1)
    for part in passes:  # the whole group is done: no pass needs its checkpoint (or row logs) any more
        if out_dirs[part][0] is not None:
            (Path(out_dirs[part][0]) / CHECKPOINT).unlink(missing_ok=True)
    for d in out_dirs:
        if d is not None:
            (Path(d) / PARTIAL).unlink(missing_ok=True)
    return results


def _group_name(cfgs: list[RunConfig]) -> str:
    """How the pre-flight message names a group: its first run and its size."""
    first = cfgs[0].name or f"{cfgs[0].model.name} b={cfgs[0].batch_size}"
    return f"batched group of {len(cfgs)} runs ({first}, ...)" if len(cfgs) > 1 else first


def _train_group(
    cfgs: list[RunConfig], data: Subset, out_dirs: list, progress: bool, keep_checkpoint: bool
) -> list[RunResult]:
    cfg0 = cfgs[0]
    group = _Group(cfgs, data, out_dirs)
    # the pre-flight check, before any step, of the model the group built
    group.step_plan = plan_step(cfg0, group.data, len(cfgs), group.device, _group_name(cfgs), group.profile())
    group.resume()
    lrs = ",".join(f"{c.optim.lr:g}" for c in cfgs)
    bar = progress_bar(progress, group.T, f"train-batch {cfg0.model.name} b={cfg0.batch_size} η={lrs}", group.step)
    results = group.run(bar)
    if bar is not None:
        bar.close()
    if keep_checkpoint and group.checkpointing:
        group.checkpoint()  # a finished pass: a restart of a later pass rewrites its outputs if they are gone
    return results


class _Group:
    """One pass of a batched group: the stack of the active members and their per-member device tensors
    (η_m, divergence bound, alive flag), stepped on the device between evaluation steps."""

    def __init__(self, cfgs: list[RunConfig], data: Subset, out_dirs: list):
        cfg0 = self.cfg0 = cfgs[0]
        self.cfgs = cfgs
        self.device, self.data = set_up(cfg0, data)
        self.start = time.time()
        n = len(self.data.y_train)
        models = [init_model(cfg, self.data) for cfg in cfgs]  # exactly train()'s initialisation, member by member
        self.template = copy.deepcopy(models[0])
        self.stack = Stack(self.template, models)
        del models
        self.loss_ps = per_sample_loss(cfg0.loss)
        self.b, self.chunk = cfg0.batch_size, cfg0.chunk_size
        shared_seed = len({c.seed for c in cfgs}) == 1
        self.shared_sampler = BatchSampler(n, self.b, cfg0.optim.replacement, cfg0.seed) if shared_seed else None
        self.members = [
            Member(
                i,
                c,
                Path(d) if d is not None else None,
                None if shared_seed else BatchSampler(n, self.b, c.optim.replacement, c.seed),
            )
            for i, (c, d) in enumerate(zip(cfgs, out_dirs))
        ]
        self.spe = steps_per_epoch(n, self.b)
        self.T = total_steps(cfg0, self.spe)
        self.gd_slices = cfg0.is_gd  # GD: idx = arange(n), slice instead of gathering
        self.active = list(self.members)  # members still training, in stack order
        device = self.device
        # η_m in the parameters' dtype (float32 for float32 data, so float32 runs keep their numbers)
        self.lr_k = torch.tensor([c.optim.lr for c in cfgs], device=device, dtype=self.stack.dtype)
        self.bound_k = torch.tensor([c.stop.divergence_bound for c in cfgs], device=device, dtype=torch.float64)
        self.alive_k = torch.ones(len(cfgs), dtype=torch.bool, device=device)
        self.results: dict[int, RunResult] = {}
        self.step, self.elapsed_before, self.resumed_at = 0, 0.0, 0
        self.pending: torch.Tensor | None = None  # batch losses since the last sync (steps x stack rows), on device
        self.pending_from = 0
        self.checkpointing = bool(cfg0.checkpoint_every) and all(d is not None for d in out_dirs)
        self.ckpt_path = Path(out_dirs[0]) / CHECKPOINT if self.checkpointing else None

    # -- checkpoint / resume ----------------------------------------------------------------------

    def identity(self) -> dict:
        return {"kind": "group", "config_hashes": [c.hash() for c in self.cfgs]}

    def checkpoint(self) -> None:
        """Write the group's state at ``self.step`` (a sync point: no pending batch losses)."""
        state = {
            "step": self.step,
            "elapsed": self.elapsed_before + time.time() - self.start,
            "active": [m.index for m in self.active],
            "stack": self.stack.state(),
            "per_row": {"lr": self.lr_k.cpu(), "bound": self.bound_k.cpu(), "alive": self.alive_k.cpu()},
            "sampler": None if self.shared_sampler is None else self.shared_sampler.state_dict(),
            "members": [m.state_dict() for m in self.members],
        }
        save_checkpoint(self.ckpt_path, self.identity(), state)

    def resume(self) -> None:
        """Continue from the group's checkpoint when there is a usable one (else, after a one-line warning
        for an unusable one, from step 0); rewrite the outputs of stopped members that have gone missing."""
        keys = ("step", "elapsed", "active", "stack", "per_row", "sampler", "members")
        state = load_checkpoint(self.ckpt_path, self.identity(), keys) if self.checkpointing else None
        if state is not None and (reason := self.unusable_logs(state["members"])):
            fresh_start_warning(self.ckpt_path, reason)
            self.ckpt_path.unlink()
            state = None
        if state is None:  # step 0: every member's row log starts empty (a killed run's is discarded)
            for m in self.members:
                if m.log is not None:
                    m.log.reset()
            return
        self.step, self.elapsed_before, self.resumed_at = state["step"], state["elapsed"], state["step"]
        if self.shared_sampler is not None:
            self.shared_sampler.load_state_dict(state["sampler"])
        for m, ms in zip(self.members, state["members"]):
            m.load_state_dict(ms)
        self.active = [self.members[i] for i in state["active"]]
        self.stack.load_state(state["stack"], self.device)
        rows = state["per_row"]
        self.lr_k, self.bound_k, self.alive_k = (rows[k].to(self.device) for k in ("lr", "bound", "alive"))
        outputs = ("metrics.csv", "run.json", "model.pt")
        for m in self.members:
            if m.done:  # stopped before the checkpoint: its outputs again if the scheduler deleted them
                lost = m.out_dir is not None and not all((m.out_dir / f).exists() for f in outputs)
                self.conclude(m, write=lost, resumed=False)

    def unusable_logs(self, member_states: list[dict]) -> str | None:
        """Why the members' row logs cannot continue from a checkpoint with ``member_states`` (None: they can):
        a log missing or shorter than the byte offset the checkpoint recorded for it."""
        for m, ms in zip(self.members, member_states):
            offset = ms.get("metrics_offset")
            if not isinstance(offset, int):
                return "incomplete (no metrics_offset of its members' row logs)"
            if not m.log.partial.exists() or m.log.partial.stat().st_size < offset:
                return f"{m.log.partial} is missing or shorter than the checkpoint says ({offset} bytes)"
        return None

    # -- the loop: evaluate (host sync) every eval_every steps, device-only steps in between ------

    def run(self, bar) -> list[RunResult]:
        """Sync with the host at every evaluation and checkpoint step: replay the batch losses, then
        (at evaluation steps) drop the stopped members, checkpoint when due, evaluate; step on the device."""
        self.template.train()
        cfg0 = self.cfg0
        while self.active:
            at_eval = is_eval_step(cfg0, self.step, self.T)
            self.replay_batch_losses(self.pending_from, None if self.pending is None else self.pending.cpu())
            self.pending = None
            if at_eval:
                self.drop_finished()
            if all(m.done for m in self.active):
                break
            if self.checkpointing and self.step % cfg0.checkpoint_every == 0 and self.step > self.resumed_at:
                self.checkpoint()
            if at_eval:
                self.evaluate_and_stop(self.step)  # θ_step of every active member is here
                self.drop_finished()
                if not self.active:
                    break
            next_sync = next_eval_step(cfg0, self.step, self.T)
            if self.checkpointing:
                next_sync = min(next_sync, (self.step // cfg0.checkpoint_every + 1) * cfg0.checkpoint_every)
            self.pending, self.pending_from = self.steps(next_sync - self.step, bar), self.step
            self.step = next_sync
        return [self.results[i] for i in range(len(self.cfgs))]

    def evaluate_and_stop(self, step: int) -> None:
        """Evaluate every active member at ``step`` and finish those the stop rule stops. At a goal check
        (:func:`~lssr.training.core.is_test_step` false) the training set alone, and the test set only for the
        members that stop there (their rows of the stack: each member's outputs do not depend on the others')."""
        test = is_test_step(self.cfg0, step, self.T)
        rows = [{**metrics_row(step, self.spe), **e} for e in self.evaluate_rows(None, train=True, test=test)]
        verdicts = [stop_verdict(m.cfg, row, step, self.T) for m, row in zip(self.active, rows)]
        stopping = [k for k, v in enumerate(verdicts) if v is not None]
        if not test and stopping:
            for k, e in zip(stopping, self.evaluate_rows(stopping, train=False, test=True)):
                rows[k].update(e)
        for m, row, verdict in zip(list(self.active), rows, verdicts):
            if verdict is None:
                m.open_row = row
                continue
            m.status, m.stopped_by = status_of(verdict), verdict
            m.add_row(row)
            self.finish(m, step)

    def evaluate_rows(self, rows: list[int] | None, train: bool, test: bool) -> list[dict]:
        """The metrics of the stack's members at ``rows`` (None: all) on the training and / or test sets."""
        if rows is None or len(rows) == len(self.active):
            forward = lambda x: self.stack.forward(x, x_batched=False)  # noqa: E731
        else:
            forward = self.stack.rows_forward(torch.tensor(rows, device=self.device))
        k = len(self.active) if rows is None else len(rows)
        return evaluate_members(self.template, forward, k, self.data, self.loss_ps, self.chunk, train, test)

    def steps(self, nsteps: int, bar) -> torch.Tensor:
        """``nsteps`` SGD steps of every active member; their batch losses (steps x members), on the device."""
        idx_all = None if self.gd_slices else self.draw_indices(nsteps)
        losses = []
        for s in range(nsteps):
            losses.append(self.sgd_step(None if idx_all is None else idx_all[s]))
            if bar is not None:
                bar.update(1)
        return torch.stack(losses)

    def replay_batch_losses(self, first_step: int, losses: torch.Tensor | None) -> list[Member]:
        """Rows for steps first_step.. from the batch losses (steps x members, on the host), with ``train()``'s
        batch-loss rule; returns the members that diverged."""
        stopped: list[Member] = []
        if losses is None:
            return stopped
        for k, m in enumerate(self.active):
            if m.done:  # stopped since the last evaluation step, still in the stack (masked) until the next
                continue
            for s in range(losses.shape[0]):
                step = first_step + s
                row = m.open_row if (s == 0 and m.open_row is not None) else metrics_row(step, self.spe)
                if record_batch_loss(m.cfg, row, step, float(losses[s, k])):
                    m.add_row(row)
                    m.status, m.stopped_by = "diverged", "divergence"
                    self.finish(m, step)
                    stopped.append(m)
                    break
                if has_values(row):
                    m.add_row(row)
            m.open_row = None
        return stopped

    def draw_indices(self, steps: int) -> torch.Tensor:
        """Batch indices of the next ``steps`` steps: (steps, b) shared or (steps, members, b) per member."""
        if self.shared_sampler is not None:
            idx = torch.stack([self.shared_sampler.next() for _ in range(steps)])
        else:
            idx = torch.stack([torch.stack([m.sampler.next() for m in self.active]) for _ in range(steps)])
        if self.device.type == "cuda":
            return idx.pin_memory().to(self.device, non_blocking=True)
        return idx.to(self.device)

    step_plan: StepPlan | None = None  # set by _train_group from the pre-flight check
    _ckpt_forward = None
    _profile = None

    def profile(self):
        """The memory profile of the group's template model (one member's), measured once."""
        if self._profile is None:
            self._profile = model_profile(self.template, self.data)
        return self._profile

    def _train_forward(self, K: int) -> tuple[int, object, list | None]:
        """Samples per forward pass (b for batch norm: whole-batch statistics), the forward function
        (checkpointed where the plan says so) and the buffers to keep through a checkpointed backward."""
        plan = self.step_plan
        if plan is None:
            plan = self.step_plan = plan_step(
                self.cfg0, self.data, K, self.device, _group_name(self.cfgs), self.profile()
            )
        if not plan.checkpointing:
            return plan.per_pass, self.stack.forward, None
        if self._ckpt_forward is None:
            self._ckpt_forward = stacked_checkpointed_forward(self.stack, plan.segments)
        return plan.per_pass, self._ckpt_forward, list(self.stack.buffers.values())

    def sgd_step(self, idx: torch.Tensor | None) -> torch.Tensor:
        """θ_m ← θ_m − η_m ∇L_B(θ_m) for every active member m; the batch losses (members,), on the device."""
        stack, x_tr, y_tr, b = self.stack, self.data.x_train, self.data.y_train, self.b
        K = len(self.active)
        chunk, forward, keep = self._train_forward(K)
        total = torch.zeros(K, device=self.device, dtype=x_tr.dtype)
        old_buffers = {k: v.clone() for k, v in stack.buffers.items()}
        for s in range(0, b, chunk):
            if self.gd_slices:
                xc, yc, batched = x_tr[s : s + chunk], y_tr[s : s + chunk], False
            elif idx.dim() == 1:
                j = idx[s : s + chunk]
                xc, yc, batched = x_tr[j], y_tr[j], False
            else:
                j = idx[:, s : s + chunk]
                xc, yc, batched = x_tr[j], y_tr[j], True
            out = forward(xc, batched)
            c = out.shape[1]
            yk = yc.reshape(-1) if batched else yc.repeat(K)
            loss = self.loss_ps(out.reshape(K * c, out.shape[-1]), yk).view(K, c).sum(1) / b
            backward_keeping_buffers(loss.sum(), keep)
            total += loss.detach()
        alive_before = self.alive_k.clone()
        bad = ~torch.isfinite(total) | (total.double() > self.bound_k)
        self.alive_k.logical_and_(~bad)
        with torch.no_grad():
            for p in stack.params.values():
                if p.grad is None:  # a parameter the loss does not use: SGD leaves it alone
                    continue
                shape = (K,) + (1,) * (p.dim() - 1)
                g = p.grad.masked_fill_(~self.alive_k.view(shape), 0.0)  # a stopped member: zero update (and no NaN)
                p.addcmul_(g, self.lr_k.view(shape), value=-1.0)  # θ ← θ − η_m g_m
                p.grad = None
            for key, v in stack.buffers.items():
                shape = (K,) + (1,) * (v.dim() - 1)
                v.copy_(torch.where(alive_before.view(shape), v, old_buffers[key]))
        return total

    def drop_finished(self) -> None:
        """Remove the members that stopped from the stack (and from the per-member device tensors)."""
        keep = [k for k, m in enumerate(self.active) if not m.done]
        if len(keep) == len(self.active):
            return
        self.active = [m for m in self.active if not m.done]
        if self.active:
            rows_t = torch.tensor(keep, device=self.device)
            self.stack.keep(rows_t)
            self.lr_k, self.bound_k, self.alive_k = self.lr_k[rows_t], self.bound_k[rows_t], self.alive_k[rows_t]

    def finish(self, m: Member, step: int) -> None:
        """Member ``m`` (at stack row ``active.index(m)``) stopped at ``step``: keep its weights, write outputs."""
        m.done, m.steps = True, step
        m.final_state = self.stack.state_dict(self.active.index(m))
        m.wall = self.elapsed_before + time.time() - self.start
        self.conclude(m, write=True, resumed=self.resumed_at > 0)

    def conclude(self, m: Member, write: bool, resumed: bool) -> None:
        """The result of the stopped member ``m``; with ``write``, its outputs in its folder."""
        model = copy.deepcopy(self.template)
        model.load_state_dict(m.final_state)
        if m.out_dir is not None and write:
            # the same three files as train(), the same run.json fields plus ``batched``
            metrics = self.write_metrics(m)
            write_run_outputs(
                m.out_dir,
                m.cfg,
                m.final_state,
                metrics,
                self.data,
                self.device,
                m.wall,
                status=m.status,
                steps=m.steps,
                stopped_by=m.stopped_by,
                resumed=resumed,
                extra={"batched": {"group_size": len(self.cfgs), "member": m.index}, **self.step_plan.record()},
            )
        elif m.out_dir is not None:  # its outputs are in place (a stopped member of a resumed group)
            metrics = pd.read_csv(m.out_dir / "metrics.csv")
        else:
            metrics = pd.DataFrame(m.rows, columns=METRIC_COLUMNS)
        self.results[m.index] = RunResult(m.status, m.steps, metrics, model, m.wall)

    def write_metrics(self, m: Member) -> pd.DataFrame:
        """The stopped member ``m``'s ``metrics.csv`` from its row log, written atomically; its rows. With
        checkpoints, the log stays until the whole group is done (a resumed group rewrites the file from it
        if it is deleted); without, it is renamed into place."""
        m.flush_rows()
        path = m.out_dir / "metrics.csv"
        if self.checkpointing:
            with atomic_path(path) as tmp:
                shutil.copyfile(m.log.partial, tmp)
        else:
            m.log.finalize()
        return pd.read_csv(path)
