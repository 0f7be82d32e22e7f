"""Figure 5 table: LSSR against LSR and SRSR.

One heatmap cell per (data set, b, η) with the mean final test accuracy over seeds (diverged cells
flagged: a cell is diverged when most of its seeds diverged or none has a finite accuracy), the best
η per b (highest accuracy among non-diverged cells, the smaller η on ties), and log-space
least-squares fits of best η vs b: LSSR η*(b) = c·ρ_b(ρ) (eq. 12, c and ρ fitted), LSR η* = c·b,
SRSR η* = c·√b (c fitted); ``rmse_log2`` is the fit error in log2 η units. The left panel's analytic
curves (n = 8192, ρ = 2^-7) are normalised to ρ at b = 1. γ, ρ_b(ρ) and the fits come from
:mod:`lssr.scaling`.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import scaling
from .runs import Run, RunLike, load_runs

# Figure 5 left panel (the paper's values)
ANALYTIC_N = 8192
ANALYTIC_RHO = 2.0**-7

COLUMNS = [
    "kind",
    "dataset",
    "model",
    "n",
    "replacement",
    "b",
    "lr",
    "log2_b",
    "log2_lr",
    "test_acc",
    "status",
    "diverged",
    "n_seeds",
    "is_best",
    "value",
    "rho",
    "log2_c",
    "rmse_log2",
    "n_params",
    "n_points",
]


def fit_scaling_rules(b: Sequence[float], lr: Sequence[float], n: int, replacement: bool = False) -> dict[str, dict]:
    """Least-squares fits in log2 space of the best η per b (:mod:`lssr.scaling`).

    Returns {"LSSR": {...}, "LSR": {...}, "SRSR": {...}}, each with ``log2_c``, ``rmse_log2``,
    ``n_params`` and ``predict`` (b -> η); LSSR also has ``rho``. LSSR needs 3 points, LSR and SRSR 2;
    a rule without enough points is left out.
    """
    b = np.asarray(b, dtype=float)
    lr = np.asarray(lr, dtype=float)
    out: dict[str, dict] = {}
    if len(b) < 2:
        return out
    fits = [scaling.fit_lsr(b, lr), scaling.fit_srsr(b, lr)]
    if len(b) >= 3:
        fits.append(scaling.fit_lssr(b, lr, n, replacement))
    for f in fits:
        out[f.rule] = {
            "log2_c": math.log2(f.params["c"]),
            "rmse_log2": float(f.rmse_log2),
            "n_params": len(f.params),
            "predict": f.predict,
        }
        if "rho" in f.params:
            out[f.rule]["rho"] = float(f.params["rho"])
    return out


def _cell(ds: str, b, lr, g: pd.DataFrame) -> dict:
    """One heatmap cell from the seeds ``g`` of (data set, b, η)."""
    ok = g[~g["div"]]
    diverged = bool(g["div"].mean() > 0.5 or ok.empty)
    return {
        "kind": "cell",
        "dataset": ds,
        "n": int(g["n"].iloc[0]),
        "replacement": bool(g["replacement"].iloc[0]),
        "b": int(b),
        "lr": float(lr),
        "test_acc": float(ok["acc"].mean()) if not ok.empty else np.nan,
        "status": "diverged" if diverged else "completed",
        "diverged": diverged,
        "n_seeds": len(g),
    }


def cells(runs: list[Run]) -> pd.DataFrame:
    """Heatmap cells over (data set, b, η): mean final test accuracy over seeds, diverged flag, best η per b."""
    recs = []
    for r in runs:
        acc = (r.meta.get("final") or {}).get("test_acc")
        acc = float(acc) if acc is not None else np.nan
        div = r.status == "diverged" or not math.isfinite(acc)
        recs.append(
            {"dataset": r.dataset, "n": r.n, "replacement": r.replacement, "b": r.b, "lr": r.lr, "acc": acc, "div": div}
        )
    if not recs:
        return pd.DataFrame()
    raw = pd.DataFrame(recs)
    out = pd.DataFrame([_cell(ds, b, lr, g) for (ds, b, lr), g in raw.groupby(["dataset", "b", "lr"], sort=True)])
    out["is_best"] = False
    for _, g in out[~out["diverged"] & out["test_acc"].notna()].groupby(["dataset", "b"]):
        g = g.sort_values("lr", kind="stable")
        out.loc[g["test_acc"].idxmax(), "is_best"] = True
    return out


def best_lr_per_b(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The best-η cells of one data set's heatmap (columns b, lr, test_acc), sorted by b."""
    c = table[(table["kind"] == "cell") & (table["dataset"] == dataset)]
    c = c[c["is_best"].astype(bool)]
    return c[["b", "lr", "test_acc"]].sort_values("b").reset_index(drop=True)


