"""The options of :func:`lssr.diagnose` and :class:`lssr.SharpnessMonitor`, grouped by what they tune.

- :class:`Estimator`: how tr(H S_1) = (1/n) Σ_i g_iᵀ H g_i is estimated (one HVP per sample, or a
  random-sign sketch with a jackknife standard error);
- :class:`Eigen`: ‖H‖, the top eigenvalue of the Hessian of L, by LOBPCG (``eigen=False``: not measured);
- :class:`Compute`: memory and arithmetic (chunk sizes, dtype, how H·v is formed, the sketch's store); none of
  them changes what is computed beyond round-off.

Every default of the diagnostics is defined here, once; the pipeline's config (:mod:`lssr.config`) imports
them. The module imports only :mod:`lssr.errors`, so any module may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import LssrError

#: tr(H S_1) estimators: ``exact`` (one HVP per sample), ``sketch`` (random-sign probes), ``auto`` (exact when
#: n ≤ ``probes``, else the sketch).
ESTIMATORS = ("auto", "exact", "sketch")
#: The estimator of :func:`lssr.diagnose` (and the monitor), and of the pipeline's per-step probe
#: (``probe.estimator`` in a run config: the paper's runs measure tr(H S_1) exactly unless a config asks for
#: the sketch).
DIAGNOSE_ESTIMATOR = "auto"
PIPELINE_ESTIMATOR = "exact"
#: How H·v is formed (``auto`` picks the first that works, see :class:`Compute`).
HVP_MODES = ("auto", "graph", "forward", "reverse", "fd")
#: Batch norm in train mode: ``refuse`` it, ``eval``: measure with its running statistics, or ``batch``: measure
#: the loss SGD descends, L_b(θ) = E_B ℓ(θ; B), each batch B of b samples normalised with its own statistics
#: (:mod:`.batchstats`).
BN_OPTIONS = ("refuse", "eval", "batch")
#: Active dropout: ``refuse`` it, or ``off``: measure without it.
DROPOUT_OPTIONS = ("refuse", "off")

PROBES = 16
#: ``bn="batch"``: the random batches of b samples whose gradients g_B estimate tr S_b, tr S_n and tr(H S_b).
BATCHES = 64
STAGE1 = 6
REL_SE = 0.05
EIG_TOL = 1e-3
EIG_MAX_HVPS = 60
CHUNK = 512
#: The sketch's cap on the per-sample gradients kept in memory (MiB) for a model with forward mode.
STORE_MB = 1024


class OptionError(LssrError, ValueError):
    """A bad option value; the message names the option, the value and the fix."""


def check_choice(where: str, name: str, value: Any, known: tuple[str, ...]) -> None:
    """Refuses ``value`` of option ``name`` when it is not one of ``known``."""
    if value not in known:
        raise OptionError(f"{where}: unknown {name}={value!r}; known: {', '.join(known)}")


def _positive_int(owner: str, name: str, value: Any, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise OptionError(f"{owner}: {name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class Estimator:
    """tr(H S_1): ``kind`` one of :data:`ESTIMATORS`. The sketch uses at most ``probes`` random-sign probes:
    the first ``stage1``, then more while its jackknife se exceeds ``rel_se`` · |estimate| (None: all
    ``probes``). Its signs are drawn from the call's ``seed``. ``batches``: with ``bn="batch"`` only, the K
    random batches of b samples drawn (:mod:`.batchstats`; ``probes`` then caps its sketches of tr(H S_b))."""

    kind: str = DIAGNOSE_ESTIMATOR
    probes: int = PROBES
    stage1: int = STAGE1
    rel_se: float | None = REL_SE
    batches: int = BATCHES

    def __post_init__(self) -> None:
        if self.kind not in ESTIMATORS:
            raise OptionError(f"Estimator: unknown kind={self.kind!r}; known: {', '.join(ESTIMATORS)}")
        _positive_int("Estimator", "probes", self.probes, 3)
        _positive_int("Estimator", "stage1", self.stage1, 3)
        _positive_int("Estimator", "batches", self.batches, 3)
        if self.rel_se is not None and not (isinstance(self.rel_se, (int, float)) and self.rel_se > 0):
            raise OptionError(f"Estimator: rel_se must be a positive fraction (e.g. 0.05) or None, got {self.rel_se!r}")

    def exact(self, n: int) -> bool:
        """Whether tr(H S_1) on n samples is computed exactly (``exact``, or ``auto`` with n ≤ ``probes``)."""
        return self.kind == "exact" or (self.kind == "auto" and n <= self.probes)

    @classmethod
    def of(cls, value: str | Estimator | None) -> Estimator:
        """An :class:`Estimator` from itself, a kind name, or None (the default)."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, cls):
            return value
        raise OptionError(f"estimator must be one of {', '.join(ESTIMATORS)} or an Estimator(...), got {value!r}")


