"""C5 (Figure 5, §5.2): LSSR predicts the best η per b out of sample better than LSR, SRSR, a constant η and a
free power law.

The best η per b is the one of :mod:`lssr.tables.fig5`: only cells that reached the training-accuracy goal (the
paper's "zero training error", §5.2) can be best cells; a b none of whose cells reached it has no best η and is
counted in the notes; the best η lies between grid points (the vertex of a parabola in log2 η through the best
cell and its neighbours). Three rows per data set:

- **LSSR predicted from the measured ρ** (the decisive row): B_simple = (tr S_1 − tr S_n)/tr S_n measured on the
  trained models of the heatmap (table ``fig5_rho``: the median over its ``final`` rows of the goal-reaching cells,
  one number per data set), ρ = 1/(1 + B_simple) and ρ_b by eq. (12) (:func:`lssr.scaling.rho_b`: b/(b + B_simple)
  with replacement), and log2 η*(b) = log2 c + log2 ρ_b with one free constant c;
- **LSSR with a fitted ρ** (c and ρ fitted to the best η, :func:`lssr.scaling.fit_lssr`'s search range): when the
  fit ends at a bound of that range the row says so (ρ is then not identified by the data);
- **the largest stable η per b** (the largest η below which no cell diverged, on the grid) with the fitted LSSR.

The statistic is the leave-one-out RMSE over batch sizes (log2 η units) of the LSSR row minus the smallest of the
baselines': LSR (η = c·b), SRSR (η = c·√b), a constant η (LSSR's saturated limit) and a free power law
η = c·b^α (two parameters, as many as the fitted LSSR), each fitted to the other b's. A best η whose cell has no
goal-reaching cell probed on one side (``censored``) only bounds the optimum: it is left out of every fit and a
prediction for it counts as an error only on the side the bound rules out.

The interval is a percentile interval over :data:`lssr.tables.fig5.N_BOOT` resamples, each of which resamples every
cell's seeds independently (:func:`lssr.tables.fig5.resample_weights`), moves each b's best η by a uniform draw
within ± :data:`lssr.tables.fig5.GRID_RESOLUTION` of the local grid spacing (the grid's resolution) and, for the
predicted row, takes the median B_simple of a resample of the ``fig5_rho`` rows.

The regime statement comes from the data, not from a fitted knee: the log-log slope d log2 η*/d log2 b of a line
through the :data:`C5_REGIME_B` smallest uncensored b's shows the linear regime when the lower end of its interval
is at least :data:`C5_LINEAR_SLOPE`; the slope through the :data:`C5_REGIME_B` largest shows saturation when the
upper end of its interval is below :data:`C5_SATURATED_FRACTION` × the lower end of the small-b slope's. The verdict:

- ``fail`` when the whole interval of the difference is above :data:`C5_TIE` (a tie);
- ``pass`` when it is below −:data:`C5_TIE` and the data show both regimes;
- ``inconclusive`` otherwise, saying which regime is missing;
- ``not-enough-data`` below :data:`C5_MIN_SEEDS` seeds per cell, :data:`MIN_B_FIT` uncensored batch sizes with a
  best η, or (the predicted row) without a ``fig5_rho`` table.

The ``figC5`` table, when given, reports in the notes how much B_simple = 1/ρ_1 − 1 moves along training on the
SGD runs of Figure 4.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import scaling
from ..tables.fig5_best import (
    BOOT_LEVEL,
    BOOT_SEED,
    GRID_RESOLUTION,
    N_BOOT,
    best_log2_lr,
    censored,
    goal_cells,
    interval_table,
    largest_stable_index,
    resample_weights,
    seed_cube,
)
from .common import MIN_B_FIT, missing, row, statement
from .loo import loo_all, rho_bounds

C5 = statement(
    "C5",
    "Fig. 5 right, §5.2",
    "LSSR: the best η per b follows c·ρ_b (eq. 12), linear for small b and saturated for large b, more closely "
    "than LSR (c·b), SRSR (c·√b), a constant η or a free power law c·b^α, judged out of sample (leave one batch "
    "size out)",
)

#: "It does not follow either LSR or SRSR, but LSSR" (Fig. 5): LSSR's out-of-sample error below the best of
#: the baselines', i.e. the difference below 0 over the whole interval.
C5_MAX_DIFF = 0.0
#: ... by more than a tie: differences within ±0.1 log2 η (a tenth of a factor 2) do not decide between rules
#: (LSSR nests LSR as ρ → 0 and the constant as ρ → 1, so on such data they tie up to the fit's precision).
C5_TIE = 0.1
#: A seed-to-seed uncertainty from resampling each cell's seeds needs at least three seeds per cell.
C5_MIN_SEEDS = 3
#: "the optimal learning rate is almost linear when b is small, but it saturates when b is large": each regime
#: read from the slope of a line through this many uncensored batch sizes at its end of the b range.
C5_REGIME_B = 3
#: "almost linear when b is small": the small-b log-log slope at least 0.5 over its whole interval (nearer LSR's
#: slope 1 than the constant's 0).
C5_LINEAR_SLOPE = 0.5
#: "it saturates when b is large": the large-b slope below half the small-b slope over both intervals (the upper
#: end of the large-b slope's below 0.5 × the lower end of the small-b slope's).
C5_SATURATED_FRACTION = 0.5
#: The baselines LSSR must beat.
BASELINES = ("LSR", "SRSR", "constant", "power law")


def _slope(y: np.ndarray, x: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Least-squares slope of y over x on the columns ``sel`` (NaN where a resample lacks one of them)."""
    yy, xx = y[..., sel], x[sel]
    xm = xx - xx.mean()
    return (yy * xm).sum(axis=-1) / (xm * xm).sum()


