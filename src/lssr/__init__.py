"""lssr: replication of the interaction-aware sharpness / LSSR paper (ICLR 2023).

One-way flow, one module (or package) per step: ``data`` (raw data -> DATASET-n subset) ->
``training`` (subset -> run: metrics, per-step ``diagnostics``) -> ``tables`` (runs -> one table per
figure) -> ``figures`` (tables -> plots) -> ``claims`` (tables -> verdicts) -> ``report``.
Shared: ``config`` (every default and value rule), ``registry`` (the figures), ``columns``
(diagnostics column names), ``scaling`` (identity (1), tr(H S_b)), ``curvature``, ``models``,
``losses``, ``io``; ``workflow`` plans the Snakemake DAG and ``cli`` is the command line.
See docs/ARCHITECTURE.md. The public diagnostics call on your own model is :func:`lssr.diagnose`
(docs/DIAGNOSTICS.md), its options :class:`lssr.Estimator`, :class:`lssr.Eigen` and :class:`lssr.Compute`;
during training :class:`lssr.SharpnessMonitor` (a plain loop) and :class:`lssr.SharpnessCallback` (PyTorch
Lightning, an optional extra). The learning rate for a new batch size: :mod:`lssr.recommend`
(docs/RECOMMEND.md) and, in Lightning, :class:`lssr.LearningRateForBatchSize`. Every error meant for a user is
an :class:`lssr.LssrError`.
"""

from importlib import import_module

from .errors import LssrError

__version__ = "0.1.0"

#: The public names besides ``LssrError``, each with where it is defined: ``package:name``, or a module's path
#: for a module. They are imported on first use, so ``import lssr`` imports neither torch nor Lightning nor any
#: of lssr's own packages.
_PUBLIC = {
    "diagnose": ".diagnostics:diagnose",
    "Diagnostics": ".diagnostics:Diagnostics",
    "AtB": ".diagnostics:AtB",
    "Cost": ".diagnostics:Cost",
    "Estimator": ".diagnostics:Estimator",
    "Eigen": ".diagnostics:Eigen",
    "Compute": ".diagnostics:Compute",
    "SharpnessMonitor": ".diagnostics:SharpnessMonitor",
    "SharpnessCallback": ".diagnostics:SharpnessCallback",
    "LearningRateForBatchSize": ".lightning_lr:LearningRateForBatchSize",
    "recommend": ".recommend",
}

__all__ = ["LssrError", *_PUBLIC]


def __getattr__(name: str):
    """A public name of :data:`_PUBLIC`, imported when first used (``SharpnessCallback`` and
    ``LearningRateForBatchSize`` need Lightning)."""
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = import_module(module, __name__)
    return getattr(value, attr) if attr else value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
