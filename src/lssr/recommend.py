"""The learning rate for a new batch size from ρ_b measured on the user's model (LSSR, eq. (12)).

Symbols: b the batch size, γ_{N,b} = (N − b)/(N − 1) without replacement and 1 with replacement (N the
training set the batches are drawn from), B_simple = (tr S_1 − tr S_N)/tr S_N (the simple noise scale of
McCandlish et al. 2018) and, by identity (1),

    tr S_b = tr S_N + (γ_{N,b}/b)(tr S_1 − tr S_N),   ρ_b = tr S_N / tr S_b = 1 / (1 + (γ_{N,b}/b) B_simple).

LSSR: η*(b) ∝ ρ_b, so from one reference (b_ref, η_ref) where training works,

    η(b) = η_ref · ρ_b / ρ_{b_ref} = η_ref · (1 + (γ_{N,b_ref}/b_ref) B_simple) / (1 + (γ_{N,b}/b) B_simple),

linear in b while (γ/b) B_simple ≫ 1 and flat once it is ≪ 1. With replacement it is McCandlish et al.'s
ε_opt(B) = ε_max/(1 + B_noise/B) with B_simple for B_noise. LSR (η_ref·b/b_ref) and SRSR (η_ref·√(b/b_ref))
from the same reference are given beside it.

Regimes, by x = (γ_{N,b}/b)·B_simple (= B_simple/b with replacement): ``linear`` when x > 4 (b < B_simple/4),
``saturated`` when x < 1/4 (b > 4·B_simple), ``between`` otherwise.

Stability ceiling (Definition 1): one SGD step raises the loss in expectation at the measured θ when
tr(H S_b)/tr S_N > 2/η, i.e. above η_max(b) = 2·tr S_N / tr(H S_b); with heavy-ball momentum β the
threshold of :func:`lssr.scaling.sgd_threshold`, η_max(b) = (2 + 2β)·tr S_N / tr(H S_b).

Optimisers: plain SGD as the paper; SGD with momentum β through the effective step η/(1 − β): for a fixed β
the rule scales η itself by the same ratio, so the recommendation is unchanged and only the ceiling moves.
Adam-type optimisers (Adam, AdamW, RMSprop, Adagrad, ...) are refused: LSSR is derived for SGD's update, and
an adaptive optimiser's step is not η·g (its batch-size scaling is a different law, see Li et al. 2024).

Interval (:mod:`lssr.noise_scale`): B_simple is measured on n samples; its sampling standard error is the
delete-one jackknife over the samples (one full gradient and one pass of per-sample gradients: each sample's
‖g_i‖² and g_iᵀ∇L), with the finite-population factor 1 − n/N when the n samples are drawn from a training set
of N. The interval of log B_simple is ± z·se/B_simple at the chosen level, and η(b), monotone in B_simple, takes
the interval's ends. tr S_N is estimated without bias from the n samples, ‖ḡ‖² − (1/n − 1/N) s² with
s² = (1/(n − 1)) Σ ‖g_i − ḡ‖² (exactly ‖ḡ‖² when n = N). With several measurement points (e.g. at
initialisation and after some training), the recommendation is the first point's and the interval spans every
point's interval (how far B_simple moves along training).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .diagnostics.options import DIAGNOSE_ESTIMATOR
from .errors import LssrError
from .noise_scale import (
    NoiseScale,
    noise_scale,
    noise_scale_from_diagnostics,
    noise_scale_from_gradients,
    noise_scale_from_samples,
    points_from_log,
)
from .scaling import gamma, trace_b

__all__ = [
    "LINEAR_X",
    "SATURATED_X",
    "NoiseScale",
    "Recommendation",
    "check_optimizer",
    "lr_ratio",
    "measure_and_recommend",
    "noise_scale",
    "noise_scale_from_diagnostics",
    "noise_scale_from_gradients",
    "noise_scale_from_samples",
    "plot_recommendation",
    "points_from_log",
    "recommend",
    "regime",
    "regime_x",
    "stability_ceiling",
]

#: Regime thresholds on x = (γ_{N,b}/b)·B_simple: linear above LINEAR_X, saturated below SATURATED_X.
LINEAR_X, SATURATED_X = 4.0, 0.25
LEVEL = 0.9
#: tr S_N at most TINY·tr S_1 counts as 0 (a stationary point: ∇L vanishes up to rounding).
TINY = 1e-12
#: Optimisers whose update is η times a gradient (LSSR's setting), and adaptive ones, which are refused.
SGD_NAMES = ("sgd",)
ADAPTIVE_NAMES = ("adam", "adamw", "adamax", "nadam", "radam", "sparseadam", "adagrad", "adadelta", "rmsprop",
                  "lamb", "lars", "lion", "adafactor", "sophia", "shampoo")  # fmt: skip
COLUMNS = ["b", "lr", "lr_lo", "lr_hi", "regime", "x", "rho_b", "lsr", "srsr", "lr_max", "above_ceiling"]


# ---------------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------------


def lr_ratio(b, b_ref, b_simple, n: int | None, replacement: bool = False):
    """η(b)/η_ref = ρ_b/ρ_{b_ref} = (1 + (γ_{N,b_ref}/b_ref) B_simple) / (1 + (γ_{N,b}/b) B_simple)."""
    b = np.asarray(b, dtype=float)
    w_ref = gamma(n or 1, b_ref, True if n is None else replacement) / float(b_ref)
    w = np.asarray(gamma(n or 1, b, True if n is None else replacement), dtype=float) / b
    out = (1.0 + w_ref * b_simple) / (1.0 + w * b_simple)
    return float(out) if np.ndim(out) == 0 else out


def regime_x(b, b_simple, n: int | None, replacement: bool = False):
    """x = (γ_{N,b}/b)·B_simple: the noise term of 1/ρ_b = 1 + x."""
    b = np.asarray(b, dtype=float)
    return np.asarray(gamma(n or 1, b, True if n is None else replacement), dtype=float) / b * b_simple


def regime(x: float) -> str:
    """``linear`` (x > 4), ``saturated`` (x < 1/4) or ``between``, for x = (γ_{N,b}/b)·B_simple."""
    return "linear" if x > LINEAR_X else ("saturated" if x < SATURATED_X else "between")


def stability_ceiling(tr_HS_b, tr_S_n: float, momentum: float = 0.0):
    """η_max(b) = (2 + 2β)·tr S_N / tr(H S_b) (β = 0: 2·tr S_N / tr(H S_b)); +∞ when tr(H S_b) ≤ 0."""
    r = np.asarray(tr_HS_b, dtype=float) / float(tr_S_n)
    with np.errstate(divide="ignore"):
        out = np.where(r > 0, (2.0 + 2.0 * momentum) / r, math.inf)
    return float(out) if out.ndim == 0 else out


def check_optimizer(optimizer: Any) -> str:
    """The optimiser's lower-case name when LSSR applies (plain or momentum SGD); an LssrError for an adaptive
    (Adam-type) or unknown one. Accepts a name or a ``torch.optim.Optimizer``."""
    name = (optimizer if isinstance(optimizer, str) else type(optimizer).__name__).lower()
    if name in SGD_NAMES:
        return name
    if name in ADAPTIVE_NAMES or "adam" in name:
        raise LssrError(
            f"recommend: optimiser {name!r} is adaptive; LSSR (η ∝ ρ_b) is derived for SGD's step η·g, not for "
            f"Adam-type updates; fix: use it with SGD (momentum allowed), or tune η for {name} at the new b directly"
        )
    raise LssrError(f"recommend: unknown optimiser {name!r}; known: {', '.join(SGD_NAMES)} (plain or momentum SGD)")


@dataclass(frozen=True)
class Recommendation:
    """η per target b from one reference (b_ref, η_ref): the LSSR value with its interval at ``level``, the
    regime, x = (γ/b)·B_simple, ρ_b, LSR and SRSR from the same reference, the stability ceiling η_max(b)
    (NaN without Hessian diagnostics) and whether η exceeds it. ``points``: the B_simple measurements used."""

    b_ref: int
    lr_ref: float
    n: int | None
    replacement: bool
    momentum: float
    level: float
    b_simple: float
    b_simple_lo: float
    b_simple_hi: float
    points: tuple[NoiseScale, ...]
    rows: tuple[dict, ...] = field(repr=False)

    def frame(self):
        """One row per b: :data:`COLUMNS`."""
        import pandas as pd

        return pd.DataFrame(list(self.rows), columns=COLUMNS)

    def lr(self, b: int) -> float:
        """The recommended η at b (also for a b not in the table)."""
        return self.lr_ref * lr_ratio(int(b), self.b_ref, self.b_simple, self.n, self.replacement)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("b_ref", "lr_ref", "n", "replacement", "momentum", "level")}
        out.update(b_simple=self.b_simple, b_simple_lo=self.b_simple_lo, b_simple_hi=self.b_simple_hi)
        out.update(thresholds={"linear": f"x > {LINEAR_X:g}", "saturated": f"x < {SATURATED_X:g}"})
        out["points"] = [p.to_dict() for p in self.points]
        out["per_b"] = [dict(r) for r in self.rows]
        return out


def _check_b(b: int, n: int | None, replacement: bool, what: str) -> int:
    if isinstance(b, float) and not b.is_integer() or int(b) < 1:
        raise LssrError(f"recommend: {what} = {b!r} is out of range; fix: a whole batch size >= 1")
    b = int(b)
    if n is not None and not replacement and b > n:
        raise LssrError(
            f"recommend: {what} = {b} is out of range: without replacement b <= N = {n} (the training set); fix: a "
            f"smaller b, or replacement=True"
        )
    return b


def _points(source) -> tuple[NoiseScale, ...]:
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise LssrError("recommend: no measurement of B_simple given")
    out = []
    for i, s in enumerate(items):
        if isinstance(s, NoiseScale):
            out.append(s)
        elif hasattr(s, "tr_S_1") and hasattr(s, "n_total") or isinstance(s, dict):
            label = s.get("label") if isinstance(s, dict) else None
            out.append(noise_scale_from_diagnostics(s, label=label or f"point {i}"))
        else:
            raise LssrError(
                f"recommend: cannot read B_simple from {type(s).__name__}; give a NoiseScale or Diagnostics"
            )
    for p in out:
        if not math.isfinite(p.b_simple) or p.b_simple <= 0 or not p.tr_S_n > TINY * abs(p.tr_S_1):
            where = f" at {p.label}" if p.label else ""
            raise LssrError(
                f"recommend: B_simple = {p.b_simple:.4g} (tr S_N = {p.tr_S_n:.4g}, tr S_1 = {p.tr_S_1:.4g}){where} "
                f"is not a finite positive number, so ρ_b says nothing (tr S_N ≈ 0 at a minimum, or too few samples); "
                f"fix: measure where training is at b_ref (not at a minimum), on more samples"
            )
    return tuple(out)


def _interval(p: NoiseScale, z: float) -> tuple[float, float]:
    if not math.isfinite(p.b_simple_se):
        return math.nan, math.nan
    k = math.exp(z * p.b_simple_se / p.b_simple)
    return p.b_simple / k, p.b_simple * k


def _ceilings(d, bs: list[int], N: int | None, rep: bool, momentum: float) -> list[float]:
    """η_max(b) of each b from the diagnostics ``d`` (tr(H S_b) by identity (1)); NaN without them."""
    if d is None:
        return [math.nan] * len(bs)
    trHS = trace_b(float(d.tr_HS_1), float(d.tr_HS_n), N or int(d.n), np.asarray(bs, dtype=float), rep if N else True)
    return list(np.atleast_1d(stability_ceiling(trHS, float(d.tr_S_n), momentum)))


def recommend(
    source,
    b_ref: int,
    lr_ref: float,
    batch_sizes: Iterable[int],
    *,
    n: int | None = None,
    replacement: bool = False,
    momentum: float = 0.0,
    optimizer: Any = "sgd",
    level: float = LEVEL,
    diagnostics=None,
) -> Recommendation:
    """η(b) = η_ref·ρ_b/ρ_{b_ref} (LSSR, eq. (12)) for each b of ``batch_sizes``, with its interval, regime, LSR
    and SRSR values and the stability ceiling η_max(b) = (2 + 2β)·tr S_N / tr(H S_b).

    source: a :class:`NoiseScale` (:func:`noise_scale`), a :class:`~lssr.Diagnostics` (or a dict of its
        scalars, e.g. a :class:`lssr.SharpnessMonitor` row: :func:`points_from_log`), or a sequence of them
        measured at several points of training (the first gives η; the interval spans them all).
    b_ref, lr_ref: a batch size and a learning rate where training works. n: the training set's size N
        (default: the first point's ``n_total``); replacement: batches drawn with replacement (γ = 1).
    momentum: SGD's β (the rule holds for the effective step η/(1 − β); the ceiling is the heavy-ball one).
    optimizer: a name or a torch optimiser; Adam-type ones are refused (LssrError).
    diagnostics: a :class:`~lssr.Diagnostics` for the ceiling (default: the first point when it is one).
    """
    check_optimizer(optimizer)
    if not (isinstance(lr_ref, numbers.Real) and math.isfinite(lr_ref) and lr_ref > 0):
        raise LssrError(
            f"recommend: η_ref = {lr_ref!r} must be a finite number > 0; fix: the learning rate used at b_ref"
        )
    if not 0 <= momentum < 1:
        raise LssrError(f"recommend: momentum β = {momentum!r} must satisfy 0 <= β < 1")
    if not 0 < level < 1:
        raise LssrError(f"recommend: level = {level!r} must be in (0, 1), e.g. 0.9")
    points = _points(source)
    first = source[0] if isinstance(source, (list, tuple)) else source
    if diagnostics is None and (hasattr(first, "tr_HS_1") or isinstance(first, dict) and "tr_HS_1" in first):
        diagnostics = first
    if isinstance(diagnostics, dict):
        from types import SimpleNamespace

        diagnostics = SimpleNamespace(**diagnostics)
    N = n if n is not None else points[0].n_total
    N = None if N is None else int(N)
    rep = bool(replacement)
    b_ref = _check_b(b_ref, N, rep, "b_ref")
    bs = [_check_b(b, N, rep, "target b") for b in batch_sizes]
    if not bs:
        raise LssrError("recommend: no target batch sizes; fix: give at least one b")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    B = points[0].b_simple
    ends = [e for p in points for e in _interval(p, z)] + [p.b_simple for p in points[1:]]
    finite = [e for e in ends if math.isfinite(e)]
    lo, hi = (min(finite + [B]), max(finite + [B])) if finite else (math.nan, math.nan)
    ceil = _ceilings(diagnostics, bs, N, rep, momentum)
    rows = []
    for b, cap in zip(bs, ceil):
        lr = lr_ref * lr_ratio(b, b_ref, B, N, rep)
        ends_b = [lr_ref * lr_ratio(b, b_ref, e, N, rep) for e in (lo, hi)] if math.isfinite(lo) else [math.nan] * 2
        x = float(regime_x(b, B, N, rep))
        rows.append(
            {
                "b": b,
                "lr": lr,
                "lr_lo": min(ends_b),
                "lr_hi": max(ends_b),
                "regime": regime(x),
                "x": x,
                "rho_b": 1.0 / (1.0 + x),
                "lsr": lr_ref * b / b_ref,
                "srsr": lr_ref * math.sqrt(b / b_ref),
                "lr_max": float(cap),
                "above_ceiling": bool(math.isfinite(cap) and lr > cap),
            }
        )
    return Recommendation(b_ref, float(lr_ref), N, rep, float(momentum), float(level), B, lo, hi, points, tuple(rows))


def measure_and_recommend(
    model,
    loss,
    data,
    b_ref: int,
    lr_ref: float,
    batch_sizes: Sequence[int],
    *,
    n: int | None = None,
    seed: int = 0,
    forward: Callable | None = None,
    bn: str = "refuse",
    dropout: str = "refuse",
    replacement: bool = False,
    momentum: float = 0.0,
    optimizer: Any = "sgd",
    level: float = LEVEL,
    n_train: int | None = None,
    estimator=DIAGNOSE_ESTIMATOR,
    eigen=False,
    compute=None,
):
    """Measures first, then :func:`recommend`: :func:`lssr.diagnose` (tr(H S_b) for the ceiling; ``estimator``,
    ``eigen`` and ``compute`` as there, ‖H‖ not measured by default) and :func:`noise_scale` (B_simple ± se) of
    ``model`` on ``data`` at the current θ. Returns (Recommendation, Diagnostics, NoiseScale). ``n_train``: N
    when ``data`` is not the whole training set."""
    from .diagnostics.api import diagnose

    common = dict(n=n, seed=seed, forward=forward, bn=bn, dropout=dropout)
    diag = diagnose(model, loss, data, **common, estimator=estimator, eigen=eigen, compute=compute)
    noise = noise_scale(model, loss, data, **common, compute=compute, n_total=n_train)
    rec = recommend(
        noise,
        b_ref,
        lr_ref,
        batch_sizes,
        n=n_train,
        replacement=replacement,
        momentum=momentum,
        optimizer=optimizer,
        level=level,
        diagnostics=diag,
    )
    return rec, diag, noise


# ---------------------------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------------------------


def plot_recommendation(rec: Recommendation, path=None, observed: dict | None = None):
    """η against b on log-log axes: the LSSR curve with its interval, the regimes (shaded: linear b with x > 4,
    saturated x < 1/4), LSR and SRSR from the same reference, the reference point, the targets, the ceiling
    η_max(b) and, when given, ``observed`` {b: best η}. Written to ``path`` when given; returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = rec.frame()
    lo_b = min([rec.b_ref, *f["b"]])
    hi_b = max([rec.b_ref, *f["b"]])
    hi_b = min(hi_b * 2, rec.n) if rec.n and not rec.replacement else hi_b * 2
    grid = np.unique(np.geomspace(max(1, lo_b / 2), hi_b, 200).round().astype(int))
    lr = rec.lr_ref * lr_ratio(grid, rec.b_ref, rec.b_simple, rec.n, rec.replacement)
    fig, ax = plt.subplots(figsize=(9.0, 4.4))
    x = regime_x(grid, rec.b_simple, rec.n, rec.replacement)
    for mask, color, name in ((x > LINEAR_X, "tab:blue", "linear"), (x < SATURATED_X, "tab:orange", "saturated")):
        if mask.any():
            ax.axvspan(grid[mask].min(), grid[mask].max(), color=color, alpha=0.07, lw=0)
            ax.text(np.sqrt(grid[mask].min() * grid[mask].max()), 0.98, name, transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color=color)  # fmt: skip
    if math.isfinite(rec.b_simple_lo):
        ends = [
            rec.lr_ref * lr_ratio(grid, rec.b_ref, e, rec.n, rec.replacement)
            for e in (rec.b_simple_lo, rec.b_simple_hi)
        ]
        span = " and every point" if len(rec.points) > 1 else ""
        label = f"interval ({rec.level:.0%}{span}: B_simple {rec.b_simple_lo:.3g}–{rec.b_simple_hi:.3g})"
        ax.fill_between(grid, np.minimum(*ends), np.maximum(*ends), color="k", alpha=0.15, lw=0, label=label)
    ax.plot(grid, lr, "k-", lw=2, label=f"LSSR (B_simple = {rec.b_simple:.3g})")
    ax.plot(grid, rec.lr_ref * grid / rec.b_ref, "--", color="tab:blue", label="LSR")
    ax.plot(grid, rec.lr_ref * np.sqrt(grid / rec.b_ref), ":", color="tab:green", label="SRSR")
    ax.plot(f["b"], f["lr"], "ko", ms=4)
    if np.isfinite(f["lr_max"]).any():
        ax.plot(
            f["b"], f["lr_max"], "v-", color="tab:red", ms=5, lw=1, label="ceiling η_max(b) = 2(1+β) tr S_N / tr(H S_b)"
        )
    ax.plot(
        [rec.b_ref],
        [rec.lr_ref],
        "*",
        color="tab:purple",
        ms=14,
        label=f"reference (b = {rec.b_ref}, η = {rec.lr_ref:.3g})",
    )
    if observed:
        bs = sorted(observed)
        ax.plot(bs, [observed[b] for b in bs], "s", mfc="none", color="tab:brown", ms=8, label="observed best η")
    ax.set(xscale="log", yscale="log", xlabel="batch size b", ylabel="learning rate η")
    ax.set_title("η for a new batch size (η ∝ ρ_b, eq. (12))", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if path is not None:
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
