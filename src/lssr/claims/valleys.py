"""C7 (Figure 3, asymmetric valleys along −∇L, GD): below 2/η the valley is sharper ahead, above it flatter.

Left panel: each (step, α) compares the directional curvatures themselves, ‖H_α‖_{S_n} − ‖H‖_{S_n}
= (ratio − 1)·‖H‖_{S_n} = (∇Lᵀ H_α ∇L − ∇Lᵀ H ∇L)/‖∇L‖², not the ratio (whose denominator ∇Lᵀ H ∇L can be
negative or near 0), and counts a difference within :data:`C7_CURV_TOL` × 2/η as neither.

Right panel: the minima come from :mod:`lssr.tables.fig3` (a polynomial over every grid point in the valley,
with its standard error), and each profile is compared with its step's quadratic model on the same grid: it is
right- or left-shifted when its shift is beyond :data:`C7_X_TOL` by more than :data:`C7_Z` standard errors,
neither when it is within the tolerance by as much, and unresolved otherwise. Profiles without a valley inside
the probed s grid (panel ``valley_excluded``) and unresolved ones are counted and listed by reason; a row whose
verdict they could change (counted all as shifted or all as not) is inconclusive."""

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
#: A profile's shift counts (right, left or neither) only when it clears the tolerance by C7_Z standard errors of
#: x_min (two-sided 95%); otherwise the profile is unresolved and counted among the exclusions.
C7_Z = 1.96
#: "‖H_α‖_{S_n} is usually larger / smaller than ‖H‖_{S_n}" (Fig. 3 left, any difference): a difference of the
#: directional curvatures beyond the round-off of the probe, 1e-4 × 2/η. A float32 Hessian-vector product summed over
#: m parameters is exact to about √m × 1.2e-7 relative (1.7e-5 for m = 2·10⁴, 8.5e-5 for the paper's 5·10⁵), and
#: ∇ᵀH∇/‖∇‖² ≤ ‖H‖, of the order of 2/η at the edge; smaller differences (a constant Hessian gives ±6e-8) count as
#: neither.
C7_CURV_TOL = 1e-4

_REGIMES = (
    ("below", "‖H‖_{S_n} < 2/η", ">", "right-shifted (minimum at x > 1)"),
    ("above", "‖H‖_{S_n} > 2/η", "<", "left-shifted (minimum at x < 1)"),
)


def _left(run: str, first: pd.Series, p: pd.DataFrame) -> list[dict]:
    """Fig. 3 left: fraction of (step, α) with ‖H_α‖_{S_n} − ‖H‖_{S_n} above C7_CURV_TOL·2/η below 2/η, below
    −C7_CURV_TOL·2/η above it (the curvatures compared, not their ratio)."""
    rows = []
    subj = f"GD {str(first['loss']).upper()} η={float(first['lr']):g} {run}"
    for regime, cond, cmp, _ in _REGIMES:
        q = p[p["regime"] == regime]
        two = q["two_over_eta"].to_numpy(float)
        diff = ((q["y"] - 1.0) * q["ias_n"]).to_numpy(float)  # ‖H_α‖_{S_n} − ‖H‖_{S_n}
        ok = np.isfinite(diff)
        diff, tol = diff[ok], C7_CURV_TOL * two[ok]
        larger, smaller = int(np.sum(diff > tol)), int(np.sum(diff < -tol))
        k = larger if cmp == ">" else smaller
        frac = k / len(diff) if len(diff) else np.nan
        steps = q["step"].nunique()
        dropped = int((~ok).sum())
        rows.append(
            row(C7, subj, f"fraction of (t, α) with ‖H_α‖_{{S_n}} {cmp} ‖H‖_{{S_n}}, {cond}", frac, ">",
                C7_MIN_FRACTION, len(diff), MIN_POINTS, estimate=frac, target=1.0,
                window=f"every probed step with {cond} ({steps} steps)",
                notes=f"Fig. 3 left; α = the probed multiples of η; compared: ‖H_α‖_{{S_n}} − ‖H‖_{{S_n}} against "
                f"±{C7_CURV_TOL:g} × 2/η: {larger} larger, {smaller} smaller, {len(diff) - larger - smaller} within"
                + (f"; {dropped} (t, α) without a ratio left out" if dropped else ""))
        )  # fmt: skip
    return rows