def regimes(y0: np.ndarray, draws: np.ndarray, b: np.ndarray, free0: np.ndarray) -> dict:
    """Which regimes the data show (module docstring): ``label`` both / only linear / no linear regime /
    unknown, the small- and large-b slopes with their intervals, and the b's they are taken over."""
    idx = np.flatnonzero(free0)
    out = {"label": "unknown", "text": ""}
    if len(idx) < C5_REGIME_B + 1:
        out["text"] = f"{len(idx)} uncensored batch sizes: the regimes need {C5_REGIME_B + 1}"
        return out
    x = np.log2(np.asarray(b, float))
    small, large = idx[:C5_REGIME_B], idx[-C5_REGIME_B:]
    q = (1 - BOOT_LEVEL) / 2
    res = {}
    for name, sel in (("small", small), ("large", large)):
        s0 = float(_slope(y0, x, sel))
        sd = _slope(draws, x, sel)
        sd = np.where(np.isfinite(sd), sd, np.nan)
        lo, hi = np.nanquantile(sd, [q, 1 - q]) if np.isfinite(sd).mean() >= 1 - q else (-np.inf, np.inf)
        res[name] = (s0, float(lo), float(hi))
    linear = res["small"][1] >= C5_LINEAR_SLOPE
    saturated = res["small"][1] > 0 and res["large"][2] < C5_SATURATED_FRACTION * res["small"][1]
    out["label"] = "both" if linear and saturated else "only linear" if linear else "no linear regime"
    bl = lambda sel: f"b={int(b[sel[0]])}-{int(b[sel[-1]])}"  # noqa: E731
    out["text"] = (
        f"regimes from the data: slope d log2 η*/d log2 b {res['small'][0]:.2f} [{res['small'][1]:.2f}, "
        f"{res['small'][2]:.2f}] over {bl(small)} (linear when the lower end ≥ {C5_LINEAR_SLOPE:g}), "
        f"{res['large'][0]:.2f} [{res['large'][1]:.2f}, {res['large'][2]:.2f}] over {bl(large)} (saturated when the "
        f"upper end < {C5_SATURATED_FRACTION:g} × the small-b lower end): {out['label']}"
    )
    return out


