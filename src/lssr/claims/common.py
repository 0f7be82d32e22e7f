"""What every claim row shares: the columns, the verdict rule and the minimum amounts of data.

A row is ``value <comparison> threshold`` -> ``pass`` / ``fail``; ``not-enough-data`` when fewer than
the claim's minimum points were available or the value is undefined; ``inconclusive`` when the claim
decides it (C5: the rules' difference is within the seeds' uncertainty). ``kind`` is ``claim`` (a
statement of the paper) or ``check`` (a self-check of the pipeline, e.g. eq. (12) against Monte Carlo);
``source`` names the section, figure or equation the statement comes from.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CLAIM_COLUMNS = [
    "claim",
    "kind",
    "source",
    "subject",
    "description",
    "statistic",
    "estimate",
    "target",
    "value",
    "comparison",
    "threshold",
    "verdict",
    "n_points",
    "window",
    "notes",
]
VERDICTS = ("pass", "fail", "inconclusive", "not-enough-data")

#: A median or a fitted line over fewer probed steps follows one oscillation of the edge, not a trend.
MIN_POINTS = 5
#: A rank correlation over batch sizes needs at least three of them to say "rises with b".
MIN_B_SPEARMAN = 3
#: Leave-one-out over batch sizes of a 2-parameter fit (LSSR) needs at least four of them.
MIN_B_FIT = 4

_CMP = {"<=": np.less_equal, "<": np.less, ">": np.greater, ">=": np.greater_equal}

#: claim -> (source in the paper, what the paper states); the ``description`` and ``source`` columns.
STATEMENTS: dict[str, tuple[str, str]] = {}


def statement(claim: str, source: str, description: str) -> str:
    """Register what claim ``claim`` states and where the paper states it; returns the claim id."""
    STATEMENTS[claim] = (source, description)
    return claim


def row(
    claim: str,
    subject: str,
    statistic: str,
    value,
    comparison: str,
    threshold,
    n_points: int,
    min_points: int,
    *,
    kind: str = "claim",
    estimate=np.nan,
    target=np.nan,
    window: str = "",
    notes: str = "",
    verdict: str | None = None,
) -> dict:
    """One claim row; the verdict is ``value <comparison> threshold`` unless given (``inconclusive``)."""
    value = float(value) if value is not None else np.nan
    threshold = float(threshold) if threshold is not None else np.nan
    if n_points < min_points or not (math.isfinite(value) and math.isfinite(threshold)):
        verdict = "not-enough-data"
        notes = (notes + "; " if notes else "") + f"{n_points} points (need {min_points})"
    elif verdict is None:
        verdict = "pass" if bool(_CMP[comparison](value, threshold)) else "fail"
    source, description = STATEMENTS[claim]
    return {
        "claim": claim,
        "kind": kind,
        "source": source,
        "subject": subject,
        "description": description,
        "statistic": statistic,
        "estimate": estimate,
        "target": target,
        "value": value,
        "comparison": comparison,
        "threshold": threshold,
        "verdict": verdict,
        "n_points": int(n_points),
        "window": window,
        "notes": notes,
    }


def missing(claim: str, why: str, kind: str = "claim") -> dict:
    """The one not-enough-data row of a claim whose table is absent or has no usable rows."""
    r = row(claim, "(all)", "-", np.nan, "<=", np.nan, 0, 1, kind=kind)
    r["notes"] = why
    return r


def subject(r: pd.Series | dict, with_b: bool = False) -> str:
    """``SGD b=32 CE η=0.1 <run>``: which run a row is about."""
    loss = str(r["loss"]).upper()
    b = f" b={int(r['b'])}" if with_b else ""
    return f"{r['optimizer']}{b} {loss} η={float(r['lr']):g} {r['run']}"


def finite(x) -> np.ndarray:
    """The finite entries of ``x`` as floats."""
    a = np.asarray(x, dtype=float)
    return a[np.isfinite(a)]


def median(x) -> float:
    """Median of the finite entries (NaN when none)."""
    a = finite(x)
    return float(np.median(a)) if len(a) else np.nan


def slope(x, y) -> tuple[float, int]:
    """Least-squares slope of y on x over the finite pairs, and how many pairs (NaN below 2 distinct x)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        return np.nan, int(ok.sum())
    return float(np.polyfit(x, y, 1)[0]), int(ok.sum())
