"""One shared figure style: seaborn 'paper' context, colour-blind-safe colours, paper-width sizes,
the paper's symbols as mathtext, and atomic saving of figN.pdf, figN.png and data/figN.csv."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..io import atomic_path, write_csv  # noqa: E402

TEXT_WIDTH = 5.5  # inches: the paper's text width (ICLR template)
COLUMN_WIDTH = TEXT_WIDTH
PANEL_HEIGHT = 2.0
FONT_SIZE = 8
DPI = 150

PALETTE = sns.color_palette("colorblind")
BLUE = PALETTE[0]  # ‖H‖, the 'above 2/η' side
RED = PALETTE[3]  # vermillion: ‖H‖_{S_n}, the 'below 2/η' side
GREY = PALETTE[7]
BLACK = "black"
SEQUENTIAL = "viridis"  # steps, batch sizes (perceptually uniform, colour-blind safe)
HEATMAP = "mako"  # test accuracy
RULE_COLOURS = {"LSSR": RED, "LSR": BLACK, "SRSR": PALETTE[4]}
RULE_STYLES = {"LSSR": "-", "LSR": ":", "SRSR": ":"}
REGIME_COLOURS = {"below": RED, "above": BLUE}
PHASE_COLOURS = {"pre": GREY, "early": BLUE, "eos": RED}

LABELS = {
    "instability_ratio": r"$\mathrm{tr}(HS_b)\,/\,\mathrm{tr}(S_n)$",
    "norm_change": r"$(\mathbb{E}[L_{t+1}]-L_t)\,/\,\mathrm{tr}(S_n)$",
    "step": r"step $t$",
    "alpha": r"$\alpha$",
    "valley_ratio": r"$\|H_\alpha\|_{S_n}\,/\,\|H\|_{S_n}$",
    "valley_x": r"normalised $s$ (zeros at 0 and 2)",
    "valley_y": r"normalised $\Delta L$",
    "top_eig": r"$\|H\|$",
    "ias_n": r"$\|H\|_{S_n}$",
    "ias_b": r"$\|H\|_{S_b}$",
    "two_over_eta": r"$2/\eta$",
    "level": r"$2\rho_b/\eta$",
    "b": r"batch size $b$",
    "lr": r"learning rate $\eta$",
    "rho_b": r"$\rho_b$",
    "resultant": r"$\bar{R}_b^2$",
    "rho_b_eq12": r"$\rho_b$ by eq. (12) at measured $\rho_1$",
    "loss": {"ce": "CE", "mse": "MSE"},
}


def apply_style() -> None:
    sns.set_theme(
        context="paper",
        style="ticks",
        palette=PALETTE,
        rc={
            "font.size": FONT_SIZE,
            "axes.titlesize": FONT_SIZE,
            "axes.labelsize": FONT_SIZE,
            "xtick.labelsize": FONT_SIZE - 1,
            "ytick.labelsize": FONT_SIZE - 1,
            "legend.fontsize": FONT_SIZE - 1,
            "legend.title_fontsize": FONT_SIZE - 1,
            "figure.titlesize": FONT_SIZE + 1,
            "lines.linewidth": 1.0,
            "axes.linewidth": 0.6,
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "savefig.dpi": DPI,
            "savefig.bbox": "standard",  # constrained layout sets the margins
            "mathtext.fontset": "dejavusans",
        },
    )


def loss_name(loss: str) -> str:
    return LABELS["loss"].get(str(loss).lower(), str(loss).upper())


def fmt_lr(lr: float) -> str:
    return f"{float(lr):g}"


def title(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def figure(nrows: int = 1, ncols: int = 1, height: float = PANEL_HEIGHT, width: float = TEXT_WIDTH, **kw):
    apply_style()
    return plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False, layout="constrained", **kw)


def output_paths(out: str | Path) -> dict[str, Path]:
    """``figures/fig1.pdf`` -> figures/fig1.pdf, figures/fig1.png, figures/data/fig1.csv."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() in (".pdf", ".png") else out
    return {
        "pdf": stem.with_suffix(".pdf"),
        "png": stem.with_suffix(".png"),
        "data": stem.parent / "data" / f"{stem.name}.csv",
    }


def save(fig, data: pd.DataFrame, out: str | Path) -> dict[str, Path]:
    """Write the figure (pdf, png) and the exact plotted data (csv), each atomically."""
    paths = output_paths(out)
    # lay the figure out once (constrained layout), then freeze it for both formats
    fig.canvas.draw()
    fig.set_layout_engine("none")
    for fmt in ("pdf", "png"):
        with atomic_path(paths[fmt]) as tmp:
            fig.savefig(tmp, format=fmt)
    write_csv(paths["data"], data)
    plt.close(fig)
    return paths


def pow2_label(v: float, _pos=None) -> str:
    """A tick value as a power of two in mathtext, ``$2^{k}$`` (the one label format of every log-2 axis)."""
    if v <= 0:
        return ""
    k = math.log2(v)
    return f"$2^{{{round(k)}}}$" if abs(k - round(k)) < 1e-9 else f"$2^{{{k:.2g}}}$"


def log2_axis(ax, which: str) -> None:
    """Log scale in base 2 on ax's ``which`` ('x' or 'y') axis: major ticks at powers of two only (at most 6, every
    other power or sparser on a wide range), each labelled ``2^k`` (:func:`pow2_label`); minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=2)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(base=2, numticks=6))
    axis.set_major_formatter(FuncFormatter(pow2_label))
    axis.set_minor_formatter(NullFormatter())


def empty_panel(ax, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set_xticks([])
    ax.set_yticks([])
