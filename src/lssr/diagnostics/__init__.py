"""Interaction-aware sharpness diagnostics: tr(S_b), tr(H S_b), ρ_b, ‖H‖_{S_b} and ‖H‖ of a model.

:mod:`.api` holds the public call, :func:`diagnose` (``lssr.diagnose``), on any model and data
(:mod:`.batches` reads the data);
:mod:`.moments` holds the estimator maths (the gradient moments tr S_1, tr S_n, tr(H S_1), tr(H S_n) and every
b from them by identity (1)); :mod:`.probe` the per-step probe that writes ``diagnostics.csv`` during a run.
"""

from .api import AtB, Cost, Diagnostics, diagnose
from .moments import (
    FRAME_COLUMNS,
    Moments,
    gradient_moments,
    interaction_stats,
    moments_frame,
    per_b,
    rademacher,
)
from .probe import DiagnosticsProbe

__all__ = [
    "AtB",
    "Cost",
    "Diagnostics",
    "diagnose",
    "FRAME_COLUMNS",
    "DiagnosticsProbe",
    "Moments",
    "gradient_moments",
    "interaction_stats",
    "moments_frame",
    "per_b",
    "rademacher",
]
