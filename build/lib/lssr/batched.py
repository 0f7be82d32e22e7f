"""Batched training: many runs that differ only in η (and optionally the seed) as one stacked model.

A Figure-5 grid trains, for each (data set, b), about ten runs that differ only in the learning rate.
:func:`train_batched` trains such a group in one process as one *stacked* model: every parameter and
buffer gets a leading member axis (``torch.func.stack_module_state`` layout) and the forward pass is
``torch.func.vmap`` over ``torch.func.functional_call`` of one template module. A convolution whose
weight carries the member axis becomes one grouped convolution, so M small runs cost about one run
with M times the width: much better use of a GPU (and of the CPU for small models) than M processes.

Equivalence with :func:`lssr.train.train` (tested member by member, within float32 round-off):

- the same initialisation: ``torch.manual_seed(cfg.seed)`` then ``build_model`` per member, exactly
  as ``train()`` does;
- the same batches: one :class:`~lssr.train.BatchSampler` with the same seed (members with different
  seeds get one sampler each, and the data are gathered per member);
- the same chunking over memory (``cfg.chunk_size`` samples per forward/backward, chunk losses summed
  and divided by b once), so batch-norm statistics are computed over the same chunks;
- the same evaluation schedule (every ``eval_every`` steps and at the last step), the same stopping
  rules (divergence of the batch loss or of the training loss, loss / accuracy goals, step budget),
  the same ``metrics.csv`` columns and rows, ``run.json`` fields (plus a ``batched`` entry) and
  ``model.pt`` keys, written atomically through :mod:`lssr.io` into each member's own folder as soon as
  that member stops.

Batch norm: ``running_mean`` / ``running_var`` / ``num_batches_tracked`` are stacked per member and
passed to ``functional_call`` as vmapped (batched) tensors, so the in-place running-statistics update
inside ``F.batch_norm`` is a batched-into-batched in-place update, which vmap supports (the
``replace_all_batch_norm_modules_`` patch of the torch.func docs is only needed when the running
stats are *not* batched, and it drops them, which would break evaluation in eval mode).

Masking instead of stopping: a member whose batch loss is non-finite or above its
``stop.divergence_bound`` gets its update replaced by the identity (``torch.where``, so NaN never leaks
into its parameters) and its running statistics frozen after that step's forward pass (as ``train()``,
which breaks after the forward pass that diverged). The check runs on the device; the host reads the
batch losses only at evaluation steps (every ``eval_every`` steps), where it replays ``train()``'s
stopping logic per member, writes the finished members' outputs and drops them from the stack (so a
diverged or finished member costs nothing afterwards). Between evaluations the step loop makes no
device-to-host transfer; the batch indices of a whole evaluation interval are drawn up front and copied
to the device in one transfer.

Requirements (checked by :func:`check_batchable`, which names the first differing key): members may
differ only in ``optim.lr``, ``seed``, ``name`` and the per-member stopping thresholds
``stop.train_loss_goal``, ``stop.train_acc_goal``, ``stop.divergence_bound``; no ``probe`` section
(use ``lssr train`` for runs with diagnostics).

Not done here: checkpoint / resume (``checkpoint_every`` is accepted but ignored, with a warning; a
killed group restarts from step 0, while members that had already stopped keep their outputs).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, vmap

from . import LssrError
from .config import RunConfig
from .data import Subset
from .io import CsvLog
from .losses import per_sample_loss
from .models import build_model
from .train import (
    METRIC_COLUMNS,
    BatchSampler,
    RunResult,
    resolve_device,
    total_steps,
    write_run_outputs,
)

#: Config keys (dotted) that may differ between the members of one batched group.
MAY_DIFFER = frozenset({"optim.lr", "seed", "name", "stop.train_loss_goal", "stop.train_acc_goal", "stop.divergence_bound"})


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
# Per-member bookkeeping
# ---------------------------------------------------------------------------------------------


@dataclass
class _Member:
    index: int  # position in the caller's list
    cfg: RunConfig
    out_dir: Path | None
    sampler: BatchSampler | None  # own sampler when seeds differ, else None (the shared one is used)
    rows: list = field(default_factory=list)
    open_row: dict | None = None  # the row of the current step, waiting for its batch loss
    status: str = "completed"
    stopped_by: str = "budget"
    steps: int = 0
    done: bool = False


def _is_bad(value: float, bound: float) -> bool:
    return not math.isfinite(value) or value > bound


class _Stack:
    """The stacked parameters / buffers of the active members and the vmapped forward pass."""

    def __init__(self, template: nn.Module, models: list[nn.Module]):
        self.template = template
        self.param_names = [k for k, _ in template.named_parameters()]
        self.buffer_names = [k for k, _ in template.named_buffers()]
        self.params = {
            k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]).requires_grad_(True) for k in self.param_names
        }
        self.buffers = {k: torch.stack([dict(m.named_buffers())[k].detach() for m in models]).clone() for k in self.buffer_names}

        def f(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (p, b), (x,))

        self._f = f

    def forward(self, x: torch.Tensor, x_batched: bool) -> torch.Tensor:
        """Outputs of every member, shape (M, len(x), classes); ``x`` is (M, c, ...) when batched."""
        return vmap(self._f, in_dims=(0, 0, 0 if x_batched else None))(self.params, self.buffers, x)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the members at ``rows`` (a 1-D index tensor on the device)."""
        self.params = {k: v.detach().index_select(0, rows).requires_grad_(True) for k, v in self.params.items()}
        self.buffers = {k: v.index_select(0, rows) for k, v in self.buffers.items()}

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        flat = {**{k: v.detach()[i] for k, v in self.params.items()}, **{k: v[i] for k, v in self.buffers.items()}}
        return {k: flat[k].clone() for k in self.template.state_dict().keys()}


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

    Returns one :class:`~lssr.train.RunResult` per config, in order; writes ``metrics.csv``,
    ``run.json`` and ``model.pt`` into ``out_dirs[i]`` (skipped where it is ``None``).
    ``members_per_pass`` bounds memory: the group is split into passes of at most that many members,
    trained one after another (activation memory grows with members x ``chunk_size``).
    """
    cfgs = list(cfgs)
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(cfgs)
    if len(out_dirs) != len(cfgs):
        raise BatchConfigError(f"got {len(cfgs)} configs but {len(out_dirs)} output folders; give one --out per --config")
    given = [str(Path(d).resolve()) for d in out_dirs if d is not None]
    if len(set(given)) != len(given):
        raise BatchConfigError("two members write to the same output folder; give each --config its own --out")
    check_batchable(cfgs, [c.name or f"config #{i}" for i, c in enumerate(cfgs)])
    if members_per_pass is not None:
        if members_per_pass < 1:
            raise BatchConfigError(f"members_per_pass = {members_per_pass} must be >= 1")
        if len(cfgs) > members_per_pass:
            results: list[RunResult] = []
            for s in range(0, len(cfgs), members_per_pass):
                results += _train_group(cfgs[s : s + members_per_pass], data, out_dirs[s : s + members_per_pass], progress)
            return results
    return _train_group(cfgs, data, out_dirs, progress)


def _train_group(cfgs: list[RunConfig], data: Subset, out_dirs: list, progress: bool) -> list[RunResult]:
    cfg0 = cfgs[0]
    if cfg0.checkpoint_every:
        warnings.warn(
            "checkpoint_every is set but train-batch writes no checkpoints (a killed group restarts from step 0); "
            "use `lssr train` per run for resumable runs",
            stacklevel=3,
        )
    device = resolve_device(cfg0.device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    start = time.time()
    n = len(data.y_train)
    if n != cfg0.data.n:
        raise LssrError(f"the subset holds {n} samples but the config says data.n: {cfg0.data.n}")
    data = data.to(device)
    models = []
    for cfg in cfgs:  # exactly train()'s initialisation, member by member
        torch.manual_seed(cfg.seed)
        models.append(build_model(cfg.model.name, data.image_shape[0], data.num_classes, cfg.model.batch_norm).to(device))
    template = copy.deepcopy(models[0])
    stack = _Stack(template, models)
    del models
    loss_ps = per_sample_loss(cfg0.loss)
    b, chunk = cfg0.batch_size, cfg0.chunk_size
    shared_seed = len({c.seed for c in cfgs}) == 1
    shared_sampler = BatchSampler(n, b, cfg0.optim.replacement, cfg0.seed) if shared_seed else None
    members = [
        _Member(i, c, Path(d) if d is not None else None, None if shared_seed else BatchSampler(n, b, c.optim.replacement, c.seed))
        for i, (c, d) in enumerate(zip(cfgs, out_dirs))
    ]
    spe = BatchSampler(n, b, cfg0.optim.replacement, 0).steps_per_epoch
    T = total_steps(cfg0, spe)
    gd_slices = b == n and not cfg0.optim.replacement  # GD: idx = arange(n), slice instead of gathering
    active = list(members)  # members still training, in stack order
    lr = torch.tensor([c.optim.lr for c in cfgs], device=device, dtype=torch.float32)
    bound = torch.tensor([c.stop.divergence_bound for c in cfgs], device=device, dtype=torch.float64)
    alive = torch.ones(len(cfgs), dtype=torch.bool, device=device)
    results: dict[int, RunResult] = {}
    x_tr, y_tr = data.x_train, data.y_train
    num_classes = data.num_classes

    bar = None
    if progress:
        from tqdm.auto import tqdm

        lrs = ",".join(f"{c.optim.lr:g}" for c in cfgs)
        bar = tqdm(total=T, desc=f"train-batch {cfg0.model.name} b={b} η={lrs}", unit="step", mininterval=1.0)

    # -- helpers -------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate_all(x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        K = len(active)
        loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
        correct = torch.zeros(K, dtype=torch.int64, device=device)
        for s in range(0, len(x), chunk):
            out = stack.forward(x[s : s + chunk], x_batched=False)
            yc = y[s : s + chunk]
            c = len(yc)
            per = loss_ps(out.reshape(K * c, num_classes), yc.repeat(K)).view(K, c)
            loss_sum += per.sum(1).double()
            correct += (out.argmax(-1) == yc).sum(1)
        m = max(len(x), 1)
        return (loss_sum / m).tolist(), (correct.double() / m).tolist()

    def eval_rows(step: int) -> list[dict]:
        template.eval()
        tl, ta = evaluate_all(x_tr, y_tr)
        vl, va = evaluate_all(data.x_test, data.y_test)
        template.train()
        return [
            {"step": step, "epoch": step / spe, "train_loss": tl[k], "train_acc": ta[k], "test_loss": vl[k], "test_acc": va[k]}
            for k in range(len(active))
        ]

    def finish(m: _Member, step: int) -> None:
        """Member ``m`` (at stack row ``active.index(m)``) stopped at ``step``: build its result, write outputs."""
        m.done, m.steps = True, step
        k = active.index(m)
        state = stack.state_dict(k)
        model = copy.deepcopy(template)
        model.load_state_dict(state)
        wall = time.time() - start
        if m.out_dir is not None:
            metrics = _write_outputs(m, state, data, device, wall, len(cfgs))
        else:
            metrics = pd.DataFrame(m.rows, columns=METRIC_COLUMNS)
        results[m.index] = RunResult(m.status, step, metrics, model, wall)

    def replay_batch_losses(first_step: int, losses: torch.Tensor | None) -> list[_Member]:
        """Rows for steps first_step.. from the batch losses (steps x members, on the host); returns the members that diverged."""
        stopped = []
        if losses is None:
            return stopped
        for k, m in enumerate(active):
            for s in range(losses.shape[0]):
                step = first_step + s
                row = m.open_row if (s == 0 and m.open_row is not None) else {"step": step, "epoch": step / spe}
                bl = float(losses[s, k])
                if step % m.cfg.log_every == 0:
                    row["batch_loss"] = bl
                if _is_bad(bl, m.cfg.stop.divergence_bound):
                    row["batch_loss"] = bl
                    m.rows.append(row)
                    m.status, m.stopped_by = "diverged", "divergence"
                    finish(m, step)
                    stopped.append(m)
                    break
                if len(row) > 2:
                    m.rows.append(row)
            m.open_row = None
        return stopped

    def draw_indices(steps: int) -> torch.Tensor:
        """Batch indices of the next ``steps`` steps: (steps, b) shared or (steps, members, b) per member."""
        if shared_sampler is not None:
            idx = torch.stack([shared_sampler.next() for _ in range(steps)])
        else:
            idx = torch.stack([torch.stack([m.sampler.next() for m in active]) for _ in range(steps)])
        if device.type == "cuda":
            return idx.pin_memory().to(device, non_blocking=True)
        return idx.to(device)

    def sgd_step(idx: torch.Tensor | None) -> torch.Tensor:
        """One step of every active member; returns the batch losses (members,) on the device."""
        K = len(active)
        total = torch.zeros(K, device=device, dtype=x_tr.dtype)
        old_buffers = {k: v.clone() for k, v in stack.buffers.items()}
        for s in range(0, b, chunk):
            if gd_slices:
                xc, yc, batched = x_tr[s : s + chunk], y_tr[s : s + chunk], False
            elif idx.dim() == 1:
                j = idx[s : s + chunk]
                xc, yc, batched = x_tr[j], y_tr[j], False
            else:
                j = idx[:, s : s + chunk]
                xc, yc, batched = x_tr[j], y_tr[j], True
            out = stack.forward(xc, batched)
            c = out.shape[1]
            yk = yc.reshape(-1) if batched else yc.repeat(K)
            loss = loss_ps(out.reshape(K * c, num_classes), yk).view(K, c).sum(1) / b
            loss.sum().backward()
            total += loss.detach()
        alive_before = alive_k.clone()
        bad = ~torch.isfinite(total) | (total.double() > bound_k)
        alive_k.logical_and_(~bad)
        with torch.no_grad():
            for p in stack.params.values():
                if p.grad is None:  # a parameter the loss does not use: SGD leaves it alone
                    continue
                shape = (K,) + (1,) * (p.dim() - 1)
                g = p.grad.masked_fill_(~alive_k.view(shape), 0.0)  # a stopped member: zero update (and no NaN)
                p.addcmul_(g, lr_k.view(shape), value=-1.0)  # θ ← θ − η_m g_m
                p.grad = None
            for key, v in stack.buffers.items():
                shape = (K,) + (1,) * (v.dim() - 1)
                v.copy_(torch.where(alive_before.view(shape), v, old_buffers[key]))
        return total

    def drop_finished() -> None:
        """Remove the members that stopped from the stack (and from the per-member device tensors)."""
        nonlocal active, lr_k, bound_k, alive_k
        keep = [k for k, m in enumerate(active) if not m.done]
        if len(keep) == len(active):
            return
        active = [m for m in active if not m.done]
        if active:
            rows_t = torch.tensor(keep, device=device)
            stack.keep(rows_t)
            lr_k, bound_k, alive_k = lr_k[rows_t], bound_k[rows_t], alive_k[rows_t]

    # -- the loop: evaluate (host sync) every eval_every steps, device-only steps in between ----
    lr_k, bound_k, alive_k = lr, bound, alive
    template.train()
    step = 0
    pending: torch.Tensor | None = None  # batch losses since the last sync (steps x members), on the device
    pending_from = 0
    while active:
        stopped = replay_batch_losses(pending_from, None if pending is None else pending.cpu())
        pending = None
        if stopped:
            drop_finished()
            continue
        # θ_step of every active member is here; the evaluation step (always one at a sync point)
        rows = eval_rows(step)
        for m, row in zip(active, rows):
            if _is_bad(row["train_loss"], m.cfg.stop.divergence_bound):
                m.status, m.stopped_by = "diverged", "divergence"
            s = m.cfg.stop
            goal = (s.train_loss_goal is not None and row["train_loss"] <= s.train_loss_goal) or (
                s.train_acc_goal is not None and row["train_acc"] >= s.train_acc_goal
            )
            if goal and m.status != "diverged":
                m.stopped_by = "goal"
            if step >= T or m.status == "diverged" or goal:
                m.rows.append(row)
                finish(m, step)
            else:
                m.open_row = row
        drop_finished()
        if not active:
            break
        next_sync = min((step // cfg0.eval_every + 1) * cfg0.eval_every, T)
        nsteps = next_sync - step
        idx_all = None if gd_slices else draw_indices(nsteps)
        losses = []
        for s in range(nsteps):
            losses.append(sgd_step(None if idx_all is None else idx_all[s]))
            if bar is not None:
                bar.update(1)
        pending, pending_from = torch.stack(losses), step
        step = next_sync
    if bar is not None:
        bar.close()
    return [results[i] for i in range(len(cfgs))]


def _write_outputs(m: _Member, state: dict, data: Subset, device: torch.device, wall: float, group: int) -> pd.DataFrame:
    """The same three files as ``train()`` (metrics.csv through the same :class:`~lssr.io.CsvLog`
    formatting, renamed into place), the same run.json fields plus ``batched``; returns the metrics."""
    cfg, out_dir = m.cfg, m.out_dir
    log = CsvLog(out_dir / "metrics.csv", METRIC_COLUMNS)
    log.reset()
    for row in m.rows:
        log.append(row)
    metrics = pd.read_csv(log.finalize())
    write_run_outputs(
        out_dir, cfg, state, metrics, data, device, wall, status=m.status, steps=m.steps, stopped_by=m.stopped_by,
        extra={"batched": {"group_size": group, "member": m.index}},
    )
    return metrics


# ---------------------------------------------------------------------------------------------
# Entry point and CLI
# ---------------------------------------------------------------------------------------------


def run_batched_from_configs(
    cfgs: list[RunConfig],
    out_dirs: Sequence[str | Path],
    data_dir: str | Path | None = None,
    progress: bool = True,
    members_per_pass: int | None = None,
    where: Sequence[str] | None = None,
) -> list[RunResult]:
    """The ``lssr train-batch`` entry point: load the subset once, check it, train the group."""
    from .data import load_subset
    from .train import check_subset_matches, subset_for

    check_batchable(cfgs, where)
    if data_dir is not None:
        data = load_subset(data_dir)
        for cfg, w in zip(cfgs, where or [str(data_dir)] * len(cfgs)):
            check_subset_matches(cfg, data, f"{data_dir} (for {w})")
    else:
        data = subset_for(cfgs[0])
    return train_batched(cfgs, data, list(out_dirs), progress=progress, members_per_pass=members_per_pass)


def cmd_train_batch(args) -> None:
    from .cli import _parse_set
    from .config import load_config

    if len(args.config) != len(args.out):
        raise BatchConfigError(f"got {len(args.config)} --config but {len(args.out)} --out; give one --out per --config, in the same order")
    overrides = _parse_set(args.set)
    cfgs = [load_config(c, overrides=overrides) for c in args.config]
    res = run_batched_from_configs(
        cfgs, args.out, data_dir=args.data, progress=not args.no_progress, members_per_pass=args.members_per_pass, where=args.config
    )
    for c, r, out in zip(cfgs, res, args.out):
        print(f"run η={c.optim.lr:g} {r.status} after {r.steps} steps in {r.wall_time:.1f}s -> {out}")


def register_cli(subparsers) -> None:
    t = subparsers.add_parser(
        "train-batch",
        help="train several runs that differ only in η (or seed) as one stacked model",
        description="Train runs of one (data set, model, b) that differ only in optim.lr / seed / name / stop thresholds "
        "in one process (torch.func.vmap over stacked parameters). Each member writes the same outputs as `lssr train`.",
    )
    t.add_argument("--config", action="append", required=True, metavar="YAML", help="run config (repeat, one per member)")
    t.add_argument("--out", action="append", required=True, metavar="DIR", help="output folder (repeat, same order as --config)")
    t.add_argument("--data", default=None, help="subset folder from `lssr subset` (default: build/cache under results/data)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every config")
    t.add_argument("--members-per-pass", type=int, default=None, help="train at most this many members at once (memory bound)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train_batch)
