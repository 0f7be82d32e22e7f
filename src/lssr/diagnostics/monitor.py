"""``lssr.SharpnessMonitor``: the sharpness diagnostics along a training run, at θ_t before the update.

A thin, stateful user of :func:`.api.diagnose`: it draws a fixed probe set of n samples once (seeded,
from the data set behind the user's loader, so every measurement sees the same samples and costs the same), decides
when to measure (every k steps, and/or when the next measurement, at its predicted cost, keeps the measurements'
wall time within a fraction of the training's), warm-starts ‖H‖ from the last eigenvector, reads η, momentum β,
dampening and weight decay λ from the optimiser, and writes one row per measurement (step, η, the stability
threshold, ‖H‖, ‖H‖ + λ, the moments and every b's tr(H S_b), ‖H‖_{S_b}, ρ_b, ...) to a CSV file and/or a callback.
With ``stream=True`` (opt-in) it runs its streaming mode (:mod:`.stream`) instead: rows every ``window`` steps
from the training's own mini-batch gradients and HVPs on fresh samples (calibration rows of :func:`.api.diagnose`
on the probe set with ``calibrate_every``).
Its own state (schedule, timings, warm start, CSV offset) goes into checkpoints through
:meth:`SharpnessMonitor.state_dict`. The training run is not changed: the model's modes, parameters, ``.grad``,
buffers, the optimiser and the global random states are as before each measurement.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from .. import LssrError
from ..curvature import GraphTooLarge
from ..io import CsvLog
from .api import (
    CHUNK,
    Diagnostics,
    _restoring,
    _set_hvp_mode,
    _train_mode_bn,
    diagnose,
    gradient_seconds,
    memory_budget,
    prepare,
    preserved_rng,
    unwrap,
)
from .batches import collect
from .stream import Window, check_groups, grads_of, row_products, stream_estimates, successive_se

#: The monitor's defaults: a probe set of N_PROBE samples drawn with SEED; without ``every`` or ``budget``,
#: measure only when the measurements' wall time, the next one's predicted cost included, stays within
#: BUDGET of the training's.
N_PROBE, BUDGET, SEED = 256, 0.10, 0
#: Under a budget, the first measurement's cost is predicted as FIRST_COST gradient-equivalents (times one
#: full gradient ∇L on the probe set, timed by the calibration), above the cost of a cold measurement at the
#: defaults on a CIFAR-10 convnet (57 at step 1308 of make bench-monitor's loop, results/bench/monitor.json;
#: a warm-started one 61); later predictions are the measured cost of the last measurement. The
#: calibration (two gradients on the probe set, the first one paying the one-time start of the per-sample
#: machinery, the second timed) is estimated at CALIBRATION_COST training steps per n/B (probe samples per
#: training batch).
FIRST_COST, CALIBRATION_COST = 100.0, 4.0

#: The streaming mode's defaults (:mod:`.stream`): a row every WINDOW training steps (the window of mini-batch
#: gradients it averages), HVPs on STREAM_N fresh probe samples per row in GROUPS groups (the jackknife's).
WINDOW, STREAM_N, GROUPS = 80, 32, 8

#: The terms whose standard error comes from (tr S_n), or is at least, the spread of the last SPREAD_ROWS
#: streaming rows (:func:`.stream.successive_se`): each row has fresh probe samples, whose spread the window's
#: jackknife leaves out.
SPREAD_KEYS, SPREAD_ROWS = ("tr_S_n", "tr_HS_b", "top_eig"), 8

#: Columns before the diagnostics in every row.
HEAD = ("step", "lr", "momentum", "dampening", "nesterov", "weight_decay", "threshold", "top_eig_reg", "edge_ratio")
#: The streaming mode's columns after HEAD (calibration rows of :func:`lssr.diagnose` have the same ones):
#: ``kind`` (``stream`` or ``diagnose``), the window of steps averaged (``window_start`` .. ``step``,
#: ``window_steps`` of them; 0 for a calibration row, measured at θ_step), the training batch size b, each
#: quantity with its standard error, ``rho_threshold`` = ρ_b × threshold (2ρ_b/η without momentum), the probe
#: samples of the row's HVPs and its cost.
STREAM_COLS = (
    "kind",
    "window_start",
    "window_steps",
    "b",
    "tr_S_b",
    "tr_S_b_se",
    "tr_S_n",
    "tr_S_n_se",
    "tr_S_n_window",
    "tr_S_n_window_se",
    "tr_S_1",
    "tr_S_1_se",
    "b_simple",
    "b_simple_se",
    "rho_b",
    "rho_b_se",
    "tr_HS_b",
    "tr_HS_b_se",
    "ias_b",
    "ias_b_se",
    "top_eig",
    "top_eig_se",
    "top_eig_residual",
    "rho_threshold",
    "probe_n",
    "groups",
    "cost_seconds",
)


def sgd_threshold(lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False) -> float:
    """The largest curvature λ for which ``torch.optim.SGD`` is stable on the quadratic ½λθ²: 2/η without
    momentum; (2 + 2β)/(η(1 − τ)) with heavy-ball momentum β and dampening τ; (2 + 2β)/(η(1 + 2β)) with
    Nesterov momentum (torch's form; it allows no dampening). NaN when η ≤ 0 or τ = 1."""
    if not lr > 0 or dampening >= 1:
        return math.nan
    if momentum == 0:
        return 2.0 / lr
    if nesterov:
        return (2.0 + 2.0 * momentum) / (lr * (1.0 + 2.0 * momentum))
    return (2.0 + 2.0 * momentum) / (lr * (1.0 - dampening))


def optimizer_hyper(optimizer: torch.optim.Optimizer | None) -> dict:
    """η, β, τ, Nesterov and λ of the first parameter group (SGD names; NaN for what the optimiser lacks).
    The threshold applies to ``torch.optim.SGD`` only; for other optimisers it is NaN."""
    out = dict(lr=math.nan, momentum=math.nan, dampening=math.nan, nesterov=False, weight_decay=math.nan)
    if optimizer is None:
        return out
    group = optimizer.param_groups[0]
    for key in ("lr", "momentum", "dampening", "weight_decay"):
        if key in group:
            out[key] = float(group[key])
    out["nesterov"] = bool(group.get("nesterov", False))
    if not isinstance(optimizer, torch.optim.SGD):
        out["threshold"] = math.nan
    return out


def _dataset_with_transform(ds: Dataset):
    """The object whose ``transform`` attribute the samples of ``ds`` go through (``Subset`` unwrapped)."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds if hasattr(ds, "transform") else None


def draw_probe_set(data: Any, n: int | None, seed: int, transform: Callable | None = None) -> Any:
    """The fixed probe set: n samples of ``data`` (all for n=None or a smaller data set) as one nest of CPU
    tensors.

    A ``DataLoader`` over a map-style data set is read through its data set (a seeded choice of n indices:
    its sampler, shuffling and batch size play no part); ``transform`` replaces the data set's own
    ``transform`` attribute during the draw (torchvision data sets, also inside a ``Subset``) so that the
    probe set can be drawn without random augmentation. Random transforms that remain are applied once, at
    the draw. The global random states are as before."""
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        data = data.dataset
    if n is not None and isinstance(data, Dataset) and hasattr(data, "__len__"):
        n = min(n, len(data))  # a data set smaller than n: all of it
    holder = None
    if transform is not None:
        holder = _dataset_with_transform(data) if isinstance(data, Dataset) else None
        if holder is None:
            raise LssrError(
                f"SharpnessMonitor: transform= needs a data set with a `transform` attribute (torchvision style), "
                f"got {type(data).__name__}; fix: pass the probe data without augmentation as `data` instead"
            )
    with preserved_rng():
        saved = holder.transform if holder is not None else None
        try:
            if holder is not None:
                holder.transform = transform
            batch, _ = collect(data, n=n, seed=seed)
        finally:
            if holder is not None:
                holder.transform = saved
    return batch


def _larger(a: float, b: float) -> float:
    """The larger of two standard errors, either of which may be NaN (unknown); NaN when both are."""
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


def _map_style(data: Any) -> Dataset | None:
    """The map-style data set behind ``data`` (itself, or a DataLoader's), else None."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        return data
    return None


class SharpnessMonitor:
    """Measures :func:`lssr.diagnose` of ``model`` on a fixed probe set at θ_t, before the update, during a
    training loop; call :meth:`step` once per optimiser step (before ``optimizer.step()``).

    model, loss, forward: as for :func:`lssr.diagnose` (batch norm measured with its running statistics
        and dropout off, by default: ``bn="eval"``, ``dropout="off"``).
    data: the training data (tensors, Dataset, DataLoader, batch iterable); the probe set is ``n`` samples
        of it drawn once with ``seed`` (:func:`draw_probe_set`; ``transform`` to draw them without
        augmentation).
    optimizer: read at each measurement for η, momentum β, dampening τ and weight decay λ (first parameter
        group); ``lr`` / ``momentum`` override it. Each row has the threshold (2 + 2β)/η of SGD
        (:func:`sgd_threshold`), ‖H‖ + λ (``top_eig_reg``: the top eigenvalue of the Hessian of L + (λ/2)‖θ‖²,
        the loss coupled weight decay descends) and their ratio ``edge_ratio``.
    every: measure at steps 0, k, 2k, ... (None: any step); ``every`` alone measures at every multiple,
        whatever it costs. budget: measure only when the measurements' wall time so far plus the next one's
        predicted cost stays within ``budget`` times the training's wall time so far (between calls), so
        the account holds at every step when predictions are not below the costs. The first prediction is
        FIRST_COST gradient-equivalents of one gradient on the probe set, timed once (:meth:`calibrate`,
        when the budget allows CALIBRATION_COST × the training step time × n / the training batch size);
        later ones are the last measurement's cost. A short run may measure nothing (:meth:`steps_to_next`
        says when the next measurement fits). Neither given: ``budget=BUDGET`` (10%); both: the multiples of k that fit.
    batch_sizes, replacement: the b of each row (default: the DataLoader's batch size); ``replacement=True``
        (default) gives them γ = 1, the value for batches drawn from a training set of N ≫ b samples, of
        which the probe set is a sample (without replacement from the probe set itself, γ = (n − b)/(n − 1)
        would describe batches of the n probe samples, not of the training set).
    csv: a CSV file, one row per measurement, appended and fsynced in ``<csv>.partial`` and renamed onto
        ``csv`` by :meth:`close`; resumed runs cut it back to the checkpoint's rows. callback: called with
        each row (a dict). diagnose_kwargs: any further option of :func:`lssr.diagnose` (probes, exact,
        eig_tol, hvp_mode, ...). clock: the wall clock of the schedule (seconds; ``time.perf_counter``).
    stream: False (default; None is the same) measures the rows above with :func:`lssr.diagnose`; True turns on
        the streaming mode (:mod:`.stream`; call :meth:`step` after ``backward``; refused for batch norm in train
        mode; its ‖H‖ lags during training, see docs/DIAGNOSTICS.md). Each call adds the mini-batch gradient to
        the window; a row closes the window after ``window`` steps (WINDOW) when its predicted cost (the last
        row's) fits the budget, from the window's gradients and two HVPs on ``stream_n`` (STREAM_N) fresh samples
        of the data set; ``groups`` (GROUPS) round-robin groups of steps give the jackknife standard errors. Rows hold
        HEAD and STREAM_COLS. ``calibrate_every``: also a row of :func:`lssr.diagnose` on the probe set (kind
        ``diagnose``, same columns) at those multiples, when it fits the budget.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Any,
        data: Any,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        n: int | None = N_PROBE,
        seed: int = SEED,
        every: int | None = None,
        budget: float | None = None,
        batch_sizes: Iterable[int] | None = None,
        csv: str | os.PathLike | None = None,
        callback: Callable[[dict], Any] | None = None,
        transform: Callable | None = None,
        forward: Callable | None = None,
        lr: float | None = None,
        momentum: float | None = None,
        replacement: bool = True,
        bn: str = "eval",
        dropout: str = "off",
        clock: Callable[[], float] = time.perf_counter,
        stream: bool | None = False,
        window: int = WINDOW,
        stream_n: int = STREAM_N,
        groups: int = GROUPS,
        calibrate_every: int | None = None,
        **diagnose_kwargs: Any,
    ):
        if stream not in (None, True, False):
            raise LssrError(f"SharpnessMonitor: stream must be True or False (None: False), got {stream!r}")
        check_groups(groups, window)
        if not isinstance(stream_n, int) or stream_n < 1:
            raise LssrError(f"SharpnessMonitor: stream_n must be a positive integer, got {stream_n!r}")
        if calibrate_every is not None and (not isinstance(calibrate_every, int) or calibrate_every < 1):
            raise LssrError(
                f"SharpnessMonitor: calibrate_every must be a positive integer or None, got {calibrate_every!r}"
            )
        if every is not None and (not isinstance(every, int) or every < 1):
            raise LssrError(f"SharpnessMonitor: every must be a positive integer or None, got {every!r}")
        if budget is not None and not (0 < budget):
            raise LssrError(f"SharpnessMonitor: budget must be a positive fraction (e.g. 0.1) or None, got {budget!r}")
        for bad in ("n", "seed", "batch_sizes", "eig_init", "data"):
            if bad in diagnose_kwargs:
                raise LssrError(f"SharpnessMonitor: {bad}= is the monitor's own; fix: drop it from the options")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.every, self.budget = every, (BUDGET if every is None and budget is None else budget)
        self.seed = int(seed)
        self.callback, self.forward, self.clock = callback, forward, clock
        self.lr, self.momentum = lr, momentum
        self.options = dict(replacement=replacement, bn=bn, dropout=dropout, **diagnose_kwargs)
        self.stream = bool(stream)  # the opt-in streaming mode (:mod:`.stream`)
        self.window, self.groups = int(window), int(groups)
        self.stream_n = int(stream_n)
        self.calibrate_every = calibrate_every
        self._source = _map_style(data)
        self._window: Window | None = None
        self._x: torch.Tensor | None = None  # the warm start of ‖H‖
        self._recent: list[dict] = []  # the last SPREAD_ROWS rows' curvature terms
        self._hvp_mode: str | None = None
        self._gen = torch.Generator().manual_seed(self.seed)
        self.stream_rows = 0
        self.last_stream_seconds = 0.0
        loader_bs = getattr(data, "batch_size", None) if isinstance(data, DataLoader) else None
        if batch_sizes is None:
            batch_sizes = (loader_bs,) if loader_bs else ()
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.probe = draw_probe_set(data, n, self.seed, transform)
        self.n = int(torch.utils._pytree.tree_leaves(self.probe)[0].shape[0])
        # the training's batch size (the loader's, else the largest b, else n): sizes the calibration's cost
        self.train_batch = int(loader_bs or max(self.batch_sizes, default=0) or self.n)
        self.stream_b = int(loader_bs or max(self.batch_sizes, default=0)) or None  # b of the training's g_t
        self.train_size = len(self._source) if self._source is not None else None
        for b in self.batch_sizes:
            if b < 1 or (not replacement and b > self.n):
                raise LssrError(
                    f"SharpnessMonitor: batch size {b} is out of range for a probe set of n = {self.n} "
                    f"(replacement={replacement}); fix: batch_sizes within 1..{self.n}, or replacement=True"
                )
        self.csv = CsvLog(csv, []) if csv is not None else None
        self._csv_offset: int | None = None  # from a checkpoint: cut the partial file back to it
        self._csv_ready = False
        # the state that checkpoints carry
        self.steps = 0  # calls of step() so far: the index of the next optimiser step
        self.measurements = 0
        self.train_seconds = 0.0  # wall time between calls (the training)
        self.train_steps = 0  # the intervals between calls in train_seconds
        self.spent_seconds = 0.0  # wall time inside measurements and the calibration
        self.last_seconds = 0.0  # the last measurement's
        self.grad_seconds: float | None = None  # the calibration: one gradient on the probe set
        self.eigenvector: torch.Tensor | None = None
        self.last: dict | None = None
        self._clock: float | None = None
        self._resumed = False

    # -- schedule -------------------------------------------------------------------------------

    def step_seconds(self) -> float | None:
        """The training's mean wall seconds per step so far (None before one is timed)."""
        return self.train_seconds / self.train_steps if self.train_steps else None

    def predicted_seconds(self) -> float | None:
        """The predicted wall seconds of the next measurement: the last one's; before any, FIRST_COST times the
        calibration's gradient seconds (None before the calibration)."""
        if self.measurements:
            return self.last_seconds
        return FIRST_COST * self.grad_seconds if self.grad_seconds is not None else None

    def _fits(self, seconds: float) -> bool:
        return self.spent_seconds + seconds <= self.budget * self.train_seconds

    def _calibration_estimate(self) -> float | None:
        t = self.step_seconds()
        return None if t is None else CALIBRATION_COST * t * max(1.0, self.n / self.train_batch)

    def calibration_due(self) -> bool:
        """Whether the next call runs the calibration: under a budget, before the first measurement, once the
        budget allows its estimated cost (CALIBRATION_COST × the mean step time × n / the training batch)."""
        if self.budget is None or self.grad_seconds is not None or self.measurements:
            return False
        est = self._calibration_estimate()
        return est is not None and self._fits(est)

    def due(self, step: int | None = None) -> bool:
        """Whether a call at ``step`` (default: the next) measures under the schedule (with the account as it is
        now)."""
        step = self.steps if step is None else int(step)
        if self.every is not None and step % self.every:
            return False
        if self.budget is None:
            return True
        predicted = self.predicted_seconds()
        return predicted is not None and self._fits(predicted)

    def steps_to_next(self) -> int | None:
        """How many calls from now (0: the next) until the next measurement is due, at the training's mean step
        time so far under a budget (before the calibration, with its estimate and a gradient estimated at the
        training step time × n / the training batch size); None before a timed step under a budget."""
        k = 0
        if self.budget is not None:
            t = self.step_seconds()
            if t is None:
                return None
            predicted = self.predicted_seconds()
            if predicted is None:
                est = self._calibration_estimate()
                predicted = est + FIRST_COST * est / CALIBRATION_COST
            need = (self.spent_seconds + predicted) / self.budget - self.train_seconds
            k = max(0, math.ceil(need / t) - 1) if t > 0 else 0  # call k sees (k + 1) more steps
        if self.every is not None:
            k += -(self.steps + k) % self.every
        return k

    def step(self, step: int | None = None) -> dict | None:
        """One optimiser step: measures at the current θ when due (call it before ``optimizer.step()``,
        before or after ``backward``) and returns the row, else None. ``step``: the step's index (default:
        the number of earlier calls). A resumed run counts the training before its first call at the mean
        step time of the checkpoint."""
        now = self.clock()
        if self._clock is not None:
            self.train_seconds += now - self._clock
            self.train_steps += 1
        elif self._resumed and self.train_steps:
            self.train_seconds += self.train_seconds / self.train_steps
            self.train_steps += 1
        self._resumed = False
        if step is not None:
            self.steps = int(step)
        if self.stream:
            row = self._stream_step()
        else:
            if self.calibration_due():
                self.calibrate()
            row = self.measure() if self.due() else None
        self.steps += 1
        self._clock = self.clock()
        return row

    # -- the streaming mode ----------------------------------------------------------------------

    def _trainable(self) -> list:
        return [p for p in unwrap(self.model).parameters() if p.requires_grad]

    def _stream_step(self) -> dict | None:
        """Adds the step's mini-batch gradient to the window; closes the window with a row when it has ``window``
        steps and the row's predicted cost (the last row's) fits the budget; a calibration row of
        :func:`lssr.diagnose` at the multiples of ``calibrate_every`` when it fits."""
        t0 = self.clock()
        if self._window is None:
            bns = _train_mode_bn(unwrap(self.model))
            if bns:
                raise LssrError(
                    f"SharpnessMonitor: batch norm in train mode ({bns[0]}): the streaming mode reads training "
                    "gradients computed with batch statistics while its Hessian-vector products would use running "
                    "statistics, so rows would mix two losses; fix: stream=False (diagnose rows with bn='eval'), "
                    "or a model without batch norm"
                )
            self._params = self._trainable()  # the window's parameters (listed once: a walk of the modules costs)
        params = self._params
        g = grads_of(params)
        if g is None:
            raise LssrError(
                "SharpnessMonitor: the streaming mode reads the training's gradients, but no parameter has a .grad; "
                "fix: call monitor.step() after loss.backward() and before optimizer.step(), or stream=False"
            )
        if self._window is None:
            self._window = Window(params, self.groups, generator=self._gen, start=self.steps)
        self._window.add(g)
        self.spent_seconds += self.clock() - t0
        row = None
        w = self._window
        if w.steps >= self.window and w.ready() and self._stream_fits(self.last_stream_seconds):
            row = self.measure_stream()
        if self.calibrate_every is not None and self.steps % self.calibrate_every == 0:
            if self._stream_fits(self.last_seconds if self.measurements else 0.0):
                row = self.measure(kind="diagnose")
        return row

    def _stream_fits(self, seconds: float) -> bool:
        return self.budget is None or self.budget == math.inf or self._fits(seconds)

    def _stream_batch(self):
        """The row's probe samples: ``stream_n`` fresh samples of the training data set drawn with a seed of the
        monitor's generator, through the data set's own transform (the training's distribution, its random
        augmentation seeded by the monitor); for data without a map-style data set, a random subset of the
        probe set. The global random states are as before."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self._gen))
        if self._source is None:
            idx = torch.randperm(self.n, generator=self._gen)[: self.stream_n].sort().values
            return torch.utils._pytree.tree_map(lambda t: t[idx] if isinstance(t, torch.Tensor) else t, self.probe)
        with preserved_rng():
            torch.manual_seed(seed)
            batch, _ = collect(self._source, n=min(self.stream_n, len(self._source)), seed=seed)
        return batch

    def measure_stream(self) -> dict:
        """Closes the window: the streaming row (:mod:`.stream`) from its gradients and two HVPs on fresh probe
        samples; records it (CSV, callback) and starts the next window."""
        t0 = self.clock()
        w, self._window = self._window, None
        o = self.options
        with preserved_rng():
            batch = self._stream_batch()
            prep = prepare(
                self.model, self.loss, [batch], forward=self.forward, chunk_size=self.stream_n, dtype=o.get("dtype")
            )
            with _restoring(prep.model, o["bn"], o["dropout"]), torch.autocast(prep.device_type, enabled=False):
                op = prep.operator(chunk_size=self.stream_n)
                if self._hvp_mode is None and o.get("hvp_mode", "auto") == "auto":
                    try:  # the kept graph of ∇L when it works (the cheapest HVPs), without trying the others first
                        op.set_hvp_mode("graph", "SharpnessMonitor", graph_budget=memory_budget(op.device))
                        self._hvp_mode = "graph"
                    except (GraphTooLarge, NotImplementedError, RuntimeError):
                        self._hvp_mode = _set_hvp_mode(op, "auto")
                elif self._hvp_mode is None:
                    self._hvp_mode = _set_hvp_mode(op, o["hvp_mode"])
                else:
                    op.set_hvp_mode(self._hvp_mode, "SharpnessMonitor", graph_budget=memory_budget(op.device))
                prod = row_products(op, w, self._x)
                self._x = prod["x"]
        b = self.stream_b
        gam = 1.0
        if not o["replacement"] and b is not None and self.train_size and self.train_size > 1:
            gam = (self.train_size - b) / (self.train_size - 1)
        # the spread of consecutive rows (fresh probe samples and batches each) in the standard errors
        self._recent = (self._recent + [{k: prod[k] for k in SPREAD_KEYS}])[-SPREAD_ROWS:]
        spread = {k: successive_se([r[k] for r in self._recent]) for k in SPREAD_KEYS}
        est = stream_estimates(w, prod, spread["tr_S_n"], b, gam)
        for key in ("tr_HS_b", "top_eig"):
            est[f"{key}_se"] = _larger(est[f"{key}_se"], spread[key])
        est["ias_b_se"] = _larger(est["ias_b_se"], spread["tr_HS_b"] / abs(est["tr_S_b"]))
        extra = dict(
            kind="stream",
            window_start=w.start,
            window_steps=w.steps,
            b=b if b is not None else math.nan,
            top_eig_residual=prod["top_eig_residual"],
            probe_n=op.n,
            groups=w.M,
        )
        row = self._row(est["top_eig"], est | extra)
        self.stream_rows += 1
        self.last_stream_seconds = self.clock() - t0
        row["cost_seconds"] = self.last_stream_seconds
        self.spent_seconds += self.last_stream_seconds
        self._emit(row)
        return row

    def _head(self, top_eig: float) -> dict:
        """The HEAD columns of a row at this step: the optimiser's hyper-parameters, the threshold, ‖H‖ + λ."""
        h = self.hyper()
        wd = 0.0 if math.isnan(h["weight_decay"]) else h["weight_decay"]
        top_reg = top_eig + wd
        row = {"step": self.steps, **h, "top_eig_reg": top_reg, "edge_ratio": top_reg / h["threshold"]}
        return {k: row[k] for k in HEAD}

    def _row(self, top_eig: float, values: dict) -> dict:
        """A row in the streaming mode's columns: HEAD, then STREAM_COLS from ``values``."""
        head = self._head(top_eig)
        values = dict(values, rho_threshold=values["rho_b"] * head["threshold"], cost_seconds=math.nan)
        return head | {k: values[k] for k in STREAM_COLS}

    def _emit(self, row: dict) -> None:
        if self.csv is not None:
            self._write(row)
        if self.callback is not None:
            self.callback(row)
        self.last = row

    def calibrate(self) -> float:
        """Computes the gradient ∇L on the probe set twice (as a measurement does) and keeps the second's wall
        seconds (the first pays one-time starts) for the first measurement's predicted cost; both count in
        the measurements' wall time. Returns the kept seconds."""
        o = self.options
        kw = dict(
            forward=self.forward,
            bn=o["bn"],
            dropout=o["dropout"],
            chunk_size=o.get("chunk_size", CHUNK),
            dtype=o.get("dtype"),
            clock=self.clock,
        )
        with preserved_rng():
            first = gradient_seconds(self.model, self.loss, [self.probe], **kw)
            self.grad_seconds = gradient_seconds(self.model, self.loss, [self.probe], **kw)
        self.spent_seconds += first + self.grad_seconds
        return self.grad_seconds

    # -- one measurement ------------------------------------------------------------------------

    def hyper(self) -> dict:
        """η, β, τ, Nesterov, λ and the SGD threshold now (the optimiser's, overridden by ``lr`` / ``momentum``)."""
        h = optimizer_hyper(self.optimizer)
        if self.lr is not None:
            h["lr"] = float(self.lr)
        if self.momentum is not None:
            h["momentum"] = float(self.momentum)
        if "threshold" not in h:
            mom = 0.0 if math.isnan(h["momentum"]) else h["momentum"]
            damp = 0.0 if math.isnan(h["dampening"]) else h["dampening"]
            h["threshold"] = sgd_threshold(h["lr"], mom, damp, h["nesterov"]) if not math.isnan(h["lr"]) else math.nan
        return h

    def diagnose(self) -> Diagnostics:
        """:func:`lssr.diagnose` on the probe set at the current θ, warm-started from the last eigenvector."""
        return diagnose(
            self.model,
            self.loss,
            [self.probe],
            batch_sizes=self.batch_sizes,
            seed=self.seed,
            forward=self.forward,
            eig_init=self.eigenvector,
            **self.options,
        )

    def measure(self, kind: str | None = None) -> dict:
        """Measures now with :func:`lssr.diagnose` (whatever the schedule), records the row (CSV, callback) and
        returns it. ``kind="diagnose"``: the row in the streaming mode's columns (a calibration row, at b)."""
        t0 = self.clock()
        with preserved_rng():
            d = self.diagnose()
        if d.eigenvector is not None:
            self.eigenvector = d.eigenvector
        if kind == "diagnose":
            b = self.stream_b or self.train_batch
            a = d.at(b)
            values = dict(
                kind="diagnose",
                window_start=self.steps,
                window_steps=0,
                b=b,
                tr_S_b=a.tr_S_b,
                tr_S_b_se=a.tr_S_b_se,
                tr_S_n=d.tr_S_n,
                tr_S_n_se=0.0,
                tr_S_n_window=math.nan,
                tr_S_n_window_se=math.nan,
                tr_S_1=d.tr_S_1,
                tr_S_1_se=0.0,
                b_simple=d.b_simple,
                b_simple_se=0.0,
                rho_b=a.rho_b,
                rho_b_se=a.rho_b_se,
                tr_HS_b=a.tr_HS_b,
                tr_HS_b_se=a.tr_HS_b_se,
                ias_b=a.ias_b,
                ias_b_se=a.ias_b_se,
                top_eig=d.top_eig,
                top_eig_se=math.nan,
                top_eig_residual=d.top_eig_residual,
                probe_n=d.n,
                groups=0,
            )
            row = self._row(d.top_eig, values)
            self.measurements += 1
            self.last_seconds = self.clock() - t0
            row["cost_seconds"] = self.last_seconds
            self.spent_seconds += self.last_seconds
            self._emit(row)
            return row
        row = self._head(d.top_eig) | d.to_dict()
        self._emit(row)
        self.measurements += 1
        self.last_seconds = self.clock() - t0
        self.spent_seconds += self.last_seconds
        return row

    def _write(self, row: dict) -> None:
        log = self.csv
        if not self._csv_ready:
            if not log.columns:
                log.columns = list(row)
            if self._csv_offset is None:
                log.reset()  # a fresh run: no rows of an earlier one
            else:
                if not log.partial.exists() and log.path.exists():
                    os.replace(log.path, log.partial)  # resumed after close(): continue the closed file
                log.truncate(self._csv_offset)  # resumed: the checkpoint's rows only
            self._csv_ready = True
        if list(row) != log.columns:
            raise LssrError(f"SharpnessMonitor: row columns changed; the CSV {log.path} has {log.columns[:4]}...")
        log.append(row)
        self._csv_offset = log.flush()

    # -- checkpoints and the end ----------------------------------------------------------------

    def state_dict(self) -> dict:
        """The schedule (steps, measurements, the wall-time account, the calibration), the warm start (last
        eigenvector), the last row and the CSV's byte offset: save it with the model's checkpoint."""
        return {
            "steps": self.steps,
            "measurements": self.measurements,
            "train_seconds": self.train_seconds,
            "train_steps": self.train_steps,
            "spent_seconds": self.spent_seconds,
            "last_seconds": self.last_seconds,
            "grad_seconds": self.grad_seconds,
            "eigenvector": self.eigenvector,
            "last": self.last,
            "csv_columns": list(self.csv.columns) if self.csv is not None else None,
            "csv_offset": self._csv_offset,
            "seed": self.seed,
            "n": self.n,
            "stream": self.stream,
            "stream_rows": self.stream_rows,
            "last_stream_seconds": self.last_stream_seconds,
            "stream_x": self._x,
            "stream_recent": list(self._recent),
            "hvp_mode": self._hvp_mode,
            "stream_generator": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict`: the same schedule and warm start; the CSV is cut back to the
        rows written up to the checkpoint (later rows are measured again by the resumed run)."""
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise LssrError(
                f"SharpnessMonitor.load_state_dict: the checkpoint's probe set (n = {state['n']}, seed = "
                f"{state['seed']}) differs from this monitor's (n = {self.n}, seed = {self.seed}); fix: the same n "
                f"and seed"
            )
        for key in ("steps", "measurements", "train_steps"):
            setattr(self, key, int(state[key]))
        for key in ("train_seconds", "spent_seconds", "last_seconds"):
            setattr(self, key, float(state[key]))
        self.grad_seconds = None if state["grad_seconds"] is None else float(state["grad_seconds"])
        self.eigenvector = state["eigenvector"]
        self.last = state["last"]
        self.stream = state.get("stream", self.stream)
        self.stream_rows = int(state.get("stream_rows", 0))
        self.last_stream_seconds = float(state.get("last_stream_seconds", 0.0))
        self._x = state.get("stream_x")
        self._recent = list(state.get("stream_recent", []))
        self._hvp_mode = state.get("hvp_mode")
        if state.get("stream_generator") is not None:
            self._gen.set_state(state["stream_generator"])
        self._window = None  # a resumed run starts a new window at its first call
        self._clock = None
        self._resumed = True
        if self.csv is not None:
            self.csv.close()
            self.csv.columns = list(state["csv_columns"] or [])
            self._csv_offset = state["csv_offset"]
            self._csv_ready = False

    def close(self) -> None:
        """Finishes the CSV: renames ``<csv>.partial`` onto ``csv`` (atomic). Measuring again reopens it."""
        if self.csv is not None and self._csv_ready:
            self.csv.finalize()
            self._csv_ready = False

    def __enter__(self) -> SharpnessMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
