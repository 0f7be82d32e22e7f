"""The pipeline's per-step probe (:class:`DiagnosticsProbe`): one ``diagnostics.csv`` row per probed step of a
run, from the engine of :func:`lssr.diagnose` (:func:`lssr.diagnostics.engine.measure`: the gradient moments,
‖H‖ and every b) plus the columns of :mod:`.probe_columns` (sampled batches, the expected loss change, the
valley probes, the cosine of consecutive step gradients), at the steps of :mod:`.probe_schedule`."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import torch

from .. import columns
from ..config import ProbeConfig
from ..curvature import BN_FIX, BatchNormModeError, LossOperator, check_functional_mode
from ..diagnostics.engine import measure
from ..diagnostics.moments import Moments
from ..diagnostics.options import Eigen, Estimator
from ..diagnostics.results import Diagnostics
from . import probe_columns as pc
from .probe_schedule import ProbeSchedule

Tensor = torch.Tensor


class DiagnosticsProbe:
    """Per-step diagnostics for :func:`lssr.training.train` (the ``Probe`` protocol), one row per probed step
    appended to ``csv_path`` (rewritten atomically every ``flush_every`` rows and at ``close``).

    At a probed step t (θ_t in ``before_step``) it measures: ‖H‖ by LOBPCG warm-started from the previous
    probed step, ∇L and tr(H S_n), the gradient moments (``cfg.probe.estimator``; ``auto`` means exact when
    n ≤ ``probes``), every probed b (``cfg.probe.batch_sizes`` plus the run's own b), and the columns of
    :mod:`.probe_columns`: the expected one-step loss change over ``expected_change_batches`` sampled batches
    (GD: the exact change L(θ − η∇L) − L(θ)), the mean resultant length R̄_b² and the Monte-Carlo tr(S_b), ρ_b
    over ``resultant_batches`` sampled batches (Appendix C.5), the cosine between consecutive step gradients,
    and the Figure-3 valley probes along −∇L. ``after_step`` adds L(θ_{t+1}).

    The probe never changes the trajectory: parameters are read through detached tensors and functional
    calls, its randomness comes from its own ``torch.Generator`` seeded with ``cfg.probe.seed``, and a
    model with batch norm is evaluated in eval mode (``bn_mode: eval``; ``bn_mode: train`` is refused).
    The top eigenvector q_1 is oriented so that q_1ᵀ∇L ≥ 0 (``cos_q1_grad`` ≥ 0).
    """

    def __init__(self, cfg, csv_path: str | os.PathLike, *, flush_every: int = 10):
        self.cfg = cfg
        self.p = cfg.probe if cfg.probe is not None else ProbeConfig()
        self.schedule = ProbeSchedule.of(self.p)
        self.csv_path = Path(csv_path)
        self.flush_every = max(int(flush_every), 1)
        if cfg.model.batch_norm and cfg.bn_mode != "eval":
            raise BatchNormModeError(
                f"DiagnosticsProbe: model {cfg.model.name!r} has batch norm and bn_mode is {cfg.bn_mode!r}; "
                f"Hessian and per-sample-gradient probes need fixed normalisation statistics. Fix: {BN_FIX}"
            )
        self.b_run = int(cfg.batch_size)
        self.batch_sizes = sorted({int(b) for b in self.p.batch_sizes} | {self.b_run})
        self.columns = columns.probe_columns(self.batch_sizes, self.p.valley, self.p.valley_alphas, self.p.valley_s)
        self.generator = torch.Generator().manual_seed(int(self.p.seed))
        self.draws = pc.BatchDraws(self.generator, bool(cfg.optim.replacement))
        self.estimator = Estimator(self.p.estimator, self.p.probes, self.p.stage1, self.p.rel_se)
        self.rows: list[dict] = []
        self._unflushed = 0
        self._prev_vec: Tensor | None = None
        self._cosine = pc.ConsecutiveCosine()
        self._current: dict | None = None

    # -- protocol ------------------------------------------------------------------------------
    def scheduled(self, step: int) -> bool:
        """Whether ``step`` is measured (:meth:`.ProbeSchedule.scheduled`)."""
        return self.schedule.scheduled(step)

    def wants(self, step: int) -> bool:
        """Whether the probe looks at ``step`` (:meth:`.ProbeSchedule.wants`)."""
        return self.schedule.wants(step)

    def before_step(self, ctx) -> None:
        model = ctx.model
        was = model.training
        try:
            if self.cfg.bn_mode == "eval":
                model.eval()
            if self.scheduled(ctx.step):
                self._current = self._measure(ctx)
            else:
                self._current = None
                self._step_gradient_only(ctx)
        finally:
            model.train(was)

    def after_step(self, ctx) -> None:
        row = self._current
        if row is None:
            return
        row["loss_next"] = float(ctx.train_loss_after)
        row["loss_change"] = row["loss_next"] - row["loss"]
        if self.cfg.is_gd and not math.isfinite(row["expected_change"]):
            row["expected_change"], row["expected_change_se"] = row["loss_change"], 0.0
        self.rows.append(row)
        self._current = None
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def close(self) -> None:
        """Write the final ``diagnostics.csv`` (atomically) and drop the in-progress copy."""
        from ..io import write_csv

        write_csv(self.csv_path, pd.DataFrame(self.rows, columns=self.columns))
        partial = self.csv_path.with_name(self.csv_path.name + ".partial")
        if partial.exists():
            partial.unlink()

    def flush(self) -> None:
        """Write the rows so far to ``diagnostics.csv.partial`` (for watching a long run)."""
        from ..io import write_csv

        write_csv(
            self.csv_path.with_name(self.csv_path.name + ".partial"), pd.DataFrame(self.rows, columns=self.columns)
        )
        self._unflushed = 0

    # -- checkpointing (lssr.training saves and restores this with the run) ---------------------------
    def state_dict(self) -> dict:
        last_gb = self._cosine.last_gb
        return {
            "rows": [dict(r) for r in self.rows],
            "generator": self.generator.get_state(),
            "prev_vec": None if self._prev_vec is None else self._prev_vec.detach().cpu(),
            "last_step": self._cosine.last_step,
            "last_gb": None if last_gb is None else last_gb.detach().cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state["rows"]]
        self.generator.set_state(state["generator"])
        self._prev_vec = state["prev_vec"]
        self._cosine.last_step = state["last_step"]
        self._cosine.last_gb = state["last_gb"]
        self._unflushed = 0

    # -- measurement ----------------------------------------------------------------------------
    def _measure(self, ctx) -> dict:
        """The row of θ_t (before the step): each of the steps below fills its columns."""
        row = self._row_start(ctx)
        if not math.isfinite(row["loss"]):
            self._prev_vec, self._cosine.last_step = None, None
            return row
        op = self._operator(ctx)
        gd, p = self.cfg.is_gd, self.p
        k_exp = 0 if gd else max(int(p.expected_change_batches), 0)
        sampled = self.draws.columns(
            op.n, None if gd else ctx.batch_idx, self.b_run, k_exp, int(p.resultant_batches), self.batch_sizes
        )
        diag, mom = self._moments(op, sampled.weights, row)
        pc.per_b_columns(row, diag, mom, sampled, self.draws, int(p.resultant_batches))
        pc.expected_change(row, op, mom, sampled.expected, diag.loss, gd)
        self._cosine.observe(ctx.step, mom.grad if gd else mom.weighted_grads[sampled.step], self.rows)
        if p.valley:
            pc.valley(row, op, mom, diag.loss, p.valley_alphas, p.valley_s)
        return row

    def _row_start(self, ctx) -> dict:
        """A row of NaN holding the step's own numbers: step, η, 2/η, b, L(θ_t)."""
        row: dict = {c: math.nan for c in self.columns}
        eta = float(ctx.lr)
        row.update(
            step=int(ctx.step), lr=eta, two_over_eta=2.0 / eta, b_run=self.b_run, loss=float(ctx.train_loss_before)
        )
        return row

    def _operator(self, ctx) -> LossOperator:
        """L on the training set at θ_t; moves the probe's saved vectors to the model's device."""
        check_functional_mode(ctx.model, "DiagnosticsProbe (fix: bn_mode: eval)")
        device = next(ctx.model.parameters()).device
        if self._prev_vec is not None:  # restored from a checkpoint on the CPU
            self._prev_vec = self._prev_vec.to(device)
        if self._cosine.last_gb is not None:
            self._cosine.last_gb = self._cosine.last_gb.to(device)
        ps = ctx.loss_per_sample

        def loss_fn(o: Tensor, t: Tensor) -> Tensor:
            return ps(o, t).mean()

        loss_fn.per_sample = ps  # type: ignore[attr-defined]
        x, y = ctx.data.x_train, ctx.data.y_train
        return LossOperator(ctx.model, loss_fn, x, y, chunk_size=self.cfg.chunk_size, where="DiagnosticsProbe")

    def _moments(self, op: LossOperator, weights: Tensor | None, row: dict) -> tuple[Diagnostics, Moments]:
        """tr S_1, tr S_n, tr(H S_1), tr(H S_n), ‖H‖_{S_n}, L and ‖H‖ (LOBPCG warm-started from the previous
        probed step; q_1 oriented so that q_1ᵀ∇L ≥ 0) by the engine of :func:`lssr.diagnose`, with the batch
        gradients of ``weights`` from the same pass."""
        eigen = Eigen(tol=self.p.eig_tol, init=self._prev_vec) if self.p.eigen else None
        diag, mom = measure(
            op,
            estimator=self.estimator,
            eigen=eigen,
            generator=self.generator,
            batch_sizes=self.batch_sizes,
            replacement=self.draws.replacement,
            weights=weights,
            timing=False,
        )
        row.update(
            tr_S_n=diag.tr_S_n,
            tr_S_1=diag.tr_S_1,
            tr_S_1_se=0.0,
            tr_HS_n=diag.tr_HS_n,
            tr_HS_1=diag.tr_HS_1,
            tr_HS_1_se=diag.tr_HS_1_se,
            ias_n=diag.ias_n,
        )
        if mom.eig is not None:
            q1 = diag.eigenvector
            self._prev_vec = q1 if math.isfinite(diag.top_eig) else None
            row.update(top_eig=diag.top_eig, top_eig_hvps=diag.top_eig_hvps, cos_q1_grad=pc.cos(q1, mom.grad))
        return diag, mom

    def _step_gradient_only(self, ctx) -> None:
        """Step t+1 after a probed step t: g_{t+1} (the batch's mean gradient; ∇L for GD) for cos(g_t, g_{t+1})."""
        op = self._operator(ctx)
        if not self.cfg.is_gd:
            idx = ctx.batch_idx.to(op.x.device)
            op = LossOperator(
                ctx.model, op.loss_fn, op.x[idx], op.y[idx], chunk_size=self.cfg.chunk_size, where="DiagnosticsProbe"
            )
        self._cosine.observe(ctx.step, op.gradient(), self.rows)
