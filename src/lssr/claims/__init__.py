"""Claims: the paper's statements checked against the figure tables it is given.

``check_claims({"fig1": df, "fig4": df, ...})`` returns one row per claim and subject (run, b, panel or
data set) with the statistic, its value, the comparison and threshold, and a verdict ``pass`` | ``fail`` |
``inconclusive`` | ``not-enough-data`` (:mod:`.common`). Only the tables given are read
(:data:`lssr.registry.FIGURES` says which table each claim reads), so a config's claims never pick up
another config's tables; a claim whose table is not given is one ``not-enough-data`` row saying so. Every
threshold is a named constant beside its claim, with the paper's words:

- :mod:`.edge`: C1 (Fig. 1, eqs. 6/9), C2 (Fig. 4(a)-(c), §5.1), C6 (Fig. 2);
- :mod:`.iir`: C3 (Fig. 4(d), eq. 11), C4 (ρ_b ≈ R̄_b², §4.2, App. C.5), the self-check K1 (eq. 12);
- :mod:`.rules`: C5 (Fig. 5, LSSR predicted from the measured ρ (table ``fig5_rho``) and fitted, out of sample
  against LSR, SRSR, a constant η and a free power law, intervals over seeds and the grid's resolution);
- :mod:`.valleys`: C7 (Fig. 3 left and right);
- :mod:`.alignment`: C8 (obs. (iii), Prop. 4.1), C9 (§5.2), from the supplementary Figure S1 table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import LssrError
from ..registry import claim_tables
from .alignment import claim_c8, claim_c9
from .common import CLAIM_COLUMNS, STATEMENTS, VERDICTS
from .edge import claim_c1, claim_c2, claim_c6
from .iir import check_k1, claim_c3, claim_c4
from .rules import claim_c5
from .valleys import claim_c7

__all__ = ["CLAIM_COLUMNS", "STATEMENTS", "VERDICTS", "check_claims", "claims_summary",
           "known_tables", "load_tables", "read_tables"]  # fmt: skip

#: tables -> the claim functions that read them (each called with those tables, in that order; the first is the
#: figure table the claim belongs to), in the order of the rows in claims.csv.
CHECKS = (
    (("fig1",), (claim_c1,)),
    (("fig4",), (claim_c2, claim_c3)),
    (("figC5",), (claim_c4, check_k1)),
    (("fig5", "fig5_rho", "figC5"), (claim_c5,)),
    (("fig2",), (claim_c6,)),
    (("fig3",), (claim_c7,)),
    (("figS1",), (claim_c8, claim_c9)),
)


def known_tables() -> tuple[str, ...]:
    """Every table name ``lssr claims --table NAME=CSV`` accepts: the figures' tables some claim reads and the
    registered tables beside them (``fig5_rho``, B_simple measured on Figure 5's trained models; see
    :func:`lssr.registry.claim_tables`)."""
    return claim_tables()


def check_claims(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every claim against the tables in ``tables`` (table name -> table); a claim whose table is not given or
    is empty is ``not-enough-data``, saying so."""
    rows = [r for names, fns in CHECKS for fn in fns for r in fn(*(tables.get(n) for n in names))]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def read_tables(pairs: Iterable[tuple[str, str | Path]]) -> dict[str, pd.DataFrame]:
    """Tables from explicit (figure name, CSV path) pairs; a name no claim reads or a missing file raises."""
    known = known_tables()
    out: dict[str, pd.DataFrame] = {}
    for name, path in pairs:
        if name not in known:
            raise LssrError(f"table {name!r}: no claim reads it (claims read {', '.join(known)})")
        if not Path(path).exists():
            raise LssrError(f"{path}: table {name} not found (build it with `lssr table {name} ...`)")
        out[name] = pd.read_csv(path)
    return out


def load_tables(tables_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The tables some claim reads (:func:`lssr.registry.claim_tables`) found in ``tables_dir``, by figure."""
    tables_dir = Path(tables_dir)
    if not tables_dir.is_dir():
        raise LssrError(f"{tables_dir}: not a folder (expected the folder holding fig1.csv, fig4.csv, ...)")
    return read_tables((n, tables_dir / f"{n}.csv") for n in known_tables() if (tables_dir / f"{n}.csv").exists())


def claims_summary(result: pd.DataFrame, out: str | Path) -> str:
    """The line ``lssr claims`` prints: claim rows written and the count of each verdict."""
    counts = result["verdict"].value_counts().to_dict()
    return f"wrote {len(result)} claim rows to {out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