def classify(shift: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Each profile's class from its shift x_min − x_min_quad and the shift's standard error: ``right`` /
    ``left`` beyond ±C7_X_TOL by C7_Z se, ``neither`` within it by as much, else ``unresolved``."""
    u = C7_Z * np.where(np.isfinite(se), se, np.inf)
    with np.errstate(invalid="ignore"):
        out = np.where(shift - u > C7_X_TOL, "right", np.where(shift + u < -C7_X_TOL, "left", "unresolved"))
        out = np.where(np.abs(shift) + u <= C7_X_TOL, "neither", out)
    return np.where(np.isfinite(shift), out, "unresolved").astype(object)


def _right(run: str, first: pd.Series, v: pd.DataFrame, ex: pd.DataFrame) -> list[dict]:
    """Fig. 3 right: fraction of normalised profiles whose minimum lies beyond C7_X_TOL right of the quadratic
    model's (x = 1) below 2/η, left of it above 2/η, with the profiles left out counted (Figure 3 table)."""
    rows = []
    subj = f"GD {str(first['loss']).upper()} η={float(first['lr']):g} {run}"
    for regime, cond, cmp, shift in _REGIMES:
        curves = v[v["regime"] == regime].groupby("curve", sort=True).first()
        base = curves["x_min_quad"].fillna(1.0)
        d = (curves["x_min"] - base).to_numpy(float)
        se = curves["x_min_se"].to_numpy(float)  # the quadratic model is a parabola: located exactly by any fit
        cls = classify(d, se)
        n_right, n_left = int(np.sum(cls == "right")), int(np.sum(cls == "left"))
        resolved = int(np.sum(cls != "unresolved"))
        k = n_right if cmp == ">" else n_left
        why = ex.loc[ex["regime"] == regime, "excluded"].astype(str).value_counts()
        reasons = [f"{int(c)}: {w}" for w, c in why.items()]
        unres = len(cls) - resolved
        if unres:
            reasons.append(f"{unres}: shift within {C7_Z:g} standard errors of ±{C7_X_TOL:g} (unresolved)")
        n_ex = int(why.sum()) + unres
        total = resolved + n_ex
        frac = k / resolved if resolved else np.nan
        lo, hi = (k / total, (k + n_ex) / total) if total else (np.nan, np.nan)
        if total < MIN_POINTS:
            verdict = None
        elif lo > C7_MIN_FRACTION:
            verdict = "pass"
        elif hi <= C7_MIN_FRACTION:
            verdict = "fail"
        else:
            verdict = "inconclusive"
        left_out = (f"{n_ex} of {total} profiles left out: " + "; ".join(reasons)) if n_ex else "none left out"
        rows.append(
            row(C7, subj, f"fraction of profiles {shift}, {cond}", frac, ">", C7_MIN_FRACTION, total,
                MIN_POINTS, estimate=float(np.median(d[cls != "unresolved"])) if resolved else np.nan, target=0.0,
                window=f"every probed step with {cond}", verdict=verdict, ci=(lo, hi),
                notes=f"Fig. 3 right; x = 2s/s_z (quadratic: minimum at x = 1); estimate = median x_min − x_min of "
                f"the step's quadratic model over the resolved profiles; {n_right} right-shifted, {n_left} "
                f"left-shifted, {resolved - n_right - n_left} within ±{C7_X_TOL:g} (neither); {left_out}; "
                f"ci = the fraction with every left-out profile counted as not / as {shift.split(' ')[0]} (pass: "
                f"both > {C7_MIN_FRACTION:g}, fail: both ≤ it)")
        )  # fmt: skip
    return rows


def claim_c7(fig3: pd.DataFrame | None) -> list[dict]:
    """C7 per run of the Figure 3 table: four rows (left/right panel × below/above 2/η)."""
    if fig3 is None:
        return [missing(C7, "table fig3 not given")]
    data = fig3[fig3["panel"].isin(["ratio", "valley", "valley_excluded"])] if len(fig3) else fig3
    if data.empty:
        return [missing(C7, "no valley probes in the fig3 table")]
    need = {"x_min_se", "excluded", "ias_n", "two_over_eta"} - set(data.columns)
    if need:
        return [missing(C7, f"the fig3 table has no {', '.join(sorted(need))} column: rebuild it with `lssr table "
                        "fig3 ...`")]  # fmt: skip
    rows = []
    for run, g in data.groupby("run", sort=True):
        first = g.iloc[0]
        rows += _left(run, first, g[g["panel"] == "ratio"])
        rows += _right(run, first, g[g["panel"] == "valley"], g[g["panel"] == "valley_excluded"])
    return rows
