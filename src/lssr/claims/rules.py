"""C5 (Figure 5, §5.2): LSSR predicts the best η per b out of sample better than LSR, SRSR and a constant η.

Two rows per data set: the best η per b (argmax of the mean test accuracy over seeds) and, as its own row,
the largest stable η per b (the largest η below which no cell diverged), the sharper signal where the
accuracy is flat across the ridge. The statistic is the leave-one-out RMSE over batch sizes (log2 η units):
each b's η is predicted by each rule fitted to the other b's, so LSSR's second parameter (ρ) buys it nothing
in sample. The baselines are LSR (η = c·b), SRSR (η = c·√b) and a constant η (LSSR's saturated limit), so
that a flat best η does not count for LSSR.

A value at the edge of the probed η range of its b only bounds the optimum (``censored``, :mod:`lssr.tables.fig5`):
it is left out of every fit, and a rule's prediction for it counts as an error only on the side the bound rules
out. The uncertainty is a percentile bootstrap that resamples each cell's seeds independently
(:func:`lssr.tables.fig5.resample_weights`). The verdict:

- ``fail`` when the whole interval of LOO RMSE_LSSR − min(baselines) is above :data:`C5_TIE` (a tie);
- ``pass`` when it is below −:data:`C5_TIE` and the data show both regimes: the knee b ≈ 1/ρ of the fitted
  LSSR has at least :data:`C5_MIN_B_REGIME` batch sizes on each side;
- ``inconclusive`` otherwise, saying "only linear" / "only saturated" when the knee is not inside the data;
- ``not-enough-data`` below :data:`C5_MIN_SEEDS` seeds per cell or :data:`MIN_B_FIT` uncensored batch sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import scaling
from ..tables.fig5 import (
    BOOT_LEVEL,
    BOOT_SEED,
    N_BOOT,
    best_lr_index,
    censored,
    fit_scaling_rules,
    largest_stable_index,
    resample_weights,
    seed_cube,
)
from .common import MIN_B_FIT, missing, row, statement

C5 = statement(
    "C5",
    "Fig. 5 right, §5.2",
    "LSSR: the best η per b follows c·ρ_b (eq. 12), linear for small b and saturated for large b, more closely "
    "than LSR (c·b), SRSR (c·√b) or a constant η, judged out of sample (leave one batch size out)",
)

#: "It does not follow either LSR or SRSR, but LSSR" (Fig. 5): LSSR's out-of-sample error below the best of
#: LSR, SRSR and a constant η, i.e. the difference below 0 over the whole bootstrap interval.
C5_MAX_DIFF = 0.0
#: ... by more than a tie: differences within ±0.1 log2 η (a tenth of a factor 2) do not decide between rules
#: (LSSR nests LSR as ρ → 0 and the constant as ρ → 1, so on such data they tie up to the fit's precision).
C5_TIE = 0.1
#: A seed-to-seed uncertainty from resampling each cell's seeds needs at least three seeds per cell.
C5_MIN_SEEDS = 3
#: "the optimal learning rate is almost linear when b is small, but it saturates when b is large": each regime
#: seen at two probed batch sizes at least, on its side of the knee b = 1/ρ of the fitted LSSR.
C5_MIN_B_REGIME = 2
#: The baselines LSSR must beat.
BASELINES = ("LSR", "SRSR", "constant")


def _fits(b: np.ndarray, lr: np.ndarray, n: int, repl: bool) -> dict[str, dict]:
    """LSSR, LSR, SRSR (:func:`lssr.tables.fig5.fit_scaling_rules`) and the constant η on (b, η)."""
    fits = fit_scaling_rules(b, lr, n, repl)
    if len(b) >= 1:
        f = scaling.fit_constant(b, lr)
        fits["constant"] = {"log2_c": math.log2(f.params["c"]), "rmse_log2": f.rmse_log2, "predict": f.predict}
    return fits


def loo_rmse(b: np.ndarray, lr: np.ndarray, n: int, repl: bool, cens: np.ndarray | None = None) -> dict[str, float]:
    """Leave-one-out RMSE (log2 η) of each rule: every b's η predicted by the fit to the other uncensored b's.
    A censored ``high`` value (the optimum is at least it) counts only a prediction below it, ``low`` only one
    above it."""
    cens = np.full(len(b), "", dtype=object) if cens is None else np.asarray(cens, dtype=object)
    free = cens == ""
    errs: dict[str, list[float]] = {}
    for i in range(len(b)):
        keep = free & (np.arange(len(b)) != i)
        for m, f in _fits(b[keep], lr[keep], n, repl).items():
            e = float(np.log2(f["predict"](b[i : i + 1])[0]) - np.log2(lr[i]))
            e = min(e, 0.0) if cens[i] == "high" else max(e, 0.0) if cens[i] == "low" else e
            errs.setdefault(m, []).append(e)
    return {m: float(np.sqrt(np.mean(np.square(e)))) for m, e in errs.items() if len(e) == len(b)}


def _diff(b, lr, cens, n, repl, cache: dict) -> float:
    """LOO RMSE of LSSR minus the smallest of the baselines' (NaN below MIN_B_FIT uncensored batch sizes)."""
    key = (tuple(b), tuple(lr), tuple(cens))
    if key not in cache:
        ok = int(np.sum(np.asarray(cens) == "")) >= MIN_B_FIT
        loo = loo_rmse(b, lr, n, repl, cens) if ok else {}
        ok = ok and all(m in loo for m in ("LSSR", *BASELINES))
        cache[key] = (loo["LSSR"] - min(loo[m] for m in BASELINES)) if ok else np.nan
    return cache[key]


