"""The training core shared by :func:`~lssr.training.train` (one run) and
:func:`~lssr.training.train_batched` (a group of runs as one stacked model).

Both engines take from here, so that each of these exists once: the device set-up (with cuDNN
determinism), the n check, the seeded initialisation θ_0, the step budget and the stop rule
(divergence, loss / accuracy goals, budget), the evaluation of L(θ) and accuracy on the training and
test sets, the rows of ``metrics.csv`` and the progress bar. Device and dtype flow from the data: the
model is built on the data's device and in its floating dtype (float32 from :func:`~lssr.data.load_subset`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch import nn

from ..config import RunConfig
from ..data import Subset
from ..models import build_model

METRIC_COLUMNS = ["step", "epoch", "batch_loss", "train_loss", "train_acc", "test_loss", "test_acc"]


@dataclass
class RunResult:
    status: str  # completed | diverged
    steps: int
    metrics: pd.DataFrame
    model: nn.Module
    wall_time: float


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Plain ``cuda`` (or ``auto``) with several visible GPUs ->
    the GPU this process claimed (:mod:`lssr.gpus`: one job per GPU locally); ``cuda:N`` is taken as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import LssrError

        raise LssrError(f"device: {name} was asked for but no CUDA device is available; use device: auto or cpu")
    if name == "cuda" and torch.cuda.device_count() > 1:
        from ..gpus import process_gpu

        name = f"cuda:{process_gpu(torch.cuda.device_count())}"
    return torch.device(name)


def set_up(cfg: RunConfig, data: Subset) -> tuple[torch.device, Subset]:
    """Resolve ``cfg.device`` (deterministic cuDNN on CUDA), check that the subset holds ``cfg.data.n``
    samples, and move the data there, keeping their floating dtype."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    n = len(data.y_train)
    if n != cfg.data.n:
        from ..errors import LssrError

        raise LssrError(f"the subset holds {n} samples but the config says data.n: {cfg.data.n}")
    x = data.x_train
    return device, data.to(device, x.dtype if x.is_floating_point() else None)


