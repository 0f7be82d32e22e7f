"""What :func:`lssr.diagnose` returns: :class:`Diagnostics` at one θ (the gradient moments, ‖H‖, L and the
cost), :class:`AtB`, the quantities at one batch size b by identity (1), and :class:`Cost`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import pandas as pd
import torch

from ..errors import LssrError
from .moments import Moments, moments_frame, per_b

Tensor = torch.Tensor

#: The numbers of :meth:`Diagnostics.scalars`, in order.
SCALARS = (
    "n",
    "m",
    "m_frozen",
    "loss",
    "top_eig",
    "top_eig_residual",
    "top_eig_hvps",
    "tr_S_1",
    "tr_S_n",
    "tr_HS_1",
    "tr_HS_1_se",
    "tr_HS_n",
    "ias_n",
    "b_simple",
    "estimator",
    "probes",
    "replacement",
    "reduction",
    "n_total",
)


@dataclass(frozen=True)
class Cost:
    """What one :func:`diagnose` call spent: HVPs, full gradients, per-sample passes and loss passes over the n
    samples, wall seconds, the wall time in gradient-equivalents (seconds / the time of one full gradient
    ∇L timed in the same call), the HVP mode and, for ``fd``, the measured relative error bound of its HVPs,
    how per-sample gradients were computed (``vmap``, or ``loop`` for a model that vmap cannot batch), for
    ``graph`` how many times the kept graph of ∇L was built (each about one gradient), and the forward-mode
    directional derivatives of the per-sample losses (``jvps``, each a pass over the n samples) that replaced
    per-sample passes when the per-sample gradients were not kept."""

    hvps: int
    gradients: int
    per_sample_passes: int
    loss_passes: int
    seconds: float
    grad_seconds: float
    gradient_equivalents: float
    hvp_mode: str
    fd_rel_error: float = math.nan
    per_sample_mode: str = "vmap"
    graph_builds: int = 0
    jvps: int = 0


@dataclass(frozen=True)
class AtB:
    """The diagnostics at batch size b (identity (1)): tr S_b, tr(H S_b), ρ_b = tr S_n/tr S_b, ‖H‖_{S_b} =
    tr(H S_b)/tr S_b (``ias_b``) and the instability ratio tr(H S_b)/tr S_n (one SGD step raises the loss in
    expectation when it exceeds 2/η), each with its standard error (0 for exact quantities, except with
    finite-difference HVPs: their measured error, see :class:`Diagnostics`)."""

    b: int
    replacement: bool
    tr_S_b: float
    tr_S_b_se: float
    tr_HS_b: float
    tr_HS_b_se: float
    rho_b: float
    rho_b_se: float
    ias_b: float
    ias_b_se: float
    instability_b: float
    instability_b_se: float

    def stable(self, lr: float) -> bool:
        """True when the instability ratio tr(H S_b)/tr S_n is at most 2/η (plain SGD, no momentum)."""
        return self.instability_b <= 2.0 / lr


def scalar_moments(mom: Moments) -> Moments:
    """``mom`` without its vectors (∇L, H∇L, the batch gradients, the eigen-solver's output): what a
    :class:`Diagnostics` keeps."""
    empty = torch.zeros(0, dtype=torch.float64)
    return Moments(
        mom.n, mom.tr_S_1, mom.tr_S_n, mom.tr_HS_1, mom.tr_HS_1_se, mom.tr_HS_n, empty, empty, mom.estimator, mom.probes
    )


@dataclass(frozen=True, repr=False)
class Diagnostics:
    """The result of :func:`diagnose` at one θ.

    ``moments``: n samples, tr S_1, tr S_n, tr(H S_1) ± se, tr(H S_n), the estimator and its probes (each also an
    attribute: ``d.tr_S_1``). m trainable parameters (``m_frozen`` entries with ``requires_grad=False`` left out),
    the loss L = (1/n) Σ ℓ_i, ‖H‖ (``top_eig``, with the LOBPCG relative residual and HVPs; ``eigenvector`` is
    q_1 with q_1ᵀ∇L ≥ 0, usable as the next call's ``Eigen(init=...)``), ‖H‖_{S_n} = tr(H S_n)/tr S_n and
    B_simple = (tr S_1 − tr S_n)/tr S_n. ``reduction``: how the given loss reduced a batch (``sum``: an
    optimiser step on b samples moves b times as far as the mean's). ``tr_HS_1_se``: the sketch's jackknife se (0
    for the exact estimator); with finite-difference HVPs (``cost.hvp_mode == 'fd'``) combined in quadrature with
    their measured error (:mod:`.uncertainty`: the larger of cost.fd_rel_error·|tr_HS_1| and the Richardson
    difference of the first samples' g_iᵀ H g_i), and every b's se inherits it. ``batch``: with ``bn="batch"``,
    the :class:`.batchstats.BatchMoments` of the one b measured on the loss L_b of batches normalised with their
    own statistics (None otherwise); :meth:`at`, :meth:`frame` and :meth:`to_dict` then give its numbers."""

    moments: Moments = field(repr=False, compare=False)
    m: int
    m_frozen: int
    loss: float
    top_eig: float
    top_eig_residual: float
    top_eig_hvps: int
    ias_n: float
    b_simple: float
    batch_sizes: tuple[int, ...]
    replacement: bool
    reduction: str
    n_total: int
    cost: Cost
    eigenvector: Tensor | None = field(default=None, repr=False, compare=False)
    batch: Any = field(default=None, repr=False, compare=False)

    n = property(lambda self: self.moments.n, doc="n: the samples measured on")
    tr_S_1 = property(lambda self: self.moments.tr_S_1, doc="tr S_1 = (1/n) Σ ‖g_i‖² − ‖∇L‖²")
    tr_S_n = property(lambda self: self.moments.tr_S_n, doc="tr S_n = ‖∇L‖²")
    tr_HS_1 = property(lambda self: self.moments.tr_HS_1, doc="tr(H S_1)")
    tr_HS_1_se = property(lambda self: self.moments.tr_HS_1_se, doc="the standard error of tr(H S_1)")
    tr_HS_n = property(lambda self: self.moments.tr_HS_n, doc="tr(H S_n) = ∇Lᵀ H ∇L")
    estimator = property(lambda self: self.moments.estimator, doc="exact or sketch")
    probes = property(lambda self: self.moments.probes, doc="the sketch's random-sign probes used (0: exact)")

    def __repr__(self) -> str:
        shown = [*SCALARS[:-3], "batch_sizes", "replacement", "reduction", "n_total"]
        return f"Diagnostics({', '.join(f'{k}={getattr(self, k)!r}' for k in shown)}, cost={self.cost!r})"

    def at(self, b: int, replacement: bool | None = None) -> AtB:
        """The diagnostics at batch size b (see :class:`AtB`), 1 ≤ b ≤ n without replacement, b ≥ 1 with it;
        ``replacement`` defaults to the call's."""
        if self.batch is not None:
            return self.batch.at(b)
        rep = self.replacement if replacement is None else bool(replacement)
        b = int(b)
        if b < 1 or (not rep and b > self.n):
            raise LssrError(f"batch size {b} is out of range: need 1 <= b <= n = {self.n} (without replacement)")
        return AtB(replacement=rep, **per_b(self.moments, b, rep))

    def frame(self, batch_sizes: Iterable[int] | None = None, replacement: bool | None = None) -> pd.DataFrame:
        """One row per b (default: the call's ``batch_sizes``): b, tr S_b, tr(H S_b), ρ_b, ‖H‖_{S_b}, the
        instability ratio, tr S_1, tr S_n, tr(H S_1), tr(H S_n), each with a ``_se`` column."""
        if self.batch is not None:
            for b in batch_sizes or ():
                self.batch.at(b)  # refuses a b not measured
            return self.batch.frame()
        rep = self.replacement if replacement is None else bool(replacement)
        bs = self.batch_sizes if batch_sizes is None else tuple(int(b) for b in batch_sizes)
        return moments_frame(self.moments, bs, rep)

    def scalars(self) -> dict:
        """The numbers that do not depend on b (and the cost), as plain Python values."""
        out = {k: getattr(self, k) for k in SCALARS}
        if self.batch is not None:
            out.update(self.batch.scalars())
        out.update({f"cost_{k}": v for k, v in asdict(self.cost).items()})
        return out

    def to_dict(self, prefix: str = "") -> dict:
        """A flat dict for loggers: the scalars, then every quantity of each b in ``batch_sizes`` named
        ``<quantity>_<b>`` (``ias_b_32``, ``tr_HS_b_32_se``), each key with ``prefix`` in front."""
        out = {f"{prefix}{k}": v for k, v in self.scalars().items() if k != "replacement"}
        for b in self.batch_sizes:
            d = asdict(self.at(b))
            for k, v in d.items():
                if k in ("b", "replacement"):
                    continue
                name = f"{k[:-3]}_{b}_se" if k.endswith("_se") else f"{k}_{b}"
                out[f"{prefix}{name}"] = v
        return out
