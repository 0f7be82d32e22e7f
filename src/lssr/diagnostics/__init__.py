"""Interaction-aware sharpness diagnostics: tr(S_b), tr(H S_b), ρ_b, ‖H‖_{S_b} and ‖H‖ of a model.

:mod:`.api` holds the public call, :func:`diagnose` (``lssr.diagnose``), on any model and data, with its
options in :mod:`.options`, its result types in :mod:`.results`, its model guards in :mod:`.guards` and its
engine in :mod:`.engine` (:mod:`.batches` reads the data); :mod:`.moments` holds the estimator maths (the
gradient moments tr S_1, tr S_n, tr(H S_1), tr(H S_n) and every b from them by identity (1)). The pipeline's
per-step probe is :class:`lssr.training.DiagnosticsProbe`.

The names below are imported on first use, so that :mod:`.options` (imported by the pipeline's config and its
planner) comes without torch.
"""

import importlib

#: The public names and the submodule of each.
_HOMES = {
    "AtB": "results",
    "Compute": "options",
    "Cost": "results",
    "Diagnostics": "results",
    "Eigen": "options",
    "Estimator": "options",
    "FRAME_COLUMNS": "moments",
    "Moments": "moments",
    "diagnose": "api",
    "gradient_moments": "moments",
    "moments_frame": "moments",
    "per_b": "moments",
    "rademacher": "moments",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
