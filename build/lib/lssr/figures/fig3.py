"""Figure 3: asymmetric valleys (GD).

Left: ‖H_α‖_{S_n}/‖H‖_{S_n} against α, one curve per probed step, red where ‖H‖_{S_n} < 2/η and
blue otherwise. Right: the loss change along the GD direction, one curve per step, normalised in
the table to common zeros (0 and 2) and minimum (−1), with the quadratic baseline dashed.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from . import style


def _title(sub: pd.DataFrame) -> str:
    if sub.empty:
        return ""
    lr = "/".join(style.fmt_lr(v) for v in pd.unique(sub["lr"].dropna()))
    loss = "/".join(style.loss_name(v) for v in pd.unique(sub["loss"].dropna()))
    ds = "/".join(str(v) for v in pd.unique(sub["dataset"].dropna()))
    return style.title("GD", loss, rf"$\eta$={lr}", ds)


def plot(table: pd.DataFrame):
    data = table.copy()
    fig, axes = style.figure(1, 2, height=2.3)
    left, right = axes[0]
    ratio = data[data["panel"] == "ratio"]
    valley = data[data["panel"] == "valley"]
    quad = data[data["panel"] == "quadratic"]
    if ratio.empty:
        style.empty_panel(left, "no valley ratio probes")
    else:
        sns.lineplot(
            data=ratio,
            x="x",
            y="y",
            hue="regime",
            units="curve",
            estimator=None,
            palette=style.REGIME_COLOURS,
            hue_order=[h for h in ("below", "above") if h in set(ratio["regime"])],
            lw=0.7,
            alpha=0.5,
            ax=left,
            legend=False,
        )
        left.axhline(1.0, color=style.GREY, lw=0.6, ls=":")
        left.set_xlabel(style.LABELS["alpha"])
        left.set_ylabel(style.LABELS["valley_ratio"])
        left.set_title(_title(ratio))
    if valley.empty:
        style.empty_panel(right, "no valley curves")
    else:
        sns.lineplot(
            data=valley,
            x="x",
            y="y",
            hue="regime",
            units="curve",
            estimator=None,
            palette=style.REGIME_COLOURS,
            hue_order=[h for h in ("below", "above") if h in set(valley["regime"])],
            lw=0.7,
            alpha=0.5,
            ax=right,
            legend=False,
        )
        if len(quad):
            right.plot(quad["x"], quad["y"], color=style.BLACK, ls="--", lw=1.0)
        right.axhline(0.0, color=style.GREY, lw=0.5)
        right.set_xlabel(style.LABELS["valley_x"])
        right.set_ylabel(style.LABELS["valley_y"])
        right.set_title(_title(valley))
    handles = [
        Line2D([], [], color=style.RED, label=r"$\|H\|_{S_n} < 2/\eta$"),
        Line2D([], [], color=style.BLUE, label=r"$\|H\|_{S_n} \geq 2/\eta$"),
        Line2D([], [], color=style.BLACK, ls="--", label="quadratic baseline"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return fig, data
