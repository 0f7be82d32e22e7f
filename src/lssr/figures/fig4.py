"""Figure 4: a clear indication of the edge of stability.

GD panels: ‖H‖ (blue) and ‖H‖_{S_n} (red) per probed step with 2/η dashed (the shaded span is the
window the claims use). SGD panel: ‖H‖_{S_b} per b (rolling median from the table), each b's level
2ρ_b/η (median over its window) as a dashed line of the same colour, and 2/η (the level's saturation for
large b) as a dotted black line.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from . import style

GD_COLOURS = {"top_eig": style.BLUE, "ias_n": style.RED}


def _gd(ax, sub: pd.DataFrame) -> None:
    sns.lineplot(
        data=sub,
        x="step",
        y="value",
        hue="quantity",
        hue_order=["top_eig", "ias_n"],
        palette=GD_COLOURS,
        estimator=None,
        lw=0.9,
        ax=ax,
        legend=False,
    )
    ax.axhline(sub["two_over_eta"].iloc[0], color=style.RED, ls="--", lw=0.8)
    ws, we = sub["window_start"].iloc[0], sub["window_end"].iloc[0]
    if np.isfinite(ws) and np.isfinite(we):
        ax.axvspan(ws, we, color=style.GREY, alpha=0.12, lw=0)
    ax.set_ylabel("sharpness")
    ax.legend(
        handles=[
            Line2D([], [], color=style.BLUE, label=style.LABELS["top_eig"]),
            Line2D([], [], color=style.RED, label=style.LABELS["ias_n"]),
            Line2D([], [], color=style.RED, ls="--", label=style.LABELS["two_over_eta"]),
        ],
        frameon=False,
        loc="best",
    )


def _sgd(ax, sub: pd.DataFrame) -> None:
    bs = sorted(pd.unique(sub["b"]))
    pal = dict(zip(bs, sns.color_palette(style.SEQUENTIAL, len(bs))))
    for b in bs:
        r = sub[sub["b"] == b]
        ax.plot(r["step"], r["value_smooth"], color=pal[b], lw=0.9)
        lvl = r["level_median"].iloc[0]
        if np.isfinite(lvl):
            ax.axhline(lvl, color=pal[b], ls="--", lw=0.6)
    ax.axhline(sub["two_over_eta"].iloc[0], color=style.BLACK, ls=":", lw=0.9)
    vals = sub["value_smooth"].to_numpy(float)
    if len(vals) and np.nanmin(vals) > 0:
        style.log2_axis(ax, "y")
    ax.set_ylabel(style.LABELS["ias_b"])
    handles = [Line2D([], [], color=pal[b], label=f"b={b}") for b in bs]
    handles.append(Line2D([], [], color=style.GREY, ls="--", label=style.LABELS["level"]))
    handles.append(Line2D([], [], color=style.BLACK, ls=":", label=style.LABELS["two_over_eta"]))
    ax.legend(handles=handles, frameon=False, ncols=2 if len(bs) > 4 else 1, loc="best", fontsize=style.FONT_SIZE - 2)


def plot(table: pd.DataFrame):
    data = table.copy()
    panels = sorted(pd.unique(data["panel"])) if len(data) else []
    ncols = min(2, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = style.figure(nrows, ncols, height=2.2)
    flat = np.ravel(axes)
    for ax in flat[len(panels) :]:
        ax.set_visible(False) if panels else style.empty_panel(ax)
    for ax, p in zip(flat, panels):
        sub = data[data["panel"] == p]
        opt = sub["optimizer"].iloc[0]
        first = sub.iloc[0]
        ax.set_title(
            f"({p}) "
            + style.title(
                opt, style.loss_name(first["loss"]), rf"$\eta$={style.fmt_lr(first['lr'])}", str(first["dataset"])
            )
        )
        (_gd if opt == "GD" else _sgd)(ax, sub)
        ax.set_xlabel(style.LABELS["step"])
    return fig, data
