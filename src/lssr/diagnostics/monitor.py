"""``lssr.SharpnessMonitor``: the sharpness diagnostics along a training run, at θ_t before the update.

A thin composition: a :class:`.schedule.Schedule` decides when to measure (every k steps and/or within a wall-time
budget), a fixed probe set (:mod:`.probeset`) is measured by :func:`.api.diagnose` warm-started from the last
eigenvector, or, in the streaming mode (the default when the loop calls :meth:`SharpnessMonitor.step` after
``backward``), a :class:`.stream.StreamEstimator` makes rows from the training's own mini-batch gradients; the
rows (:mod:`.rows`: the optimiser's η, β, τ, λ, the SGD threshold, ‖H‖ + λ, the moments and every b's tr(H S_b),
‖H‖_{S_b}, ρ_b, ...) go to a :class:`.sink.RowSink` (CSV and/or callback).
Its state (schedule, warm start, CSV offset) goes into checkpoints through :meth:`SharpnessMonitor.state_dict`.
The training run is not changed: the model's modes, parameters, ``.grad``, buffers, the optimiser and the
global random states are as before each measurement.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import LssrError
from .api import diagnose
from .engine import gradient_seconds
from .guards import preserved_rng, unwrap
from .options import Compute, Eigen, Estimator
from .probeset import draw_probe_set, map_style
from .results import Diagnostics
from .rows import calibration_values, head, hyper, stream_row
from .schedule import Schedule
from .sink import RowSink
from .stream import GROUPS, HVP_STEPS, STREAM_N, WINDOW, StreamEstimator, check_stream

#: The monitor's probe set: N_PROBE samples drawn with SEED.
N_PROBE, SEED = 256, 0


def _options(estimator: Any, eigen: Any, compute: Any) -> tuple[Estimator, Eigen | None, Compute]:
    """The option objects of :func:`lssr.diagnose` (:class:`.options.Estimator`, :class:`.options.Eigen` or None
    for no ‖H‖, :class:`.options.Compute`) from what their ``of`` accepts; ``Eigen(init=...)`` is refused, the warm
    start being the monitor's own."""
    e, g, c = Estimator.of(estimator), Eigen.of(eigen), Compute.of(compute)
    if g is not None and g.init is not None:
        raise LssrError("SharpnessMonitor: Eigen(init=...) is the monitor's own warm start; fix: drop init")
    if g is not None and g.heldout:
        raise LssrError(
            "SharpnessMonitor: Eigen(heldout=...) scores ‖H‖ on independent batches of lssr.diagnose(bn='batch'), "
            "which the monitor's rows do not measure; fix: drop heldout"
        )
    return e, g, c


def _delegate(owner: str, name: str, doc: str) -> property:
    """A property reading and writing ``self.<owner>.<name>``."""

    def get(self):
        return getattr(getattr(self, owner), name)

    def put(self, value):
        setattr(getattr(self, owner), name, value)

    return property(get, put, doc=doc)


