"""Run folders, read once: ``run.json`` (config, status, final accuracies), ``diagnostics.csv`` and
``metrics.csv``; and the per-step quantities at a run's own batch size b (tr(S_b), tr(H S_b), ρ_b,
‖H‖_{S_b}, tr(H S_b)/tr(S_n)), measured or rebuilt from identity (1).

GD vs SGD is read from each run's config: GD iff batch_size is "full" or n, without replacement.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import pandas as pd

from .. import scaling
from ..columns import per_b
from ..errors import LssrError


class TableError(LssrError):
    """A run folder or table input that cannot be used: the message names the path and the fix."""


def dataset_label(source: str, root: str | None = None) -> str:
    """The label of a data set in the tables, figures and claims: its source (cifar10, digits, ...); for an image
    folder, the folder's name (e.g. ``cifar10-jpeg``), since ``imagefolder`` alone would not say which data it was."""
    if source == "imagefolder" and root:
        return Path(str(root).rstrip("/")).name or "imagefolder"
    return str(source)


@dataclass
class Run:
    """One training run folder, read once."""

    path: Path
    meta: dict
    diag: pd.DataFrame | None
    metrics: pd.DataFrame | None

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def name(self) -> str:
        return self.path.as_posix()

    @property
    def lr(self) -> float:
        return float(self.config["optim"]["lr"])

    @property
    def n(self) -> int:
        return int(self.config["data"]["n"])

    @property
    def dataset(self) -> str:
        """The data set's label (:func:`dataset_label`)."""
        d = self.config["data"]
        return dataset_label(d["dataset"], d.get("root"))

    @property
    def loss(self) -> str:
        return str(self.config.get("loss", "")).lower()

    @property
    def replacement(self) -> bool:
        return bool(self.config["optim"].get("replacement", False))

    @property
    def b(self) -> int:
        bs = self.config["optim"].get("batch_size", "full")
        return self.n if bs == "full" else int(bs)

    @cached_property
    def is_gd(self) -> bool:
        """Full-batch GD: b = n drawn without replacement (read from the config once)."""
        return self.b == self.n and not self.replacement

    @property
    def optimizer(self) -> str:
        return "GD" if self.is_gd else "SGD"

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "completed"))

    @property
    def stopped_by(self) -> str:
        """What ended the run: ``goal`` (a loss or accuracy goal met), ``budget`` (its step cap) or ``divergence``."""
        return str(self.meta.get("stopped_by", "divergence" if self.status == "diverged" else "budget"))

    @property
    def train_acc_goal(self) -> float:
        """The configured training-accuracy goal (NaN: none)."""
        goal = self.meta.get("train_acc_goal", (self.config.get("stop") or {}).get("train_acc_goal"))
        return math.nan if goal is None else float(goal)

    @property
    def reached_goal(self) -> bool:
        """Whether the run stopped because it met its goal (the paper's zero training error for Figure 5)."""
        return self.stopped_by == "goal"

    @property
    def goal_step(self) -> float:
        """The evaluation step at which the goal was met (NaN: never)."""
        step = self.meta.get("goal_step", self.meta.get("steps") if self.reached_goal else None)
        return math.nan if step is None else float(step)

    def col(self, name: str) -> pd.Series:
        """A diagnostics column as floats (all-NaN if absent)."""
        d = self.diag
        if d is None:
            raise TableError(f"{self.path}: no diagnostics.csv (train with a probe config)")
        if name in d.columns:
            return d[name]
        return pd.Series(np.nan, index=d.index, dtype=float)


RunLike = Union[str, Path, Run]


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    frame = pd.read_csv(path)
    frame = frame.apply(pd.to_numeric, errors="coerce")
    if "step" in frame.columns:
        frame = frame.dropna(subset=["step"]).sort_values("step", kind="stable").reset_index(drop=True)
        frame["step"] = frame["step"].astype(int)
    return frame


def load_run(path: str | Path) -> Run:
    """Read one run folder (``run.json`` required; ``diagnostics.csv`` and ``metrics.csv`` if present)."""
    path = Path(path)
    rj = path / "run.json"
    if not rj.exists():
        raise TableError(f"{path}: no run.json (is this a run folder written by `lssr train`?)")
    try:
        meta = json.loads(rj.read_text())
    except json.JSONDecodeError as exc:
        raise TableError(f"{rj}: not valid JSON ({exc})") from exc
    for key in ("data", "optim"):
        if key not in meta.get("config", {}):
            raise TableError(f"{rj}: config.{key} missing")
    return Run(path, meta, _read_csv(path / "diagnostics.csv"), _read_csv(path / "metrics.csv"))


