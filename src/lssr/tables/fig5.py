"""Figure 5 table: LSSR against LSR and SRSR.

One heatmap cell per (data set, b, η) with the mean final test accuracy over seeds (diverged cells
flagged: a cell is diverged when most of its seeds diverged or none has a finite accuracy), whether it reached
the training-accuracy goal (``reached_goal``: every non-diverged seed's run stopped by its ``stop.train_acc_goal``
or ends at it, :data:`FALLBACK_GOAL` when its config names none; ``goal_step`` the last seed's step at the goal;
``train_acc_goal`` the goal), the best η per b and log-space least-squares fits of best η vs b: LSSR
η*(b) = c·ρ_b(ρ) (eq. 12, c and ρ fitted), LSR η* = c·b, SRSR η* = c·√b (c fitted); ``rmse_log2`` is the fit
error in log2 η units. The left panel's analytic curves (n = 8192, ρ = 2^-7) are normalised to ρ at b = 1. γ,
ρ_b(ρ) and the fits come from :mod:`lssr.scaling`.

A cell whose runs trained batch norm in ghost batches (the opt-in ``bn_ghost_batch``, statistics over
chunks of that many samples instead of the whole mini-batch) carries that size in ``bn_ghost_batch``
(NaN otherwise); the figure marks such cells.

Rows of kind ``seed`` keep every run's final test accuracy with its ``seed`` and ``reached_goal``, so that the
claims can resample seeds.

The best η per b (the paper trains every cell "to achieve a zero training error", §5.2; a cell short of the goal
is the paper's red, non-practical area and is never a best cell; a b none of whose cells reached it has no best η):

- the best cell (``is_best``) is the goal-reaching, non-diverged cell of highest mean test accuracy (ties to the
  smaller η);
- the best η between grid points (``lr_star``) is the vertex of the parabola in log2 η through the best cell and
  its nearest probed neighbours, when both reached the goal (clipped to them), else the best cell's η
  (:func:`best_log2_lr`);
- its interval (``lr_star_lo``, ``lr_star_hi``, also ``lr_lo``, ``lr_hi``) is the hull of (a) the
  :data:`BOOT_LEVEL` percentile interval of the vertex over :data:`N_BOOT` resamples of the seeds (each cell's
  seeds drawn with replacement independently of the other cells', :func:`resample_weights`; a NumPy generator
  seeded with ``boot_seed`` = :data:`BOOT_SEED`), (b) the plateau: the contiguous goal-reaching cells around the
  best one whose mean is within :data:`PLATEAU_Z` standard errors of the best one's (a flat top over two octaves
  gives a two-octave interval, not a point), widened on each side by :data:`GRID_RESOLUTION` × the local grid
  spacing (the grid's resolution: what lies between the probed η is not seen) and clipped to the probed η range;
- ``censored`` is ``low`` / ``high`` when no goal-reaching cell was probed below / above the best one (the grid's
  edge or an under-trained neighbour): the value then only bounds the best η, and the figure marks it.

The largest stable η per b (:func:`largest_stable_index`) is the largest η below which no probed cell diverged.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import scaling
from .fig5_best import (  # noqa: F401 (re-exported: the table module is where callers look for them)
    BOOT_LEVEL,
    BOOT_SEED,
    FALLBACK_GOAL,
    GRID_RESOLUTION,
    N_BOOT,
    PLATEAU_Z,
    best_eta_intervals,
    best_log2_lr,
    best_lr_index,
    bootstrap_best,
    cell_means,
    censored,
    goal_cells,
    interval_table,
    largest_stable_index,
    reached_goal,
    resample_weights,
    seed_cube,
    vertex,
)
from .runs import Run, RunLike, load_runs

# Figure 5 left panel (the paper's values)
ANALYTIC_N = 8192
ANALYTIC_RHO = 2.0**-7
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
    "reached_goal",
    "goal_step",
    "train_acc_goal",
    "seed",
    "is_best",
    "censored",
    "lr_lo",
    "lr_hi",
    "lr_star",
    "lr_star_lo",
    "lr_star_hi",
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
        "reached_goal": bool(not diverged and ok["reached"].all()),
        "goal_step": float(ok["goal_step"].max()) if not diverged and ok["reached"].all() else np.nan,
        "train_acc_goal": g["goal"].max(),
    }


def _ghost(config: dict) -> float:
    """The run's ghost-batch size when batch norm was trained in ghost batches, else NaN."""
    g = config.get("bn_ghost_batch")
    return float(g) if g and config.get("model", {}).get("batch_norm") else np.nan