# --- the measured ρ ----------------------------------------------------------------------------------------------
def measured_b_simple(rho_rows: pd.DataFrame | None, ds: str, goal_cells_df: pd.DataFrame | None = None):
    """B_simple of data set ``ds`` from the ``fig5_rho`` rows: (values, note). The rows used are those with
    ``where == "final"`` (all rows when the column or that value is absent) of the cells that reached the goal
    (all of them when none did, said so); B_simple is the ``b_simple`` column, else (tr S_1 − tr S_n)/tr S_n."""
    if rho_rows is None:
        return np.array([]), "table fig5_rho not given (B_simple measured on the heatmap's trained models)"
    r = rho_rows[rho_rows["dataset"].astype(str) == str(ds)] if "dataset" in rho_rows.columns else rho_rows
    if r.empty:
        return np.array([]), f"no fig5_rho rows for data set {ds}"
    what = "all rows"
    if "where" in r.columns and (r["where"].astype(str) == "final").any():
        r, what = r[r["where"].astype(str) == "final"], "the final models"
    if goal_cells_df is not None and {"b", "lr"} <= set(r.columns):
        key = set(zip(goal_cells_df["b"].astype(float), goal_cells_df["lr"].astype(float)))
        on = np.array([(float(b), float(lr)) in key for b, lr in zip(r["b"], r["lr"])], bool)
        if on.any():
            r, what = r[on], what + " of the goal-reaching cells"
        else:
            what += " (no measured cell reached the goal: every measured cell)"
    bs = r["b_simple"].astype(float) if "b_simple" in r.columns else pd.Series(np.nan, index=r.index)
    if {"tr_S_1", "tr_S_n"} <= set(r.columns):
        with np.errstate(invalid="ignore", divide="ignore"):
            bs = bs.fillna((r["tr_S_1"].astype(float) - r["tr_S_n"].astype(float)) / r["tr_S_n"].astype(float))
    v = bs.to_numpy(float)
    v = v[np.isfinite(v) & (v >= 0)]
    if not len(v):
        return v, f"no finite B_simple in the fig5_rho rows of {ds}"
    note = (f"B_simple measured (fig5_rho, {what}, {len(v)} models): median {np.median(v):.4g}, range "
            f"[{v.min():.4g}, {v.max():.4g}]")  # fmt: skip
    return v, note


def b_simple_along_training(figc5: pd.DataFrame | None) -> str:
    """How much B_simple = 1/ρ_1 − 1 moves along training on Figure 4's SGD runs (``figC5``), for the notes."""
    if figc5 is None or figc5.empty or "rho_1" not in figc5.columns:
        return ""
    f = figc5.drop_duplicates(["run", "step"]).sort_values(["run", "step"])
    f = f[f["rho_1"].astype(float) > 0]
    if f.empty:
        return ""
    B = 1.0 / f["rho_1"].astype(float) - 1.0
    first = B.groupby(f["run"]).first()
    last = B.groupby(f["run"]).last()
    return (f"along training (figC5, B_simple = 1/ρ_1 − 1 on {f['run'].nunique()} SGD runs of Figure 4): median "
            f"{first.median():.4g} at the first step, {last.median():.4g} at the last, range [{B.min():.4g}, "
            f"{B.max():.4g}]")  # fmt: skip


