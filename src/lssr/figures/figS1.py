"""Supplementary Figure S1: per run, cos(q_1, ∇L) (observation (iii), Prop. 4.1) and the cosine of consecutive
step gradients cos(g_t, g_{t+1}) (§5.2) against the step, with the first step where ‖H‖ exceeds 2/η (dotted) and
where the instability ratio reaches 2/η (dashed) marked; cos = 0 grey."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import style


def _panel(ax, sub: pd.DataFrame) -> None:
    first = sub.iloc[0]
    ax.plot(sub["step"], sub["cos_q1_grad"], color=style.BLUE, lw=0.9, marker="o", ms=2, label=r"cos$(q_1, \nabla L)$")
    cons = sub[np.isfinite(sub["cos_consecutive"].astype(float))]
    if len(cons):
        ax.plot(cons["step"], cons["cos_consecutive"], color=style.RED, lw=0.9, marker="o", ms=2,
                label=r"cos$(g_t, g_{t+1})$")  # fmt: skip
    ax.axhline(0.0, color=style.GREY, lw=0.6)
    if np.isfinite(float(first["cross_step"])):
        ax.axvline(float(first["cross_step"]), color=style.BLACK, ls=":", lw=0.8, label=r"$\|H\| > 2/\eta$")
    if np.isfinite(float(first["edge_step"])):
        ax.axvline(float(first["edge_step"]), color=style.BLACK, ls="--", lw=0.8,
                   label=r"$\mathrm{tr}(HS_b)/\mathrm{tr}(S_n) \geq 2/\eta$")  # fmt: skip
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(style.LABELS["step"])
    ax.set_ylabel("cosine")
    b = "" if first["optimizer"] == "GD" else f" b={int(first['b'])}"
    ax.set_title(
        style.title(f"{first['optimizer']}{b}", style.loss_name(first["loss"]),
                    rf"$\eta$={style.fmt_lr(first['lr'])}", str(first["dataset"]))
    )  # fmt: skip
    ax.legend(frameon=False, loc="best", fontsize=style.FONT_SIZE - 2)


def plot(table: pd.DataFrame):
    data = table.copy()
    runs = list(pd.unique(data["run"])) if len(data) else []
    ncols = min(2, max(1, len(runs)))
    nrows = max(1, math.ceil(len(runs) / ncols))
    fig, axes = style.figure(nrows, ncols, height=2.0)
    flat = np.ravel(axes)
    if not runs:
        style.empty_panel(flat[0], "no probed runs")
    for ax in flat[len(runs) :]:
        ax.set_visible(False) if runs else None
    for ax, run in zip(flat, runs):
        _panel(ax, data[data["run"] == run])
    return fig, data