def _goal(run: Run, train_acc: float) -> tuple[float, bool, float]:
    """(goal, reached, goal step) of one run: the training-accuracy goal of its stop rule
    (:attr:`~lssr.tables.runs.Run.train_acc_goal`, else :data:`FALLBACK_GOAL`), whether it stopped by it
    (:attr:`~lssr.tables.runs.Run.reached_goal`) or ends at it, and the step it reached it (NaN if never or
    unknown)."""
    goal = run.train_acc_goal
    reached = run.reached_goal or bool(train_acc >= (goal if math.isfinite(goal) else FALLBACK_GOAL))
    return goal, reached, run.goal_step if reached else np.nan


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
        goal, reached, step = _goal(r, train)
        recs.append(
            {"dataset": r.dataset, "n": r.n, "replacement": r.replacement, "b": r.b, "lr": r.lr,
             "seed": int(r.config.get("seed", 0)), "acc": acc, "train": train, "div": div,
             "ghost": _ghost(r.config), "reached": reached and not div, "goal_step": step, "goal": goal}
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
    for _, g in out[~out["diverged"] & out["test_acc"].notna() & out["reached_goal"]].groupby(["dataset", "b"]):
        g = g.sort_values("lr", kind="stable")
        out.loc[g["test_acc"].idxmax(), "is_best"] = True
    return out


def _seed_table(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {"kind": "seed", "dataset": raw["dataset"], "n": raw["n"], "replacement": raw["replacement"], "b": raw["b"],
         "lr": raw["lr"], "seed": raw["seed"], "test_acc": raw["acc"].where(~raw["div"]),
         "train_acc": raw["train"].where(~raw["div"]),
         "status": np.where(raw["div"], "diverged", "completed"), "diverged": raw["div"],
         "reached_goal": raw["reached"], "goal_step": raw["goal_step"], "train_acc_goal": raw["goal"]}
    )  # fmt: skip


def _intervals(c: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """The best cells' best η between grid points and its interval (:func:`best_eta_intervals`): ``lr_star``,
    ``lr_lo``, ``lr_hi``, ``lr_star_lo``, ``lr_star_hi`` (the same interval), ``censored``, ``boot_seed``,
    ``n_boot``."""
    c = c.copy()
    c[["lr_lo", "lr_hi", "lr_star", "lr_star_lo", "lr_star_hi", "boot_seed", "n_boot"]] = np.nan
    c["censored"] = ""
    for ds, s in seeds.groupby("dataset", sort=True):
        for _, r in best_eta_intervals(s).iterrows():
            sel = (c["dataset"] == ds) & (c["b"] == r["b"]) & c["is_best"]
            if r["has_best"] and sel.any():
                lo, hi = 2.0 ** r["lo"], 2.0 ** r["hi"]
                c.loc[sel, ["lr_star", "lr_lo", "lr_hi", "lr_star_lo", "lr_star_hi", "boot_seed", "n_boot"]] = [
                    2.0 ** r["log2_lr"], lo, hi, lo, hi, BOOT_SEED, N_BOOT]  # fmt: skip
                c.loc[sel, "censored"] = r["censored"]
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
    fits = fit_scaling_rules(best["b"], best["lr_star"].fillna(best["lr"]), n, repl)
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
        c = _intervals(c, seeds)
        parts.append(c)
        parts.append(seeds)
        for ds, g in c.groupby("dataset", sort=True):
            parts += _fits(ds, g)
    out = pd.concat(parts, ignore_index=True).reindex(columns=COLUMNS)
    out["log2_b"] = np.log2(out["b"].astype(float))
    out["log2_lr"] = np.log2(out["lr"].astype(float))
    out["is_best"] = out["is_best"].eq(True)
    out["diverged"] = out["diverged"].eq(True)
    out["reached_goal"] = out["reached_goal"].where(out["kind"].isin(["cell", "seed"]))
    return out
