"""Figure 2: normalised loss change vs instability ratio over the whole run (non-quadraticity).

Same axes as Figure 1; points coloured by phase (before / up to / after the entry into the edge of
stability), with the line of slope η²/2 through 2/η for comparison.
"""

from __future__ import annotations

import pandas as pd

from .fig1 import plot_loss_change


def plot(table: pd.DataFrame):
    data = table.copy()
    return plot_loss_change(data, hue="phase"), data
