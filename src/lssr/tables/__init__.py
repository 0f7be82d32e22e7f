"""Figure tables: run folders -> one tidy DataFrame per figure.

Data flow is one-way: run folders (``run.json``, ``metrics.csv``, ``diagnostics.csv`` written by
training and its probes) -> tables (this package) -> figures (:mod:`lssr.figures`, plotting only) and
claims (:mod:`lssr.claims`). Every paper quantity of a figure is computed here, once, in the module
named after the figure (mirroring :mod:`lssr.figures`): :mod:`.fig1` / :mod:`.fig2` (normalised loss
change against tr(H S_b)/tr(S_n), eqs. 6, 9), :mod:`.fig3` (asymmetric valleys), :mod:`.fig4`
(‖H‖_{S_b} against 2ρ_b/η and its windows), :mod:`.fig5` (LSSR fits), :mod:`.figC5` (ρ_b against
eq. 12). :mod:`.runs` reads the run folders and the per-b quantities (identity (1)).

Each figure module has ``COLUMNS`` and ``build(runs, **options) -> DataFrame``; options meant for
another figure (``smooth_window`` is Figure 4's) are ignored.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import LssrError
from ..io import write_csv
from ..registry import figure
from .fig4 import SMOOTH_WINDOW
from .fig5 import fit_scaling_rules
from .runs import Run, TableError, expand_run_dirs, load_run, load_runs

__all__ = [
    "SMOOTH_WINDOW",
    "Run",
    "TableError",
    "build_table",
    "expand_run_dirs",
    "fit_scaling_rules",
    "load_run",
    "table_summary",
    "write_table",
]


def build_table(fig: str, runs: Sequence[str | Path], smooth_window: int = SMOOTH_WINDOW) -> pd.DataFrame:
    """The table of figure ``fig`` (a name in :data:`lssr.registry.FIGURES`) from run folders, or folders
    holding run folders (GD vs SGD is read from each run's config)."""
    try:
        name = figure(fig).name
    except LssrError as exc:
        raise TableError(str(exc)) from None
    module = importlib.import_module(f"{__name__}.{name}")
    return module.build(load_runs(expand_run_dirs(runs)), smooth_window=smooth_window)


def write_table(
    fig: str, runs: Sequence[str | Path], out: str | Path, smooth_window: int = SMOOTH_WINDOW
) -> pd.DataFrame:
    """Build figure ``fig``'s table and write it to the CSV ``out`` (atomically); returns the table."""
    table = build_table(fig, runs, smooth_window=smooth_window)
    write_csv(out, table)
    return table


def table_summary(fig: str, table: pd.DataFrame, run_dirs: Sequence[Path], out: str | Path) -> str:
    """The line ``lssr table`` prints: rows written, runs read and how many of them have diagnostics.csv."""
    n_diag = sum((Path(d) / "diagnostics.csv").exists() for d in run_dirs)
    runs = f"{len(run_dirs)} runs ({n_diag} with diagnostics.csv)"
    return f"wrote {fig} table ({len(table)} rows) from {runs} to {out}"
