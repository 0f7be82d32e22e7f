"""When the monitor measures: at multiples of ``every`` and/or when the measurements' wall time, the next one's
predicted cost included, stays within a fraction ``budget`` of the training's; the wall-time account (training
between calls, measurements inside them) and the one-time calibration of a measurement's cost."""

from __future__ import annotations

import math
from typing import Callable

from ..errors import LssrError

#: Without ``every`` or ``budget``, measure only when the measurements' wall time, the next one's predicted cost
#: included, stays within BUDGET of the training's.
BUDGET = 0.10
#: Under a budget, the first measurement's cost is predicted as FIRST_COST gradient-equivalents (times one
#: full gradient ∇L on the probe set, timed by the calibration), above the cost of a cold measurement at the
#: defaults on a CIFAR-10 convnet (57 at step 1308 of make bench-monitor's loop, results/bench/monitor.json;
#: a warm-started one 61); later predictions are the measured cost of the last measurement. The
#: calibration (two gradients on the probe set, the first one paying the one-time start of the per-sample
#: machinery, the second timed) is estimated at CALIBRATION_COST training steps per n/B (probe samples per
#: training batch).
FIRST_COST, CALIBRATION_COST = 100.0, 4.0

#: The schedule's part of the monitor's checkpoint state.
STATE = ("steps", "measurements", "train_seconds", "train_steps", "spent_seconds", "last_seconds", "grad_seconds")


class Schedule:
    """The account of one monitor: ``steps`` (calls so far: the index of the next optimiser step), ``measurements``,
    ``train_seconds`` over ``train_steps`` intervals between calls, ``spent_seconds`` inside measurements and the
    calibration, ``last_seconds`` (the last measurement's) and ``grad_seconds`` (the calibration: one gradient on
    the probe set). ``probe_ratio``: probe samples per training batch (n / B, at least 1), which scales the
    calibration's estimated cost."""

    def __init__(self, every: int | None, budget: float | None, clock: Callable[[], float], probe_ratio: float = 1.0):
        if every is not None and (not isinstance(every, int) or every < 1):
            raise LssrError(f"SharpnessMonitor: every must be a positive integer or None, got {every!r}")
        if budget is not None and not (0 < budget):
            raise LssrError(f"SharpnessMonitor: budget must be a positive fraction (e.g. 0.1) or None, got {budget!r}")
        self.every, self.budget = every, (BUDGET if every is None and budget is None else budget)
        self.clock = clock
        self.probe_ratio = max(1.0, float(probe_ratio))
        self.steps = 0
        self.measurements = 0
        self.train_seconds = 0.0
        self.train_steps = 0
        self.spent_seconds = 0.0
        self.last_seconds = 0.0
        self.grad_seconds: float | None = None
        self._clock: float | None = None
        self._resumed = False

    def begin(self, step: int | None) -> None:
        """The start of a call: adds the training's wall time since the last call (a resumed run counts the
        training before its first call at the checkpoint's mean step time); ``step`` sets the step's index."""
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

    def end(self) -> None:
        """The end of a call: the next step, and the training's clock starts."""
        self.steps += 1
        self._clock = self.clock()

    def step_seconds(self) -> float | None:
        """The training's mean wall seconds per step so far (None before one is timed)."""
        return self.train_seconds / self.train_steps if self.train_steps else None

    def predicted_seconds(self) -> float | None:
        """The predicted wall seconds of the next measurement: the last one's; before any, FIRST_COST times the
        calibration's gradient seconds (None before the calibration)."""
        if self.measurements:
            return self.last_seconds
        return FIRST_COST * self.grad_seconds if self.grad_seconds is not None else None

    def fits(self, seconds: float) -> bool:
        """Whether ``seconds`` more of measuring keep the measurements within the budget."""
        return self.spent_seconds + seconds <= self.budget * self.train_seconds

    def fits_any(self, seconds: float) -> bool:
        """:meth:`fits`, true without a budget or with an infinite one."""
        return self.budget is None or self.budget == math.inf or self.fits(seconds)

    def calibration_estimate(self) -> float | None:
        t = self.step_seconds()
        return None if t is None else CALIBRATION_COST * t * self.probe_ratio

    def calibration_due(self) -> bool:
        """Whether the next call runs the calibration: under a budget, before the first measurement, once the
        budget allows its estimated cost (CALIBRATION_COST × the mean step time × n / the training batch)."""
        if self.budget is None or self.grad_seconds is not None or self.measurements:
            return False
        est = self.calibration_estimate()
        return est is not None and self.fits(est)

    def due(self, step: int | None = None) -> bool:
        """Whether a call at ``step`` (default: the next) measures (with the account as it is now)."""
        step = self.steps if step is None else int(step)
        if self.every is not None and step % self.every:
            return False
        if self.budget is None:
            return True
        predicted = self.predicted_seconds()
        return predicted is not None and self.fits(predicted)

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
                est = self.calibration_estimate()
                predicted = est + FIRST_COST * est / CALIBRATION_COST
            need = (self.spent_seconds + predicted) / self.budget - self.train_seconds
            k = max(0, math.ceil(need / t) - 1) if t > 0 else 0  # call k sees (k + 1) more steps
        if self.every is not None:
            k += -(self.steps + k) % self.every
        return k

    def measured(self, seconds: float) -> None:
        """Books one measurement of ``seconds``."""
        self.measurements += 1
        self.last_seconds = seconds
        self.spent_seconds += seconds

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in STATE}

    def load_state_dict(self, state: dict) -> None:
        for key in ("steps", "measurements", "train_steps"):
            setattr(self, key, int(state[key]))
        for key in ("train_seconds", "spent_seconds", "last_seconds"):
            setattr(self, key, float(state[key]))
        self.grad_seconds = None if state["grad_seconds"] is None else float(state["grad_seconds"])
        self._clock = None
        self._resumed = True
