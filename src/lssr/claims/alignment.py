"""C8 (observation (iii), Prop. 4.1: ∇L aligns with q_1 a few steps after ‖H‖ exceeds 2/η, GD) and C9 (§5.2:
consecutive batch gradients point mostly in opposite directions after the edge), from the Figure S1 table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import (
    CI_LEVEL,
    MIN_POINTS,
    finite,
    interval_verdict,
    missing,
    row,
    statement,
    subject,
)

C8 = statement(
    "C8",
    "§4.1 obs. (iii), Prop. 4.1",
    "GD: after ‖H‖ exceeds 2/η, the gradient ∇L becomes aligned with the top eigenvector q_1 in a few steps",
)
C9 = statement(
    "C9",
    "§5.2",
    "after entering the edge of stability, the cosine between consecutive batch gradients is mostly negative",
)

#: "in a few steps" (obs. (iii); Fig. 1 bottom: ‖H‖_{S_n} soars from 0 to 2/η in a few steps): 20 steps. The
#: window *after* is the probed steps in (t_c, t_c + W], t_c the first probed step with ‖H‖ > 2/η; the window
#: *before* is [t_c − W, t_c] (at t_c the iterate has not yet responded to the crossing). W = 20 steps, or
#: C8_MIN_POINTS probe intervals where the probes around the crossing are sparser (so each window holds
#: C8_MIN_POINTS probes); the row's window column states W.
C8_FEW_STEPS = 20
#: "becomes more aligned": the rise of the median cos(q_1, ∇L) across the crossing, less the rises the same run shows
#: at other times (placebos: the same before/after windows about every probed step t with |t − t_c| > W, so that
#: neither window holds t_c), at least 0.2 over the whole interval [rise − the placebos' 97.5% quantile,
#: rise − their 2.5% quantile]: a steady trend or noise rises as much at other times and does not pass.
C8_MIN_RISE = 0.2
#: Placebo times needed for their quantiles to mean anything (fewer: not-enough-data; train longer).
C8_MIN_PLACEBOS = 10
#: ... and "aligned with q_1" (Prop. 4.1: cos(q_1, ∇L) → 1): the median cos(q_1, ∇L) over the window after at
#: least 0.5 (within 60° of q_1) over its whole bootstrap interval, so that one spike or noise about 0.5 is not.
C8_MIN_COS = 0.5
#: Each window needs at least three probed steps ...
C8_MIN_POINTS = 3
#: ... and the crossing must be resolved: the probed step before t_c at most 5 steps earlier (a quarter of the
#: few steps), else the rise could have happened before the probed crossing (probe every step around it).
C8_MAX_GAP = 5
#: "mostly with a negative cosine value" (§5.2): more than half of the consecutive pairs after the edge.
C9_MIN_FRACTION = 0.5


def median_interval(x: np.ndarray) -> tuple[float, float]:
    """The distribution-free interval [x_(j), x_(n−j+1)] of the median (order statistics, binomial with p = ½) of
    coverage at least :data:`CI_LEVEL`, j = 1 (min, max) where n is too small for that (5 points: 93.75%)."""
    from scipy.stats import binom

    x = np.sort(x)
    j = max(1, int(binom.ppf((1 - CI_LEVEL) / 2, len(x), 0.5)))
    return float(x[j - 1]), float(x[len(x) - j])


def _rise(steps: np.ndarray, cos: np.ndarray, t: float, w: float) -> float:
    """median cos over (t, t + w] − median cos over [t − w, t]; NaN when either holds fewer than C8_MIN_POINTS."""
    before, after = cos[(steps >= t - w) & (steps <= t)], cos[(steps > t) & (steps <= t + w)]
    if len(before) < C8_MIN_POINTS or len(after) < C8_MIN_POINTS:
        return np.nan
    return float(np.median(after) - np.median(before))


def _c8_run(g: pd.DataFrame) -> list[dict]:
    """The two C8 rows of one GD run: the rise of cos(q_1, ∇L) across the crossing against the rises at other times
    of the run (placebos), and its level after the crossing, each with an interval."""
    first = g.iloc[0]
    cross = float(first["cross_step"])
    ok = np.isfinite(g["cos_q1_grad"].to_numpy(float))
    steps, cos = g["step"].to_numpy(float)[ok], g["cos_q1_grad"].to_numpy(float)[ok]
    q = [(1 - CI_LEVEL) / 2, 1 - (1 - CI_LEVEL) / 2]
    why, w = "", float(C8_FEW_STEPS)
    rise = excess = np.nan
    lo = hi = a_lo = a_hi = np.nan
    before = after = placebo = np.array([])
    if not np.isfinite(cross):
        window = "empty: ‖H‖ never exceeded 2/η"
        why = "‖H‖ never exceeded 2/η"
    else:
        near = steps[np.abs(steps - cross) <= C8_FEW_STEPS]
        gap = float(np.median(np.diff(near))) if len(near) >= 2 else np.inf
        w = max(float(C8_FEW_STEPS), C8_MIN_POINTS * gap) if np.isfinite(gap) else float(C8_FEW_STEPS)
        before = cos[(steps >= cross - w) & (steps <= cross)]
        after = cos[(steps > cross) & (steps <= cross + w)]
        window = (f"before: steps {max(int(cross - w), 0)}-{int(cross)}, after: steps {int(cross) + 1}-{int(cross + w)}"
                  f" (‖H‖ first > 2/η at probed step {int(cross)}; W = {w:g} steps = max({C8_FEW_STEPS}, "
                  f"{C8_MIN_POINTS} × the probe interval {gap:g} around it)); placebos: the same windows about every "
                  f"probed step more than W from it")  # fmt: skip
        prev = steps[steps < cross]
        gap_before = cross - prev.max() if len(prev) else np.inf
        if gap_before > C8_MAX_GAP:
            why = (
                f"the crossing is not resolved: the probed step before it is {gap_before:g} steps earlier (at most "
                f"{C8_MAX_GAP}); probe every step around step {int(cross)} (probe.every, probe.dense_until)"
            )
        rise = _rise(steps, cos, cross, w)
        placebo = np.array([_rise(steps, cos, t, w) for t in steps if abs(t - cross) > w])
        placebo = placebo[np.isfinite(placebo)]
        if np.isfinite(rise) and len(placebo) >= C8_MIN_PLACEBOS:
            p_lo, p_hi = np.quantile(placebo, q)
            excess, lo, hi = rise - float(np.median(placebo)), rise - float(p_hi), rise - float(p_lo)
        elif not why:
            why = f"{len(placebo)} placebo times with full windows (need {C8_MIN_PLACEBOS}): train longer"
        if len(after) >= C8_MIN_POINTS:
            a_lo, a_hi = median_interval(after)
    med_b = float(np.median(before)) if len(before) else np.nan
    med_a = float(np.median(after)) if len(after) else np.nan
    n = min(len(before), len(after))
    notes = (f"median cos(q_1, ∇L) before {med_b:.3g} ({len(before)} steps), after {med_a:.3g} ({len(after)} steps); "
             f"rise {rise:.3g}")  # fmt: skip
    placebo_notes = (f"{notes}; {len(placebo)} placebo rises: median {np.median(placebo):.3g}, {CI_LEVEL:.0%} range "
                     f"[{np.quantile(placebo, q[0]):.3g}, {np.quantile(placebo, q[1]):.3g}]; value = rise − median "
                     f"placebo, interval = rise − the placebos' range" if len(placebo) else notes)  # fmt: skip
    rows = [
        row(C8, subject(first), "rise of median cos(q_1, ∇L) across the crossing of ‖H‖ over 2/η, less the rise at "
            "other times (placebo)", excess, ">=", C8_MIN_RISE, n, C8_MIN_POINTS, estimate=rise,
            target=float(np.median(placebo)) if len(placebo) else np.nan, window=window, notes=placebo_notes,
            ci=(lo, hi), verdict=interval_verdict(lo, hi, ">=", C8_MIN_RISE) if np.isfinite(excess) else None),
        row(C8, subject(first), "median cos(q_1, ∇L) within W steps after the crossing", med_a, ">=", C8_MIN_COS,
            n, C8_MIN_POINTS, estimate=med_a, target=1.0, window=window, ci=(a_lo, a_hi),
            verdict=interval_verdict(a_lo, a_hi, ">=", C8_MIN_COS) if np.isfinite(a_lo) else None,
            notes=f"{notes}; distribution-free {CI_LEVEL:.0%} interval of the median after (order statistics) "
            f"[{a_lo:.3g}, {a_hi:.3g}]"),
    ]  # fmt: skip
    if why:
        for r in rows:
            r["verdict"] = "not-enough-data"
            r["notes"] = f"{why}; {r['notes']}"
    return rows


def claim_c8(figs1: pd.DataFrame | None) -> list[dict]:
    """C8 per GD run of the Figure S1 table."""
    if figs1 is None:
        return [missing(C8, "table figS1 not given")]
    gd = figs1[figs1["optimizer"] == "GD"] if len(figs1) else figs1
    if gd.empty:
        return [missing(C8, "no GD runs in the figS1 table")]
    return [r for _, g in gd.groupby("run", sort=True) for r in _c8_run(g)]


def claim_c9(figs1: pd.DataFrame | None) -> list[dict]:
    """C9 per run of the Figure S1 table: fraction of cos(g_t, g_{t+1}) < 0 from the edge on."""
    if figs1 is None:
        return [missing(C9, "table figS1 not given")]
    if figs1.empty:
        return [missing(C9, "no runs in the figS1 table")]
    rows = []
    for _, g in figs1.groupby("run", sort=True):
        first = g.iloc[0]
        edge = float(first["edge_step"])
        w = g[g["step"] >= edge] if np.isfinite(edge) else g.iloc[0:0]
        cos = finite(w["cos_consecutive"])
        frac = float(np.mean(cos < 0)) if len(cos) else np.nan
        window = f"steps ≥ {int(edge)} (instability ratio first ≥ 2/η)" if np.isfinite(edge) else \
            "empty: the instability ratio never reached 2/η"  # fmt: skip
        notes = "" if len(cos) or not len(w) else "no consecutive pair probed (probe every step to record it)"
        rows.append(
            row(C9, subject(first, not bool(first["optimizer"] == "GD")), "fraction of cos(g_t, g_{t+1}) < 0",
                frac, ">", C9_MIN_FRACTION, len(cos), MIN_POINTS, estimate=float(np.median(cos)) if len(cos)
                else np.nan, target=-1.0, window=window, notes=("estimate = median cosine; " + notes).strip("; "))
        )  # fmt: skip
    return rows
