"""Figures: each module loads a figure's table CSV (built by :mod:`lssr.tables`), plots it with the
shared style (:mod:`lssr.figures.style`) and saves ``figN.pdf``, ``figN.png`` and the exact plotted
data as ``data/figN.csv``. No paper quantity is computed here.

Each figure module has ``plot(table) -> (matplotlib Figure, plotted DataFrame)``.
Plotting modules are imported lazily so that ``lssr --help`` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "figC5")


def load_tables(paths: Sequence[str | Path]):
    """Read and concatenate table CSVs (e.g. one Figure 5 table per data set)."""
    import pandas as pd

    from .. import LssrError

    frames = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise LssrError(f"{p}: table not found (build it with `lssr table FIG --runs ... --out {p}`)")
        frames.append(pd.read_csv(p))
    if not frames:
        raise LssrError("no --table given")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def make_figure(fig: str, tables: Sequence[str | Path], out: str | Path) -> dict[str, Path]:
    """Plot figure ``fig`` from its table CSV(s); returns the written paths (pdf, png, data)."""
    from .. import LssrError

    if fig not in FIGURES:
        raise LssrError(f"unknown figure {fig!r}: choose one of {', '.join(FIGURES)}")
    from . import style

    module = importlib.import_module(f"{__name__}.{fig}")
    figure, data = module.plot(load_tables(tables))
    return style.save(figure, data, out)


def cmd_figure(args) -> None:
    paths = make_figure(args.fig, args.table, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def register_cli(subparsers) -> None:
    f = subparsers.add_parser("figure", help="plot a figure from its table CSV(s)")
    f.add_argument("fig", choices=FIGURES)
    f.add_argument(
        "--table", nargs="+", action="extend", required=True, metavar="CSV", help="table CSV(s) from `lssr table`"
    )
    f.add_argument("--out", required=True, help="figures/FIG.pdf (also writes FIG.png and data/FIG.csv)")
    f.set_defaults(func=cmd_figure)