def expand_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders from paths: a folder with run.json is a run; any other folder is searched for run folders."""
    out: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if (p / "run.json").exists():
            found = [p]
        elif p.is_dir():
            found = sorted(q.parent for q in p.rglob("run.json"))
            if not found:
                raise TableError(f"{p}: no run folder (run.json) found under it")
        else:
            raise TableError(f"{p}: not a run folder (expected a folder holding run.json)")
        for q in found:
            if q.resolve() not in seen:
                seen.add(q.resolve())
                out.append(q)
    return out


def load_runs(runs: Iterable[RunLike]) -> list[Run]:
    """Runs from run folders (already loaded runs pass through)."""
    return [r if isinstance(r, Run) else load_run(r) for r in runs]


def diag_runs(runs: Iterable[RunLike]) -> list[Run]:
    """The runs that have probed diagnostics (the others cannot contribute to a per-step table)."""
    return [r for r in load_runs(runs) if r.diag is not None and len(r.diag)]


#: The columns that say which run a row comes from (the keys of :func:`base_columns`, in order).
BASE_COLUMNS = ["run", "dataset", "loss", "optimizer", "b", "n", "lr"]


def base_columns(run: Run) -> dict:
    """The columns that say which run a row comes from (:data:`BASE_COLUMNS`)."""
    return {
        "run": run.name,
        "dataset": run.dataset,
        "loss": run.loss,
        "optimizer": run.optimizer,
        "b": run.b,
        "n": run.n,
        "lr": run.lr,
    }


#: Whether and when a run met its training goal (:func:`goal_columns`), for tables that pass them through.
GOAL_COLUMNS = ["reached_goal", "goal_step", "train_acc_goal"]


def goal_columns(run: Run) -> dict:
    """:data:`GOAL_COLUMNS` of a run: reached_goal (stopped by its goal), goal_step (NaN if not), train_acc_goal
    (NaN if none was set)."""
    return {"reached_goal": run.reached_goal, "goal_step": run.goal_step, "train_acc_goal": run.train_acc_goal}


def ias_n(run: Run) -> pd.Series:
    """‖H‖_{S_n} = tr(H S_n)/tr(S_n) per probed step (the ``ias_n`` column, else rebuilt from the traces)."""
    return run.col("ias_n").fillna(run.col("tr_HS_n") / run.col("tr_S_n"))


def for_b(run: Run) -> pd.DataFrame:
    """tr(S_b), tr(H S_b), ρ_b, ‖H‖_{S_b} and the instability ratio tr(H S_b)/tr(S_n) per probed step at
    the run's own b: measured columns when present, else rebuilt from tr_S_1/tr_S_n, tr_HS_1/tr_HS_n
    by identity (1) (:func:`lssr.scaling.trace_b`). For GD (S_b = S_n) ρ_b = 1 and ‖H‖_{S_b} = ‖H‖_{S_n}.
    ``instability_se`` is the standard error of the instability ratio, se(tr(H S_b))/tr(S_n) (the sketch's
    se of tr(H S_1) times γ_{n,b}/b when the per-b one is absent); 0 for GD, whose tr(H S_n) is exact."""
    tr_s_n, tr_hs_n = run.col("tr_S_n"), run.col("tr_HS_n")
    if run.is_gd:
        ias = ias_n(run)
        out = {"tr_S_b": tr_s_n, "tr_HS_b": tr_hs_n, "rho_b": 1.0, "ias_b": ias, "instability": ias}
        return pd.DataFrame({**out, "instability_se": 0.0})  # tr(H S_n) = ∇Lᵀ H ∇L needs no sketch
    n, b, repl = run.n, run.b, run.replacement
    tr_s_b = run.col(per_b("tr_S_b", b)).fillna(scaling.trace_b(run.col("tr_S_1"), tr_s_n, n, b, repl))
    tr_hs_b = run.col(per_b("tr_HS_b", b)).fillna(scaling.trace_b(run.col("tr_HS_1"), tr_hs_n, n, b, repl))
    rho = run.col(per_b("rho_b", b)).fillna(tr_s_n / tr_s_b)
    ias = run.col(per_b("ias_b", b)).fillna(tr_hs_b / tr_s_b)
    inst = run.col(per_b("instability_b", b)).fillna(tr_hs_b / tr_s_n).fillna(ias / rho)
    se = run.col(per_b("tr_HS_b_se", b)).fillna(scaling.batch_weight(n, b, repl) * run.col("tr_HS_1_se")) / tr_s_n
    return pd.DataFrame(
        {"tr_S_b": tr_s_b, "tr_HS_b": tr_hs_b, "rho_b": rho, "ias_b": ias, "instability": inst, "instability_se": se}
    )


def first_index(mask: np.ndarray, start: int = 0) -> int | None:
    """The first index ≥ start where ``mask`` holds, None if none."""
    idx = np.flatnonzero(np.asarray(mask, dtype=bool)[start:])
    return int(idx[0]) + start if len(idx) else None
