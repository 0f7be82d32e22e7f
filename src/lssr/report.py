"""What the report shows besides figures: the run table (one row per training run: status, final accuracies,
wall time, provenance: device, git commit, config hash, library versions; ``bn_ghost_batch`` when batch norm
was trained in ghost batches, and whether activation checkpointing was used) and the two tables that open
report.html: one line per claim (:func:`statement_summary`: verdict counts and the deciding statistic), then one
row per claim row of ``results/claims.csv`` (:func:`verdict_table`), their text escaped for reStructuredText."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from .claims.common import VERDICTS
from .errors import LssrError

RUN_COLUMNS = [
    "run",
    "status",
    "steps",
    "stopped_by",
    "reached_goal",
    "goal_step",
    "train_acc_goal",
    "dataset",
    "n",
    "model",
    "batch_norm",
    "bn_ghost_batch",
    "activation_checkpointing",
    "loss",
    "b",
    "lr",
    "seed",
    "replacement",
    "final_train_loss",
    "final_train_acc",
    "final_test_loss",
    "final_test_acc",
    "wall_time_s",
    "device",
    "git_commit",
    "config_hash",
    "torch",
]


def runs_table(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Collect ``run.json`` of each run folder into one table."""
    rows = []
    for d in map(Path, run_dirs):
        f = d / "run.json"
        if not f.exists():
            raise LssrError(f"{f} is missing: the run has not finished; run `snakemake` to (re)train it")
        try:
            r = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise LssrError(f"{f} is not valid JSON ({exc}); delete the run folder and rerun it") from exc
        c = r["config"]
        fin = r.get("final", {}) or {}
        rows.append(
            {
                "run": d.name,
                "status": r["status"],
                "steps": r["steps"],
                "stopped_by": r.get("stopped_by"),
                "reached_goal": r.get("stopped_by") == "goal",
                "goal_step": r.get("goal_step"),
                "train_acc_goal": r.get("train_acc_goal", c.get("stop", {}).get("train_acc_goal")),
                "dataset": c["data"]["dataset"],
                "n": c["data"]["n"],
                "model": c["model"]["name"],
                "batch_norm": c["model"]["batch_norm"],
                "bn_ghost_batch": c.get("bn_ghost_batch"),
                "activation_checkpointing": (r.get("training_forward") or {}).get("activation_checkpointing"),
                "loss": c["loss"],
                "b": c["optim"]["batch_size"],
                "lr": c["optim"]["lr"],
                "seed": c["seed"],
                "replacement": c["optim"]["replacement"],
                "final_train_loss": fin.get("train_loss"),
                "final_train_acc": fin.get("train_acc"),
                "final_test_loss": fin.get("test_loss"),
                "final_test_acc": fin.get("test_acc"),
                "wall_time_s": r.get("wall_time_s"),
                "device": r.get("device"),
                "git_commit": r.get("git_commit", "unknown"),
                "config_hash": r.get("config_hash"),
                "torch": r.get("versions", {}).get("torch"),
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


VERDICT_COLUMNS = ["claim", "kind", "source", "subject", "statistic", "value", "comparison", "threshold", "verdict"]
_RST_SPECIAL = re.compile(r"([\\|*`_])")


def rst_text(value) -> str:
    """``value`` as reStructuredText literal text: ``\\ | * ` _`` escaped, NaN as an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        value = f"{value:.4g}"
    return _RST_SPECIAL.sub(r"\\\1", str(value))


def verdict_table(claims: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``claims.csv`` a reader needs first (claim, kind, source, subject, statistic, value,
    comparison, threshold, verdict), in claim order, as escaped text for the report's csv-table."""
    missing = [c for c in VERDICT_COLUMNS if c not in claims.columns]
    if missing:
        raise LssrError(f"claims table lacks the column(s) {', '.join(missing)}: rebuild it with `lssr claims`")
    return claims[VERDICT_COLUMNS].apply(lambda col: col.map(rst_text))


SUMMARY_COLUMNS = ["claim", "kind", "description", "source", "verdict", *VERDICTS, "deciding_statistic"]


def _claim_key(claim: str, kind: str) -> tuple:
    """Claims (``kind: claim``) before checks, then by letter and number: C1, C2, ..., C9, K1."""
    m = re.fullmatch(r"([A-Za-z]*)(\d+)", str(claim))
    return (kind != "claim", m.group(1), int(m.group(2))) if m else (kind != "claim", str(claim), 0)


def _num(v: float) -> str:
    return "undefined" if math.isnan(v) else f"{v:.3g}"


def _span(values: pd.Series) -> str:
    """``v`` for one distinct value, ``min–max`` for several (NaN ignored)."""
    v = values.astype(float).dropna()
    if v.empty:
        return "undefined"
    lo, hi = v.min(), v.max()
    return _num(lo) if _num(lo) == _num(hi) else f"{_num(lo)}–{_num(hi)}"


def _statistic_text(stat: str, g: pd.DataFrame, name_subject: bool) -> str:
    """One statistic of a claim over its decided rows ``g``: value (or range), subjects, bound(s), fails."""
    subjects = list(dict.fromkeys(g["subject"].astype(str)))
    where = (subjects[0] if name_subject else "") if len(subjects) == 1 else f"{len(subjects)} subjects"
    bounds = ", ".join(f"{cmp} {_span(t['threshold'])}" for cmp, t in g.groupby("comparison", sort=False))
    fails = int((g["verdict"] == "fail").sum())
    notes = [where, f"pass if {bounds}", f"{fails} fail" if fails else ""]
    return f"{stat} = {_span(g['value'])} ({'; '.join(n for n in notes if n)})"


def statement_summary(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per claim id of ``claims.csv``: claims C1, C2, ... in order, then checks (K1, ...).

    Columns: the claim, its kind, the paper's words (``description``), ``source``, the number of its rows with each
    verdict (``pass``, ``fail``, ``inconclusive``, ``not-enough-data``), an overall ``verdict`` and the
    ``deciding_statistic``. The overall verdict is ``fail`` when any row fails, else ``inconclusive`` when any row
    is, else ``pass`` when any row passes, else ``not-enough-data``: a single failing row is never hidden.
    The deciding statistic is taken over the *decided* rows (every verdict but ``not-enough-data``), one part per
    statistic name in the order of the rows: its value where one subject (a run, a panel, a pooled "all b" row
    or a data set) carries it, else the range min–max over the subjects, with the comparison and threshold(s)
    and the number of failing rows (a subject shared by every decided row is named once, at the end);
    ``none decided`` when every row is ``not-enough-data``."""
    needed = ["claim", "kind", "description", "source", "subject", "statistic", "value", "comparison", "threshold"]
    missing = [c for c in [*needed, "verdict"] if c not in claims.columns]
    if missing:
        raise LssrError(f"claims table lacks the column(s) {', '.join(missing)}: rebuild it with `lssr claims`")
    unknown = sorted(set(claims["verdict"].astype(str)) - set(VERDICTS))
    if unknown:
        raise LssrError(f"claims table has unknown verdict(s) {', '.join(unknown)} (known: {', '.join(VERDICTS)})")
    rows = []
    for claim, g in claims.groupby("claim", sort=False):
        counts = {v: int((g["verdict"] == v).sum()) for v in VERDICTS}
        overall = next((v for v in ("fail", "inconclusive", "pass") if counts[v]), "not-enough-data")
        decided = g[g["verdict"] != "not-enough-data"]
        one = decided["subject"].nunique() == 1  # one subject for the whole claim: named once, at the end
        parts = [_statistic_text(str(s), d, not one) for s, d in decided.groupby("statistic", sort=False)]
        if one:
            parts[-1] += f" on {decided['subject'].iloc[0]}"
        first = g.iloc[0]
        rows.append(
            {"claim": claim, "kind": first["kind"], "description": first["description"], "source": first["source"],
             "verdict": overall, **counts, "deciding_statistic": "; ".join(parts) or "none decided"}
        )  # fmt: skip
    rows.sort(key=lambda r: _claim_key(r["claim"], r["kind"]))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def summary_table(claims: pd.DataFrame) -> pd.DataFrame:
    """:func:`statement_summary` as escaped text for the report's csv-table (the first table of report.html)."""
    return statement_summary(claims).apply(lambda col: col.map(rst_text))
