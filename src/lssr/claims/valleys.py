"""C7 (Figure 3, asymmetric valleys along −∇L, GD): below 2/η the valley is sharper ahead, above it flatter."""

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
    """Fig. 3 right: fraction of normalised profiles whose minimum lies right of x = 1 below 2/η, left above."""
    rows = []
    subj = f"GD {str(first['loss']).upper()} η={float(first['lr']):g} {run}"
    for regime, cond, cmp, shift in _REGIMES:
        curves = v[v["regime"] == regime]
        x_min = np.array([float(c.loc[c["y"].idxmin(), "x"]) for _, c in curves.groupby("curve", sort=True)])
        frac = float(np.mean(x_min > 1.0) if cmp == ">" else np.mean(x_min < 1.0)) if len(x_min) else np.nan
        rows.append(
            row(C7, subj, f"fraction of profiles {shift}, {cond}", frac, ">", C7_MIN_FRACTION, len(x_min),
                MIN_POINTS, estimate=float(np.median(x_min)) if len(x_min) else np.nan, target=1.0,
                window=f"every probed step with {cond} and a valley inside the probed s grid",
                notes="Fig. 3 right; x = 2s/s_z (quadratic: minimum at x = 1); estimate = median x of the minimum")
        )  # fmt: skip
    return rows


def claim_c7(fig3: pd.DataFrame | None) -> list[dict]:
    """C7 per run of the Figure 3 table: four rows (left/right panel × below/above 2/η)."""
    if fig3 is None:
        return [missing(C7, "table fig3 not given")]
    data = fig3[fig3["panel"].isin(["ratio", "valley"])] if len(fig3) else fig3
    if data.empty:
        return [missing(C7, "no valley probes in the fig3 table")]
    rows = []
    for run, g in data.groupby("run", sort=True):
        first = g.iloc[0]
        rows += _left(run, first, g[g["panel"] == "ratio"])
        rows += _right(run, first, g[g["panel"] == "valley"])
    return rows
