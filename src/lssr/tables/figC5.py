"""Figure C.5 table: per probed step and b, measured ρ_b against R̄_b² (with std‖g_b‖/E‖g_b‖, ``norm_cv``, the
paper's condition for ρ_b ≈ R̄_b²), and against eq. (12) evaluated at the measured ρ_1 = tr(S_n)/tr(S_1)
(``rel_err`` = (ρ_b − eq12) / eq12)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .. import scaling
from ..columns import batch_sizes_in, per_b
from .runs import Run, RunLike, diag_runs

COLUMNS = [
    "run",
    "dataset",
    "loss",
    "optimizer",
    "n",
    "replacement",
    "lr",
    "step",
    "b",
    "rho_b",
    "rho_b_se",
    "resultant",
    "norm_cv",
    "rho_1",
    "rho_b_eq12",
    "rel_err",
]


def _rows(run: Run, b: int, rho_1: np.ndarray) -> pd.DataFrame:
    """One run's rows at probed batch size b."""
    rho = run.col(per_b("rho_b_mc", b)).to_numpy(float)
    tr_mc = run.col(per_b("tr_S_b_mc", b)).to_numpy(float)
    rho_se = rho * run.col(per_b("tr_S_b_mc_se", b)).to_numpy(float) / tr_mc
    mean_norm = run.col(per_b("norm_g_b_mc", b)).to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.sqrt(np.maximum(tr_mc / mean_norm**2 - 1.0, 0.0))
    pred = scaling.rho_b(np.where(rho_1 > 0, rho_1, np.nan), run.n, b, run.replacement)
    return pd.DataFrame(
        {
            "run": run.name,
            "dataset": run.dataset,
            "loss": run.loss,
            "optimizer": run.optimizer,
            "n": run.n,
            "replacement": run.replacement,
            "lr": run.lr,
            "step": run.diag["step"].to_numpy(int),
            "b": b,
            "rho_b": rho,
            "rho_b_se": rho_se,
            "resultant": run.col(per_b("resultant_b", b)).to_numpy(float),
            "norm_cv": cv,
            "rho_1": rho_1,
            "rho_b_eq12": pred,
            "rel_err": (rho - pred) / pred,
        }
    )


def build(runs: Iterable[RunLike], **_options) -> pd.DataFrame:
    """Figure C.5: measured ρ_b vs R̄_b², and vs eq. (12) at the measured ρ_1 = tr(S_n)/tr(S_1).

    "Measured" ρ_b is the Monte-Carlo one, tr(S_n) / mean_k ‖g_{B_k}‖² over the probe's sampled batches
    (``rho_b_mc_<b>``), not the ``rho_b_<b>`` column, which identity (1) computes from ρ_1 and so agrees with
    eq. (12) by construction. ``rho_b_se`` is its delta-method standard error ρ_b · se(tr S_b)/tr S_b;
    ``rel_err`` is signed, (ρ_b − eq12)/eq12. ``norm_cv`` = sqrt(mean_k ‖g_{B_k}‖² / (mean_k ‖g_{B_k}‖)² − 1)
    (NaN when the probe did not record ``norm_g_b_mc``). Steps without Monte-Carlo batches are left out."""
    parts = []
    for run in diag_runs(runs):
        rho_1 = (run.col("tr_S_n") / run.col("tr_S_1")).to_numpy(float)
        parts += [_rows(run, b, rho_1) for b in batch_sizes_in(run.diag.columns, "rho_b")]
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    return out[out["rho_b"].notna()].reset_index(drop=True)[COLUMNS]
