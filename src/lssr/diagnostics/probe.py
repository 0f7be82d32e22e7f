"""The per-step probe (:class:`DiagnosticsProbe`): one ``diagnostics.csv`` row per probed step of a run, from
the engine of :func:`lssr.diagnose` (:func:`.api.measure`: the gradient moments, ‖H‖ and every b) plus sampled
batches, the expected loss change and the valley probes."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from .. import columns
from ..curvature import BN_FIX, BatchNormModeError, LossOperator, check_functional_mode
from ..scaling import gamma
from .api import Diagnostics, measure
from .moments import Moments

Tensor = torch.Tensor


class _Weights(NamedTuple):
    """The sampled batches of one probed step as weight columns 1_B/b (n, k) of the pass of per-sample
    gradients, and where each batch sits: the step's own, the expected-change ones, the resultant ones per b."""

    weights: Tensor | None
    step: int | None
    expected: list[int]
    resultant: dict[int, list[int]]


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan


class DiagnosticsProbe:
    """Per-step diagnostics for :func:`lssr.training.train` (the ``Probe`` protocol), one row per probed step
    appended to ``csv_path`` (rewritten atomically every ``flush_every`` rows and at ``close``).

    At a probed step t (θ_t in ``before_step``) it measures: ‖H‖ by LOBPCG warm-started from the previous
    probed step, ∇L and tr(H S_n), the gradient moments (exact or sketch, ``cfg.probe.estimator``; ``auto``
    means exact when n ≤ ``probes``), every probed b (``cfg.probe.batch_sizes`` plus the run's own b),
    the expected one-step loss change over ``expected_change_batches`` sampled batches (GD: the exact
    change L(θ − η∇L) − L(θ)), the mean resultant length R̄_b² over ``resultant_batches`` sampled batches
    (unbiased U-statistic (‖Σ_k u_k‖² − K)/(K(K−1)) of the unit batch gradients u_k) and, from the same
    batches, the Monte-Carlo tr(S_b) = mean_k ‖g_{B_k}‖² (+ se) and ρ_b = tr(S_n)/that (independent of
    identity (1), for the eq.-(12) check of Appendix C.5), the cosine between
    consecutive step gradients, and the Figure-3 valley probes along −∇L. ``after_step`` adds L(θ_{t+1}).

    The probe never changes the trajectory: parameters are read through detached tensors and functional
    calls, its randomness comes from its own ``torch.Generator`` seeded with ``cfg.probe.seed``, and a
    model with batch norm is evaluated in eval mode (``bn_mode: eval``; ``bn_mode: train`` is refused).
    The top eigenvector q_1 is oriented so that q_1ᵀ∇L ≥ 0 (``cos_q1_grad`` ≥ 0).
    """

    def __init__(self, cfg, csv_path: str | os.PathLike, *, flush_every: int = 10):
        from ..config import ProbeConfig

        self.cfg = cfg
        self.p = cfg.probe if cfg.probe is not None else ProbeConfig()
        self.csv_path = Path(csv_path)
        self.flush_every = max(int(flush_every), 1)
        if cfg.model.batch_norm and cfg.bn_mode != "eval":
            raise BatchNormModeError(
                f"DiagnosticsProbe: model {cfg.model.name!r} has batch norm and bn_mode is {cfg.bn_mode!r}; "
                f"Hessian and per-sample-gradient probes need fixed normalisation statistics. Fix: {BN_FIX}"
            )
        self.b_run = int(cfg.batch_size)
        self.replacement = bool(cfg.optim.replacement)
        self.batch_sizes = sorted({int(b) for b in self.p.batch_sizes} | {self.b_run})
        self.columns = columns.probe_columns(self.batch_sizes, self.p.valley, self.p.valley_alphas, self.p.valley_s)
        self.generator = torch.Generator().manual_seed(int(self.p.seed))
        self.rows: list[dict] = []
        self._unflushed = 0
        self._prev_vec: Tensor | None = None
        self._last_step: int | None = None
        self._last_gb: Tensor | None = None
        self._current: dict | None = None

    # -- protocol ------------------------------------------------------------------------------
    def scheduled(self, step: int) -> bool:
        """Every step in [start, dense_until), then start, start + every, ... before ``stop`` (exclusive)."""
        p = self.p
        if step < p.start or (p.stop is not None and step >= p.stop):
            return False
        return step < p.dense_until or (step - p.start) % p.every == 0

    def wants(self, step: int) -> bool:
        """The scheduled steps, and with ``probe.consecutive`` the step after each (its batch gradient only)."""
        return self.scheduled(step) or (self.p.consecutive and step > 0 and self.scheduled(step - 1))

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
        return {
            "rows": [dict(r) for r in self.rows],
            "generator": self.generator.get_state(),
            "prev_vec": None if self._prev_vec is None else self._prev_vec.detach().cpu(),
            "last_step": self._last_step,
            "last_gb": None if self._last_gb is None else self._last_gb.detach().cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state["rows"]]
        self.generator.set_state(state["generator"])
        self._prev_vec = state["prev_vec"]
        self._last_step = state["last_step"]
        self._last_gb = state["last_gb"]
        self._unflushed = 0

    # -- measurement ----------------------------------------------------------------------------
    def _sample_batch(self, n: int, b: int) -> Tensor:
        if self.replacement:
            return torch.randint(n, (b,), generator=self.generator)
        if b == n:
            return torch.arange(n)
        return torch.randperm(n, generator=self.generator)[:b]

    def _whole_set(self, b: int, n: int) -> bool:
        """γ_{n,b} = 0: every batch of b is the whole training set (b = n without replacement), so S_b = S_n
        and g_B = ∇L exactly."""
        return gamma(n, b, self.replacement) == 0.0

    def _measure(self, ctx) -> dict:
        """The row of θ_t (before the step): each of the steps below fills its columns."""
        row = self._row_start(ctx)
        if not math.isfinite(row["loss"]):
            self._prev_vec, self._last_step = None, None
            return row
        op = self._operator(ctx)
        n = op.n
        cols = self._weight_columns(ctx, n)
        diag, mom = self._moments(op, cols.weights, row)
        self._per_b_columns(row, diag, mom, cols.resultant, n)
        L0 = diag.loss
        self._expected_change(row, op, mom, cols.expected, L0)
        g_step = mom.grad if self.cfg.is_gd else mom.weighted_grads[cols.step]
        self._consecutive_cosine(ctx, g_step)
        if self.p.valley:
            self._valley(row, op, mom, L0)
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
        if self._last_gb is not None:
            self._last_gb = self._last_gb.to(device)
        ps = ctx.loss_per_sample

        def loss_fn(o: Tensor, t: Tensor) -> Tensor:
            return ps(o, t).mean()

        loss_fn.per_sample = ps  # type: ignore[attr-defined]
        x, y = ctx.data.x_train, ctx.data.y_train
        return LossOperator(ctx.model, loss_fn, x, y, chunk_size=self.cfg.chunk_size, where="DiagnosticsProbe")

    def _weight_columns(self, ctx, n: int) -> _Weights:
        """Draws the sampled batches (the step's own batch, ``expected_change_batches`` of b_run,
        ``resultant_batches`` of every probed b) so that g_B comes out of the one per-sample pass."""
        cols: list[Tensor] = []

        def add(idx: Tensor) -> int:
            cols.append(torch.bincount(idx.reshape(-1).cpu(), minlength=n).double() / idx.numel())
            return len(cols) - 1

        gd = self.cfg.is_gd
        step_col = None if gd else add(ctx.batch_idx)
        K = int(self.p.expected_change_batches)
        exp_cols = [] if (gd or K <= 0) else [add(self._sample_batch(n, self.b_run)) for _ in range(K)]
        Kr = int(self.p.resultant_batches)
        res_cols: dict[int, list[int]] = {}
        if Kr > 0:
            for b in self.batch_sizes:
                if not self._whole_set(b, n):
                    res_cols[b] = [add(self._sample_batch(n, b)) for _ in range(Kr)]
        weights = torch.stack(cols, dim=1) if cols else None
        return _Weights(weights, step_col, exp_cols, res_cols)

    def _moments(self, op: LossOperator, weights: Tensor | None, row: dict) -> tuple[Diagnostics, Moments]:
        """tr S_1, tr S_n, tr(H S_1), tr(H S_n), ‖H‖_{S_n}, L and ‖H‖ (LOBPCG warm-started from the previous
        probed step; q_1 oriented so that q_1ᵀ∇L ≥ 0) by the engine of :func:`lssr.diagnose`
        (:func:`.api.measure`), with the batch gradients of ``weights`` from the same pass."""
        p = self.p
        diag, mom = measure(
            op,
            batch_sizes=self.batch_sizes,
            replacement=self.replacement,
            exact=p.estimator == "exact" or (p.estimator == "auto" and op.n <= p.probes),
            probes=p.probes,
            stage1=p.stage1,
            rel_se=p.rel_se,
            top=p.top_eigenvalue,
            eig_init=self._prev_vec,
            eig_tol=p.eig_tol,
            generator=self.generator,
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
            row.update(top_eig=diag.top_eig, top_eig_hvps=diag.top_eig_hvps, cos_q1_grad=_cos(q1, mom.grad))
        return diag, mom

    def _per_b_columns(
        self, row: dict, diag: Diagnostics, mom: Moments, res_cols: dict[int, list[int]], n: int
    ) -> None:
        """Every probed b: tr S_b, tr(H S_b), ρ_b, ‖H‖_{S_b}, instability by identity (1) (``diag.at(b)``); from
        the sampled batches R̄_b² and the Monte-Carlo tr(S_b), ρ_b (exact for the whole set: g_B = ∇L)."""
        Kr = int(self.p.resultant_batches)
        for b in self.batch_sizes:
            d = diag.at(b)
            for k in ("tr_S_b", "tr_HS_b", "tr_HS_b_se", "rho_b", "ias_b", "instability_b"):
                row[columns.per_b(k, b)] = getattr(d, k)
            if self._whole_set(b, n):
                row[columns.per_b("resultant_b", b)] = 1.0 if Kr > 0 else math.nan
                if Kr > 0:  # the only batch is the full set: g_B = ∇L exactly
                    row[columns.per_b("tr_S_b_mc", b)] = mom.tr_S_n
                    row[columns.per_b("tr_S_b_mc_se", b)] = 0.0
                    row[columns.per_b("rho_b_mc", b)] = 1.0
                    row[columns.per_b("norm_g_b_mc", b)] = math.sqrt(mom.tr_S_n)
            elif b in res_cols and Kr >= 2:
                self._sampled_b(row, mom, mom.weighted_grads[res_cols[b]], b)

    @staticmethod
    def _sampled_b(row: dict, mom: Moments, GB: Tensor, b: int) -> None:
        """From K sampled batch gradients g_{B_k} (rows of GB): R̄_b² = (‖Σ_k u_k‖² − K)/(K(K−1)) of the unit
        vectors u_k, tr(S_b) ≈ mean_k ‖g_{B_k}‖² (unbiased, ± se), ρ_b = tr S_n / that and E‖g_b‖ ≈ mean_k ‖g_{B_k}‖."""
        Kr = GB.shape[0]
        nrm = GB.norm(dim=1)
        U = GB / nrm.clamp_min(torch.finfo(GB.dtype).tiny)[:, None]
        s = float(U.sum(0).pow(2).sum())
        row[columns.per_b("resultant_b", b)] = (s - Kr) / (Kr * (Kr - 1))
        sq_b = nrm.double().pow(2).cpu().numpy()  # ‖g_{B_k}‖², unbiased for tr(S_b)
        tr_mc = float(sq_b.mean())
        row[columns.per_b("tr_S_b_mc", b)] = tr_mc
        row[columns.per_b("tr_S_b_mc_se", b)] = float(sq_b.std(ddof=1) / math.sqrt(Kr))
        row[columns.per_b("rho_b_mc", b)] = mom.tr_S_n / tr_mc if tr_mc > 0 else math.nan
        row[columns.per_b("norm_g_b_mc", b)] = float(nrm.double().mean())

    def _expected_change(self, row: dict, op: LossOperator, mom: Moments, exp_cols: list[int], L0: float) -> None:
        """E_B[L(θ − η g_B)] − L(θ) over the sampled batches (± se); GD: L(θ − η∇L) − L(θ) exactly."""
        eta, theta = row["lr"], op.theta
        if self.cfg.is_gd:
            row["expected_change"] = op.at(theta - eta * mom.grad).loss() - L0
            row["expected_change_se"] = 0.0
        elif exp_cols:
            WG = mom.weighted_grads
            d = np.array([op.at(theta - eta * WG[c]).loss() - L0 for c in exp_cols])
            row["expected_change"] = float(d.mean())
            row["expected_change_se"] = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan

    def _step_gradient_only(self, ctx) -> None:
        """Step t+1 after a probed step t: g_{t+1} (the batch's mean gradient; ∇L for GD) for cos(g_t, g_{t+1})."""
        op = self._operator(ctx)
        if not self.cfg.is_gd:
            idx = ctx.batch_idx.to(op.x.device)
            op = LossOperator(
                ctx.model, op.loss_fn, op.x[idx], op.y[idx], chunk_size=self.cfg.chunk_size, where="DiagnosticsProbe"
            )
        self._consecutive_cosine(ctx, op.gradient())

    def _consecutive_cosine(self, ctx, g_step: Tensor) -> None:
        """cos(g_{t−1}, g_t) of the step gradients of consecutive probed steps, written into row t − 1."""
        if self._last_step is not None and self._last_step == ctx.step - 1 and self._last_gb is not None and self.rows:
            if self.rows[-1]["step"] == self._last_step:
                self.rows[-1]["cos_consecutive"] = _cos(self._last_gb, g_step)
        self._last_step, self._last_gb = int(ctx.step), g_step.detach().clone()

    def _valley(self, row: dict, op: LossOperator, mom: Moments, L0: float) -> None:
        """Figure 3 along −∇L: ‖H_α‖_{S_n}/‖H‖_{S_n} at θ − αη∇L, L(θ − sη∇L) − L(θ) and its quadratic model."""
        eta, theta, grad = row["lr"], op.theta, mom.grad
        gHg, gg = mom.tr_HS_n, mom.tr_S_n
        for a in self.p.valley_alphas:
            hga = op.at(theta - a * eta * grad).hvp(grad)
            row[columns.valley_ratio(a)] = float(grad @ hga) / gHg if gHg != 0 else math.nan
        for s in self.p.valley_s:
            row[columns.valley_dl(s)] = (op.at(theta - s * eta * grad).loss() - L0) if s != 0 else 0.0
            row[columns.valley_quad(s)] = -s * eta * gg + 0.5 * s * s * eta * eta * gHg
