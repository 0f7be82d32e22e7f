"""Figure 3 table: asymmetric valleys along −∇L (GD).

Panel ``ratio``: ‖H_α‖_{S_n}/‖H‖_{S_n} at θ − αη∇L against α, per probed step, with the step's regime
(‖H‖_{S_n} below or above 2/η). Panel ``valley``: the valley curves normalised so that every curve has
the same zeros and minimum: with ΔL(s) = L(θ − sη∇L) − L(θ), ΔL(0) = 0 and s_z the first zero crossing
after the minimum, x = 2 s / s_z and y = ΔL / |min ΔL|. The minimum (s*, min ΔL) is the vertex of the
parabola through the grid's lowest point and its two neighbours, and s_z the root of the parabola through
the three grid points around the crossing, so that both are exact for a quadratic ΔL whatever the s grid
(a grid argmin would put a quadratic's minimum at x ≠ 1 by up to half a grid step). ``x_min`` = 2 s*/s_z
is the curve's minimum; ``x_min_quad`` the same for the step's quadratic model ΔL_quad (``dL_quad``) on the
same grid (1 up to rounding). A locally quadratic loss then gives exactly the baseline y = x² − 2x (zeros 0
and 2, minimum −1 at x = 1; panel ``quadratic``); a minimum right of x = 1 means the far side of the valley
is sharper, left of it that it is flatter. Curves without a descent or without a second zero inside the
probed s grid are left out.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

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
    "x_min",
    "x_min_quad",
]


class Valley(NamedTuple):
    """A normalised loss profile: x = 2 s / s_z and y = ΔL / |min ΔL| at the probed s, and its minimum x_min."""

    x: np.ndarray
    y: np.ndarray
    x_min: float


def _parabola(s3: np.ndarray, f3: np.ndarray) -> np.ndarray:
    """Coefficients (a, b, c) of f = a s² + b s + c through three points."""
    return np.linalg.solve(np.vander(s3, 3), f3)


def _zero(s: np.ndarray, f: np.ndarray, j: int) -> float:
    """The zero of f between s[j−1] (f < 0) and s[j] (f ≥ 0): the root there of the parabola through three grid
    points around it (linear interpolation when only two points exist or the parabola has no root there)."""
    s0, s1, f0, f1 = s[j - 1], s[j], f[j - 1], f[j]
    lin = s0 + (s1 - s0) * (-f0) / (f1 - f0)
    k = j + 1 if j + 1 < len(s) else j - 2
    if k < 0:
        return float(lin)
    idx = sorted({j - 1, j, k})
    a, b, c = _parabola(s[idx], f[idx])
    roots = np.roots([a, b, c]) if a != 0 else np.array([-c / b])
    roots = roots[np.isreal(roots)].real
    inside = roots[(roots >= s0 - 1e-12 * abs(s0)) & (roots <= s1 + 1e-12 * abs(s1))]
    return float(inside[0]) if len(inside) else float(lin)


def _vertex(s: np.ndarray, f: np.ndarray, i: int) -> tuple[float, float]:
    """(s*, f*) the vertex of the parabola through (s[i−1], s[i], s[i+1]) (s[i] a grid minimum); the grid point
    itself when the parabola is not convex or its vertex leaves the bracket."""
    a, b, c = _parabola(s[i - 1 : i + 2], f[i - 1 : i + 2])
    if not a > 0:
        return float(s[i]), float(f[i])
    sv = -b / (2 * a)
    if not s[i - 1] <= sv <= s[i + 1]:
        return float(s[i]), float(f[i])
    return float(sv), float(min(a * sv * sv + b * sv + c, f[i]))


def normalise_valley(s: np.ndarray, f: np.ndarray) -> Valley | None:
    """The normalised profile of ΔL(s) (see the module docstring); None without a descent or a second zero."""
    ok = np.isfinite(s) & np.isfinite(f)
    s, f = s[ok], f[ok]
    pos = s > 0
    if pos.sum() < 2:
        return None
    # the positive s and ΔL(0) = 0, which brackets a minimum at the first positive s
    sp, fp = np.concatenate([[0.0], s[pos]]), np.concatenate([[0.0], f[pos]])
    i_min = 1 + int(np.argmin(fp[1:]))
    if not fp[i_min] < 0:
        return None
    after = np.flatnonzero(fp[i_min:] >= 0)
    if not len(after):
        return None
    j = i_min + int(after[0])  # first non-negative point after the minimum; j - 1 is negative
    s_z = _zero(sp, fp, j)
    if not s_z > 0:
        return None
    s_min, f_min = _vertex(sp, fp, i_min)
    return Valley(2.0 * s / s_z, f / abs(f_min), 2.0 * s_min / s_z)


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
    quad = normalise_valley(s, fq)
    ok = np.isfinite(s) & np.isfinite(f)
    return pd.DataFrame(
        {**common, "panel": "valley", "s": s[ok], "dL": f[ok], "dL_quad": fq[ok], "x": norm.x, "y": norm.y,
         "x_min": norm.x_min, "x_min_quad": quad.x_min if quad is not None else np.nan}
    )  # fmt: skip


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
