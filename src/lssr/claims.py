"""Claims: the paper's quantitative statements checked against the figure tables.

``check_claims({"fig1": df, "fig4": df, "figC5": df, "fig5": df})`` returns one row per claim and
subject (run, b or data set) with the statistic, its value, the comparison and threshold, and a
verdict ``pass`` | ``fail`` | ``not-enough-data``. Every verdict is ``value <comparison> threshold``;
``estimate`` and ``target`` give the raw quantity and what the paper predicts for it.

- C1 (eqs. 6/9), per run of the Figure 1 table (early phase, entry included): least-squares line
  of the normalised loss change on the instability ratio; |slope/(η²/2) − 1| ≤ 0.2 and
  |x-intercept/(2/η) − 1| ≤ 0.2. At least 5 points with distinct x.
- C2 (edge of stability, GD), per GD run of the Figure 4 table, inside the window of the table
  (from the first step with ‖H‖_{S_n} ≥ 2/η; for CE until the training loss < 1e-2 × its first
  value or training accuracy = 100%, see :mod:`lssr.tables`; reported in ``window``):
  |median(‖H‖_{S_n})·η/2 − 1| ≤ 0.15, and median(‖H‖)·η/2 > 1. At least 5 window points.
- C3 (IIR, SGD), per SGD run of the Figure 4 table inside its window (from the first step whose
  instability ratio reaches 2/η): median over steps of ‖H‖_{S_b} / (2ρ_b/η) ≤ 1.1 (raw, not the
  smoothed curve; at least 5 points); and per SGD panel the Spearman correlation between b and the
  plateau (median ‖H‖_{S_b} in the window) > 0.5 (at least 3 batch sizes).
- C4 (eq. 12), per probed b of the Figure C.5 table and over all b: median |ρ_b − eq12(ρ_1)| /
  eq12 ≤ 0.10 (at least 5 points). Only meaningful when the probe measures tr(S_b) from sampled
  batches rather than through identity (1).
- C5 (LSSR), per data set of the Figure 5 table: RMSE (log2 η units) of the LSSR fit of the best η
  per b (argmax test accuracy among non-diverged cells) < min(RMSE of the LSR fit, RMSE of the
  SRSR fit). At least 4 batch sizes. LSSR has two parameters (c, ρ) and LSR/SRSR one (c); the
  leave-one-out RMSEs are reported in ``notes`` for a like-for-like comparison.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import LssrError
from .registry import claim_tables

CLAIM_COLUMNS = [
    "claim",
    "subject",
    "description",
    "statistic",
    "estimate",
    "target",
    "value",
    "comparison",
    "threshold",
    "verdict",
    "n_points",
    "window",
    "notes",
]

MIN_POINTS = 5
MIN_B_SPEARMAN = 3
MIN_B_FIT = 4
C1_TOL = 0.20
C2_TOL = 0.15
C3_MAX_RATIO = 1.10
C3_MIN_SPEARMAN = 0.5
C4_TOL = 0.10

DESCRIPTIONS = {
    "C1": "eqs. (6)/(9): in the early phase the normalised loss change is linear in tr(HS_b)/tr(S_n) "
    "with slope η²/2 and x-intercept 2/η",
    "C2": "edge of stability (GD): after ‖H‖_{S_n} first reaches 2/η it oscillates around 2/η "
    "while ‖H‖ hovers above 2/η",
    "C3": "IIR (SGD): after warm-up ‖H‖_{S_b} stays below 2ρ_b/η, and its plateau rises with b",
    "C4": "eq. (12): the measured ρ_b equals 1/((γ/b)/ρ + 1 − γ/b) at the measured ρ = ρ_1",
    "C5": "LSSR: the best η per b follows c·ρ_b (eq. 12) more closely than LSR (c·b) and SRSR (c·√b)",
}
_CMP = {"<=": np.less_equal, "<": np.less, ">": np.greater, ">=": np.greater_equal}


def _row(
    claim,
    subject,
    statistic,
    value,
    comparison,
    threshold,
    n_points,
    min_points,
    *,
    estimate=np.nan,
    target=np.nan,
    window="",
    notes="",
) -> dict:
    value = float(value) if value is not None else np.nan
    threshold = float(threshold) if threshold is not None else np.nan
    if n_points < min_points or not (math.isfinite(value) and math.isfinite(threshold)):
        verdict = "not-enough-data"
        notes = (notes + "; " if notes else "") + f"{n_points} points (need {min_points})"
    else:
        verdict = "pass" if bool(_CMP[comparison](value, threshold)) else "fail"
    return {
        "claim": claim,
        "subject": subject,
        "description": DESCRIPTIONS[claim],
        "statistic": statistic,
        "estimate": estimate,
        "target": target,
        "value": value,
        "comparison": comparison,
        "threshold": threshold,
        "verdict": verdict,
        "n_points": int(n_points),
        "window": window,
        "notes": notes,
    }


def _missing(claim: str, why: str) -> dict:
    row = _row(claim, "(all)", "-", np.nan, "<=", np.nan, 0, 1)
    row["notes"] = why
    return row


def _subject(r: pd.Series | dict, with_b: bool = False) -> str:
    loss = str(r["loss"]).upper()
    b = f" b={int(r['b'])}" if with_b else ""
    return f"{r['optimizer']}{b} {loss} η={float(r['lr']):g} {r['run']}"


# ---------------------------------------------------------------------------------------------
def claim_c1(fig1: pd.DataFrame | None) -> list[dict]:
    if fig1 is None:
        return [_missing("C1", "table fig1.csv missing")]
    early = fig1[fig1["phase"] == "early"] if "phase" in fig1.columns else fig1
    if early.empty:
        return [_missing("C1", "no early-phase points in the fig1 table")]
    rows = []
    for run, g in early.groupby("run", sort=True):
        g = g[np.isfinite(g["instability_ratio"]) & np.isfinite(g["norm_change"])]
        first = g.iloc[0] if len(g) else early[early["run"] == run].iloc[0]
        eta = float(first["lr"])
        slope_t, xint_t = eta**2 / 2, 2 / eta
        n = len(g)
        distinct = g["instability_ratio"].nunique()
        slope = xint = np.nan
        if n >= 2 and distinct >= 2:
            slope, icpt = np.polyfit(g["instability_ratio"].to_numpy(float), g["norm_change"].to_numpy(float), 1)
            xint = -icpt / slope if slope != 0 else np.nan
        npts = n if distinct >= 2 else min(n, 1)
        window = f"early phase, steps {int(g['step'].min())}-{int(g['step'].max())}" if n else "early phase (empty)"
        subj = _subject(first)
        rows.append(
            _row(
                "C1",
                subj,
                "|slope/(η²/2) − 1|",
                abs(slope / slope_t - 1),
                "<=",
                C1_TOL,
                npts,
                MIN_POINTS,
                estimate=slope,
                target=slope_t,
                window=window,
                notes=f"fitted slope {slope:.4g} vs η²/2 = {slope_t:.4g}",
            )
        )
        rows.append(
            _row(
                "C1",
                subj,
                "|x-intercept/(2/η) − 1|",
                abs(xint / xint_t - 1),
                "<=",
                C1_TOL,
                npts,
                MIN_POINTS,
                estimate=xint,
                target=xint_t,
                window=window,
                notes=f"fitted x-intercept {xint:.4g} vs 2/η = {xint_t:.4g}",
            )
        )
    return rows


def claim_c2(fig4: pd.DataFrame | None) -> list[dict]:
    if fig4 is None:
        return [_missing("C2", "table fig4.csv missing")]
    gd = fig4[fig4["optimizer"] == "GD"]
    if gd.empty:
        return [_missing("C2", "no GD runs in the fig4 table")]
    rows = []
    for run, g in gd.groupby("run", sort=True):
        first = g.iloc[0]
        two = float(first["two_over_eta"])
        w = g[g["in_window"].astype(bool)]
        ias = w.loc[w["quantity"] == "ias_n", "value"].to_numpy(float)
        top = w.loc[w["quantity"] == "top_eig", "value"].to_numpy(float)
        ias, top = ias[np.isfinite(ias)], top[np.isfinite(top)]
        if len(w):
            window = f"steps {int(first['window_start'])}-{int(first['window_end'])}: {first['window_rule']}"
        else:
            window = f"empty: ‖H‖_{{S_n}} never reached 2/η ({first['window_rule']})"
        r_ias = float(np.median(ias)) / two if len(ias) else np.nan
        r_top = float(np.median(top)) / two if len(top) else np.nan
        subj = _subject(first)
        rows.append(
            _row(
                "C2",
                subj,
                "|median(‖H‖_{S_n})·η/2 − 1|",
                abs(r_ias - 1),
                "<=",
                C2_TOL,
                len(ias),
                MIN_POINTS,
                estimate=r_ias,
                target=1.0,
                window=window,
                notes=f"median ‖H‖_{{S_n}} = {r_ias:.3g} × 2/η",
            )
        )
        rows.append(
            _row(
                "C2",
                subj,
                "median(‖H‖)·η/2",
                r_top,
                ">",
                1.0,
                len(top),
                MIN_POINTS,
                estimate=r_top,
                target=1.0,
                window=window,
                notes=f"median ‖H‖ = {r_top:.3g} × 2/η",
            )
        )
    return rows


def claim_c3(fig4: pd.DataFrame | None) -> list[dict]:
    from scipy.stats import spearmanr

    if fig4 is None:
        return [_missing("C3", "table fig4.csv missing")]
    sgd = fig4[fig4["optimizer"] == "SGD"]
    if sgd.empty:
        return [_missing("C3", "no SGD runs in the fig4 table")]
    rows = []
    for panel, p in sgd.groupby("panel", sort=True):
        plateaus: list[tuple[int, float]] = []
        by_b = sorted(p.groupby("run", sort=True), key=lambda kv: (int(kv[1]["b"].iloc[0]), kv[0]))
        for _, g in by_b:
            first = g.iloc[0]
            w = g[g["in_window"].astype(bool)]
            ratio = (w["value"] / w["level"]).to_numpy(float)
            ratio = ratio[np.isfinite(ratio)]
            med = float(np.median(ratio)) if len(ratio) else np.nan
            window = f"steps {int(first['window_start'])}-{int(first['window_end'])}: {first['window_rule']}"
            rows.append(
                _row(
                    "C3",
                    _subject(first, True),
                    "median(‖H‖_{S_b} / (2ρ_b/η))",
                    med,
                    "<=",
                    C3_MAX_RATIO,
                    len(ratio),
                    MIN_POINTS,
                    estimate=med,
                    target=1.0,
                    window=window,
                    notes=f"median level 2ρ_b/η = {float(first['level_median']):.4g}",
                )
            )
            vals = w["value"].to_numpy(float)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                plateaus.append((int(first["b"]), float(np.median(vals))))
        first = p.iloc[0]
        bs = sorted({b for b, _ in plateaus})
        rho_s = np.nan
        if len(bs) >= 2:
            rho_s = float(spearmanr([b for b, _ in plateaus], [v for _, v in plateaus]).statistic)
        txt = ", ".join(f"b={b}: {v:.3g}" for b, v in sorted(plateaus))
        rows.append(
            _row(
                "C3",
                f"panel {panel}: SGD {str(first['loss']).upper()} η={float(first['lr']):g} {first['dataset']}",
                "Spearman(b, plateau median ‖H‖_{S_b})",
                rho_s,
                ">",
                C3_MIN_SPEARMAN,
                len(bs),
                MIN_B_SPEARMAN,
                estimate=rho_s,
                target=1.0,
                window="each run's window (see its C3 row)",
                notes=f"plateaus {txt}",
            )
        )
    return rows


def claim_c4(figc5: pd.DataFrame | None) -> list[dict]:
    if figc5 is None:
        return [_missing("C4", "table figC5.csv missing")]
    d = figc5[np.isfinite(figc5["rel_err"].astype(float))] if len(figc5) else figc5
    if d.empty:
        return [_missing("C4", "no (ρ_b, ρ_1) measurements in the figC5 table")]
    rows = []
    groups = [(f"b={int(b)}", g) for b, g in d.groupby("b", sort=True)] + [("all b", d)]
    for subj, g in groups:
        err = g["rel_err"].to_numpy(float)
        bias = abs(float(np.median(err)))
        runs = g["run"].nunique()
        rel_se = float((g["rho_b_se"] / g["rho_b_eq12"]).median())  # NaN when no se was recorded
        rows.append(
            _row(
                "C4",
                subj,
                "|median (ρ_b − eq12(ρ_1)) / eq12(ρ_1)|, ρ_b by Monte Carlo",
                bias,
                "<=",
                C4_TOL,
                len(err),
                MIN_POINTS,
                estimate=float(np.median(g["rho_b"])),
                target=float(np.median(g["rho_b_eq12"])),
                window=f"all probed steps of {runs} run(s)",
                notes=(
                    "estimate/target: median Monte-Carlo ρ_b / median eq. (12) prediction; per step: "
                    f"median |rel. error| {float(np.median(np.abs(err))):.3g}, median rel. se {rel_se:.3g}"
                ),
            )
        )
    return rows


def _loo_rmse(b: np.ndarray, lr: np.ndarray, n: int, repl: bool) -> dict[str, float]:
    from .tables import fit_scaling_rules

    errs: dict[str, list[float]] = {}
    for i in range(len(b)):
        keep = np.arange(len(b)) != i
        for m, f in fit_scaling_rules(b[keep], lr[keep], n, repl).items():
            errs.setdefault(m, []).append(float(np.log2(f["predict"](b[i : i + 1])[0]) - np.log2(lr[i])))
    return {m: float(np.sqrt(np.mean(np.square(e)))) for m, e in errs.items() if len(e) == len(b)}


def claim_c5(fig5: pd.DataFrame | None) -> list[dict]:
    from .tables import fit_scaling_rules

    if fig5 is None:
        return [_missing("C5", "table fig5.csv missing")]
    cells = fig5[fig5["kind"] == "cell"]
    if cells.empty:
        return [_missing("C5", "no heatmap cells in the fig5 table")]
    rows = []
    for ds, g in cells.groupby("dataset", sort=True):
        best = g[g["is_best"].astype(bool)].sort_values("b")
        b, lr = best["b"].to_numpy(float), best["lr"].to_numpy(float)
        n, repl = int(g["n"].iloc[0]), bool(g["replacement"].iloc[0])
        fits = fit_scaling_rules(b, lr, n, repl) if len(b) >= 2 else {}
        have = all(m in fits for m in ("LSSR", "LSR", "SRSR"))
        value = fits["LSSR"]["rmse_log2"] if have else np.nan
        thr = min(fits["LSR"]["rmse_log2"], fits["SRSR"]["rmse_log2"]) if have else np.nan
        notes = "best η per b = argmax test accuracy among non-diverged cells"
        if have:
            loo = _loo_rmse(b, lr, n, repl) if len(b) >= 4 else {}
            notes += (
                f"; RMSE log2 η: LSSR {value:.3g}, LSR {fits['LSR']['rmse_log2']:.3g}, SRSR {fits['SRSR']['rmse_log2']:.3g}"
                f"; fitted ρ = {fits['LSSR']['rho']:.4g} (log2 {math.log2(fits['LSSR']['rho']):.2f}), log2 c = {fits['LSSR']['log2_c']:.2f}"
            )
            if loo:
                notes += "; leave-one-out RMSE: " + ", ".join(f"{m} {v:.3g}" for m, v in loo.items())
        rows.append(
            _row(
                "C5",
                f"{ds} (n={n})",
                "RMSE_LSSR vs min(RMSE_LSR, RMSE_SRSR) [log2 η]",
                value,
                "<",
                thr,
                len(b),
                MIN_B_FIT,
                estimate=fits["LSSR"]["rho"] if have else np.nan,
                target=np.nan,
                window=f"{len(b)} batch sizes {int(b.min()) if len(b) else 0}-{int(b.max()) if len(b) else 0}",
                notes=notes + "; estimate = fitted ρ",
            )
        )
    return rows


def check_claims(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All claims from the tables {"fig1", "fig4", "figC5", "fig5"} (a missing one -> not-enough-data)."""
    rows = (
        claim_c1(tables.get("fig1"))
        + claim_c2(tables.get("fig4"))
        + claim_c3(tables.get("fig4"))
        + claim_c4(tables.get("figC5"))
        + claim_c5(tables.get("fig5"))
    )
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def load_tables(tables_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The tables some claim reads (:func:`lssr.registry.claim_tables`) found in ``tables_dir``, by figure."""
    tables_dir = Path(tables_dir)
    if not tables_dir.is_dir():
        raise LssrError(f"{tables_dir}: not a folder (expected the folder holding fig1.csv, fig4.csv, ...)")
    return {
        name: pd.read_csv(tables_dir / f"{name}.csv")
        for name in claim_tables()
        if (tables_dir / f"{name}.csv").exists()
    }


def claims_summary(result: pd.DataFrame, out: str | Path) -> str:
    """The line ``lssr claims`` prints: claim rows written and the count of each verdict."""
    counts = result["verdict"].value_counts().to_dict()
    return f"wrote {len(result)} claim rows to {out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
