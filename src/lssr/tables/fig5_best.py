"""Figure 5's best η per b, located between grid points, with an interval: the heatmap as a seed cube, the cells
that reached the training-accuracy goal, the parabola vertex in log2 η through the best goal-reaching cell and its
probed neighbours, and the interval that joins the seed bootstrap of the vertex, the plateau of cells within seed
noise of the best and the grid's resolution (:data:`GRID_RESOLUTION`). :mod:`lssr.tables.fig5` builds the table
from them; the claim C5 resamples them (:func:`resample_weights`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The bootstrap over seeds of the best η per b: resamples, the generator's seed and the interval's level.
N_BOOT = 200
BOOT_SEED = 20230501
BOOT_LEVEL = 0.95
#: "a zero training error" (§5.2) for a run whose config names no ``stop.train_acc_goal`` (and for a table written
#: before ``reached_goal`` existed): its final training accuracy at least this counts as the goal reached.
FALLBACK_GOAL = 0.999
#: The resolution of the interpolated best η: the vertex of a parabola through three cells is trusted to within
#: this fraction of the local grid spacing (a quarter: the vertex error of a parabola through the samples of a
#: smooth concave top, whose shape between the samples the grid cannot see), added on each side of the interval.
GRID_RESOLUTION = 0.25
#: A cell whose mean accuracy is within this many standard errors of the best cell's (the difference of the two
#: means, each seed-to-seed se/√seeds) is on the plateau of the top: the interval covers every such neighbour.
PLATEAU_Z = 1.96


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


def reached_goal(seeds: pd.DataFrame) -> tuple[pd.Series, str]:
    """Per seed row, whether its run reached the training-accuracy goal, and how that was read: the table's
    ``reached_goal`` column, else (a table written before it existed) final training accuracy ≥
    :data:`FALLBACK_GOAL` where ``train_acc`` exists, else every run counted as trained (said so)."""
    div = seeds["diverged"].astype(bool)
    if "reached_goal" in seeds.columns and seeds["reached_goal"].notna().any():
        return seeds["reached_goal"].fillna(False).astype(bool) & ~div, "reached_goal from the table"
    if "train_acc" in seeds.columns and seeds["train_acc"].notna().any():
        ok = seeds["train_acc"].astype(float) >= FALLBACK_GOAL
        return ok & ~div, f"no reached_goal column: goal reached = final training accuracy ≥ {FALLBACK_GOAL:g}"
    return ~div, "no reached_goal or train_acc column: every run counted as trained to the goal"


def goal_cells(seeds: pd.DataFrame, bs: np.ndarray, lrs: np.ndarray) -> tuple[np.ndarray, str]:
    """(B, L) mask over (b, η): the cell reached the goal (every non-diverged seed of it did), and the note of
    :func:`reached_goal`."""
    ok, note = reached_goal(seeds)
    live = ~seeds["diverged"].astype(bool).to_numpy()
    j, k = np.searchsorted(bs, seeds["b"].to_numpy()), np.searchsorted(lrs, seeds["lr"].to_numpy())
    n_live, n_ok = np.zeros((len(bs), len(lrs))), np.zeros((len(bs), len(lrs)))
    np.add.at(n_live, (j, k), live)
    np.add.at(n_ok, (j, k), live & ok.to_numpy())
    return (n_live > 0) & (n_ok == n_live), note


def cell_means(acc: np.ndarray, div: np.ndarray, present: np.ndarray, weights: np.ndarray):
    """(mean, se, usable) per (…, b, η) for resample counts ``weights`` of shape (…, seeds, b, η) (or (seeds,)):
    the weighted mean test accuracy over non-diverged seeds, its standard error (seed-to-seed sd/√count) and
    whether the cell counts (some seed finite and not most of its weight diverged)."""
    w = np.asarray(weights, dtype=float)
    w = (w[:, None, None] if w.ndim == 1 else w) * present
    ok = w * (~div & np.isfinite(acc))
    a = np.nan_to_num(acc)
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = ok.sum(axis=-3)
        mean = (ok * a).sum(axis=-3) / cnt
        var = (ok * (a - mean[..., None, :, :]) ** 2).sum(axis=-3) / np.maximum(cnt - 1, 1)
        frac_div = (w * div).sum(axis=-3) / w.sum(axis=-3)
    usable = (cnt > 0) & ~(frac_div > 0.5)
    return mean, np.sqrt(var / np.maximum(cnt, 1)), usable


def _neighbours(probed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (b, η index), the index of the nearest probed η below and above (−1 / L when none)."""
    n_l = probed.shape[-1]
    idx = np.broadcast_to(np.arange(n_l), probed.shape)
    below = np.maximum.accumulate(np.where(probed, idx, -1), axis=-1)
    below = np.concatenate([np.full(probed.shape[:-1] + (1,), -1), below[..., :-1]], axis=-1)
    above = np.minimum.accumulate(np.where(probed, idx, n_l)[..., ::-1], axis=-1)[..., ::-1]
    above = np.concatenate([above[..., 1:], np.full(probed.shape[:-1] + (1,), n_l)], axis=-1)
    return below, above