def _analytic(n_analytic: int, rho_analytic: float) -> list[pd.DataFrame]:
    """The left panel: ρ_b (LSSR), ρ·b (LSR) and ρ·√b (SRSR) over b = 1..n."""
    parts = []
    bb = 2.0 ** np.linspace(0, math.log2(n_analytic), 8 * int(round(math.log2(n_analytic))) + 1)
    for model, v in (
        ("LSSR", scaling.rho_b(rho_analytic, n_analytic, bb, False)),
        ("LSR", rho_analytic * bb),
        ("SRSR", rho_analytic * np.sqrt(bb)),
    ):
        parts.append(
            pd.DataFrame(
                {
                    "kind": "analytic",
                    "dataset": "analytic",
                    "model": model,
                    "n": n_analytic,
                    "replacement": False,
                    "b": bb,
                    "value": v,
                    "rho": rho_analytic,
                }
            )
        )
    return parts


def _fits(ds: str, g: pd.DataFrame) -> list[pd.DataFrame]:
    """The fitted LSSR / LSR / SRSR curves of one data set's best η per b."""
    best = g[g["is_best"]].sort_values("b")
    n, repl = int(g["n"].iloc[0]), bool(g["replacement"].iloc[0])
    fits = fit_scaling_rules(best["b"], best["lr"], n, repl)
    grid = 2.0 ** np.linspace(math.log2(g["b"].min()), math.log2(g["b"].max()), 65)
    parts = []
    for model, f in fits.items():
        pred = f["predict"](grid)
        parts.append(
            pd.DataFrame(
                {
                    "kind": "fit",
                    "dataset": ds,
                    "model": model,
                    "n": n,
                    "replacement": repl,
                    "b": grid,
                    "lr": pred,
                    "value": pred,
                    "rho": f.get("rho", np.nan),
                    "log2_c": f["log2_c"],
                    "rmse_log2": f["rmse_log2"],
                    "n_params": f["n_params"],
                    "n_points": len(best),
                }
            )
        )
    return parts


def build(
    runs: Iterable[RunLike], n_analytic: int = ANALYTIC_N, rho_analytic: float = ANALYTIC_RHO, **_options
) -> pd.DataFrame:
    """Figure 5: analytic LSSR/LSR/SRSR curves (left) and, per data set, heatmap cells over (b, η)
    with the best η per b and the fitted LSSR/LSR/SRSR curves (right)."""
    parts = _analytic(n_analytic, rho_analytic)
    c = cells(load_runs(runs))
    if len(c):
        parts.append(c)
        for ds, g in c.groupby("dataset", sort=True):
            parts += _fits(ds, g)
    out = pd.concat(parts, ignore_index=True).reindex(columns=COLUMNS)
    out["log2_b"] = np.log2(out["b"].astype(float))
    out["log2_lr"] = np.log2(out["lr"].astype(float))
    out["is_best"] = out["is_best"].fillna(False).astype(bool)
    out["diverged"] = out["diverged"].fillna(False).astype(bool)
    return out
