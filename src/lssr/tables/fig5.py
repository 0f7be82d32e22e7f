"""Figure 5 table: LSSR against LSR and SRSR.

One heatmap cell per (data set, b, η) with the mean final test accuracy over seeds (diverged cells
flagged: a cell is diverged when most of its seeds diverged or none has a finite accuracy), the best
η per b (highest accuracy among non-diverged cells, the smaller η on ties), and log-space
least-squares fits of best η vs b: LSSR η*(b) = c·ρ_b(ρ) (eq. 12, c and ρ fitted), LSR η* = c·b,
SRSR η* = c·√b (c fitted); ``rmse_log2`` is the fit error in log2 η units. The left panel's analytic
curves (n = 8192, ρ = 2^-7) are normalised to ρ at b = 1. γ, ρ_b(ρ) and the fits come from
:mod:`lssr.scaling`.

A cell whose runs trained batch norm in ghost batches (the opt-in ``bn_ghost_batch``, statistics over
chunks of that many samples instead of the whole mini-batch) carries that size in ``bn_ghost_batch``
(NaN otherwise); the figure marks such cells.

Rows of kind ``seed`` keep every run's final test accuracy with its ``seed``, so that the claims can
resample seeds. Each best cell carries a percentile bootstrap interval over seeds of its η
(``lr_lo``, ``lr_hi``: :data:`BOOT_LEVEL` of :data:`N_BOOT` resamples, a NumPy generator seeded with
``boot_seed`` = :data:`BOOT_SEED`). A resample draws each cell's seeds with replacement independently of the
other cells' (:func:`resample_weights`: the runs of different cells are independent), so that with three seeds
it still varies like the seeds do; its best η per b is the argmax of its cell means, computed exactly as for the
heatmap (:func:`best_lr_index`). A best η at the edge of the probed η range of its b (no η probed below it, or
none above it) only bounds the best η: ``censored`` is ``low`` / ``high`` there (the figure marks it). The
largest stable η per b (:func:`largest_stable_index`) is the largest η below which no probed cell diverged.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import scaling
from .runs import Run, RunLike, load_runs

# Figure 5 left panel (the paper's values)
ANALYTIC_N = 8192
ANALYTIC_RHO = 2.0**-7
#: The bootstrap over seeds of the best η per b: resamples, the generator's seed and the interval's level.
N_BOOT = 200
BOOT_SEED = 20230501
BOOT_LEVEL = 0.95

COLUMNS = [
    "kind",
    "dataset",
    "model",
    "n",
    "replacement",
    "b",
    "lr",
    "log2_b",
    "log2_lr",
    "test_acc",
    "train_acc",
    "status",
    "diverged",
    "n_seeds",
    "bn_ghost_batch",
    "seed",
    "is_best",
    "censored",
    "lr_lo",
    "lr_hi",
    "boot_seed",
    "n_boot",
    "value",
    "rho",
    "log2_c",
    "rmse_log2",
    "n_params",
    "n_points",
]


def fit_scaling_rules(b: Sequence[float], lr: Sequence[float], n: int, replacement: bool = False) -> dict[str, dict]:
    """Least-squares fits in log2 space of the best η per b (:mod:`lssr.scaling`).

    Returns {"LSSR": {...}, "LSR": {...}, "SRSR": {...}}, each with ``log2_c``, ``rmse_log2``,
    ``n_params`` and ``predict`` (b -> η); LSSR also has ``rho``. LSSR needs 3 points, LSR and SRSR 2;
    a rule without enough points is left out.
    """
    b = np.asarray(b, dtype=float)
    lr = np.asarray(lr, dtype=float)
    out: dict[str, dict] = {}
    if len(b) < 2:
        return out
    fits = [scaling.fit_lsr(b, lr), scaling.fit_srsr(b, lr)]
    if len(b) >= 3:
        fits.append(scaling.fit_lssr(b, lr, n, replacement))
    for f in fits:
        out[f.rule] = {
            "log2_c": math.log2(f.params["c"]),
            "rmse_log2": float(f.rmse_log2),
            "n_params": len(f.params),
            "predict": f.predict,
        }
        if "rho" in f.params:
            out[f.rule]["rho"] = float(f.params["rho"])
    return out


def _cell(ds: str, b, lr, g: pd.DataFrame) -> dict:
    """One heatmap cell from the seeds ``g`` of (data set, b, η)."""
    ok = g[~g["div"]]
    diverged = bool(g["div"].mean() > 0.5 or ok.empty)
    return {
        "kind": "cell",
        "dataset": ds,
        "n": int(g["n"].iloc[0]),
        "replacement": bool(g["replacement"].iloc[0]),
        "b": int(b),
        "lr": float(lr),
        "test_acc": float(ok["acc"].mean()) if not ok.empty else np.nan,
        "train_acc": float(ok["train"].mean()) if not ok.empty else np.nan,
        "status": "diverged" if diverged else "completed",
        "diverged": diverged,
        "n_seeds": len(g),
        "bn_ghost_batch": g["ghost"].max(),  # NaN unless batch norm was trained in ghost batches (opt-in)
    }


def _ghost(config: dict) -> float:
    """The run's ghost-batch size when batch norm was trained in ghost batches, else NaN."""
    g = config.get("bn_ghost_batch")
    return float(g) if g and config.get("model", {}).get("batch_norm") else np.nan