def vertex(x0, x1, x2, y0, y1, y2):
    """The maximum of the parabola through (x0, y0), (x1, y1), (x2, y2) with x0 < x1 < x2 and y1 ≥ y0, y2,
    clipped to [x0, x2]; x1 where the three points are collinear (a flat top)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d0, d2 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)  # slopes left and right of the middle point
        curv = (d2 - d0) / (x2 - x0)  # the parabola's leading coefficient (≤ 0 at a maximum)
        # the slope at x is d0 + 2·curv·(x − (x0 + x1)/2): zero at the vertex
        v = np.where(curv < 0, (x0 + x1) / 2 - d0 / (2 * curv), x1)
    return np.clip(v, x0, x2)


def best_log2_lr(acc, div, present, goal, lrs, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (…, b) the best log2 η between grid points and its η index: among the cells that reached the goal
    (``goal``, (B, L)), the cell of highest mean accuracy (ties to the smaller η), then the vertex of the
    parabola in log2 η through it and its nearest probed neighbours (:func:`vertex`) when both reached the goal,
    else the cell's own log2 η. Returns (log2 η*, index, censored) with censored −1 (``low``: no goal-reaching
    cell probed below it: the grid's edge or an under-trained neighbour), +1 (``high``) or 0; NaN / −1 where no
    cell of that b reached the goal."""
    mean, _, usable = cell_means(acc, div, present, weights)
    elig = usable & goal
    probed = present.any(axis=0)
    x = np.log2(np.asarray(lrs, dtype=float))
    score = np.where(elig, mean, -np.inf)
    k = np.argmax(score, axis=-1)
    has = np.isfinite(np.max(score, axis=-1))
    below, above = _neighbours(probed)  # (B, L)
    jb = np.arange(probed.shape[0])
    kb, ka = below[jb, k], above[jb, k]  # broadcasts over the leading resample axes
    n_l = len(x)
    take = lambda arr, j: np.take_along_axis(arr, np.clip(j, 0, n_l - 1)[..., None], axis=-1)[..., 0]  # noqa: E731
    e_b = (kb >= 0) & take(elig, kb)
    e_a = (ka < n_l) & take(elig, ka)
    # an under-trained (not diverged) cell next to the best one, or the grid's edge, bounds the best η
    under = probed & ~goal
    u_b = (kb < 0) | take(np.broadcast_to(under, elig.shape), kb)
    u_a = (ka >= n_l) | take(np.broadcast_to(under, elig.shape), ka)
    y = lambda j: take(mean, j)  # noqa: E731
    xs = lambda j: x[np.clip(j, 0, n_l - 1)]  # noqa: E731
    both = e_b & e_a
    v = np.where(both, vertex(xs(kb), x[k], xs(ka), y(kb), y(k), y(ka)), x[k])
    cens = np.where(u_b, -1, np.where(u_a, 1, 0))
    return np.where(has, v, np.nan), np.where(has, k, -1), np.where(has, cens, 0)