class SharpnessMonitor:
    """Measures the sharpness diagnostics of ``model`` at θ_t, before the update, during a training loop: rows of
    :func:`lssr.diagnose` on a fixed probe set, or streaming rows from the training's own mini-batch gradients
    (the default when :meth:`step` comes after ``backward``: ``stream``); call :meth:`step` once per optimiser
    step (before ``optimizer.step()``).

    model, loss, forward: as for :func:`lssr.diagnose`. Its defaults differ from diagnose's in three places,
        because the monitor measures a model in the middle of training: ``bn="eval"`` (batch norm measured with
        its running statistics: the training's modules are in train mode, where diagnose's ``"refuse"`` would
        stop every run with batch norm), ``dropout="off"`` (measured without dropout, for the same reason) and
        ``replacement=True`` (γ = 1 for every b: the training's batches come from a training set of N ≫ b
        samples, of which the probe set is a sample; without replacement from the probe set itself,
        γ = (n − b)/(n − 1) would describe batches of the n probe samples, not of the training set).
    estimator, eigen, compute: :func:`lssr.diagnose`'s options (:class:`.options.Estimator`,
        :class:`.options.Eigen`, :class:`.options.Compute`; None: their defaults). The warm start of ‖H‖ is the
        monitor's (the last row's eigenvector), so ``Eigen(init=...)`` is refused. An ``Eigen(...)`` given here
        also sets the streaming rows' ‖H‖: up to its ``max_hvps`` LOBPCG products per row on the row's probe
        samples instead of one damped power step (:func:`.stream.row_products`).
    data: the training data (tensors, Dataset, DataLoader, batch iterable); the probe set is ``n`` samples
        of it drawn once with ``seed`` (:func:`.probeset.draw_probe_set`; ``transform`` to draw them without
        augmentation).
    optimizer: read at each measurement for η, momentum β, dampening τ and weight decay λ (first parameter
        group); ``lr`` / ``momentum`` override it. Each row has the threshold (2 + 2β)/η of SGD
        (:func:`lssr.scaling.sgd_threshold`), ‖H‖ + λ (``top_eig_reg``: the top eigenvalue of the Hessian of
        L + (λ/2)‖θ‖², the loss coupled weight decay descends) and their ratio ``edge_ratio``.
    every, budget: the schedule (:class:`.schedule.Schedule`): measure at steps 0, k, 2k, ... (None: any step);
        ``every`` alone measures at every multiple, whatever it costs. ``budget``: measure only when the
        measurements' wall time so far plus the next one's predicted cost stays within ``budget`` times the
        training's wall time so far; the first prediction comes from a one-time calibration (:meth:`calibrate`).
        A short run may measure nothing (:meth:`steps_to_next` says when the next measurement fits). Neither
        given: ``budget=BUDGET`` (10%); both: the multiples of k that fit. clock: the schedule's wall clock
        (seconds; ``time.perf_counter``).
    batch_sizes: the b of each row (default: the DataLoader's batch size times ``accumulate``).
    accumulate: the micro-batches whose gradients the loop adds up into one optimiser step (gradient accumulation,
        the loss of each divided by ``accumulate``): the step's g_t is the gradient of a batch of ``accumulate`` ×
        the DataLoader's batch size, the b of the streaming rows and of the default ``batch_sizes``.
    csv, callback: where rows go (:class:`.sink.RowSink`): a CSV file, appended and fsynced in
        ``<csv>.partial`` and renamed onto ``csv`` by :meth:`close` (resumed runs cut it back to the
        checkpoint's rows), and/or a callable called with each row (a dict).
    stream: None (default, "auto") chooses the mode once, at the first call of :meth:`step`: the streaming mode
        when the model's trainable parameters have gradients then (``.grad`` set: the loop calls :meth:`step`
        after ``loss.backward()`` and before ``optimizer.step()``), since the training's mini-batch gradient g_t
        in ``.grad`` is what a streaming row reads, and costs nothing more to read; the rows above otherwise
        (called before ``backward``, or after ``optimizer.zero_grad()``, whose default ``set_to_none=True`` since
        torch 2.0 leaves ``.grad`` None). A loop that calls :meth:`step` before ``backward`` but clears the
        gradients with ``zero_grad(set_to_none=False)`` (zeros), or not at all, leaves the last step's or zero
        gradients in ``.grad``, which the streaming mode would read as this step's g_t: pass ``stream=False``
        there. When the streaming mode refuses the model at the first call (:class:`.stream.StreamEstimator`:
        batch norm in train mode without a known training batch size), the auto choice is the rows above and
        :attr:`stream_refusal` says why. The
        choice is :attr:`stream` (None before the first call, then True or False), each row's ``kind``
        (``stream``, or ``diagnose`` for a row of :func:`lssr.diagnose`) and part of :meth:`state_dict`, so a
        resumed run keeps it. True / False force the mode (True at a call without gradients: an error naming
        the fix). The streaming mode (:class:`.stream.StreamEstimator`): each call adds the mini-batch gradient
        to the window; a row closes the window after ``window``
        steps when its predicted cost (the last row's) fits the budget, from the window's gradients and two HVPs
        on ``stream_n`` fresh samples of the data set; ``groups`` round-robin groups of steps give the jackknife
        standard errors; tr(H S_b) is from the window's last ``hvp_steps`` gradients (None: all of them);
        ``every`` plays no part (the window sets when rows come). Rows hold HEAD and STREAM_COLS; their ‖H‖ lags
        during training (a few power steps on a few probe samples per row). ``calibrate_every``: also a row of
        :func:`lssr.diagnose` on the probe set (kind ``diagnose``, same columns) at those multiples, when it
        fits the budget.
    """

    steps = _delegate("schedule", "steps", "Calls of :meth:`step` so far: the index of the next optimiser step.")
    measurements = _delegate("schedule", "measurements", "Rows of :func:`lssr.diagnose` so far.")
    train_seconds = _delegate("schedule", "train_seconds", "The training's wall time between calls.")
    spent_seconds = _delegate("schedule", "spent_seconds", "Wall time inside measurements and the calibration.")
    last_seconds = _delegate("schedule", "last_seconds", "The last :func:`lssr.diagnose` row's wall time.")
    grad_seconds = _delegate("schedule", "grad_seconds", "The calibration: one gradient on the probe set.")
    last = _delegate("sink", "last", "The last row (None before any).")

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
        estimator: Estimator | str | None = None,
        eigen: Eigen | bool | None = None,
        compute: Compute | None = None,
        clock: Callable[[], float] = time.perf_counter,
        stream: bool | None = None,
        window: int = WINDOW,
        stream_n: int = STREAM_N,
        groups: int = GROUPS,
        hvp_steps: int | None = HVP_STEPS,
        calibrate_every: int | None = None,
        accumulate: int = 1,
    ):
        if stream not in (None, True, False):
            raise LssrError(f"SharpnessMonitor: stream must be None (auto), True or False, got {stream!r}")
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise LssrError(f"SharpnessMonitor: accumulate must be a positive integer (1: none), got {accumulate!r}")
        check_stream(groups, window, stream_n, hvp_steps)
        if calibrate_every is not None and (not isinstance(calibrate_every, int) or calibrate_every < 1):
            raise LssrError(
                f"SharpnessMonitor: calibrate_every must be a positive integer or None, got {calibrate_every!r}"
            )
        self.schedule = Schedule(every, budget, clock)
        self.estimator, self.eigen, self.compute = _options(estimator, eigen, compute)
        self.replacement, self.bn, self.dropout = replacement, bn, dropout
        self.model, self.loss, self.optimizer, self.forward = model, loss, optimizer, forward
        self.seed, self.lr, self.momentum, self.clock = int(seed), lr, momentum, clock
        #: The mode: True streaming, False rows of lssr.diagnose, None until the first call decides (auto).
        self.stream: bool | None = stream
        #: Why the auto choice is not the streaming mode although the gradients were there (None: it is, or not
        #: chosen so): the streaming mode's refusal of the model.
        self.stream_refusal: str | None = None
        self.calibrate_every = calibrate_every
        loader_bs = getattr(data, "batch_size", None) if isinstance(data, DataLoader) else None
        loader_bs = loader_bs * accumulate if loader_bs else None  # the batch of one optimiser step's g_t
        if batch_sizes is None:
            batch_sizes = (loader_bs,) if loader_bs else ()
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.probe = draw_probe_set(data, n, self.seed, transform)
        self.n = int(torch.utils._pytree.tree_leaves(self.probe)[0].shape[0])
        # the training's batch size (the loader's, else the largest b, else n): sizes the calibration's cost
        self.train_batch = int(loader_bs or max(self.batch_sizes, default=0) or self.n)
        self.schedule.probe_ratio = max(1.0, self.n / self.train_batch)
        for b in self.batch_sizes:
            if b < 1 or (not replacement and b > self.n):
                raise LssrError(
                    f"SharpnessMonitor: batch size {b} is out of range for a probe set of n = {self.n} "
                    f"(replacement={replacement}); fix: batch_sizes within 1..{self.n}, or replacement=True"
                )
        self.streamer = StreamEstimator(
            model,
            loss,
            source=map_style(data),
            probe=self.probe,
            b=int(loader_bs or max(self.batch_sizes, default=0)) or None,  # b of the training's g_t
            seed=self.seed,
            window=window,
            groups=groups,
            stream_n=stream_n,
            hvp_steps=hvp_steps,
            forward=forward,
            replacement=replacement,
            options=dict(bn=bn, dropout=dropout, dtype=self.compute.dtype, hvp_mode=self.compute.hvp_mode),
            eigen=eigen if isinstance(eigen, Eigen) else None,
        )
        self.sink = RowSink(csv, callback)
        self.eigenvector: torch.Tensor | None = None

    # -- the schedule ---------------------------------------------------------------------------

    def step_seconds(self) -> float | None:
        """The training's mean wall seconds per step so far (None before one is timed)."""
        return self.schedule.step_seconds()

    def predicted_seconds(self) -> float | None:
        """The predicted wall seconds of the next measurement (:meth:`.schedule.Schedule.predicted_seconds`)."""
        return self.schedule.predicted_seconds()

    def calibration_due(self) -> bool:
        """Whether the next call runs the calibration (:meth:`.schedule.Schedule.calibration_due`)."""
        return self.schedule.calibration_due()

    def due(self, step: int | None = None) -> bool:
        """Whether a call at ``step`` (default: the next) measures under the schedule (with the account as it is
        now)."""
        return self.schedule.due(step)

    def steps_to_next(self) -> int | None:
        """How many calls from now (0: the next) until the next measurement is due
        (:meth:`.schedule.Schedule.steps_to_next`); None before a timed step under a budget."""
        return self.schedule.steps_to_next()

    def step(self, step: int | None = None) -> dict | None:
        """One optimiser step: measures at the current θ when due (call it before ``optimizer.step()``,
        before or after ``backward``; after it in the streaming mode, which the first call chooses when the
        gradients are there: ``stream``) and returns the row, else None. ``step``: the step's index (default: the
        number of earlier calls). A resumed run counts the training before its first call at the mean step time
        of the checkpoint."""
        self.schedule.begin(step)
        added = False
        if self.stream is None:
            self.stream = added = self._auto()
        if self.stream:
            row = self._stream_step(added)
        else:
            if self.schedule.calibration_due():
                self.calibrate()
            row = self.measure() if self.schedule.due() else None
        self.schedule.end()
        return row

    def calibrate(self) -> float:
        """Computes the gradient ∇L on the probe set twice (as a measurement does) and keeps the second's wall
        seconds (the first pays one-time starts) for the first measurement's predicted cost; both count in
        the measurements' wall time. Returns the kept seconds."""
        kw = dict(forward=self.forward, bn=self.bn, dropout=self.dropout, chunk_size=self.compute.chunk_size)
        kw |= dict(dtype=self.compute.dtype, clock=self.clock)
        s = self.schedule
        with preserved_rng():
            first = gradient_seconds(self.model, self.loss, [self.probe], **kw)
            s.grad_seconds = gradient_seconds(self.model, self.loss, [self.probe], **kw)
        s.spent_seconds += first + s.grad_seconds
        return s.grad_seconds

    # -- the streaming mode ----------------------------------------------------------------------

    def _auto(self) -> bool:
        """The auto choice at the first call: the streaming mode when a trainable parameter has a ``.grad`` and
        the streaming mode takes the step's gradient (added to its first window here); else False (its refusal
        in :attr:`stream_refusal`)."""
        if all(p.grad is None for p in unwrap(self.model).parameters() if p.requires_grad):
            return False
        try:
            self._add_gradient()
        except LssrError as refusal:
            self.stream_refusal = str(refusal)
            return False
        return True

    def _add_gradient(self) -> None:
        """Adds the step's mini-batch gradient to the streaming window, its time counted in the budget."""
        t0 = self.clock()
        try:
            self.streamer.add(start=self.schedule.steps)
        finally:
            self.schedule.spent_seconds += self.clock() - t0

    def _stream_step(self, added: bool = False) -> dict | None:
        """Adds the step's mini-batch gradient to the window (unless ``added`` already); closes the window with a
        row when it has ``window`` steps and the row's predicted cost (the last row's) fits the budget; a
        calibration row of :func:`lssr.diagnose` at the multiples of ``calibrate_every`` when it fits."""
        s, st = self.schedule, self.streamer
        if not added:
            self._add_gradient()
        row = None
        if st.full() and s.fits_any(st.last_seconds):
            row = self.measure_stream()
        if self.calibrate_every is not None and s.steps % self.calibrate_every == 0:
            if s.fits_any(s.last_seconds if s.measurements else 0.0):
                row = self.measure(kind="diagnose")
        return row

    def measure_stream(self) -> dict:
        """Closes the window: the streaming row (:meth:`.stream.StreamEstimator.measure`); records it (CSV,
        callback) and starts the next window."""
        t0 = self.clock()
        values = self.streamer.measure()
        row = self._stream_row(values)
        self.streamer.last_seconds = self.clock() - t0
        row["cost_seconds"] = self.streamer.last_seconds
        self.schedule.spent_seconds += self.streamer.last_seconds
        self.sink.emit(row)
        return row

    # -- one measurement ------------------------------------------------------------------------

    def hyper(self) -> dict:
        """η, β, τ, Nesterov, λ and the SGD threshold now (the optimiser's, overridden by ``lr`` / ``momentum``)."""
        return hyper(self.optimizer, self.lr, self.momentum)

    def _stream_row(self, values: dict) -> dict:
        return stream_row(head(self.schedule.steps, self.hyper(), values["top_eig"]), values)

    def diagnose(self) -> Diagnostics:
        """:func:`lssr.diagnose` on the probe set at the current θ, warm-started from the last eigenvector."""
        return diagnose(
            self.model,
            self.loss,
            [self.probe],
            batch_sizes=self.batch_sizes,
            seed=self.seed,
            forward=self.forward,
            replacement=self.replacement,
            estimator=self.estimator,
            eigen=False if self.eigen is None else dataclasses.replace(self.eigen, init=self.eigenvector),
            compute=self.compute,
            bn=self.bn,
            dropout=self.dropout,
        )

    def measure(self, kind: str | None = None) -> dict:
        """Measures now with :func:`lssr.diagnose` (whatever the schedule), records the row (CSV, callback) and
        returns it: HEAD, ``kind`` = ``diagnose``, then :meth:`.results.Diagnostics.to_dict`. ``kind="diagnose"``:
        the row in the streaming mode's columns (a calibration row, at b)."""
        t0 = self.clock()
        with preserved_rng():
            d = self.diagnose()
        if d.eigenvector is not None:
            self.eigenvector = d.eigenvector
        if kind == "diagnose":
            b = self.streamer.b or self.train_batch
            row = self._stream_row(calibration_values(d, b, self.schedule.steps))
            row["cost_seconds"] = self.clock() - t0
            self.schedule.measured(row["cost_seconds"])
            self.sink.emit(row)
            return row
        row = head(self.schedule.steps, self.hyper(), d.top_eig) | {"kind": "diagnose"} | d.to_dict()
        self.sink.emit(row)
        self.schedule.measured(self.clock() - t0)
        return row

    # -- checkpoints and the end ----------------------------------------------------------------

    def state_dict(self) -> dict:
        """The schedule (steps, measurements, the wall-time account, the calibration), the warm start (last
        eigenvector), the last row, the CSV's byte offset, the mode (``stream``: None before the first call) and
        the streaming mode's state: save it with the model's checkpoint."""
        own = {"eigenvector": self.eigenvector, "seed": self.seed, "n": self.n, "stream": self.stream}
        own["stream_refusal"] = self.stream_refusal
        return self.schedule.state_dict() | self.sink.state_dict() | own | self.streamer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict`: the same schedule, warm start and mode (the checkpoint's, once its
        first call chose it); the CSV is cut back to the rows written up to the checkpoint (later rows are
        measured again by the resumed run)."""
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise LssrError(
                f"SharpnessMonitor.load_state_dict: the checkpoint's probe set (n = {state['n']}, seed = "
                f"{state['seed']}) differs from this monitor's (n = {self.n}, seed = {self.seed}); fix: the same n "
                f"and seed"
            )
        self.schedule.load_state_dict(state)
        self.eigenvector = state["eigenvector"]
        if state.get("stream") is not None:
            self.stream = bool(state["stream"])
            self.stream_refusal = state.get("stream_refusal")
        self.streamer.load_state_dict(state)  # a resumed run starts a new window at its first call
        self.sink.load_state_dict(state)

    def close(self) -> None:
        """Finishes the CSV: renames ``<csv>.partial`` onto ``csv`` (atomic). Measuring again reopens it."""
        self.sink.close()

    def __enter__(self) -> SharpnessMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
