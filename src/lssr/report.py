"""What the report shows besides figures: the run table (one row per training run: status, final accuracies,
wall time, provenance: device, git commit, config hash, library versions; ``bn_ghost_batch`` when batch norm
was trained in ghost batches, and whether activation checkpointing was used) and the verdict table that opens
report.html (one row per claim row of ``results/claims.csv``, its text escaped for reStructuredText)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from . import LssrError

RUN_COLUMNS = [
    "run",
    "status",
    "steps",
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
