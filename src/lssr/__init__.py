"""lssr: replication of the interaction-aware sharpness / LSSR paper (ICLR 2023).

One-way flow, one module (or package) per step: ``data`` (raw data -> DATASET-n subset) ->
``training`` (subset -> run: metrics, per-step ``diagnostics``) -> ``tables`` (runs -> one table per
figure) -> ``figures`` (tables -> plots) -> ``claims`` (tables -> verdicts) -> ``report``.
Shared: ``config`` (every default and value rule), ``registry`` (the figures), ``columns``
(diagnostics column names), ``scaling`` (identity (1), tr(H S_b)), ``curvature``, ``models``,
``losses``, ``io``; ``workflow`` plans the Snakemake DAG and ``cli`` is the command line.
See docs/ARCHITECTURE.md. The public diagnostics call on your own model is :func:`lssr.diagnose`
(docs/DIAGNOSTICS.md); during training :class:`lssr.SharpnessMonitor` (a plain loop) and
:class:`lssr.SharpnessCallback` (PyTorch Lightning, an optional extra). The learning rate for a new batch size:
:mod:`lssr.recommend` (docs/RECOMMEND.md) and, in Lightning, :class:`lssr.LearningRateForBatchSize`.
"""

__version__ = "0.1.0"


from .errors import LssrError  # noqa: E402


def __getattr__(name: str):
    """``lssr.diagnose``, ``lssr.Diagnostics``, ``lssr.SharpnessMonitor`` and ``lssr.SharpnessCallback``
    (which needs Lightning), imported on first use (``import lssr`` stays free of torch and Lightning)."""
    if name in ("diagnose", "Diagnostics"):
        from .diagnostics import api

        return getattr(api, name)
    if name == "SharpnessMonitor":
        from .diagnostics.monitor import SharpnessMonitor

        return SharpnessMonitor
    if name == "SharpnessCallback":
        from .diagnostics.lightning_callback import SharpnessCallback

        return SharpnessCallback
    if name == "LearningRateForBatchSize":
        from .diagnostics.lightning_lr import LearningRateForBatchSize

        return LearningRateForBatchSize
    raise AttributeError(f"module 'lssr' has no attribute {name!r}")