def _spacing(x: np.ndarray, probed_b: np.ndarray, k: int) -> float:
    """The local grid spacing (log2 η) at index k of one b: the mean distance to its probed neighbours."""
    px = x[probed_b]
    i = int(np.searchsorted(px, x[k]))
    gaps = [px[i] - px[i - 1]] if i > 0 else []
    gaps += [px[i + 1] - px[i]] if i + 1 < len(px) else []
    return float(np.mean(gaps)) if gaps else 0.0


def best_eta_intervals(seeds: pd.DataFrame, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> pd.DataFrame:
    """Per b of one data set's seed rows: the best η between grid points with its interval (module docstring).

    Columns b, has_best (some cell reached the goal), log2_lr (the vertex on all seeds), lo, hi (log2 η), k (the
    best cell's η index), lr_cell, censored ("low" / "high" / ""), half (the grid-resolution half width added),
    plateau_lo, plateau_hi (the cells within seed noise of the best one)."""
    bs, lrs, acc, div, present = seed_cube(seeds)
    goal, _ = goal_cells(seeds, bs, lrs)
    rng = np.random.default_rng(seed)
    w = np.stack([resample_weights(present, rng) for _ in range(n_boot)])
    vb, _, _ = best_log2_lr(acc, div, present, goal, lrs, w)
    return interval_table(bs, lrs, acc, div, present, goal, vb)


def interval_table(bs, lrs, acc, div, present, goal, vb: np.ndarray) -> pd.DataFrame:
    """:func:`best_eta_intervals` from the seed cube, the goal mask and the resampled vertices ``vb`` (resample, b)."""
    x = np.log2(lrs)
    v, k, cens = best_log2_lr(acc, div, present, goal, lrs, np.ones(present.shape[0]))
    mean, se, usable = cell_means(acc, div, present, np.ones(present.shape[0]))
    probed = present.any(axis=0)
    q = (1 - BOOT_LEVEL) / 2
    rows = []
    for j, b in enumerate(bs):
        r = {"b": b, "has_best": k[j] >= 0, "log2_lr": v[j], "lo": np.nan, "hi": np.nan, "k": k[j],
             "lr_cell": lrs[k[j]] if k[j] >= 0 else np.nan, "censored": {-1: "low", 1: "high"}.get(cens[j], ""),
             "half": np.nan, "plateau_lo": np.nan, "plateau_hi": np.nan}  # fmt: skip
        if k[j] >= 0:
            kk = int(k[j])
            elig = usable[j] & goal[j]
            tol = PLATEAU_Z * np.sqrt(se[j] ** 2 + se[j, kk] ** 2) + 1e-12
            on = elig & (mean[j] >= mean[j, kk] - tol)
            idx = np.flatnonzero(probed[j])
            pos = int(np.searchsorted(idx, kk))
            lo_i = hi_i = pos
            while lo_i > 0 and on[idx[lo_i - 1]]:
                lo_i -= 1
            while hi_i + 1 < len(idx) and on[idx[hi_i + 1]]:
                hi_i += 1
            h = GRID_RESOLUTION * _spacing(x, probed[j], kk)
            got = vb[:, j][np.isfinite(vb[:, j])]
            blo, bhi = np.quantile(got, [q, 1 - q]) if len(got) else (v[j], v[j])
            r.update(half=h, plateau_lo=x[idx[lo_i]], plateau_hi=x[idx[hi_i]],
                     lo=max(min(blo, x[idx[lo_i]], v[j]) - h, x[idx[0]]),
                     hi=min(max(bhi, x[idx[hi_i]], v[j]) + h, x[idx[-1]]))  # fmt: skip
        rows.append(r)
    return pd.DataFrame(rows)


def bootstrap_best(seeds: pd.DataFrame, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(bs, idx) with idx[k, j] the best-η index of b = bs[j] in bootstrap resample k (:func:`resample_weights`)."""
    bs, _, acc, div, present = seed_cube(seeds)
    rng = np.random.default_rng(seed)
    idx = np.empty((n_boot, len(bs)), dtype=int)
    for k in range(n_boot):
        idx[k] = best_lr_index(acc, div, present, resample_weights(present, rng))
    return bs, idx
