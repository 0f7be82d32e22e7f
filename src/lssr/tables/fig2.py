"""Figure 2 table: the quantities of Figure 1 over the whole run, with the phase of every step
(pre / early / eos, see :mod:`lssr.tables.fig1`)."""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from .fig1 import COLUMNS, loss_change_table
from .runs import RunLike

__all__ = ["COLUMNS", "build"]


def build(runs: Iterable[RunLike], **_options) -> pd.DataFrame:
    """Figure 2: normalised loss change vs instability ratio over the whole run, every step's phase."""
    return loss_change_table(runs, early_only=False)
