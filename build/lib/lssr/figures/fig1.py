"""Figure 1: normalised loss change vs instability ratio in the early phase (eqs. 6 and 9).

Rows SGD (top) and GD (bottom), columns CE and MSE; points coloured by step; the line of slope
η²/2 through the x-intercept 2/η (the table's ``ref_line``); the CE entry into the unstable regime
marked 'x'.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import cm, colors

from . import style

ROWS = ("SGD", "GD")
COLS = ("ce", "mse")


def _layout(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    opts = [o for o in ROWS if o in set(table["optimizer"])] or ["SGD"]
    losses = [c for c in COLS if c in set(table["loss"])]
    losses += sorted(set(table["loss"]) - set(COLS))
    return opts, losses or ["ce"]


def _uniq(values) -> str:
    vals = pd.unique(pd.Series(values).dropna())
    return "/".join(str(v) for v in vals)


def panel_title(sub: pd.DataFrame, opt: str, loss: str) -> str:
    if sub.empty:
        return style.title(opt, style.loss_name(loss))
    b = "" if opt == "GD" else f"b={_uniq(sub['b'])}"
    lr = "/".join(style.fmt_lr(v) for v in pd.unique(sub["lr"]))
    return style.title(f"{opt} ({b})" if b else opt, style.loss_name(loss), rf"$\eta$={lr}", _uniq(sub["dataset"]))


def plot_loss_change(table: pd.DataFrame, hue: str):
    """Shared by Figures 1 and 2: ``hue`` is 'step' (continuous) or 'phase' (categorical)."""
    opts, losses = _layout(table)
    fig, axes = style.figure(len(opts), len(losses), height=2.1)
    steps = table["step"] if len(table) else pd.Series([0, 1])
    norm = colors.Normalize(float(steps.min()), float(max(steps.max(), steps.min() + 1)))
    for i, opt in enumerate(opts):
        for j, loss in enumerate(losses):
            ax = axes[i][j]
            sub = table[(table["optimizer"] == opt) & (table["loss"] == loss)]
            if sub.empty:
                style.empty_panel(ax)
                ax.set_title(panel_title(sub, opt, loss))
                continue
            multi = sub["run"].nunique() > 1
            if hue == "step":
                kw = dict(palette=style.SEQUENTIAL, hue_norm=norm)
            else:
                kw = dict(
                    palette=style.PHASE_COLOURS, hue_order=[p for p in style.PHASE_COLOURS if p in set(table[hue])]
                )
            sns.scatterplot(
                data=sub,
                x="instability_ratio",
                y="norm_change",
                hue=hue,
                style="run" if multi else None,
                s=12,
                linewidth=0,
                ax=ax,
                legend=(hue != "step" and i == 0 and j == 0),
                **kw,
            )
            for _, r in sub.groupby("run", sort=False):
                r = r.sort_values("instability_ratio")
                ax.plot(r["instability_ratio"], r["ref_line"], color=style.BLACK, lw=0.8, zorder=1)
            for two in pd.unique(sub["two_over_eta"]):
                ax.axvline(two, color=style.GREY, ls=":", lw=0.7, zorder=0)
            ax.axhline(0, color=style.GREY, lw=0.5, zorder=0)
            marks = sub[sub["mark_x"].astype(bool)]
            if len(marks):
                ax.scatter(
                    marks["instability_ratio"],
                    marks["norm_change"],
                    marker="x",
                    color=style.BLACK,
                    s=36,
                    lw=1.2,
                    zorder=5,
                )
            ax.set_title(panel_title(sub, opt, loss))
            ax.set_xlabel(style.LABELS["instability_ratio"] if i == len(opts) - 1 else "")
            ax.set_ylabel(style.LABELS["norm_change"] if j == 0 else "")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if hue == "step":
        sm = cm.ScalarMappable(norm=norm, cmap=style.SEQUENTIAL)
        fig.colorbar(sm, ax=np.ravel(axes).tolist(), label=style.LABELS["step"], shrink=0.8, pad=0.01)
    return fig


def plot(table: pd.DataFrame):
    data = table.copy()
    return plot_loss_change(data, hue="step"), data
