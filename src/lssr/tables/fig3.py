"""Figure 3 table: asymmetric valleys along −∇L (GD).

Panel ``ratio``: ‖H_α‖_{S_n}/‖H‖_{S_n} at θ − αη∇L against α, per probed step, with the step's regime
(‖H‖_{S_n} below or above 2/η). Panel ``valley``: the valley curves normalised so that every curve has
the same zeros and minimum: with ΔL(s) = L(θ − sη∇L) − L(θ), ΔL(0) = 0 and s_z the first zero crossing
after the minimum, x = 2 s / s_z and y = ΔL / |min ΔL| (minimum over the probed s grid). A locally
quadratic loss then gives exactly the baseline y = x² − 2x (zeros 0 and 2, minimum −1 at x = 1; panel
``quadratic``); a minimum right of x = 1 means the far side of the valley is sharper, left of it that
it is flatter. Curves without a descent or without a second zero inside the probed s grid are left out.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from ..columns import valley_quad, valley_values
from .runs import Run, RunLike, diag_runs, ias_n

COLUMNS = [
    "panel",
    "run",
    "dataset",
    "loss",
    "lr",
    "step",
    "curve",
    "ias_n",
    "two_over_eta",
    "regime",
    "alpha",
    "s",
    "dL",
    "dL_quad",
    "x",
    "y",
]


def normalise_valley(s: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """x = 2 s / s_z, y = f / |min f| (see the module docstring); None when undefined."""
    ok = np.isfinite(s) & np.isfinite(f)
    s, f = s[ok], f[ok]
    pos = s > 0
    if pos.sum() < 2:
        return None
    sp, fp = s[pos], f[pos]
    i_min = int(np.argmin(fp))
    f_min = fp[i_min]
    if not f_min < 0:
        return None
    after = np.flatnonzero(fp[i_min:] >= 0)
    if not len(after):
        return None
    j = i_min + int(after[0])  # first non-negative point after the minimum; j - 1 is negative
    s0, s1, f0, f1 = sp[j - 1], sp[j], fp[j - 1], fp[j]
    s_z = s0 + (s1 - s0) * (-f0) / (f1 - f0)
    if not s_z > 0:
        return None
    return 2.0 * s / s_z, f / abs(f_min)


def _ratio_rows(d: pd.DataFrame, i: int, common: dict, alphas: list[tuple[float, str]]) -> pd.DataFrame | None:
    """Panel ``ratio`` at probed step i: ‖H_α‖_{S_n}/‖H‖_{S_n} against α."""
    a = np.array([a for a, _ in alphas])
    v = np.array([d.at[i, c] for _, c in alphas], dtype=float)
    m = np.isfinite(v)
    if not m.any():
        return None
    return pd.DataFrame({**common, "panel": "ratio", "alpha": a[m], "x": a[m], "y": v[m]})


def _valley_rows(d: pd.DataFrame, i: int, common: dict, s_cols: list[tuple[float, str]]) -> pd.DataFrame | None:
    """Panel ``valley`` at probed step i: ΔL(s), its quadratic model and the normalised curve."""
    s = np.array([s for s, _ in s_cols])
    f = np.array([d.at[i, c] for _, c in s_cols], dtype=float)
    qcols = [valley_quad(v) for v, _ in s_cols]
    fq = np.array([d.at[i, c] if c in d.columns else np.nan for c in qcols], dtype=float)
    norm = normalise_valley(s, f)
    if norm is None:
        return None
    ok = np.isfinite(s) & np.isfinite(f)
    return pd.DataFrame(
        {**common, "panel": "valley", "s": s[ok], "dL": f[ok], "dL_quad": fq[ok], "x": norm[0], "y": norm[1]}
    )


def _run_rows(run: Run) -> list[pd.DataFrame]:
    d = run.diag
    two = 2.0 / run.lr
    ias = ias_n(run).to_numpy(float)
    regime = np.where(ias < two, "below", "above")
    base = {"run": run.name, "dataset": run.dataset, "loss": run.loss, "lr": run.lr, "two_over_eta": two}
    alphas = sorted(valley_values(d.columns, "ratio"))
    s_cols = sorted(valley_values(d.columns, "dL"))
    rows = []
    for i, step in enumerate(d["step"].to_numpy(int)):
        if not np.isfinite(ias[i]):
            continue
        common = {**base, "step": step, "curve": f"{run.name}#{step}", "ias_n": ias[i], "regime": regime[i]}
        if alphas:
            rows.append(_ratio_rows(d, i, common, alphas))
        if s_cols:
            rows.append(_valley_rows(d, i, common, s_cols))
    return [r for r in rows if r is not None]


def build(runs: Iterable[RunLike], **_options) -> pd.DataFrame:
    """Figure 3: ‖H_α‖_{S_n}/‖H‖_{S_n} vs α per step (panel ``ratio``), normalised valley curves
    (panel ``valley``) and the normalised quadratic baseline (panel ``quadratic``)."""
    rows = [frame for run in diag_runs(runs) for frame in _run_rows(run)]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(rows, ignore_index=True)
    valley = out[out["panel"] == "valley"]
    if len(valley):
        xs = np.linspace(max(valley["x"].min(), -1.0), min(valley["x"].max(), 4.0), 121)
        out = pd.concat(
            [out, pd.DataFrame({"panel": "quadratic", "curve": "quadratic", "x": xs, "y": xs**2 - 2 * xs})],
            ignore_index=True,
        )
    return out.reindex(columns=COLUMNS)