def init_model(cfg: RunConfig, data: Subset) -> nn.Module:
    """θ_0: ``torch.manual_seed(cfg.seed)`` then ``build_model``, on the data's device and in their dtype."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, data.image_shape[0], data.num_classes, cfg.model.batch_norm)
    return model.to(device=data.x_train.device, dtype=data.x_train.dtype)


# ---------------------------------------------------------------------------------------------
# Step budget and the stop rule
# ---------------------------------------------------------------------------------------------


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """The step budget T: the smaller of ``stop.steps`` and ⌈``stop.epochs`` x steps per epoch⌉."""
    limits = []
    if cfg.stop.steps is not None:
        limits.append(cfg.stop.steps)
    if cfg.stop.epochs is not None:
        limits.append(math.ceil(cfg.stop.epochs * steps_per_epoch))
    return min(limits)


def is_bad(value: float, bound: float) -> bool:
    """Divergence: a loss that is not finite or above ``stop.divergence_bound``."""
    return not math.isfinite(value) or value > bound


def stop_verdict(cfg: RunConfig, row: dict, step: int, last_step: int) -> str | None:
    """The stop rule at an evaluation step t: ``divergence`` (L(θ_t) bad), ``goal`` (loss or accuracy
    goal met), ``budget`` (t = T), in that order of precedence; None to go on."""
    s = cfg.stop
    if is_bad(row["train_loss"], s.divergence_bound):
        return "divergence"
    if (s.train_loss_goal is not None and row["train_loss"] <= s.train_loss_goal) or (
        s.train_acc_goal is not None and row["train_acc"] >= s.train_acc_goal
    ):
        return "goal"
    if step >= last_step:
        return "budget"
    return None


def status_of(stopped_by: str) -> str:
    return "diverged" if stopped_by == "divergence" else "completed"


def is_eval_step(cfg: RunConfig, step: int, last_step: int) -> bool:
    """A step where θ_t is evaluated and the stop rule applied: every ``eval_every`` steps, every ``goal_every``
    steps (goal checks) and the last step T."""
    return is_test_step(cfg, step, last_step) or (cfg.goal_every is not None and step % cfg.goal_every == 0)


def is_test_step(cfg: RunConfig, step: int, last_step: int) -> bool:
    """An evaluation step that evaluates the test set whatever the stop rule says: every ``eval_every`` steps and
    the last step. At the other evaluation steps (goal checks) the test set is evaluated only where the run stops."""
    return step % cfg.eval_every == 0 or step == last_step


def next_eval_step(cfg: RunConfig, step: int, last_step: int) -> int:
    """The first evaluation step after ``step`` (at most T)."""
    every = [cfg.eval_every] + ([cfg.goal_every] if cfg.goal_every is not None else [])
    return min([(step // k + 1) * k for k in every] + [last_step])


# ---------------------------------------------------------------------------------------------
# Rows of metrics.csv
# ---------------------------------------------------------------------------------------------


def metrics_row(step: int, steps_per_epoch: int) -> dict:
    """A new row of ``metrics.csv`` for step t (the other columns are filled as they are measured)."""
    return {"step": step, "epoch": step / steps_per_epoch}


def has_values(row: dict) -> bool:
    """A row is logged only when something beyond step and epoch was measured."""
    return len(row) > 2


def step_loop(run, bar) -> None:
    """The step loop of one model (single runs and data-parallel members), until the stop rule says stop.

    At each step t: ``run.at_step()`` (e.g. a checkpoint), at evaluation steps the metrics of θ_t and the
    stop rule (at a goal check, :func:`is_test_step` false, the training set only, and the test set too when the
    run stops there), then one SGD step ``run.sgd_step(row)`` (None: the batch loss diverged), and the row is
    ``run.record``-ed when it holds a measurement. ``run`` also carries ``cfg``, ``step``, ``T``,
    ``steps_per_epoch``, ``evaluate(train=True, test=True)`` and sets ``stopped_by``.
    """
    cfg = run.cfg
    while True:
        run.at_step()
        row = metrics_row(run.step, run.steps_per_epoch)
        if is_eval_step(cfg, run.step, run.T):
            test = is_test_step(cfg, run.step, run.T)
            row.update(run.evaluate(test=test))
            verdict = stop_verdict(cfg, row, run.step, run.T)
            if verdict is not None:
                if not test:  # a goal check that stops the run: the final test loss and accuracy
                    row.update(run.evaluate(train=False))
                run.stopped_by = verdict
                run.record(row)
                return
        batch_loss = run.sgd_step(row)
        if batch_loss is None:
            run.stopped_by = "divergence"
            run.record(row)
            return
        if has_values(row):
            run.record(row)
        run.step += 1
        if bar is not None:
            bar.update(1)
            if run.step % 50 == 0:
                bar.set_postfix(loss=f"{batch_loss:.4g}")


def record_batch_loss(cfg: RunConfig, row: dict, step: int, batch_loss: float) -> bool:
    """Put the batch loss L_B(θ_t) in ``row`` (every ``log_every`` steps, and always when it diverged);
    return True when it diverged."""
    if step % cfg.log_every == 0:
        row["batch_loss"] = batch_loss
    if is_bad(batch_loss, cfg.stop.divergence_bound):
        row["batch_loss"] = batch_loss
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    forward: Callable, members: int, x: torch.Tensor, y: torch.Tensor, loss_per_sample: Callable, chunk_size: int
) -> tuple[list[float], list[float]]:
    """Mean loss L(θ) = (1/n) Σ ℓ_i and accuracy of each of ``members`` models on (x, y), in chunks.

    ``forward(x)`` returns the outputs of every member, shape (members, len(x), classes). Chunk sums are
    accumulated in float64."""
    loss_sum = torch.zeros(members, dtype=torch.float64, device=x.device)
    correct = torch.zeros(members, dtype=torch.int64, device=x.device)
    for s in range(0, len(x), chunk_size):
        out = forward(x[s : s + chunk_size])
        yc = y[s : s + chunk_size]
        c = len(yc)
        per = loss_per_sample(out.reshape(members * c, out.shape[-1]), yc.repeat(members)).view(members, c)
        loss_sum += per.sum(1).double()
        correct += (out.argmax(-1) == yc).sum(1)
    m = max(len(x), 1)
    return (loss_sum / m).tolist(), (correct.double() / m).tolist()


def evaluate_members(
    module: nn.Module,
    forward: Callable,
    members: int,
    data: Subset,
    loss_per_sample: Callable,
    chunk_size: int,
    train: bool = True,
    test: bool = True,
) -> list[dict]:
    """Training (``train``) and test (``test``) loss and accuracy of each member, with ``module`` in eval mode
    (batch norm normalises with its running statistics); ``module`` is back in train mode afterwards."""
    module.eval()
    rows: list[dict] = [{} for _ in range(members)]
    for split, x, y, wanted in (("train", data.x_train, data.y_train, train), ("test", data.x_test, data.y_test, test)):
        if wanted:
            losses, accs = evaluate(forward, members, x, y, loss_per_sample, chunk_size)
            for k in range(members):
                rows[k].update({f"{split}_loss": losses[k], f"{split}_acc": accs[k]})
    module.train()
    return rows


def progress_bar(enabled: bool, total: int, desc: str, initial: int = 0):
    """Progress over the steps (None when ``enabled`` is false): a tqdm bar on stderr when stderr is a
    terminal, else (a job's log file) :class:`PlainProgress`, plain lines without carriage returns."""
    if not enabled:
        return None
    if not sys.stderr.isatty():
        return PlainProgress(total, desc, initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", mininterval=1.0, file=sys.stderr)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class PlainProgress:
    """Progress for logs: one plain line at the start, at every tenth of the steps, at least every ``every_s``
    seconds in between, and at the end (the tqdm methods used here: ``update``, ``set_postfix``, ``close``)."""

    def __init__(self, total: int, desc: str, initial: int = 0, every_s: float = 60.0, stream=None):
        self.total, self.desc, self.n, self.initial, self.every_s = max(total, 1), desc, initial, initial, every_s
        self.stream = stream
        self.start = self.last = time.monotonic()
        self.tenth = self._tenth(initial)
        self.postfix = ""
        self._line("started" if initial == 0 else f"resumed at step {initial}")

    def _tenth(self, n: int) -> int:
        return 10 * n // self.total

    def _line(self, what: str | None = None) -> None:
        now = time.monotonic()
        self.last = now
        if what is None:
            rate = (self.n - self.initial) / max(now - self.start, 1e-9)
            left = f", ~{_duration((self.total - self.n) / rate)} left" if rate > 0 else ""
            what = f"{100 * self.n / self.total:.0f}%, {rate:.3g} steps/s, {_duration(now - self.start)} elapsed{left}"
        post = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: step {self.n}/{self.total} ({what}{post})", file=self.stream or sys.stderr, flush=True)

    def update(self, k: int = 1) -> None:
        self.n += k
        tenth = self._tenth(self.n)
        if tenth > self.tenth or time.monotonic() - self.last >= self.every_s:
            self.tenth = tenth
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.n < self.total:  # stopped early (goal or divergence): say where
            self._line()
