"""Figure 5: the Linear and Saturation Scaling Rule.

Left: the analytic LSSR (eq. 12), LSR and SRSR curves (n = 8192, ρ = 2^-7), log-log. Right: one
heatmap of the mean final test accuracy over seeds over (log2 b, log2 η) per data set, diverged cells
marked '×', cells short of the training-accuracy goal hatched (the paper's red, non-practical area: ``reached_goal``
false, or for a table without that column a final training accuracy below
:data:`lssr.tables.fig5.FALLBACK_GOAL`), cells trained with ghost-batch batch norm (``bn_ghost_batch``) framed by a
square, the best η per b between grid points (``lr_star``) circled with its interval (seeds resampled, plateau,
grid resolution) as an error bar (a best η with no goal-reaching cell probed on one side, ``censored``, drawn as a
triangle pointing to where the optimum may lie), and the LSSR (f(b) = c·ρ_b), LSR and SRSR fits from the table.
When the ``fig5_rho`` table is given with the Figure 5 table (``lssr figure fig5 --table fig5.csv --table
fig5_rho.csv``), the LSSR curve predicted from the measured ρ (c·ρ_b at the measured B_simple, c fitted:
:func:`lssr.claims.rules.predicted_curve`, the paper's ρ_b curve) is drawn with its interval, and its points are
added to the plotted data as rows of kind ``predicted``. The heatmap is drawn with matplotlib's pcolormesh on log2
coordinates so the curves share its axes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter

from . import style

RULES = ("LSSR", "LSR", "SRSR")
#: The predicted LSSR curve (the paper draws its ρ_b curve in yellow) and the hatch of cells short of the goal.
PREDICTED_COLOUR = "#e6b400"
UNDER_COLOUR = style.RED
UNDER_HATCH = "////"


def _edges(centres: np.ndarray) -> np.ndarray:
    c = np.asarray(centres, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def _pow2_axis(axis, lo: float, hi: float) -> None:
    ticks = [k for k in range(math.ceil(lo), math.floor(hi) + 1)]
    step = max(1, math.ceil(len(ticks) / 7))
    axis.set_major_locator(FixedLocator(ticks[::step]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: style.pow2_label(2.0**v)))


def _rule_handles() -> list[Line2D]:
    return [
        Line2D([], [], color=style.RULE_COLOURS[m], ls="--" if m == "LSSR" else style.RULE_STYLES[m], label=f"{m} fit")
        for m in RULES
    ]


def _ghost_handle(cells: pd.DataFrame) -> list[Line2D]:
    """The legend entry of the ghost-batch marker, when some cell was trained with ``bn_ghost_batch``."""
    if "bn_ghost_batch" not in cells.columns or cells["bn_ghost_batch"].isna().all():
        return []
    sizes = ", ".join(f"{int(v)}" for v in sorted(pd.unique(cells["bn_ghost_batch"].dropna())))
    return [Line2D([], [], ls="", marker="s", markerfacecolor="none", markeredgecolor=style.BLACK,
                   label=f"ghost-batch BN ({sizes})")]  # fmt: skip


def _censored(cells: pd.DataFrame) -> np.ndarray:
    """The ``censored`` flag of each row: ``low`` / ``high`` / ``""`` (a CSV reads empty flags as NaN)."""
    col = cells["censored"] if "censored" in cells.columns else pd.Series("", index=cells.index)
    return np.array([v if isinstance(v, str) else "" for v in col], dtype=object)


def _censored_handle(cells: pd.DataFrame) -> list[Line2D]:
    """The legend entry of a best η at the edge of the η grid, when some best η is there."""
    if not (_censored(cells) != "").any():
        return []
    return [Line2D([], [], ls="", marker="^", markerfacecolor="white", markeredgecolor=style.BLACK,
                   label=r"best $\eta$ at the grid edge")]  # fmt: skip


def _under_trained(cells: pd.DataFrame) -> np.ndarray:
    """Non-diverged cells short of the training-accuracy goal (:func:`lssr.tables.fig5_best.reached_goal`: the
    ``reached_goal`` column, or, for a table without it, a training accuracy below the fallback goal)."""
    from ..tables.fig5_best import reached_goal

    reached, _ = reached_goal(cells)
    return ~cells["diverged"].astype(bool).to_numpy() & ~reached.to_numpy()


def _extra_handles(cells: pd.DataFrame, predicted: bool) -> list:
    """Legend entries of the hatched cells short of the goal and of the predicted curve, when drawn."""
    out: list = []
    if _under_trained(cells).any():
        out.append(Patch(facecolor="none", edgecolor=UNDER_COLOUR, hatch=UNDER_HATCH, lw=0,
                         label="short of the training-accuracy goal"))  # fmt: skip
    if predicted:
        out.append(Line2D([], [], color=PREDICTED_COLOUR, lw=1.6, label=r"LSSR from measured $\rho$"))
    return out


def predicted_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The predicted LSSR curve of each data set (rows of kind ``predicted``: dataset, b, lr, lr_lo, lr_hi, value =
    B_simple) from the seed rows and the ``fig5_rho`` rows of a concatenated table; empty without the latter."""
    if "b_simple" not in table.columns or "kind" not in table.columns:
        return pd.DataFrame()
    rho = table[table["kind"].isna() & table["b_simple"].notna()]
    if rho.empty:
        return pd.DataFrame()
    from ..claims.rules import predicted_curve

    parts = []
    seeds = table[table["kind"] == "seed"]
    for ds, s in seeds.groupby("dataset", sort=True):
        c = predicted_curve(s.assign(diverged=s["diverged"].astype(bool)), rho)
        if len(c):
            parts.append(c.assign(kind="predicted", dataset=ds, value=c["b_simple"], log2_b=np.log2(c["b"]),
                                  log2_lr=np.log2(c["lr"])))  # fmt: skip
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _analytic(ax, sub: pd.DataFrame) -> None:
    if sub.empty:
        style.empty_panel(ax, "no analytic curves")
        return
    for m in RULES:
        r = sub[sub["model"] == m].sort_values("b")
        ax.plot(r["b"], r["value"], color=style.RULE_COLOURS[m], ls=style.RULE_STYLES[m], lw=1.2, label=m)
    style.log2_axis(ax, "x")
    style.log2_axis(ax, "y")
    n, rho = int(sub["n"].iloc[0]), float(sub["rho"].iloc[0])
    ax.set_title(rf"eq. (12): $n$={n}," + "\n" + rf"$\rho$=$2^{{{math.log2(rho):g}}}$")
    ax.set_xlabel(style.LABELS["b"])
    ax.set_ylabel(r"$\rho_b$ (LSSR), $\rho b$ (LSR), $\rho\sqrt{b}$ (SRSR)")
    ax.legend(frameon=False)


