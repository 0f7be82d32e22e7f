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

#: "in a few steps" (obs. (iii); Fig. 1 bottom: ‖H‖_{S_n} soars from 0 to 2/η in a few steps): 20 steps.
C8_FEW_STEPS = 20
#: "aligned with q_1" (Prop. 4.1: cos(q_1, ∇L) → 1): cos ≥ 0.5, i.e. within 60° of q_1.
C8_MIN_COS = 0.5
#: cos(q_1, ∇L) needs at least two probed steps inside the few-step window to be seen rising.
C8_MIN_POINTS = 2
#: "mostly with a negative cosine value" (§5.2): more than half of the consecutive pairs after the edge.
C9_MIN_FRACTION = 0.5


def _c8_run(g: pd.DataFrame) -> dict:
    first = g.iloc[0]
    cross = float(first["cross_step"])
    if not np.isfinite(cross):
        w = g.iloc[0:0]
        window = "empty: ‖H‖ never exceeded 2/η"
    else:
        w = g[(g["step"] >= cross) & (g["step"] <= cross + C8_FEW_STEPS)]
        window = f"steps {int(cross)}-{int(cross) + C8_FEW_STEPS} (‖H‖ first > 2/η at step {int(cross)})"
    cos = finite(w["cos_q1_grad"])
    before = finite(g.loc[g["step"] < cross, "cos_q1_grad"]) if np.isfinite(cross) else np.array([])
    peak = float(cos.max()) if len(cos) else np.nan
    return row(
        C8, subject(first), f"max cos(q_1, ∇L) within {C8_FEW_STEPS} steps of ‖H‖ > 2/η", peak, ">=", C8_MIN_COS,
        len(cos), C8_MIN_POINTS, estimate=peak, target=1.0, window=window,
        notes=f"median cos(q_1, ∇L) before the crossing: {float(np.median(before)) if len(before) else np.nan:.3g}",
    )  # fmt: skip


def claim_c8(figs1: pd.DataFrame | None) -> list[dict]:
    """C8 per GD run of the Figure S1 table."""
    if figs1 is None:
        return [missing(C8, "table figS1 not given")]
    gd = figs1[figs1["optimizer"] == "GD"] if len(figs1) else figs1
    if gd.empty:
        return [missing(C8, "no GD runs in the figS1 table")]
    return [_c8_run(g) for _, g in gd.groupby("run", sort=True)]


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
