"""C5 (Figure 5, §5.2): LSSR predicts the best η per b out of sample better than LSR and SRSR.

The statistic is the leave-one-out RMSE over batch sizes (log2 η units): each b's best η is predicted by
the rule fitted to the other b's, so LSSR's second parameter (ρ) buys it nothing in sample. Its
uncertainty is a percentile bootstrap over seeds (the Figure-5 table's ``seed`` rows): each resample
recomputes the best η per b and the difference of the rules' leave-one-out RMSEs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..tables.fig5 import BOOT_LEVEL, BOOT_SEED, N_BOOT, best_lr_index, fit_scaling_rules, seed_cube
from .common import MIN_B_FIT, missing, row, statement

C5 = statement(
    "C5",
    "Fig. 5 right, §5.2",
    "LSSR: the best η per b follows c·ρ_b (eq. 12) more closely than LSR (c·b) and SRSR (c·√b), "
    "judged out of sample (leave one batch size out)",
)

#: "It does not follow either LSR or SRSR, but LSSR" (Fig. 5): LSSR's out-of-sample error below the better of
#: the other two, i.e. the difference below 0 ...
C5_MAX_DIFF = 0.0
#: ... with the whole bootstrap interval over seeds below 0; a seed's uncertainty needs at least two seeds.
C5_MIN_SEEDS = 2


def loo_rmse(b: np.ndarray, lr: np.ndarray, n: int, repl: bool) -> dict[str, float]:
    """Leave-one-out RMSE (log2 η) of each rule: every b's best η predicted by the fit to the other b's."""
    errs: dict[str, list[float]] = {}
    for i in range(len(b)):
        keep = np.arange(len(b)) != i
        for m, f in fit_scaling_rules(b[keep], lr[keep], n, repl).items():
            errs.setdefault(m, []).append(float(np.log2(f["predict"](b[i : i + 1])[0]) - np.log2(lr[i])))
    return {m: float(np.sqrt(np.mean(np.square(e)))) for m, e in errs.items() if len(e) == len(b)}


def _diff(b: np.ndarray, lr: np.ndarray, n: int, repl: bool, cache: dict) -> float:
    """LOO RMSE of LSSR minus the smaller LOO RMSE of LSR and SRSR (NaN below MIN_B_FIT batch sizes)."""
    key = (tuple(b), tuple(lr))
    if key not in cache:
        loo = loo_rmse(b, lr, n, repl) if len(b) >= MIN_B_FIT else {}
        ok = all(m in loo for m in ("LSSR", "LSR", "SRSR"))
        cache[key] = (loo["LSSR"] - min(loo["LSR"], loo["SRSR"])) if ok else np.nan
    return cache[key]


def _seeds(fig5: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows; a table written before they existed gives its cells as one seed."""
    if "seed" in fig5.columns and (fig5["kind"] == "seed").any():
        return fig5[fig5["kind"] == "seed"]
    c = fig5[fig5["kind"] == "cell"].copy()
    c["seed"] = 0
    return c


def _dataset(ds: str, s: pd.DataFrame) -> dict:
    n, repl = int(s["n"].iloc[0]), bool(s["replacement"].iloc[0])
    bs, lrs, acc, div, present = seed_cube(s)
    n_seeds = acc.shape[0]
    best = best_lr_index(acc, div, present, np.ones(n_seeds))
    b, lr = bs[best >= 0].astype(float), lrs[best[best >= 0]].astype(float)
    cache: dict = {}
    diff = _diff(b, lr, n, repl, cache)
    rng = np.random.default_rng(BOOT_SEED)
    boots = []
    for _ in range(N_BOOT if n_seeds >= C5_MIN_SEEDS else 0):
        k = best_lr_index(acc, div, present, np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds) * 1.0)
        boots.append(_diff(bs[k >= 0].astype(float), lrs[k[k >= 0]].astype(float), n, repl, cache))
    boots = np.array([x for x in boots if np.isfinite(x)])
    q = (1 - BOOT_LEVEL) / 2
    lo, hi = np.quantile(boots, [q, 1 - q]) if len(boots) else (np.nan, np.nan)
    verdict = None
    if n_seeds < C5_MIN_SEEDS or not len(boots):
        verdict = "not-enough-data"
    elif hi >= C5_MAX_DIFF and lo <= C5_MAX_DIFF:
        verdict = "inconclusive"
    elif lo > C5_MAX_DIFF:
        verdict = "fail"
    loo = loo_rmse(b, lr, n, repl) if len(b) >= MIN_B_FIT else {}
    fits = fit_scaling_rules(b, lr, n, repl)
    notes = (
        f"{n_seeds} seed(s); best η per b = argmax of the mean test accuracy over seeds (non-diverged cells); "
        + "leave-one-out RMSE: " + ", ".join(f"{m} {v:.3g}" for m, v in loo.items())
        + "; in-sample RMSE: " + ", ".join(f"{m} {f['rmse_log2']:.3g}" for m, f in fits.items())
        + f"; {BOOT_LEVEL:.0%} bootstrap interval over seeds of the difference [{lo:.3g}, {hi:.3g}]"
        + f" ({N_BOOT} resamples, seed {BOOT_SEED})"
        + (f"; fitted ρ = {fits['LSSR']['rho']:.4g} (log2 {math.log2(fits['LSSR']['rho']):.2f})" if "LSSR" in fits
           else "")
    )  # fmt: skip
    if n_seeds < C5_MIN_SEEDS:
        notes += f"; an uncertainty over seeds needs at least {C5_MIN_SEEDS} seeds"
    r = row(C5, f"{ds} (n={n})", "LOO RMSE_LSSR − min(LOO RMSE_LSR, LOO RMSE_SRSR) [log2 η]", diff, "<", C5_MAX_DIFF,
            len(b), MIN_B_FIT, estimate=loo.get("LSSR", np.nan), target=min(loo.get("LSR", np.nan),
            loo.get("SRSR", np.nan)), window=f"{len(b)} batch sizes {int(b.min()) if len(b) else 0}-"
            f"{int(b.max()) if len(b) else 0}, leave one b out", notes=notes, verdict=verdict)  # fmt: skip
    return r


def claim_c5(fig5: pd.DataFrame | None) -> list[dict]:
    """C5 per data set of the Figure 5 table (verdict ``inconclusive`` when the bootstrap interval holds 0)."""
    if fig5 is None:
        return [missing(C5, "table fig5 not given")]
    seeds = _seeds(fig5)
    if seeds.empty:
        return [missing(C5, "no heatmap cells in the fig5 table")]
    seeds = seeds.assign(diverged=seeds["diverged"].astype(bool))
    return [_dataset(ds, s) for ds, s in seeds.groupby("dataset", sort=True)]
