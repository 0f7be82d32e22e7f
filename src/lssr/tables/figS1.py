"""Supplementary Figure S1 table: the alignment of ∇L with q_1 (observation (iii), Prop. 4.1) and the cosine of
consecutive step gradients (§5.2) per probed step, with the 2/η crossings of ‖H‖ and of the instability ratio.

``cross_step``: the first probed step with ‖H‖ > 2/η (NaN if never, or ‖H‖ not measured); ``edge_step``: the
first probed step whose instability ratio tr(H S_b)/tr(S_n) reaches 2/η (the edge of stability). ``cos_consecutive``
is cos(g_t, g_{t+1}) of the gradients of two consecutive steps (recorded only where both steps were probed).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .runs import BASE_COLUMNS, Run, RunLike, base_columns, diag_runs, first_index, for_b

COLUMNS = [
    *BASE_COLUMNS,
    "step",
    "top_eig",
    "two_over_eta",
    "instability_ratio",
    "cos_q1_grad",
    "cos_consecutive",
    "cross_step",
    "edge_step",
]


def _rows(run: Run) -> pd.DataFrame:
    two = 2.0 / run.lr
    steps = run.diag["step"].to_numpy(int)
    top = run.col("top_eig").to_numpy(float)
    inst = for_b(run)["instability"].to_numpy(float)
    cross = first_index(np.isfinite(top) & (top > two))
    edge = first_index(np.isfinite(inst) & (inst >= two))
    return pd.DataFrame(
        {
            **base_columns(run),
            "step": steps,
            "top_eig": top,
            "two_over_eta": two,
            "instability_ratio": inst,
            "cos_q1_grad": run.col("cos_q1_grad").to_numpy(float),
            "cos_consecutive": run.col("cos_consecutive").to_numpy(float),
            "cross_step": steps[cross] if cross is not None else np.nan,
            "edge_step": steps[edge] if edge is not None else np.nan,
        }
    )


def build(runs: Iterable[RunLike], **_options) -> pd.DataFrame:
    """Figure S1: cos(q_1, ∇L) and cos(g_t, g_{t+1}) per probed step of every probed run (GD first)."""
    probed = sorted(diag_runs(runs), key=lambda r: (not r.is_gd, r.loss, r.lr, r.b, r.name))
    if not probed:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat([_rows(r) for r in probed], ignore_index=True)[COLUMNS]
