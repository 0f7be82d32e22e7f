"""Claims on the loss change and the edge of stability: C1 (Figure 1, eqs. 6/9), C2 (Figure 4(a)-(c),
§5.1) and C6 (Figure 2, non-quadraticity)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import (
    BOOT_SEED,
    CI_LEVEL,
    MIN_POINTS,
    MIN_RELIABILITY,
    finite,
    interval_verdict,
    line_fit,
    median,
    missing,
    row,
    statement,
    subject,
)

C1 = statement(
    "C1",
    "Fig. 1, eqs. (6)/(9)",
    "in the early phase the normalised loss change is linear in tr(HS_b)/tr(S_n) with slope η²/2 and x-intercept 2/η",
)
C2 = statement(
    "C2",
    "Fig. 4(a)-(c), §5.1",
    "edge of stability (GD): after ‖H‖_{S_n} first reaches 2/η it oscillates around 2/η while ‖H‖ hovers "
    "above it, so ‖H‖_{S_n} marks the edge more tightly than ‖H‖",
)
C6 = statement(
    "C6",
    "Fig. 2, §4.1",
    "after the iterate enters the edge of stability the normalised loss change has a gentler slope "
    "than η²/2 against tr(HS_b)/tr(S_n), especially in the unstable regime",
)

#: eqs. (6)/(9) predict the slope η²/2 and the x-intercept 2/η up to ε (the cubic remainder): the fitted values
#: may be 20% off. Pass when the whole interval of slope/(η²/2) (of x-intercept/(2/η)) lies in [0.8, 1.2], fail
#: when it lies wholly outside, else inconclusive.
C1_TOL = 0.20
#: "‖H‖_{S_n} oscillates around 2/η" (Fig. 4): the median over the window within 15% of 2/η.
EDGE_TOL = 0.15
#: "‖H‖ hovers above 2/η" (Fig. 4, after Cohen et al.): its median over the window above 2/η.
C2_MIN_TOP = 1.0
#: "a more gentle slope than η²/2" (Fig. 2): the whole interval of the fitted slope after the edge below the
#: quadratic one (pass); the whole interval at or above it: fail; else inconclusive.
C6_MAX_SLOPE_RATIO = 1.0
#: ... and gentler than the same run's own early slope (C1's fit on its early phase, the locally quadratic regime):
#: the whole interval of (slope after − early slope)/(η²/2) below 0 (pass), at or above it (fail), else inconclusive;
#: so that a run whose slope is 0.85 η²/2 before and after the edge does not count as gentler after it.
C6_MAX_SLOPE_DIFF = 0.0


def _fit_notes(fit: dict, has_se: bool) -> str:
    """How the line was fitted: the x-noise correction and its reliability."""
    if not has_se:
        return "no standard errors of x recorded: least squares, no correction for noise in x"
    lam = fit["reliability"]
    txt = f"errors-in-variables fit, reliability of x {lam:.3g}"
    if lam < MIN_RELIABILITY:
        txt += f" < {MIN_RELIABILITY:g}: noise in x could make the slope, no interval"
    return txt


def _abs_dev(lo: float, hi: float) -> tuple[float, float]:
    """The interval of |r − 1| for r in [lo, hi] (NaN when either end is undefined)."""
    if np.isnan(lo) or np.isnan(hi):
        return np.nan, np.nan
    a, b = abs(lo - 1), abs(hi - 1)
    return (0.0, max(a, b)) if lo <= 1 <= hi else (min(a, b), max(a, b))


def _x_se(g: pd.DataFrame):
    """The standard errors of the instability ratio; None when the table has none (not recorded by the probe)."""
    if "instability_ratio_se" not in g.columns or not g["instability_ratio_se"].notna().any():
        return None
    return g["instability_ratio_se"]


def claim_c1(fig1: pd.DataFrame | None) -> list[dict]:
    """C1 per run: least-squares line of the normalised loss change on tr(HS_b)/tr(S_n), early phase."""
    if fig1 is None:
        return [missing(C1, "table fig1 not given")]
    early = fig1[fig1["phase"] == "early"] if "phase" in fig1.columns else fig1
    if early.empty:
        return [missing(C1, "no early-phase points in the fig1 table")]
    rows = []
    for run, g in early.groupby("run", sort=True):
        g = g[np.isfinite(g["instability_ratio"]) & np.isfinite(g["norm_change"])]
        first = g.iloc[0] if len(g) else early[early["run"] == run].iloc[0]
        eta = float(first["lr"])
        slope_t, xint_t = eta**2 / 2, 2 / eta
        se = _x_se(g)
        fit = line_fit(g["instability_ratio"], g["norm_change"], se)
        n, distinct = len(g), g["instability_ratio"].nunique()
        npts = n if distinct >= 2 else min(n, 1)
        window = f"early phase, steps {int(g['step'].min())}-{int(g['step'].max())}" if n else "early phase (empty)"
        how = _fit_notes(fit, se is not None)
        for stat, est, ci, tgt, name in (
            ("|slope/(η²/2) − 1|", fit["slope"], fit["slope_ci"], slope_t, "slope"),
            ("|x-intercept/(2/η) − 1|", fit["x_intercept"], fit["x_intercept_ci"], xint_t, "x-intercept"),
        ):
            lo, hi = ci[0] / tgt, ci[1] / tgt
            dev = _abs_dev(lo, hi)
            rows.append(
                row(C1, subject(first), stat, abs(est / tgt - 1), "<=", C1_TOL, npts, MIN_POINTS,
                    estimate=est, target=tgt, window=window, ci=dev, verdict=interval_verdict(*dev, "<=", C1_TOL),
                    notes=f"fitted {name} {est:.4g} vs {'η²/2' if name == 'slope' else '2/η'} = {tgt:.4g}; "
                    f"{CI_LEVEL:.0%} interval of {name}/target [{lo:.3g}, {hi:.3g}] (pass: inside "
                    f"[{1 - C1_TOL:g}, {1 + C1_TOL:g}]); {how}")
            )  # fmt: skip
    return rows


def log_distance(v: np.ndarray, two: float) -> float:
    """median |log(v/(2/η))| over the finite v; a v ≤ 0 is infinitely far from 2/η (not dropped)."""
    v = finite(v)
    if not len(v):
        return np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.median(np.where(v > 0, np.abs(np.log(np.where(v > 0, v, 1.0) / two)), np.inf)))


def _c2_run(g: pd.DataFrame) -> list[dict]:
    """C2 rows of one GD run: ‖H‖_{S_n} around 2/η, ‖H‖ above it, and the tighter relation."""
    first = g.iloc[0]
    two = float(first["two_over_eta"])
    w = g[g["in_window"].astype(bool)]
    ias = finite(w.loc[w["quantity"] == "ias_n", "value"])
    top = finite(w.loc[w["quantity"] == "top_eig", "value"])
    if len(w):
        window = f"steps {int(first['window_start'])}-{int(first['window_end'])}: {first['window_rule']}"
    else:
        window = f"empty: ‖H‖_{{S_n}} never reached 2/η ({first['window_rule']})"
    r_ias, r_top = median(ias) / two, median(top) / two
    d_ias, d_top = log_distance(ias, two), log_distance(top, two)
    subj = subject(first)
    return [
        row(C2, subj, "|median(‖H‖_{S_n})·η/2 − 1|", abs(r_ias - 1), "<=", EDGE_TOL, len(ias), MIN_POINTS,
            estimate=r_ias, target=1.0, window=window, notes=f"median ‖H‖_{{S_n}} = {r_ias:.3g} × 2/η"),
        row(C2, subj, "median(‖H‖)·η/2", r_top, ">", C2_MIN_TOP, len(top), MIN_POINTS,
            estimate=r_top, target=1.0, window=window, notes=f"median ‖H‖ = {r_top:.3g} × 2/η"),
        row(C2, subj, "median|log(η‖H‖_{S_n}/2)| vs median|log(η‖H‖/2)|", d_ias, "<", d_top,
            min(len(ias), len(top)), MIN_POINTS, estimate=d_ias, target=d_top, window=window,
            notes="§5.1 'IIR provides a tighter relation': threshold = the same statistic for ‖H‖; a value ≤ 0 "
            "counts as infinitely far from 2/η for either quantity"),
    ]  # fmt: skip


def claim_c2(fig4: pd.DataFrame | None) -> list[dict]:
    """C2 per GD run of the Figure 4 table, inside the table's window."""
    if fig4 is None:
        return [missing(C2, "table fig4 not given")]
    gd = fig4[fig4["optimizer"] == "GD"]
    if gd.empty:
        return [missing(C2, "no GD runs in the fig4 table")]
    return [r for _, g in gd.groupby("run", sort=True) for r in _c2_run(g)]