def seed_rows(runs: list[Run]) -> pd.DataFrame:
    """One row per run: (data set, b, η, seed), final test and training accuracy and whether it diverged."""
    recs = []
    for r in runs:
        final = r.meta.get("final") or {}
        acc = final.get("test_acc")
        acc = float(acc) if acc is not None else np.nan
        train = final.get("train_acc")
        train = float(train) if train is not None else np.nan
        div = r.status == "diverged" or not math.isfinite(acc)
        recs.append(
            {"dataset": r.dataset, "n": r.n, "replacement": r.replacement, "b": r.b, "lr": r.lr,
             "seed": int(r.config.get("seed", 0)), "acc": acc, "train": train, "div": div,
             "ghost": _ghost(r.config)}
        )  # fmt: skip
    return pd.DataFrame(recs)


def cells(runs: list[Run]) -> pd.DataFrame:
    """Heatmap cells over (data set, b, η): mean final test and training accuracy over the seeds that did not
    diverge, diverged flag, best η per b (by test accuracy)."""
    raw = seed_rows(runs)
    if raw.empty:
        return pd.DataFrame()
    out = pd.DataFrame([_cell(ds, b, lr, g) for (ds, b, lr), g in raw.groupby(["dataset", "b", "lr"], sort=True)])
    out["is_best"] = False
    for _, g in out[~out["diverged"] & out["test_acc"].notna()].groupby(["dataset", "b"]):
        g = g.sort_values("lr", kind="stable")
        out.loc[g["test_acc"].idxmax(), "is_best"] = True
    return out