@dataclass(frozen=True)
class Eigen:
    """‖H‖ by LOBPCG, stopped at relative residual ``tol`` or after ``max_hvps`` HVPs, warm-started from
    ``init`` (a vector, or an earlier result whose ``eigenvector`` is used; None: a seeded random start).
    ``heldout`` (``bn="batch"`` only): also the eigenvector u's Rayleigh quotient uᵀH_Bu on that many independent
    random batches B of b, each normalised with its own statistics; their mean is unbiased for uᵀ∇²L_b u, a lower
    bound of ‖∇²L_b‖, where ‖H‖ itself (one partition's, in-sample) lies above it on average."""

    tol: float = EIG_TOL
    max_hvps: int = EIG_MAX_HVPS
    init: Any = field(default=None, repr=False, compare=False)
    heldout: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.tol, (int, float)) and 0 < self.tol < 1):
            raise OptionError(f"Eigen: tol must be a relative tolerance in (0, 1), got {self.tol!r}")
        _positive_int("Eigen", "max_hvps", self.max_hvps, 1)
        _positive_int("Eigen", "heldout", self.heldout, 0)

    @classmethod
    def of(cls, value: bool | Eigen | None) -> Eigen | None:
        """An :class:`Eigen` from itself or True (the default); None for False (‖H‖ not measured)."""
        if value is True or value is None:
            return cls()
        if value is False:
            return None
        if isinstance(value, cls):
            return value
        raise OptionError(f"eigen must be True, False or an Eigen(...), got {value!r}")


@dataclass(frozen=True)
class Compute:
    """Memory and arithmetic; the numbers do not depend on them beyond round-off.

    chunk_size: samples per full-batch pass (separate from any SGD batch size); per_sample_chunk: samples per
    per-sample-gradient pass (None: ``chunk_size``). dtype: the compute dtype (None: the parameters', float32
    for float16 / bfloat16 models). hvp_mode: one of :data:`HVP_MODES`: ``graph`` (the first-order graph of
    ∇L kept and each H·v one backward pass through it), ``forward`` (forward over reverse), ``reverse``
    (reverse over reverse), ``fd`` (a central difference of gradients with a measured error bound), ``auto``:
    the first that the model supports and memory allows. store_mb: the sketch keeps the per-sample gradients
    when they take at most this many MiB (None: :data:`STORE_MB` with forward mode, else a quarter of the
    device's available memory, at least :data:`STORE_MB`)."""

    chunk_size: int = CHUNK
    per_sample_chunk: int | None = None
    dtype: Any = None
    hvp_mode: str = "auto"
    store_mb: float | None = None

    def __post_init__(self) -> None:
        _positive_int("Compute", "chunk_size", self.chunk_size)
        if self.per_sample_chunk is not None:
            _positive_int("Compute", "per_sample_chunk", self.per_sample_chunk)
        if self.hvp_mode not in HVP_MODES:
            raise OptionError(f"Compute: unknown hvp_mode={self.hvp_mode!r}; known: {', '.join(HVP_MODES)}")
        if self.store_mb is not None and not (isinstance(self.store_mb, (int, float)) and self.store_mb >= 0):
            raise OptionError(f"Compute: store_mb must be a number of MiB >= 0 or None, got {self.store_mb!r}")

    @classmethod
    def of(cls, value: Compute | None) -> Compute:
        """A :class:`Compute` from itself or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        raise OptionError(f"compute must be a Compute(...) or None, got {value!r}")