def unstable_fits(x, y, x_se, two: float) -> tuple[dict, dict]:
    """(corrected, naive): the slope of y on x over the unstable regime (measured x > 2/η), fitted with the
    errors-in-variables correction of :func:`line_fit` and by plain least squares.

    Selecting on a noisy x truncates its noise, so neither is unbiased: least squares on the selected points is
    flattened by the noise (biased towards 0), while the correction computed from the selected points' own spread
    over-corrects (biased away from 0). The two bracket the slope, and C6 decides on their union: gentler only when
    the corrected slope's interval is, steeper only when the naive one is. Without standard errors of x both are
    least squares."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sel = np.isfinite(x) & (x > two)
    se = None if x_se is None else np.asarray(x_se, dtype=float)[sel]
    corrected = line_fit(x[sel], y[sel], se)
    naive = line_fit(x[sel], y[sel], None) if se is not None else corrected
    return corrected, naive


def _quantiles(d: np.ndarray) -> tuple[float, float]:
    """The :data:`CI_LEVEL` percentile interval of bootstrap draws, NaN draws counted as +inf."""
    d = np.where(np.isnan(d), np.inf, d)
    q = [(1 - CI_LEVEL) / 2, 1 - (1 - CI_LEVEL) / 2]
    return tuple(float(v) for v in np.quantile(d, q, method="inverted_cdf"))


def _diff_interval(after: dict, early: dict, ref: float) -> tuple[float, float]:
    """The :data:`CI_LEVEL` interval of (slope after − early slope)/ref from the two fits' independent bootstrap
    draws; (−inf, inf) when either fit has no interval (noise in x too large), NaN when either has no slope."""
    if not (np.isfinite(after["slope"]) and np.isfinite(early["slope"])):
        return np.nan, np.nan
    if not (np.all(np.isfinite(after["slope_ci"])) and np.all(np.isfinite(early["slope_ci"]))):
        return -np.inf, np.inf
    return _quantiles((np.asarray(after["slope_boot"]) - np.asarray(early["slope_boot"])) / ref)


def _union(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """[lower end of a, upper end of b] (the naive fit's lower end, the corrected fit's upper end)."""
    return (a[0], b[1]) if not (np.isnan(a[0]) or np.isnan(b[1])) else (np.nan, np.nan)


def claim_c6(fig2: pd.DataFrame | None) -> list[dict]:
    """C6 per run of the Figure 2 table: slope of the normalised loss change on the instability ratio after the edge
    (phase ``eos``), over all of it and over its unstable regime (ratio > 2/η, selected by calibrated x), against
    η²/2 and against the same run's early slope (phase ``early``, C1's fit)."""
    if fig2 is None:
        return [missing(C6, "table fig2 not given")]
    if fig2.empty or "phase" not in fig2.columns:
        return [missing(C6, "no steps in the fig2 table")]
    rows = []
    for run, g in fig2.groupby("run", sort=True):
        first = g.iloc[0]
        eta, two = float(first["lr"]), float(first["two_over_eta"])
        ref = eta**2 / 2
        eos, early = g[g["phase"] == "eos"], g[g["phase"] == "early"]
        window = f"after the edge (phase eos), steps {int(eos['step'].min())}-{int(eos['step'].max())}" if len(eos) \
            else "after the edge: empty (the run never entered the edge of stability)"  # fmt: skip
        se_e = _x_se(eos)
        fit_all = line_fit(eos["instability_ratio"], eos["norm_change"], se_e)
        fit_uns, fit_naive = unstable_fits(eos["instability_ratio"], eos["norm_change"], se_e, two)
        se_0 = _x_se(early)
        # an independent generator for the early fit, so that the difference's draws are independent
        fit_0 = line_fit(early["instability_ratio"], early["norm_change"], se_0, seed=BOOT_SEED + 1)
        early_txt = (f"early slope {fit_0['slope']:.4g} = {fit_0['slope'] / ref:.3g} η²/2 over {fit_0['n']} "
                     "early-phase steps (C1's fit)")  # fmt: skip
        for part, fit, naive in (("", fit_all, fit_all), (" (unstable regime)", fit_uns, fit_naive)):
            s, n = fit["slope"], fit["n"]
            fit_how = _fit_notes(fit, se_e is not None)
            lo, hi = _union(naive["slope_ci"], fit["slope_ci"])
            lo, hi = lo / ref, hi / ref
            d_lo, d_hi = _union(_diff_interval(naive, fit_0, ref), _diff_interval(fit, fit_0, ref))
            if naive is not fit:
                fit_how += (f"; selected on the measured x > 2/η, so the interval runs from the least-squares fit's "
                            f"lower end (slope {naive['slope'] / ref:.3g} η²/2, flattened by the noise) to the "
                            f"corrected fit's upper end (over-corrected by the selection)")  # fmt: skip
            rows.append(
                row(C6, subject(first), f"slope/(η²/2) after the edge{part}", s / ref, "<", C6_MAX_SLOPE_RATIO,
                    n, MIN_POINTS, estimate=s, target=ref, window=window + part, ci=(lo, hi),
                    verdict=interval_verdict(lo, hi, "<", C6_MAX_SLOPE_RATIO),
                    notes=f"fitted slope {s:.4g} vs η²/2 = {ref:.4g}; {CI_LEVEL:.0%} interval of slope/(η²/2) "
                    f"[{lo:.3g}, {hi:.3g}]; {fit_how}")
            )  # fmt: skip
            diff = (s - fit_0["slope"]) / ref
            rows.append(
                row(C6, subject(first), f"(slope after the edge{part} − early slope)/(η²/2)", diff, "<",
                    C6_MAX_SLOPE_DIFF, min(n, fit_0["n"]), MIN_POINTS, estimate=s, target=fit_0["slope"],
                    window=f"{window}{part}; early phase, {len(early)} steps", ci=(d_lo, d_hi),
                    verdict=interval_verdict(d_lo, d_hi, "<", C6_MAX_SLOPE_DIFF),
                    notes=f"{early_txt}; {CI_LEVEL:.0%} interval of the difference [{d_lo:.3g}, {d_hi:.3g}] (the two "
                    f"fits bootstrapped independently); {fit_how}")
            )  # fmt: skip
    return rows
