"""Training engines: :func:`train` (one run of SGD / GD) and :func:`train_batched` (runs that differ only
in η or seed as one stacked model), on one core (:mod:`.core`: device, θ_0, stop rule, evaluation,
metrics rows; :mod:`.outputs`: run.json, model.pt, checkpoints).

Modules: ``sampler`` (mini-batches B_t), ``core``, ``outputs``, ``single`` (:func:`train`, probes),
``stack`` and ``batched`` (:func:`train_batched`), ``probe`` (the per-step diagnostics, :class:`DiagnosticsProbe`,
with ``probe_schedule`` and ``probe_columns``), ``entry`` (the ``lssr train`` / ``train-batch`` entry
points).
"""

from .batched import MAY_DIFFER, BatchConfigError, check_batchable, train_batched
from .core import METRIC_COLUMNS, RunResult, resolve_device, total_steps
from .entry import check_subset_matches, run_batched_from_configs, run_from_config, subset_for
from .outputs import write_run_outputs
from .probe import DiagnosticsProbe
from .sampler import BatchSampler
from .single import Probe, StepContext, chunked_loss_and_grad, train

__all__ = [
    "MAY_DIFFER",
    "METRIC_COLUMNS",
    "BatchConfigError",
    "BatchSampler",
    "DiagnosticsProbe",
    "Probe",
    "RunResult",
    "StepContext",
    "check_batchable",
    "check_subset_matches",
    "chunked_loss_and_grad",
    "resolve_device",
    "run_batched_from_configs",
    "run_from_config",
    "subset_for",
    "total_steps",
    "train",
    "train_batched",
    "write_run_outputs",
]
