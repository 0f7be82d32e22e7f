"""Interaction-aware sharpness diagnostics: tr(S_b), tr(H S_b), ρ_b, ‖H‖_{S_b} and ‖H‖ of a model.

:mod:`.api` holds the public call, :func:`diagnose` (``lssr.diagnose``), on any model and data, with its
options in :mod:`.options`, its result types in :mod:`.results`, its model guards in :mod:`.guards` and its
engine in :mod:`.engine` (:mod:`.batches` reads the data); :mod:`.moments` holds the estimator maths (the
gradient moments tr S_1, tr S_n, tr(H S_1), tr(H S_n) and every b from them by identity (1)). The pipeline's
per-step probe is :class:`lssr.training.DiagnosticsProbe`.
"""

from .api import AtB, Cost, Diagnostics, diagnose
from .moments import (
    FRAME_COLUMNS,
    Moments,
    gradient_moments,
    moments_frame,
    per_b,
    rademacher,
)
from .options import Compute, Eigen, Estimator

__all__ = [
    "AtB",
    "Compute",
    "Eigen",
    "Estimator",
    "Cost",
    "Diagnostics",
    "diagnose",
    "FRAME_COLUMNS",
    "Moments",
    "gradient_moments",
    "moments_frame",
    "per_b",
    "rademacher",
]
