"""Figures: each module loads a figure's table CSV (built by :mod:`lssr.tables`), plots it with the
shared style (:mod:`lssr.figures.style`) and saves ``figN.pdf``, ``figN.png`` and the exact plotted
data as ``data/figN.csv``. No paper quantity is computed here.

Each figure module has ``plot(table) -> (matplotlib Figure, plotted DataFrame)``.
Plotting modules are imported lazily so that ``lssr --help`` stays fast. The figure names come from
:data:`lssr.registry.FIGURES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

from ..registry import figure


def load_tables(paths: Sequence[str | Path]):
    """Read and concatenate table CSVs (e.g. one Figure 5 table per data set)."""
    import pandas as pd

    from ..errors import LssrError

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
    name = figure(fig).name  # an unknown figure raises, listing the registered ones
    from . import style

    module = importlib.import_module(f"{__name__}.{name}")
    plotted, data = module.plot(load_tables(tables))
    return style.save(plotted, data, out)


def figure_summary(paths: dict[str, Path]) -> str:
    """The line ``lssr figure`` prints: the files written."""
    return "wrote " + ", ".join(str(p) for p in paths.values())