# --- the draws of the best η per b -------------------------------------------------------------------------------
class _Heat:
    """One data set's heatmap: the best η per b on all seeds and over resamples (with the grid-resolution jitter)."""

    def __init__(self, s: pd.DataFrame):
        self.n, self.repl = int(s["n"].iloc[0]), bool(s["replacement"].iloc[0])
        self.bs, self.lrs, self.acc, self.div, self.present = seed_cube(s)
        self.goal, self.goal_note = goal_cells(s, self.bs, self.lrs)
        self.x = np.log2(self.lrs)
        p = self.present
        self.seeds_per_cell = int(p.sum(axis=0)[p.any(axis=0)].min()) if p.any() else 0
        self.y0, k0, c0 = best_log2_lr(self.acc, self.div, p, self.goal, self.lrs, np.ones(p.shape[0]))
        self.has0, self.cens0 = k0 >= 0, c0
        rng = np.random.default_rng(BOOT_SEED)  # the same resamples as the table's intervals
        w = np.stack([resample_weights(p, rng) for _ in range(N_BOOT)])
        y, k, c = best_log2_lr(self.acc, self.div, p, self.goal, self.lrs, w)
        self.iv = interval_table(self.bs, self.lrs, self.acc, self.div, p, self.goal, y)
        half = self.iv["half"].to_numpy(float)
        self.draws = y + np.nan_to_num(half) * rng.uniform(-1, 1, y.shape)
        self.has, self.cens = k >= 0, c
        self.w = w

    def stable(self):
        """The largest stable η per b (log2, on the grid), on all seeds and over the same resamples."""
        p = self.present
        k0 = largest_stable_index(self.div, p, np.ones(p.shape[0]))
        ks = np.stack([largest_stable_index(self.div, p, wi) for wi in self.w])
        code = lambda k: np.vectorize({"low": -1, "high": 1, "": 0}.get)(censored(k, p))  # noqa: E731
        y0 = np.where(k0 >= 0, self.x[np.maximum(k0, 0)], np.nan)
        y = np.where(ks >= 0, self.x[np.maximum(ks, 0)], np.nan)
        return y0, k0 >= 0, code(k0), y, ks >= 0, np.stack([code(k) for k in ks])


def _interval(d: np.ndarray) -> tuple[float, float]:
    """The percentile interval of resampled differences; unbounded when more of them are undefined than its tails
    leave out."""
    q = (1 - BOOT_LEVEL) / 2
    ok = np.isfinite(d)
    if not len(d) or ok.mean() < 1 - q:
        return -np.inf, np.inf
    lo, hi = np.quantile(d[ok], [q, 1 - q])
    return float(lo), float(hi)


def _diff(loo: dict, model: str) -> np.ndarray:
    base = np.stack([loo[m] for m in BASELINES])
    with np.errstate(invalid="ignore"):
        return loo[model] - np.min(base, axis=0)


def _verdict(value, lo, hi, regime: dict, n_free: int, seeds: int) -> tuple[str, str]:
    if seeds < C5_MIN_SEEDS:
        return "not-enough-data", f"{seeds} seed(s) in some cell (need {C5_MIN_SEEDS})"
    if n_free < MIN_B_FIT or not np.isfinite(value):
        return "not-enough-data", f"{n_free} uncensored batch sizes (need {MIN_B_FIT})"
    if lo > C5_MAX_DIFF + C5_TIE:
        return "fail", ""
    if hi < C5_MAX_DIFF - C5_TIE and regime["label"] == "both":
        return "pass", ""
    if hi < C5_MAX_DIFF - C5_TIE:
        return "inconclusive", f"LSSR predicts best, but the data show {regime['label']} ({regime['text'] or '-'})"
    return "inconclusive", f"the interval reaches ±{C5_TIE:g} of 0"


