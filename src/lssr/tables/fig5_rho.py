"""Table ``fig5_rho``: the gradient noise of the trained Figure-5 models, B_simple = (tr S_1 − tr S_n)/tr S_n.

LSSR (eq. 12) reads ρ_b = tr S_n/tr S_b = b/(b + γ_{n,b} B_simple) (γ = 1 with replacement, (n − b)/(n − 1)
without), so the measured B_simple of the heatmap's models predicts the best η per b up to one constant. Here
it is measured at ``where = final``: on the final weights of each Figure-5 run that reached its training goal
(``model.pt``, the step it stopped at, its goal step), over the run's own training subset, with the loss it
was trained on, and batch norm in eval mode (the running statistics: per-sample gradients g_i and S_1 are not
defined with batch statistics). tr S_1 = (1/n) Σ‖g_i‖² and tr S_n = ‖∇L‖² come exactly from one full gradient
and one pass of per-sample gradients (:func:`lssr.noise_scale.noise_scale`, without the Hessian terms of
:func:`lssr.diagnose`), computed in float64.

At most ``rho_runs`` runs per (data set, b) are measured (``experiments.fig5.rho_runs``), those with the highest
final test accuracy; None measures every run that reached the goal. A run that did not reach it (the paper's
red area) is not measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from .runs import Run, TableError

COLUMNS = ["run", "dataset", "n", "replacement", "b", "lr", "seed", "step", "where", "tr_S_1", "tr_S_n", "b_simple"]


def measured_runs(runs: Sequence[Run], rho_runs: int | None = None) -> list[Run]:
    """The runs that reached their training goal, at most ``rho_runs`` per (data set, b): those of the highest
    final test accuracy (then the smaller η, then the seed)."""
    if rho_runs is not None and rho_runs < 1:
        raise TableError(f"fig5_rho: rho_runs = {rho_runs} must be >= 1 (or none: every run that reached the goal)")
    by_cell: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.reached_goal:
            by_cell.setdefault((r.dataset, r.n, r.b), []).append(r)
    out: list[Run] = []
    for cell in sorted(by_cell):
        ranked = sorted(by_cell[cell], key=lambda r: (-_test_acc(r), r.lr, int(r.config.get("seed", 0))))
        out += ranked if rho_runs is None else ranked[:rho_runs]
    return out


def _test_acc(run: Run) -> float:
    acc = (run.meta.get("final") or {}).get("test_acc")
    return float("-inf") if acc is None else float(acc)


def trained_model(run: Run, data, device: str = "cpu"):
    """The final model of ``run`` (``model.pt``) on ``device``, batch norm in eval mode (running statistics)."""
    import torch

    from ..models import build_model

    path = run.path / "model.pt"
    if not path.exists():
        raise TableError(f"{path}: no final weights (the run has not finished; rerun it)")
    cfg = run.config
    model = build_model(cfg["model"]["name"], data.image_shape[0], data.num_classes, cfg["model"]["batch_norm"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device=device, dtype=data.x_train.dtype).eval()


def measure(run: Run, data, device: str = "cpu") -> dict:
    """One row of the table: B_simple of ``run``'s final model on ``data`` (its training subset, all of the run's
    training set: N = n), on ``device``, by :func:`lssr.noise_scale.noise_scale` in float64."""
    import torch

    from ..diagnostics.options import Compute
    from ..noise_scale import noise_scale

    model = trained_model(run, data, device)
    chunk = int(run.config.get("chunk_size", 512))
    x, y = data.x_train, data.y_train
    ns = noise_scale(model, run.loss, (x, y), compute=Compute(chunk_size=chunk, dtype=torch.float64), n_total=len(x))
    return {
        "run": run.name,
        "dataset": run.dataset,
        "n": run.n,
        "replacement": run.replacement,
        "b": run.b,
        "lr": run.lr,
        "seed": int(run.config.get("seed", 0)),
        "step": int(run.meta["steps"]),
        "where": "final",
        "tr_S_1": ns.tr_S_1,
        "tr_S_n": ns.tr_S_n,
        "b_simple": ns.b_simple,
    }


def build(runs: Sequence[Run], data, rho_runs: int | None = None, device: str = "cpu", log=None) -> pd.DataFrame:
    """The table over ``runs`` (Figure-5 runs on the training subset ``data``): one row per measured run
    (:func:`measured_runs`), computed on ``device``. ``log(line)`` is told each run's B_simple and seconds."""
    from ..training.entry import check_subset_matches

    rows = []
    for r in measured_runs(runs, rho_runs):
        check_subset_matches(_run_config(r), data, f"fig5_rho: {r.path}")
        t0 = time.perf_counter()
        rows.append(measure(r, data, device))
        if log is not None:
            log(f"{r.path.name}: B_simple = {rows[-1]['b_simple']:.6g} ({time.perf_counter() - t0:.2f} s)")
    return pd.DataFrame(rows, columns=COLUMNS)


def _run_config(run: Run):
    from ..config import config_from_dict

    return config_from_dict(run.config, where=str(run.path / "run.json"))


def write(
    run_dirs: Sequence[str | Path],
    data_dir: str | Path,
    out: str | Path,
    rho_runs: int | None = None,
    device: str = "cpu",
    log=None,
) -> pd.DataFrame:
    """Measure ``run_dirs`` (run folders, or folders holding them) on the subset folder ``data_dir`` and write
    the table to the CSV ``out`` (atomically)."""
    from ..data import load_subset
    from ..io import write_csv
    from .runs import expand_run_dirs, load_runs

    table = build(load_runs(expand_run_dirs(run_dirs)), load_subset(data_dir), rho_runs, device, log)
    write_csv(out, table)
    return table


def join(parts: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """The per-data-set tables ``parts`` as one (the workflow's ``results/tables/fig5_rho.csv``)."""
    from ..io import write_csv

    frames = []
    for p in map(Path, parts):
        if not p.is_file():
            raise TableError(f"{p}: no such fig5_rho table (it is written by `lssr fig5-rho --runs ...`)")
        frames.append(pd.read_csv(p))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise TableError(f"{', '.join(map(str, parts))}: not fig5_rho tables (no column {missing[0]})")
    write_csv(out, table[COLUMNS])
    return table[COLUMNS]
