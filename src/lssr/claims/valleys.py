"""C7 (Figure 3, asymmetric valleys along −∇L, GD): below 2/η the valley is sharper ahead, above it flatter.

The right panel's minima come from :mod:`lssr.tables.fig3` (a parabola through the grid minimum and its
neighbours, the zero from a parabola too), so a quadratic profile sits at x = 1 on any s grid; each profile is
compared with its step's quadratic model on the same grid, within :data:`C7_X_TOL` counting as neither shifted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import MIN_POINTS, missing, row, statement

C7 = statement(
    "C7",
    "Fig. 3 left/right, §4.1",
    "asymmetric valleys: when ‖H‖_{S_n} < 2/η, ‖H_α‖_{S_n} > ‖H‖_{S_n} and the loss profile along −∇L is "
    "right-shifted (sharper across the valley); when ‖H‖_{S_n} > 2/η the opposite",
)

#: "usually larger / usually smaller", "usually right- / left-shifted" (Fig. 3): in more than half of the cases.
C7_MIN_FRACTION = 0.5
#: "right-shifted" / "left-shifted" against "the quadratic baseline" (Fig. 3 right): a profile's minimum x_min
#: more than 0.05 right / left of the minimum of the step's quadratic model on the same s grid (x = 1); within
#: it the profile is as quadratic as the probe can tell and counts as neither.
C7_X_TOL = 0.05

_REGIMES = (
    ("below", "‖H‖_{S_n} < 2/η", ">", "right-shifted (minimum at x > 1)"),
    ("above", "‖H‖_{S_n} > 2/η", "<", "left-shifted (minimum at x < 1)"),
)


def _left(run: str, first: pd.Series, p: pd.DataFrame) -> list[dict]:
    """Fig. 3 left: fraction of (step, α) with ‖H_α‖_{S_n}/‖H‖_{S_n} above 1 below 2/η, below 1 above it."""
    rows = []
    subj = f"GD {str(first['loss']).upper()} η={float(first['lr']):g} {run}"
    for regime, cond, cmp, _ in _REGIMES:
        y = p.loc[p["regime"] == regime, "y"].to_numpy(float)
        y = y[np.isfinite(y)]
        frac = float(np.mean(y > 1.0) if cmp == ">" else np.mean(y < 1.0)) if len(y) else np.nan
        steps = p.loc[p["regime"] == regime, "step"].nunique()
        rows.append(
            row(C7, subj, f"fraction of (t, α) with ‖H_α‖_{{S_n}} {cmp} ‖H‖_{{S_n}}, {cond}", frac, ">",
                C7_MIN_FRACTION, len(y), MIN_POINTS, estimate=frac, target=1.0,
                window=f"every probed step with {cond} ({steps} steps)",
                notes="Fig. 3 left; α = the probed multiples of η")
        )  # fmt: skip
    return rows


def _right(run: str, first: pd.Series, v: pd.DataFrame) -> list[dict]:
    """Fig. 3 right: fraction of normalised profiles whose minimum lies more than C7_X_TOL right of the quadratic
    model's (x = 1) below 2/η, left of it above 2/η; minima located independently of the s grid (Figure 3 table)."""
    rows = []
    subj = f"GD {str(first['loss']).upper()} η={float(first['lr']):g} {run}"
    for regime, cond, cmp, shift in _REGIMES:
        curves = v[v["regime"] == regime].groupby("curve", sort=True).first()
        base = curves["x_min_quad"].fillna(1.0) if len(curves) else curves["x_min"]
        d = (curves["x_min"] - base).to_numpy(float)
        d = d[np.isfinite(d)]
        right, left = int(np.sum(d > C7_X_TOL)), int(np.sum(d < -C7_X_TOL))
        frac = (right if cmp == ">" else left) / len(d) if len(d) else np.nan
        rows.append(
            row(C7, subj, f"fraction of profiles {shift}, {cond}", frac, ">", C7_MIN_FRACTION, len(d),
                MIN_POINTS, estimate=float(np.median(d)) if len(d) else np.nan, target=0.0,
                window=f"every probed step with {cond} and a valley inside the probed s grid",
                notes=f"Fig. 3 right; x = 2s/s_z (quadratic: minimum at x = 1); estimate = median x_min − x_min of "
                f"the step's quadratic model; {right} right-shifted, {left} left-shifted, {len(d) - right - left} "
                f"within ±{C7_X_TOL:g} (neither)")
        )  # fmt: skip
    return rows


def claim_c7(fig3: pd.DataFrame | None) -> list[dict]:
    """C7 per run of the Figure 3 table: four rows (left/right panel × below/above 2/η)."""
    if fig3 is None:
        return [missing(C7, "table fig3 not given")]
    data = fig3[fig3["panel"].isin(["ratio", "valley"])] if len(fig3) else fig3
    if data.empty:
        return [missing(C7, "no valley probes in the fig3 table")]
    if "x_min" not in data.columns:
        return [missing(C7, "the fig3 table has no x_min column: rebuild it with `lssr table fig3 ...`")]
    rows = []
    for run, g in data.groupby("run", sort=True):
        first = g.iloc[0]
        rows += _left(run, first, g[g["panel"] == "ratio"])
        rows += _right(run, first, g[g["panel"] == "valley"])
    return rows
