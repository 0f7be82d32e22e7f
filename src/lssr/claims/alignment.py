"""C8 (observation (iii), Prop. 4.1: ∇L aligns with q_1 a few steps after ‖H‖ exceeds 2/η, GD) and C9 (§5.2:
consecutive batch gradients point mostly in opposite directions after the edge), from the Figure S1 table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import MIN_POINTS, finite, missing, row, statement, subject

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
#: window *after* is the probed steps in (t_c, t_c + 20], t_c the first probed step with ‖H‖ > 2/η; the window
#: *before* is [t_c − 20, t_c] (at t_c the iterate has not yet responded to the crossing).
C8_FEW_STEPS = 20
#: "becomes more aligned": the median cos(q_1, ∇L) after the crossing exceeds the median before it by 0.2 ...
C8_MIN_RISE = 0.2
#: ... and "aligned with q_1" (Prop. 4.1: cos(q_1, ∇L) → 1) at two probed steps of the window after at least:
#: its second-largest cos(q_1, ∇L) ≥ 0.5 (within 60° of q_1), so that one spike is not alignment.
C8_MIN_COS = 0.5
#: Each window needs at least three probed steps ...
C8_MIN_POINTS = 3
#: ... and the crossing must be resolved: the probed step before t_c at most 5 steps earlier (a quarter of the
#: few steps), else the rise could have happened before the probed crossing (probe every step around it).
C8_MAX_GAP = 5
#: "mostly with a negative cosine value" (§5.2): more than half of the consecutive pairs after the edge.
C9_MIN_FRACTION = 0.5


def _c8_run(g: pd.DataFrame) -> list[dict]:
    """The two C8 rows of one GD run: the rise of cos(q_1, ∇L) across the crossing and its level after."""
    first = g.iloc[0]
    cross = float(first["cross_step"])
    steps = g["step"].to_numpy(float)
    cos_all = g["cos_q1_grad"].to_numpy(float)
    why = ""
    if not np.isfinite(cross):
        before = after = np.array([])
        window = "empty: ‖H‖ never exceeded 2/η"
        why = "‖H‖ never exceeded 2/η"
    else:
        before = finite(cos_all[(steps >= cross - C8_FEW_STEPS) & (steps <= cross)])
        after = finite(cos_all[(steps > cross) & (steps <= cross + C8_FEW_STEPS)])
        window = (f"before: steps {max(int(cross) - C8_FEW_STEPS, 0)}-{int(cross)}, after: steps {int(cross) + 1}-"
                  f"{int(cross) + C8_FEW_STEPS} (‖H‖ first > 2/η at probed step {int(cross)})")  # fmt: skip
        prev = steps[steps < cross]
        gap = cross - prev.max() if len(prev) else np.inf
        if gap > C8_MAX_GAP:
            why = (
                f"the crossing is not resolved: the probed step before it is {gap:g} steps earlier (at most "
                f"{C8_MAX_GAP}); probe every step around step {int(cross)} (probe.every, probe.dense_until)"
            )
    med_b = float(np.median(before)) if len(before) else np.nan
    med_a = float(np.median(after)) if len(after) else np.nan
    second = float(np.sort(after)[-2]) if len(after) >= 2 else np.nan
    n = min(len(before), len(after))
    notes = f"median cos(q_1, ∇L) before {med_b:.3g} ({len(before)} steps), after {med_a:.3g} ({len(after)} steps)"
    rows = [
        row(C8, subject(first), "median cos(q_1, ∇L) after − before the crossing of ‖H‖ over 2/η", med_a - med_b,
            ">=", C8_MIN_RISE, n, C8_MIN_POINTS, estimate=med_a, target=med_b, window=window, notes=notes),
        row(C8, subject(first), f"second-largest cos(q_1, ∇L) within {C8_FEW_STEPS} steps after the crossing",
            second, ">=", C8_MIN_COS, n, C8_MIN_POINTS, estimate=second, target=1.0, window=window, notes=notes),
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
