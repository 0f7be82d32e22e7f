"""B_simple = (tr S_1 − tr S_N)/tr S_N at one θ and its delete-one jackknife standard error over the n samples
(:class:`NoiseScale`), from per-sample numbers, per-sample gradients, a :class:`~lssr.Diagnostics`, a model and data
(:func:`noise_scale`) or the rows of a SharpnessMonitor log (:func:`points_from_log`). tr S_N is made unbiased for
a training set of N: ‖ḡ‖² − (1/n − 1/N) s² (see :mod:`lssr.recommend`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .errors import LssrError


@dataclass(frozen=True)
class NoiseScale:
    """B_simple at one θ, measured on n of the N training samples: tr S_1 = (1/n) Σ‖g_i‖², tr S_N (unbiased,
    see the module's docstring), B_simple = (tr S_1 − tr S_N)/tr S_N and its jackknife standard error
    (NaN when the per-sample numbers were not kept, e.g. from a :class:`~lssr.Diagnostics` alone)."""

    n: int
    n_total: int | None
    tr_S_1: float
    tr_S_n: float
    b_simple: float
    b_simple_se: float
    label: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _b_simple(T1, Tn_raw, n, n_total):
    """B_simple from tr S_1 = T1 and ‖ḡ‖² = Tn_raw on n samples of N (None: an infinite population)."""
    s2 = n / (n - 1) * (T1 - Tn_raw) if n > 1 else 0.0 * T1
    fpc = 1.0 / n - (0.0 if n_total is None else 1.0 / n_total)
    M = Tn_raw - fpc * s2
    with np.errstate(divide="ignore", invalid="ignore"):
        return M, (T1 - M) / M


def noise_scale_from_samples(sq, dots, grad_sq: float, n_total: int | None = None, label: str = "") -> NoiseScale:
    """B_simple ± jackknife se from each sample's ‖g_i‖² (``sq``), g_iᵀ∇L (``dots``) and ‖∇L‖² (``grad_sq``),
    ∇L = ḡ the mean of the n per-sample gradients. ``n_total``: the training set's size N the n samples were
    drawn from (None: an infinite population; N = n: B_simple is exact at θ and se = 0)."""
    sq = np.asarray(sq, dtype=np.float64).reshape(-1)
    a = np.asarray(dots, dtype=np.float64).reshape(-1)
    n = sq.size
    if n < 2 or a.size != n:
        raise LssrError(f"noise scale: need n >= 2 samples with one ‖g_i‖² and one g_iᵀ∇L each, got {n} and {a.size}")
    if n_total is not None and n_total < n:
        raise LssrError(f"noise scale: n_total = {n_total} is smaller than the n = {n} samples measured")
    T1 = float(sq.mean())
    Tn, B = _b_simple(T1, float(grad_sq), n, n_total)
    # delete-one: ḡ_(−i) = (nḡ − g_i)/(n − 1), ‖ḡ_(−i)‖² = (n²‖ḡ‖² − 2n g_iᵀḡ + ‖g_i‖²)/(n − 1)²
    T1_i = (n * T1 - sq) / (n - 1)
    Tn_i = (n * n * float(grad_sq) - 2 * n * a + sq) / (n - 1) ** 2
    if n > 2:
        _, B_i = _b_simple(T1_i, Tn_i, n - 1, n_total)
        var = (n - 1) / n * float(np.sum((B_i - B_i.mean()) ** 2))
        fpc = 1.0 if n_total is None else max(0.0, 1.0 - n / n_total)
        se = math.sqrt(var * fpc) if math.isfinite(var) else math.nan
    else:
        se = math.nan
    return NoiseScale(n, n_total, T1, float(Tn), float(B), se, label)


def noise_scale_from_gradients(G, n_total: int | None = None, label: str = "") -> NoiseScale:
    """:func:`noise_scale_from_samples` from the (n, m) matrix of per-sample gradients g_iᵀ."""
    G = np.asarray(G, dtype=np.float64)
    g = G.mean(0)
    return noise_scale_from_samples((G * G).sum(1), G @ g, float(g @ g), n_total, label)


def noise_scale_from_diagnostics(diag, label: str = "") -> NoiseScale:
    """The :class:`NoiseScale` of a :class:`~lssr.Diagnostics` (or its ``scalars()`` dict): tr S_1, tr S_N made
    unbiased for the training set of ``n_total`` samples, B_simple; se NaN (the per-sample numbers are gone)."""
    get = (lambda k: diag[k]) if isinstance(diag, dict) else (lambda k: getattr(diag, k))
    n, n_total = int(get("n")), get("n_total")
    n_total = n if n_total is None or (isinstance(n_total, float) and math.isnan(n_total)) else int(n_total)
    T1, Tn_raw = float(get("tr_S_1")), float(get("tr_S_n"))
    Tn, B = _b_simple(T1, Tn_raw, n, n_total)
    return NoiseScale(n, n_total, T1, float(Tn), float(B), math.nan, label)


def noise_scale(
    model,
    loss,
    data,
    *,
    n: int | None = None,
    seed: int = 0,
    forward: Callable | None = None,
    bn: str = "refuse",
    dropout: str = "refuse",
    compute=None,
    n_total: int | None = None,
    label: str = "",
) -> NoiseScale:
    """B_simple ± se of ``model`` on ``data`` at the current θ (arguments as :func:`lssr.diagnose`; of
    ``compute``, the chunk size and dtype): one full gradient ∇L and one pass of per-sample gradients for
    ‖g_i‖² and g_iᵀ∇L. The model's mode, ``.grad``, buffers and the global random state are as before the call.
    ``n_total``: N, the training set's size, when ``data`` is not all of it (default: the size of ``data``)."""
    import torch

    from .diagnostics.engine import prepare
    from .diagnostics.guards import check_policies, restoring
    from .diagnostics.options import Compute

    check_policies(bn, dropout, "noise_scale", batch=False)
    comp = Compute.of(compute)
    chunk = comp.chunk_size
    prep = prepare(model, loss, data, n=n, seed=seed, forward=forward, chunk_size=chunk, dtype=comp.dtype)
    with restoring(prep.model, bn, dropout), torch.autocast(prep.device_type, enabled=False):
        op = prep.operator(chunk_size=chunk)
        grad = op.gradient()
        sq = torch.zeros(op.n, dtype=torch.float64)
        dots = torch.zeros(op.n, dtype=torch.float64)
        for sl, Gc in op.per_sample_grads(reuse=True):
            sq[sl] = (Gc * Gc).sum(1).double().cpu()
            dots[sl] = (Gc @ grad).double().cpu()
        grad_sq = float(grad.double().square().sum())
    return noise_scale_from_samples(sq.numpy(), dots.numpy(), grad_sq, n_total or prep.n_total, label)


def points_from_log(log, *, last: int | None = None) -> list[dict]:
    """The measurements of a :class:`lssr.SharpnessMonitor` log of rows of :func:`lssr.diagnose` (``stream=False``;
    its CSV file, a DataFrame or its rows as dicts) as points for :func:`recommend`, the latest first (it gives η;
    the others widen the interval): each row's n, n_total, tr S_1, tr S_N, tr(H S_1), tr(H S_N), labelled by its
    step. ``last``: keep only the latest ``last`` rows (e.g. the end of a short run at b_ref)."""
    import pandas as pd

    if isinstance(log, (str, bytes)) or hasattr(log, "__fspath__"):
        from pathlib import Path

        if not Path(log).is_file():
            raise LssrError(f"monitor log {log}: no such file (SharpnessMonitor(csv=...) writes it)")
        frame = pd.read_csv(log)
    else:
        frame = pd.DataFrame(log)
    need = ["n", "n_total", "tr_S_1", "tr_S_n"]
    missing = [c for c in need if c not in frame.columns]
    if missing and "kind" in frame.columns and (frame["kind"] == "stream").any():
        raise LssrError(
            "monitor log: its rows are the streaming mode's (kind 'stream'), without a probe set's n and n_total; "
            "fix: the CSV of a SharpnessMonitor(..., stream=False) (rows of lssr.diagnose)"
        )
    if missing or frame.empty:
        what = f"lacks the columns {', '.join(missing)}" if missing else "has no rows"
        raise LssrError(f"monitor log: {what}; fix: give the CSV a SharpnessMonitor wrote")
    keep = [c for c in ("step", *need, "tr_HS_1", "tr_HS_n") if c in frame.columns]
    rows = frame[keep].dropna(subset=need).to_dict(orient="records")[::-1]
    if last is not None:
        rows = rows[: int(last)]
    for r in rows:
        r["label"] = f"step {int(r['step'])}" if "step" in r else ""
    return rows