def _pick(which: str, acc, div, present, weights) -> np.ndarray:
    """Per b, the η index of ``which`` (best / largest stable) under a resample's weights."""
    if which == "best":
        return best_lr_index(acc, div, present, weights)
    return largest_stable_index(div, present, weights)


def _regimes(b: np.ndarray, cens: np.ndarray, rho: float) -> tuple[str, int, int]:
    """Which regimes the uncensored b's show about the knee b = 1/ρ: ``both``, ``only linear``, ``only saturated``."""
    free = b[cens == ""]
    knee = 1.0 / rho if rho > 0 else np.inf
    below, above = int(np.sum(free < knee)), int(np.sum(free > knee))
    if below >= C5_MIN_B_REGIME and above >= C5_MIN_B_REGIME:
        return "both", below, above
    return ("only saturated" if below < C5_MIN_B_REGIME else "only linear"), below, above


def _row(ds: str, s: pd.DataFrame, which: str) -> dict:
    """The C5 row of one data set's seed rows ``s`` for the best (``which`` = "best") or the largest stable η per b."""
    n, repl = int(s["n"].iloc[0]), bool(s["replacement"].iloc[0])
    bs, lrs, acc, div, present = seed_cube(s)
    seeds_per_cell = int(present.sum(axis=0)[present.any(axis=0)].min()) if present.any() else 0
    k = _pick(which, acc, div, present, np.ones(present.shape[0]))
    has = k >= 0
    b, lr = bs[has].astype(float), lrs[k[has]].astype(float)
    cens = censored(k, present)[has]
    free = cens == ""
    cache: dict = {}
    diff = _diff(b, lr, cens, n, repl, cache)
    rng = np.random.default_rng(BOOT_SEED)
    boots = []
    for _ in range(N_BOOT if seeds_per_cell >= C5_MIN_SEEDS and np.isfinite(diff) else 0):
        kk = _pick(which, acc, div, present, resample_weights(present, rng))
        h = kk >= 0
        boots.append(_diff(bs[h].astype(float), lrs[kk[h]].astype(float), censored(kk, present)[h], n, repl, cache))
    boots = np.array(boots, dtype=float)
    q = (1 - BOOT_LEVEL) / 2
    lo = hi = np.nan
    if len(boots):
        # a resample without enough uncensored b's has no difference; more of them than the interval's tail
        # leaves out make it unbounded
        ok = np.isfinite(boots)
        lo, hi = np.quantile(boots[ok], [q, 1 - q]) if ok.mean() >= 1 - q else (-np.inf, np.inf)
    fits = _fits(b[free], lr[free], n, repl)
    rho = fits["LSSR"]["rho"] if "LSSR" in fits else np.nan
    regime, below, above = _regimes(b, cens, rho) if np.isfinite(rho) else ("unknown", 0, 0)
    why = ""
    if seeds_per_cell < C5_MIN_SEEDS:
        verdict, why = "not-enough-data", f"{seeds_per_cell} seed(s) in some cell (need {C5_MIN_SEEDS})"
    elif not np.isfinite(diff):
        verdict, why = "not-enough-data", f"{int(free.sum())} uncensored batch sizes (need {MIN_B_FIT})"
    elif lo > C5_MAX_DIFF + C5_TIE:
        verdict = "fail"
    elif hi < C5_MAX_DIFF - C5_TIE and regime == "both":
        verdict = "pass"
    else:
        verdict = "inconclusive"
        why = f"the interval reaches ±{C5_TIE:g} of 0"
        if regime != "both":
            why = (f"{regime}: the knee b = 1/ρ = {1 / rho:.3g} has {below} batch size(s) below and {above} "
                   f"above (need {C5_MIN_B_REGIME} each)")  # fmt: skip
    loo = loo_rmse(b, lr, n, repl, cens) if int(free.sum()) >= MIN_B_FIT else {}
    label = "best η per b" if which == "best" else "largest stable η per b"
    edge = ", ".join(f"b={int(bb)} ({c})" for bb, c in zip(b, cens) if c)
    notes = "; ".join(x for x in (
        why,
        f"{label}: " + ("argmax of the mean test accuracy over seeds (non-diverged cells)" if which == "best"
                        else "the largest η whose cell and every smaller η's cell did not diverge"),
        ("leave-one-out RMSE: " + ", ".join(f"{m} {v:.3g}" for m, v in loo.items())) if loo else "",
        f"{BOOT_LEVEL:.0%} bootstrap interval (each cell's seeds resampled) [{lo:.3g}, {hi:.3g}] ({N_BOOT} resamples, "
        f"seed {BOOT_SEED})" if len(boots) else "",
        f"fitted ρ = {rho:.4g} (log2 {math.log2(rho):.2f}), knee b = 1/ρ = {1 / rho:.3g}: {regime}"
        if np.isfinite(rho) else "",
        f"at the edge of the η grid (censored, bounds only): {edge}" if edge else "",
        f"{seeds_per_cell} seed(s) per cell at least",
    ) if x)  # fmt: skip
    stat = f"LOO RMSE_LSSR − min(LOO RMSE of LSR, SRSR, constant η) [log2 η], {label}"
    return row(C5, f"{ds} (n={n})", stat, diff, "<", C5_MAX_DIFF, len(b), MIN_B_FIT,
               estimate=loo.get("LSSR", np.nan), target=min((loo[m] for m in BASELINES if m in loo), default=np.nan),
               window=f"{len(b)} batch sizes {int(b.min()) if len(b) else 0}-{int(b.max()) if len(b) else 0}, "
               "leave one b out", notes=notes, verdict=verdict, ci=(lo, hi))  # fmt: skip


def _seeds(fig5: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows; a table written before they existed gives its cells as one seed."""
    if "seed" in fig5.columns and (fig5["kind"] == "seed").any():
        return fig5[fig5["kind"] == "seed"]
    c = fig5[fig5["kind"] == "cell"].copy()
    c["seed"] = 0
    return c


def claim_c5(fig5: pd.DataFrame | None) -> list[dict]:
    """C5 per data set of the Figure 5 table: one row for the best η per b, one for the largest stable η."""
    if fig5 is None:
        return [missing(C5, "table fig5 not given")]
    seeds = _seeds(fig5)
    if seeds.empty:
        return [missing(C5, "no heatmap cells in the fig5 table")]
    seeds = seeds.assign(diverged=seeds["diverged"].astype(bool))
    return [_row(ds, s, which) for ds, s in seeds.groupby("dataset", sort=True) for which in ("best", "stable")]
