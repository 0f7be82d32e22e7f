"""Figure 1 table: normalised loss change against the instability ratio, early phase (eqs. 6, 9).

- normalised loss change ``norm_change = (E[L_{t+1}] - L_t) / tr(S_n)``: ``expected_change`` when
  the probe sampled batches (SGD), ``loss_change`` for GD (they are equal) or as a fallback (one
  realised step, noisier; ``change_source`` says which);
- instability ratio ``tr(H S_b) / tr(S_n)`` for the run's own b (``ias_n`` for GD); a missing
  per-b column is rebuilt from identity (1) (:func:`lssr.tables.runs.for_b`); ``instability_ratio_se`` its
  standard error (the sketch's; 0 for GD), which the claims' line fits correct for;
- phases: GD: ``pre`` until ‖H‖ first exceeds 2/η, then ``early`` up to and including the first
  probed step with ‖H‖_{S_n} ≥ 2/η (the *entry*), then ``eos``. SGD: ``early`` up to and including
  the first step whose instability ratio reaches 2/η, then ``eos``. Without a measured ‖H‖ the GD
  early phase starts at the first probed step. ``mark_x`` flags the entry of cross-entropy runs
  (the paper's 'x' marker).

Figure 1 keeps the early phase only (entry included); Figure 2 (:mod:`lssr.tables.fig2`) the whole run.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .runs import BASE_COLUMNS, Run, RunLike, base_columns, diag_runs, first_index, for_b

COLUMNS = [
    *BASE_COLUMNS,
    "step",
    "instability_ratio",
    "instability_ratio_se",
    "norm_change",
    "change_source",
    "phase",
    "entry",
    "mark_x",
    "two_over_eta",
    "slope_ref",
    "ref_line",
    "tr_S_n",
    "ias_n",
    "top_eig",
]


def _phases(run: Run, x: np.ndarray, ok: np.ndarray, top: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(phase per step, entry flag per step): pre / early / eos around the entry x ≥ 2/η."""
    two = 2.0 / run.lr
    start = 0
    if run.is_gd and np.isfinite(top).any():
        s = first_index(np.isfinite(top) & (top > two))
        start = n if s is None else s
    entry = first_index(ok & (x >= two), start) if start < n else None
    phase = np.full(n, "early", dtype=object)
    phase[:start] = "pre"
    if entry is not None:
        phase[entry + 1 :] = "eos"
    is_entry = np.zeros(n, dtype=bool)
    if entry is not None:
        is_entry[entry] = True
    return phase, is_entry


def loss_change_rows(run: Run) -> pd.DataFrame:
    """Per probed step: instability ratio tr(H S_b)/tr(S_n), normalised loss change and phase."""
    d = run.diag
    two = 2.0 / run.lr
    q = for_b(run)
    x = q["instability"].to_numpy(float)
    exp, real = run.col("expected_change"), run.col("loss_change")
    if run.is_gd:
        change, source = real.fillna(exp), np.where(real.notna(), "realised", "expected")
    else:
        change, source = exp.fillna(real), np.where(exp.notna(), "expected", "realised")
    tr_s_n = run.col("tr_S_n")
    y = (change / tr_s_n).to_numpy(float)
    top = run.col("top_eig").to_numpy(float)
    steps = d["step"].to_numpy(int)
    ok = np.isfinite(x) & np.isfinite(y)
    phase, is_entry = _phases(run, x, ok, top, len(steps))
    frame = pd.DataFrame(
        {
            **base_columns(run),
            "step": steps,
            "instability_ratio": x,
            "instability_ratio_se": q["instability_se"].to_numpy(float),
            "norm_change": y,
            "change_source": source,
            "phase": phase,
            "entry": is_entry,
            "mark_x": is_entry & (run.loss == "ce"),
            "two_over_eta": two,
            "slope_ref": run.lr**2 / 2,
            "ref_line": run.lr**2 / 2 * (x - two),
            "tr_S_n": tr_s_n.to_numpy(float),
            "ias_n": run.col("ias_n").to_numpy(float),
            "top_eig": top,
        }
    )
    return frame[ok].reset_index(drop=True)


def loss_change_table(runs: Iterable[RunLike], early_only: bool) -> pd.DataFrame:
    """The rows of every run with diagnostics, SGD runs first, then GD runs (each in the given order)."""
    probed = diag_runs(runs)
    frames = [loss_change_rows(r) for r in [r for r in probed if not r.is_gd] + [r for r in probed if r.is_gd]]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    if early_only:
        out = out[out["phase"] == "early"].reset_index(drop=True)
    return out[COLUMNS]


def build(runs: Iterable[RunLike], **_options) -> pd.DataFrame:
    """Figure 1: normalised loss change vs instability ratio, early phase only (entry included)."""
    return loss_change_table(runs, early_only=True)