def _heatmap(fig, ax, cells: pd.DataFrame, fits: pd.DataFrame, ds: str, pred: pd.DataFrame) -> None:
    xs = np.sort(pd.unique(cells["log2_b"]))
    ys = np.sort(pd.unique(cells["log2_lr"]))
    xi = {v: i for i, v in enumerate(xs)}
    yi = {v: i for i, v in enumerate(ys)}
    z = np.full((len(ys), len(xs)), np.nan)
    ok = cells[~cells["diverged"].astype(bool)]
    for _, c in ok.iterrows():
        z[yi[c["log2_lr"]], xi[c["log2_b"]]] = c["test_acc"]
    xe, ye = _edges(xs), _edges(ys)
    finite = z[np.isfinite(z)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    mesh = ax.pcolormesh(
        xe, ye, np.ma.masked_invalid(z), cmap=style.HEATMAP, vmin=vmin, vmax=max(vmax, vmin + 1e-9), shading="flat"
    )
    fig.colorbar(mesh, ax=ax, label="test accuracy", pad=0.01)
    under = cells[_under_trained(cells)]
    for _, c in under.iterrows():
        i, j = xi[c["log2_b"]], yi[c["log2_lr"]]
        ax.add_patch(Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], fill=False, hatch=UNDER_HATCH,
                               edgecolor=UNDER_COLOUR, lw=0, zorder=3))  # fmt: skip
    div = cells[cells["diverged"].astype(bool)]
    if len(div):
        ax.scatter(div["log2_b"], div["log2_lr"], marker="x", color=style.BLACK, s=14, lw=0.8, zorder=4)
    if "bn_ghost_batch" in cells.columns:
        ghost = cells[cells["bn_ghost_batch"].notna()]
        if len(ghost):
            ax.scatter(ghost["log2_b"], ghost["log2_lr"], marker="s", facecolor="none", edgecolor=style.BLACK,
                       s=30, lw=0.5, ls=":", zorder=4)  # fmt: skip
    best = cells[cells["is_best"].astype(bool)].copy()
    if "lr_star" in best.columns:  # the best η between grid points
        best["log2_lr"] = np.log2(best["lr_star"].astype(float)).fillna(best["log2_lr"])
    if len(best) and "lr_lo" in best.columns:
        lo, hi = np.log2(best["lr_lo"].astype(float)), np.log2(best["lr_hi"].astype(float))
        ax.errorbar(best["log2_b"], best["log2_lr"], yerr=[best["log2_lr"] - lo, hi - best["log2_lr"]], fmt="none",
                    ecolor=style.BLACK, elinewidth=0.8, capsize=2, zorder=5)  # fmt: skip
    flag = _censored(best)
    for value, marker in (("", "o"), ("high", "^"), ("low", "v")):
        sel = best[flag == value]
        if len(sel):
            ax.scatter(sel["log2_b"], sel["log2_lr"], marker=marker, facecolor="white", edgecolor=style.BLACK,
                       s=14 if marker == "o" else 22, lw=0.6, zorder=5)  # fmt: skip
    for m in RULES:
        r = fits[fits["model"] == m].sort_values("b")
        if len(r):
            ax.plot(
                r["log2_b"],
                r["log2_lr"],
                color=style.RULE_COLOURS[m],
                ls=style.RULE_STYLES[m] if m != "LSSR" else "--",
                lw=1.2,
                zorder=6,
            )
    if len(pred):
        pred = pred.sort_values("b")
        ax.fill_between(np.log2(pred["b"]), np.log2(pred["lr_lo"]), np.log2(pred["lr_hi"]), color=PREDICTED_COLOUR,
                        alpha=0.3, lw=0, zorder=6)  # fmt: skip
        ax.plot(np.log2(pred["b"]), np.log2(pred["lr"]), color=PREDICTED_COLOUR, lw=1.6, zorder=7)
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    _pow2_axis(ax.xaxis, xe[0], xe[-1])
    _pow2_axis(ax.yaxis, ye[0], ye[-1])
    n = int(cells["n"].iloc[0])
    lssr = fits[fits["model"] == "LSSR"]
    extra = "\n" + rf"LSSR fit: $\rho$=$2^{{{math.log2(lssr['rho'].iloc[0]):.1f}}}$" if len(lssr) else ""
    if len(pred):
        extra += rf", measured $B_{{simple}}$={pred['value'].iloc[0]:.3g}"
    ax.set_title(f"{ds} (n={n}){extra}")
    ax.set_xlabel(style.LABELS["b"])
    ax.set_ylabel(style.LABELS["lr"])