def seed_cube(seeds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One data set's seed rows (columns b, lr, seed, test_acc, diverged) as arrays over (seed, b, η):
    (bs, lrs, acc, diverged, present), bs and lrs ascending."""
    bs, lrs, ss = (np.sort(pd.unique(seeds[c])) for c in ("b", "lr", "seed"))
    shape = (len(ss), len(bs), len(lrs))
    acc, div, present = np.full(shape, np.nan), np.zeros(shape, bool), np.zeros(shape, bool)
    i, j, k = (np.searchsorted(v, seeds[c].to_numpy()) for v, c in ((ss, "seed"), (bs, "b"), (lrs, "lr")))
    acc[i, j, k] = seeds["test_acc"].to_numpy(float)
    div[i, j, k] = seeds["diverged"].to_numpy(bool)
    present[i, j, k] = True
    return bs, lrs, acc, div, present


def _cell_weights(weights: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Weights per (seed, b, η): a resample's counts per seed (shape (seeds,)) or per cell (the cube's shape)."""
    w = np.asarray(weights, dtype=float)
    return (w if w.ndim == 3 else w[:, None, None]) * present


def best_lr_index(acc: np.ndarray, div: np.ndarray, present: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per b, the index of the best η (−1 if none) for seeds weighted by ``weights`` (a resample's counts, per
    seed or per cell): the cell mean over non-diverged seeds, a cell diverged when most of its seeds diverged,
    ties to the smaller η."""
    w = _cell_weights(weights, present)
    ok = w * (~div & np.isfinite(acc))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(ok * np.nan_to_num(acc), axis=0) / ok.sum(axis=0)
        frac_div = (w * div).sum(axis=0) / w.sum(axis=0)
    usable = (ok.sum(axis=0) > 0) & ~(frac_div > 0.5)
    score = np.where(usable, mean, -np.inf)
    best = np.argmax(score, axis=1)
    return np.where(np.isfinite(score.max(axis=1)), best, -1)


def largest_stable_index(div: np.ndarray, present: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per b, the index of the largest η whose cell and every probed smaller-η cell did not diverge (a cell
    diverged when most of its weighted seeds did); −1 when the smallest probed η already diverged."""
    w = _cell_weights(weights, present)
    probed = w.sum(axis=0) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        bad = probed & ((w * div).sum(axis=0) / w.sum(axis=0) > 0.5)
    first_bad = np.where(bad.any(axis=1), np.argmax(bad, axis=1), bad.shape[1])
    idx = np.arange(bad.shape[1])[None, :]
    ok = probed & (idx < first_bad[:, None])
    return np.where(ok.any(axis=1), bad.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), -1)


def censored(index: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per b, ``low`` / ``high`` when η index ``index`` is the smallest / largest probed η of that b (the value then
    only bounds the optimum), else ``""``."""
    probed = present.any(axis=0)
    lo = np.argmax(probed, axis=1)
    hi = probed.shape[1] - 1 - np.argmax(probed[:, ::-1], axis=1)
    out = np.full(len(index), "", dtype=object)
    out[(index >= 0) & (index == hi)] = "high"
    out[(index >= 0) & (index == lo)] = "low"
    return out


def resample_weights(present: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap resample's counts per (seed, b, η): each cell draws as many seeds as it has, with
    replacement, from its own seeds, independently of every other cell."""
    n_s = present.shape[0]
    k = present.sum(axis=0)
    order = np.argsort(~present, axis=0, kind="stable")  # each cell's present seeds first
    draw = np.floor(rng.random(present.shape) * np.maximum(k, 1)).astype(int)
    seed = np.take_along_axis(order, draw, axis=0)
    used = np.arange(n_s)[:, None, None] < k[None]
    w = np.zeros(present.shape)
    for s in range(n_s):
        w[s] = ((seed == s) & used).sum(axis=0)
    return w


def bootstrap_best(seeds: pd.DataFrame, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(bs, idx) with idx[k, j] the best-η index of b = bs[j] in bootstrap resample k (:func:`resample_weights`)."""
    bs, _, acc, div, present = seed_cube(seeds)
    rng = np.random.default_rng(seed)
    idx = np.empty((n_boot, len(bs)), dtype=int)
    for k in range(n_boot):
        idx[k] = best_lr_index(acc, div, present, resample_weights(present, rng))
    return bs, idx


def _seed_table(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {"kind": "seed", "dataset": raw["dataset"], "n": raw["n"], "replacement": raw["replacement"], "b": raw["b"],
         "lr": raw["lr"], "seed": raw["seed"], "test_acc": raw["acc"].where(~raw["div"]),
         "train_acc": raw["train"].where(~raw["div"]),
         "status": np.where(raw["div"], "diverged", "completed"), "diverged": raw["div"]}
    )  # fmt: skip


def _intervals(c: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """The best cells' bootstrap interval of η over seeds (``lr_lo``, ``lr_hi``, ``boot_seed``, ``n_boot``)."""
    c = c.copy()
    c[["lr_lo", "lr_hi", "boot_seed", "n_boot"]] = np.nan
    c["censored"] = ""
    for ds, s in seeds.groupby("dataset", sort=True):
        bs, idx = bootstrap_best(s)
        _, lrs, acc, div, present = seed_cube(s)
        best = best_lr_index(acc, div, present, np.ones(present.shape[0]))
        for b, flag in zip(bs, censored(best, present)):
            c.loc[(c["dataset"] == ds) & (c["b"] == b) & c["is_best"], "censored"] = flag
        q = (1 - BOOT_LEVEL) / 2
        for j, b in enumerate(bs):
            got = np.log2(lrs[idx[:, j][idx[:, j] >= 0]])
            sel = (c["dataset"] == ds) & (c["b"] == b) & c["is_best"]
            if len(got) and sel.any():
                c.loc[sel, ["lr_lo", "lr_hi"]] = 2.0 ** np.quantile(got, [q, 1 - q])
                c.loc[sel, ["boot_seed", "n_boot"]] = [BOOT_SEED, N_BOOT]
    return c


def best_lr_per_b(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The best-η cells of one data set's heatmap (columns b, lr, test_acc), sorted by b."""
    c = table[(table["kind"] == "cell") & (table["dataset"] == dataset)]
    c = c[c["is_best"].astype(bool)]
    return c[["b", "lr", "test_acc"]].sort_values("b").reset_index(drop=True)


def _analytic(n_analytic: int, rho_analytic: float) -> list[pd.DataFrame]:
    """The left panel: ρ_b (LSSR), ρ·b (LSR) and ρ·√b (SRSR) over b = 1..n."""
    parts = []
    bb = 2.0 ** np.linspace(0, math.log2(n_analytic), 8 * int(round(math.log2(n_analytic))) + 1)
    for model, v in (
        ("LSSR", scaling.rho_b(rho_analytic, n_analytic, bb, False)),
        ("LSR", rho_analytic * bb),
        ("SRSR", rho_analytic * np.sqrt(bb)),
    ):
        parts.append(
            pd.DataFrame(
                {
                    "kind": "analytic",
                    "dataset": "analytic",
                    "model": model,
                    "n": n_analytic,
                    "replacement": False,
                    "b": bb,
                    "value": v,
                    "rho": rho_analytic,
                }
            )
        )
    return parts


def _fits(ds: str, g: pd.DataFrame) -> list[pd.DataFrame]:
    """The fitted LSSR / LSR / SRSR curves of one data set's best η per b."""
    best = g[g["is_best"]].sort_values("b")
    n, repl = int(g["n"].iloc[0]), bool(g["replacement"].iloc[0])
    fits = fit_scaling_rules(best["b"], best["lr"], n, repl)
    grid = 2.0 ** np.linspace(math.log2(g["b"].min()), math.log2(g["b"].max()), 65)
    parts = []
    for model, f in fits.items():
        pred = f["predict"](grid)
        parts.append(
            pd.DataFrame(
                {
                    "kind": "fit",
                    "dataset": ds,
                    "model": model,
                    "n": n,
                    "replacement": repl,
                    "b": grid,
                    "lr": pred,
                    "value": pred,
                    "rho": f.get("rho", np.nan),
                    "log2_c": f["log2_c"],
                    "rmse_log2": f["rmse_log2"],
                    "n_params": f["n_params"],
                    "n_points": len(best),
                }
            )
        )
    return parts


def build(
    runs: Iterable[RunLike], n_analytic: int = ANALYTIC_N, rho_analytic: float = ANALYTIC_RHO, **_options
) -> pd.DataFrame:
    """Figure 5: analytic LSSR/LSR/SRSR curves (left) and, per data set, heatmap cells over (b, η)
    with the best η per b and the fitted LSSR/LSR/SRSR curves (right)."""
    parts = _analytic(n_analytic, rho_analytic)
    loaded = load_runs(runs)
    c = cells(loaded)
    if len(c):
        seeds = _seed_table(seed_rows(loaded))
        parts.append(_intervals(c, seeds))
        parts.append(seeds)
        for ds, g in c.groupby("dataset", sort=True):
            parts += _fits(ds, g)
    out = pd.concat(parts, ignore_index=True).reindex(columns=COLUMNS)
    out["log2_b"] = np.log2(out["b"].astype(float))
    out["log2_lr"] = np.log2(out["lr"].astype(float))
    out["is_best"] = out["is_best"].eq(True)
    out["diverged"] = out["diverged"].eq(True)
    return out
