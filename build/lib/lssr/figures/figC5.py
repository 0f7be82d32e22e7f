"""Figure C.5: the measured ρ_b (Monte Carlo over sampled batches) against the mean resultant length R̄_b² (left),
and against eq. (12) evaluated at the measured ρ_1 = tr(S_n)/tr(S_1) (right); y = x dashed, colour = b."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from . import style


def _scatter(ax, sub: pd.DataFrame, x: str, pal: dict, bs: list) -> None:
    sns.scatterplot(
        data=sub, x=x, y="rho_b", hue="b", hue_order=bs, palette=pal, s=10, linewidth=0, alpha=0.8, ax=ax, legend=False
    )
    v = np.concatenate([sub[x].to_numpy(float), sub["rho_b"].to_numpy(float)])
    v = v[np.isfinite(v) & (v > 0)]
    if v.size:
        lo, hi = v.min() / 1.2, min(v.max() * 1.2, 1.5)
        ax.plot([lo, hi], [lo, hi], color=style.BLACK, ls="--", lw=0.8)
        style.log2_axis(ax, "x")
        style.log2_axis(ax, "y")
    ax.set_xlabel(style.LABELS[x])
    ax.set_ylabel(style.LABELS["rho_b"])


def plot(table: pd.DataFrame):
    data = table.copy()
    fig, axes = style.figure(1, 2, height=2.4)
    left, right = axes[0]
    bs = sorted(pd.unique(data["b"])) if len(data) else []
    pal = dict(zip(bs, sns.color_palette(style.SEQUENTIAL, len(bs))))
    res = data[data["resultant"].notna()] if len(data) else data
    if res.empty:
        style.empty_panel(left, r"no $\bar{R}_b^2$ probes")
    else:
        _scatter(left, res, "resultant", pal, bs)
    pred = data[data["rho_b_eq12"].notna()] if len(data) else data
    if pred.empty:
        style.empty_panel(right, r"no $\rho_b$ probes")
    else:
        _scatter(right, pred, "rho_b_eq12", pal, bs)
    if len(data):
        first = data.iloc[0]
        t = style.title(
            "/".join(pd.unique(data["optimizer"].astype(str))),
            style.loss_name(first["loss"]),
            r"$\eta$=" + "/".join(style.fmt_lr(v) for v in pd.unique(data["lr"])),
            "/".join(pd.unique(data["dataset"].astype(str))),
        )
        fig.suptitle(t)
        handles = [Line2D([], [], ls="", marker="o", color=pal[b], label=f"b={b}") for b in bs]
        handles.append(Line2D([], [], color=style.BLACK, ls="--", label="y = x"))
        fig.legend(handles=handles, loc="outside right center", frameon=False)
    return fig, data
