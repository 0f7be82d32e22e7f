"""Interaction-aware sharpness diagnostics: tr(S_b), tr(H S_b), ρ_b, ‖H‖_{S_b} and ‖H‖ of a model.

The public names (``__all__``): :func:`diagnose` with its results :class:`Diagnostics`, :class:`AtB` and
:class:`Cost` and its options :class:`Estimator`, :class:`Eigen` and :class:`Compute`; during training
:class:`SharpnessMonitor` and, with Lightning, :class:`SharpnessCallback`.
Each is imported from its module on first use, so that :mod:`.options` (imported by the pipeline's config and its
planner) comes without torch.

The modules: :mod:`.api` the public call, with its options in :mod:`.options`, its result types in
:mod:`.results`, its model guards in :mod:`.guards` and its engine in :mod:`.engine` (:mod:`.batches` reads the
data, :mod:`.inputs` checks it); :mod:`.moments` the estimator maths (the gradient moments tr S_1, tr S_n,
tr(H S_1), tr(H S_n) and every b from them by identity (1)); :mod:`.uncertainty` the se of tr(H S_1) with
finite-difference HVPs. The pipeline's per-step probe is :class:`lssr.training.DiagnosticsProbe`.
"""

from importlib import import_module

#: Each public name and the module that defines it.
_PUBLIC = {
    "diagnose": ".api",
    "Diagnostics": ".results",
    "AtB": ".results",
    "Cost": ".results",
    "Estimator": ".options",
    "Eigen": ".options",
    "Compute": ".options",
    "SharpnessMonitor": ".monitor",
    "SharpnessCallback": ".lightning_callback",
}
#: The library's own building blocks, importable from here for the pipeline and the benchmarks but not part of
#: the public surface (not in ``__all__`` nor ``dir``).
_INTERNAL = {
    "FRAME_COLUMNS": ".moments",
    "Moments": ".moments",
    "gradient_moments": ".moments",
    "moments_frame": ".moments",
    "per_b": ".moments",
    "rademacher": ".moments",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    """A name of :data:`_PUBLIC` (or :data:`_INTERNAL`), imported from its module when first used."""
    module = _PUBLIC.get(name) or _INTERNAL.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