def _row(ds: str, h: _Heat, model: str, loo0: dict, loo_b: dict, y0, free0, regime: dict, extra: list[str],
         label: str, what: str) -> dict:  # fmt: skip
    """One C5 row: LOO RMSE of ``model`` minus the best baseline's, its interval and verdict."""
    value = float(_diff(loo0, model))
    lo, hi = _interval(_diff(loo_b, model)) if h.seeds_per_cell >= C5_MIN_SEEDS else (np.nan, np.nan)
    n_free = int(free0.sum())
    verdict, why = _verdict(value, lo, hi, regime, n_free, h.seeds_per_cell)
    if verdict == "not-enough-data":
        lo = hi = np.nan
    has = np.isfinite(y0)
    b = h.bs[has]
    notes = "; ".join(x for x in (
        why,
        what,
        "leave-one-out RMSE: " + ", ".join(f"{m} {float(v):.3g}" for m, v in loo0.items() if np.isfinite(v))
        if any(np.isfinite(v) for v in loo0.values()) else "",
        f"{BOOT_LEVEL:.0%} interval [{lo:.3g}, {hi:.3g}] ({N_BOOT} resamples of each cell's seeds, each b's best η "
        f"moved within ±{GRID_RESOLUTION:g} of its grid spacing, seed {BOOT_SEED})" if np.isfinite(lo) else "",
        regime["text"],
        *extra,
        f"{h.seeds_per_cell} seed(s) per cell at least",
    ) if x)  # fmt: skip
    stat = f"LOO RMSE_{model.replace(' ', '_')} − min(LOO RMSE of LSR, SRSR, constant η, power law) [log2 η], {label}"
    return row(C5, f"{ds} (n={h.n})", stat, value, "<", C5_MAX_DIFF, n_free, MIN_B_FIT,
               estimate=float(loo0.get(model, np.nan)),
               target=float(np.nanmin([loo0[m] for m in BASELINES])) if n_free >= 2 else np.nan,
               window=f"{len(b)} batch sizes {int(b.min()) if len(b) else 0}-{int(b.max()) if len(b) else 0}, "
               "leave one b out", notes=notes, verdict=verdict, ci=(lo, hi))  # fmt: skip


def _best_notes(h: _Heat) -> list[str]:
    """What the best-η rows share: the goal, the b without a best η, the censored ones."""
    none = [int(b) for b, ok in zip(h.bs, h.has0) if not ok]
    cens = [f"b={int(b)} ({'low' if c < 0 else 'high'})" for b, c, ok in zip(h.bs, h.cens0, h.has0) if ok and c]
    return [
        "best η per b: the vertex of a parabola in log2 η through the best goal-reaching cell and its neighbours",
        h.goal_note,
        f"{len(none)} batch size(s) without a goal-reaching cell, so without a best η: "
        + ", ".join(f"b={b}" for b in none)
        if none
        else "",
        "bounds only (no goal-reaching cell probed on one side): " + ", ".join(cens) if cens else "",
    ]


def _fitted_note(h: _Heat, free0: np.ndarray) -> str:
    """The fitted ρ on all seeds, and whether the fit ended at a bound of its search range."""
    if free0.sum() < 3:
        return ""
    f = scaling.fit_lssr(h.bs[free0].astype(float), 2.0 ** h.y0[free0], h.n, h.repl, rho_bounds(h.n))
    rho = float(f.params["rho"])
    lo, hi = rho_bounds(h.n)
    if rho <= lo * 1.01:
        return (f"the fit hit its bound ρ = 2^{math.log2(lo):.1f} (the search's lower limit 10^-3/n): ρ is not "
                "identified by these b, LSSR reduces to LSR")  # fmt: skip
    if rho >= hi * 0.99:
        return "the fit hit its bound ρ = 1 (the search's upper limit): LSSR reduces to a constant η"
    return f"fitted ρ = {rho:.4g} (log2 {math.log2(rho):.2f}), knee b = 1/ρ = {1 / rho:.3g}"


def predicted_shape(h: _Heat, B: np.ndarray) -> np.ndarray:
    """log2 ρ_b at the heatmap's b for B_simple = ``B`` (scalar or per resample): eq. (12) with ρ = 1/(1 + B)."""
    B = np.asarray(B, float)
    return np.log2(scaling.rho_b(1.0 / (1.0 + B[..., None]), h.n, h.bs[None, :].astype(float), h.repl))[..., :]