def plot(table: pd.DataFrame):
    pred_all = predicted_rows(table)
    data = pd.concat([table, pred_all], ignore_index=True) if len(pred_all) else table.copy()
    analytic = data[data["kind"] == "analytic"]
    cells_all = data[data["kind"] == "cell"]
    fits_all = data[data["kind"] == "fit"]
    datasets = sorted(pd.unique(cells_all["dataset"])) if len(cells_all) else []
    k = len(datasets)
    hcols = 1 if k <= 1 else 2
    hrows = max(1, math.ceil(k / hcols))
    style.apply_style()
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(style.TEXT_WIDTH, max(2.6, 2.5 * hrows + 0.3)), layout="constrained")
    left_fig, right_fig = fig.subfigures(1, 2, width_ratios=[1, hcols * 1.25])
    _analytic(left_fig.subplots(), analytic)
    axes = np.ravel(right_fig.subplots(hrows, hcols, squeeze=False))
    if not datasets:
        style.empty_panel(axes[0], "no heatmap runs")
    for ax, ds in zip(axes, datasets):
        pred = pred_all[pred_all["dataset"] == ds] if len(pred_all) else pd.DataFrame()
        _heatmap(right_fig, ax, cells_all[cells_all["dataset"] == ds], fits_all[fits_all["dataset"] == ds], ds, pred)
    for ax in axes[k:]:
        ax.set_visible(False) if datasets else None
    if datasets:
        fig.legend(
            handles=_rule_handles()
            + [
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="o",
                    markerfacecolor="white",
                    markeredgecolor=style.BLACK,
                    label=r"best $\eta$",
                ),
                Line2D([], [], ls="", marker="x", color=style.BLACK, label="diverged"),
            ]
            + _ghost_handle(cells_all)
            + _censored_handle(cells_all)
            + _extra_handles(cells_all, len(pred_all) > 0),
            loc="outside lower center",
            ncols=3,
            frameon=False,
        )
    return fig, data