def _b_draws(v: np.ndarray) -> tuple[float, np.ndarray]:
    """The median B_simple and its medians over :data:`N_BOOT` resamples of the measured models."""
    rng = np.random.default_rng(BOOT_SEED + 1)
    idx = rng.integers(0, len(v), (N_BOOT, len(v)))
    return float(np.median(v)), np.median(v[idx], axis=1)


def prediction(h: _Heat, v: np.ndarray) -> dict:
    """The LSSR curve predicted from the measured B_simple values ``v``: c fitted (the mean residual of the
    uncensored best η) on all seeds and per resample; returns B, c (log2), their draws."""
    B0, Bd = _b_draws(v)
    free0 = h.has0 & (h.cens0 == 0)
    s0 = predicted_shape(h, B0)[0]
    c0 = float(np.mean(h.y0[free0] - s0[free0])) if free0.any() else np.nan
    sd = predicted_shape(h, Bd)
    free = h.has & (h.cens == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cd = np.where(free, h.draws - sd, 0.0).sum(axis=1) / free.sum(axis=1)
    return {"B": B0, "log2_c": c0, "B_draws": Bd, "log2_c_draws": cd, "shape0": s0, "shape_draws": sd}


def predicted_curve(seeds: pd.DataFrame, rho_rows: pd.DataFrame | None, b_grid=None) -> pd.DataFrame:
    """The best η per b predicted from the measured ρ (the paper's ρ_b curve, c·ρ_b) for one data set's seed rows:
    columns b, lr, lr_lo, lr_hi (the interval over resamples of seeds, grid rounding and measured models), b_simple,
    log2_c; empty without measured B_simple or a best η."""
    h = _Heat(seeds)
    ds = str(seeds["dataset"].iloc[0])
    v, _ = measured_b_simple(rho_rows, ds, _goal_frame(h))
    if not len(v) or not (h.has0 & (h.cens0 == 0)).any():
        return pd.DataFrame(columns=["b", "lr", "lr_lo", "lr_hi", "b_simple", "log2_c"])
    p = prediction(h, v)
    bb = np.asarray(b_grid if b_grid is not None else 2.0 ** np.linspace(*np.log2(h.bs[[0, -1]]), 65), float)
    rb = lambda B: np.log2(scaling.rho_b(1.0 / (1.0 + np.asarray(B, float)[..., None]), h.n, bb, h.repl))  # noqa: E731
    y0 = p["log2_c"] + rb(p["B"])
    yd = p["log2_c_draws"][:, None] + rb(p["B_draws"])
    q = (1 - BOOT_LEVEL) / 2
    lo, hi = np.nanquantile(yd, [q, 1 - q], axis=0)
    return pd.DataFrame({"b": bb, "lr": 2.0**y0, "lr_lo": 2.0**lo, "lr_hi": 2.0**hi, "b_simple": p["B"],
                         "log2_c": p["log2_c"]})  # fmt: skip


def _goal_frame(h: _Heat) -> pd.DataFrame:
    j, k = np.nonzero(h.goal)
    return pd.DataFrame({"b": h.bs[j], "lr": h.lrs[k]})


def _rows(ds: str, s: pd.DataFrame, rho_rows: pd.DataFrame | None, figc5: pd.DataFrame | None) -> list[dict]:
    h = _Heat(s)
    free0 = h.has0 & (h.cens0 == 0)
    free = h.has & (h.cens == 0)
    shared = _best_notes(h)
    regime = regimes(h.y0, h.draws, h.bs, free0)
    v, bnote = measured_b_simple(rho_rows, ds, _goal_frame(h))
    moves = b_simple_along_training(figc5)
    label = "best η per b"
    out = []
    if len(v):
        p = prediction(h, v)
        loo0 = loo_all(h.y0[None], h.has0[None], free0[None], h.cens0[None], h.bs, h.n, h.repl, p["shape0"])
        loo0 = {m: x[0] for m, x in loo0.items()}
        loo_b = loo_all(h.draws, h.has, free, h.cens, h.bs, h.n, h.repl, p["shape_draws"])
        what = (f"{label}, LSSR predicted from the measured ρ: log2 η* = log2 c + log2 ρ_b, ρ_b by eq. (12) at "
                f"ρ = 1/(1 + B_simple) = {1 / (1 + p['B']):.4g}, c fitted (log2 c = {p['log2_c']:.3g})")  # fmt: skip
        out.append(_row(ds, h, "LSSR predicted", loo0, loo_b, h.y0, free0, regime, [bnote, moves, *shared],
                        label + " (LSSR predicted from the measured ρ)", what))  # fmt: skip
    else:
        r = missing(C5, bnote)
        r["subject"] = f"{ds} (n={h.n})"
        r["statistic"] = (f"LOO RMSE_LSSR_predicted − min(LOO RMSE of LSR, SRSR, constant η, power law) [log2 η], "
                          f"{label} (LSSR predicted from the measured ρ)")  # fmt: skip
        out.append(r)
    loo0 = {m: x[0] for m, x in loo_all(h.y0[None], h.has0[None], free0[None], h.cens0[None], h.bs, h.n,
                                        h.repl).items()}  # fmt: skip
    loo_b = loo_all(h.draws, h.has, free, h.cens, h.bs, h.n, h.repl)
    out.append(_row(ds, h, "LSSR", loo0, loo_b, h.y0, free0, regime, [_fitted_note(h, free0), *shared, moves],
                    label + " (LSSR with a fitted ρ)", f"{label}, LSSR with c and ρ fitted"))  # fmt: skip
    # the largest stable η per b, on the grid
    y0, has0, c0, y, has, c = h.stable()
    f0, f = has0 & (c0 == 0), has & (c == 0)
    y0 = np.where(has0, y0, np.nan)
    loo0 = {m: x[0] for m, x in loo_all(y0[None], has0[None], f0[None], c0[None], h.bs, h.n, h.repl).items()}
    loo_b = loo_all(y, has, f, c, h.bs, h.n, h.repl)
    edge = ", ".join(f"b={int(b)} ({'low' if cc < 0 else 'high'})" for b, cc, ok in zip(h.bs, c0, has0) if ok and cc)
    lab = "largest stable η per b"
    out.append(_row(ds, h, "LSSR", loo0, loo_b, y0, f0, regimes(y0, y, h.bs, f0),
                    [f"at the edge of the η grid (bounds only): {edge}" if edge else ""], lab,
                    f"{lab}: the largest η whose cell and every smaller η's cell did not diverge"))  # fmt: skip
    return out


def _seeds(fig5: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows; a table written before they existed gives its cells as one seed."""
    if "seed" in fig5.columns and (fig5["kind"] == "seed").any():
        return fig5[fig5["kind"] == "seed"]
    c = fig5[fig5["kind"] == "cell"].copy()
    c["seed"] = 0
    return c


def claim_c5(
    fig5: pd.DataFrame | None, fig5_rho: pd.DataFrame | None = None, figC5: pd.DataFrame | None = None
) -> list[dict]:
    """C5 per data set of the Figure 5 table: LSSR predicted from the measured ρ (``fig5_rho``), LSSR with a
    fitted ρ, and the largest stable η; ``figC5`` adds how much B_simple moves along training to the notes."""
    if fig5 is None:
        return [missing(C5, "table fig5 not given")]
    seeds = _seeds(fig5)
    if seeds.empty:
        return [missing(C5, "no heatmap cells in the fig5 table")]
    seeds = seeds.assign(diverged=seeds["diverged"].astype(bool))
    return [r for ds, s in seeds.groupby("dataset", sort=True) for r in _rows(str(ds), s, fig5_rho, figC5)]
