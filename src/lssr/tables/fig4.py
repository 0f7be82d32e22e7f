"""Figure 4 table: ‖H‖ and ‖H‖_{S_n} per step for GD runs, ‖H‖_{S_b} and its level 2ρ_b/η for SGD runs.

Windows (read by claims C2 and C3):
- GD: from the first step with ‖H‖_{S_n} ≥ 2/η; for CE runs the window ends at the first later step
  where the training loss falls below 1e-2 × its first probed value or the training accuracy reaches
  100% (the CE sharpness decays once the loss goes to 0), for MSE at the end of the run.
- SGD: from :data:`SGD_DELAY` steps after the first probed step where ‖H‖ itself reaches the level 2ρ_b/η
  (before it ‖H‖_{S_b} ≤ ‖H‖ cannot be at its level), to the end of the run, for CE to the same end as GD.
  The window is chosen without looking at ‖H‖_{S_b}, the quantity C3 tests. No window (all ``in_window``
  False, ``level_median`` NaN) when ‖H‖ never reaches the level or was not measured; ``window_rule`` says which.

Each b's level 2ρ_b/η is reported per step and as its median over the window (``level_median``).
``value_smooth`` is a centred rolling median over ``smooth_window`` probed steps (default 5,
``min_periods=1``), for display only.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .runs import Run, RunLike, base_columns, diag_runs, first_index, for_b, ias_n

CE_LOSS_DROP = 1e-2  # CE window end: training loss below this fraction of its first probed value
SMOOTH_WINDOW = 5
#: SGD window: ‖H‖_{S_b} is given this many steps after ‖H‖ reaches 2ρ_b/η to rise to its level, as ‖H‖_{S_n}
#: "soars from 0 to 2/η in a few steps after ‖H‖ exceeds 2/η" (§5.1, Prop. 4.1; the 20 steps of claim C8).
SGD_DELAY = 20

COLUMNS = [
    "panel",
    "optimizer",
    "run",
    "dataset",
    "loss",
    "lr",
    "b",
    "n",
    "step",
    "quantity",
    "value",
    "value_smooth",
    "level",
    "level_smooth",
    "level_median",
    "two_over_eta",
    "instability_ratio",
    "train_loss",
    "train_acc",
    "in_window",
    "window_start",
    "window_end",
    "window_rule",
]


def train_acc(run: Run, steps: np.ndarray) -> np.ndarray:
    """Training accuracy at each probed step (last evaluation at or before it)."""
    m = run.metrics
    if m is None or "train_acc" not in m.columns or m["train_acc"].notna().sum() == 0:
        return np.full(len(steps), np.nan)
    ev = m.dropna(subset=["train_acc"])[["step", "train_acc"]].sort_values("step")
    left = pd.DataFrame({"step": steps.astype("int64")})
    ev = ev.astype({"step": "int64"})
    return pd.merge_asof(left, ev, on="step", direction="backward")["train_acc"].to_numpy(float)


def smooth(v: pd.Series, window: int) -> np.ndarray:
    """Centred rolling median over ``window`` probed steps (display only)."""
    return v.rolling(window, center=True, min_periods=1).median().to_numpy(float)


def ce_end(start: int, loss: np.ndarray, acc: np.ndarray) -> int:
    """The end (exclusive) of a CE run's window opened at ``start``: the first later step where the training
    loss < CE_LOSS_DROP × its first probed value or training accuracy = 100%; the end of the run otherwise."""
    first_loss = loss[np.isfinite(loss)][0] if np.isfinite(loss).any() else np.nan
    done = (np.isfinite(loss) & (loss < CE_LOSS_DROP * first_loss)) | (np.isfinite(acc) & (acc >= 1.0 - 1e-12))
    e = first_index(done, start + 1)
    return len(loss) if e is None else e


CE_END_RULE = (
    f"until the training loss < {CE_LOSS_DROP:g} × its first probed value or training accuracy = 100% (exclusive), "
    "else the end of the run"
)


def gd_window(run: Run, ias: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> tuple[int | None, int, str]:
    """(start, end (exclusive), rule) of a GD run's window: from the first ‖H‖_{S_n} ≥ 2/η; for CE until
    the training loss < CE_LOSS_DROP × its first probed value or training accuracy = 100%."""
    two = 2.0 / run.lr
    start = first_index(np.isfinite(ias) & (ias >= two))
    end_idx, rule = len(ias), "from the first step with ‖H‖_{S_n} ≥ 2/η to the end of the run"
    if run.loss == "ce":
        rule = f"from the first step with ‖H‖_{{S_n}} ≥ 2/η {CE_END_RULE}"
        if start is not None:
            end_idx = ce_end(start, loss, acc)
    return start, end_idx, rule


def sgd_window(
    run: Run, steps: np.ndarray, top: np.ndarray, level: np.ndarray, loss: np.ndarray, acc: np.ndarray
) -> tuple[int | None, int, str]:
    """(start, end (exclusive), rule) of an SGD run's window: from SGD_DELAY steps after the first probed step
    with ‖H‖ ≥ 2ρ_b/η; for CE until the end rule of GD. Chosen from ‖H‖, ρ_b and the loss, never ‖H‖_{S_b}."""
    end_rule = CE_END_RULE if run.loss == "ce" else "to the end of the run"
    rule = f"from {SGD_DELAY} steps after the first step with ‖H‖ ≥ 2ρ_b/η {end_rule}"
    if not np.isfinite(top).any():
        return None, 0, "‖H‖ not measured: no window (C3's window opens where ‖H‖ reaches 2ρ_b/η)"
    cross = first_index(np.isfinite(top) & np.isfinite(level) & (top >= level))
    if cross is None:
        return None, 0, "‖H‖ never reached 2ρ_b/η (the run never sharpened enough): no window"
    start = first_index(steps >= steps[cross] + SGD_DELAY)
    if start is None:
        return None, 0, f"‖H‖ reached 2ρ_b/η at step {steps[cross]}, < {SGD_DELAY} steps before the end: no window"
    end_idx = ce_end(start, loss, acc) if run.loss == "ce" else len(steps)
    return start, end_idx, f"{rule} (‖H‖ first ≥ 2ρ_b/η at step {steps[cross]})"


def gd_panel(run: Run, panel: str, smooth_window: int) -> pd.DataFrame:
    """Panel rows of a GD run: ‖H‖ (``top_eig``) and ‖H‖_{S_n} (``ias_n``) per step, level 2/η."""
    two = 2.0 / run.lr
    steps = run.diag["step"].to_numpy(int)
    top = run.col("top_eig").to_numpy(float)
    ias = ias_n(run).to_numpy(float)
    loss = run.col("loss").to_numpy(float)
    acc = train_acc(run, steps)
    start, end_idx, rule = gd_window(run, ias, loss, acc)
    in_win = np.zeros(len(steps), dtype=bool)
    w_start = w_end = np.nan
    if start is not None:
        in_win[start:end_idx] = True
        w_start, w_end = steps[start], steps[end_idx - 1]
    common = {
        "panel": panel,
        **base_columns(run),
        "step": steps,
        "level": two,
        "level_smooth": two,
        "level_median": two,
        "two_over_eta": two,
        "instability_ratio": ias,
        "train_loss": loss,
        "train_acc": acc,
        "in_window": in_win,
        "window_start": w_start,
        "window_end": w_end,
        "window_rule": rule,
    }
    parts = []
    for q, v in (("top_eig", top), ("ias_n", ias)):
        parts.append(
            pd.DataFrame({**common, "quantity": q, "value": v, "value_smooth": smooth(pd.Series(v), smooth_window)})
        )
    return pd.concat(parts, ignore_index=True)


def sgd_panel(run: Run, panel: str, smooth_window: int) -> pd.DataFrame:
    """Panel rows of an SGD run: ‖H‖_{S_b} per step against its level 2ρ_b/η."""
    two = 2.0 / run.lr
    steps = run.diag["step"].to_numpy(int)
    q = for_b(run)
    ias = q["ias_b"].to_numpy(float)
    level = (2.0 * q["rho_b"] / run.lr).to_numpy(float)
    inst = q["instability"].to_numpy(float)
    loss, acc = run.col("loss").to_numpy(float), train_acc(run, steps)
    start, end_idx, rule = sgd_window(run, steps, run.col("top_eig").to_numpy(float), level, loss, acc)
    in_win = np.zeros(len(steps), dtype=bool)
    if start is not None:
        in_win[start:end_idx] = True
    lvl_med = float(np.nanmedian(level[in_win])) if np.isfinite(level[in_win]).any() else np.nan
    return pd.DataFrame(
        {
            "panel": panel,
            **base_columns(run),
            "step": steps,
            "quantity": "ias_b",
            "value": ias,
            "value_smooth": smooth(pd.Series(ias), smooth_window),
            "level": level,
            "level_smooth": smooth(pd.Series(level), smooth_window),
            "level_median": lvl_med,
            "two_over_eta": two,
            "instability_ratio": inst,
            "train_loss": loss,
            "train_acc": acc,
            "in_window": in_win,
            "window_start": steps[start] if start is not None else np.nan,
            "window_end": steps[end_idx - 1] if start is not None else np.nan,
            "window_rule": rule,
        }
    )


def build(runs: Iterable[RunLike], smooth_window: int = SMOOTH_WINDOW, **_options) -> pd.DataFrame:
    """Figure 4: (a)-(c) ‖H‖ and ‖H‖_{S_n} per step for each GD run (sorted by loss, then η),
    then one panel per (data set, loss, η) of SGD runs with ‖H‖_{S_b} per b and its level 2ρ_b/η."""
    probed = diag_runs(runs)
    gd = sorted((r for r in probed if r.is_gd), key=lambda r: (r.loss, r.lr, r.name))
    sgd = sorted((r for r in probed if not r.is_gd), key=lambda r: (r.dataset, r.loss, r.lr, r.b, r.name))
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    parts = [gd_panel(r, next(letters), smooth_window) for r in gd]
    groups: dict[tuple, str] = {}
    for r in sgd:
        key = (r.dataset, r.loss, r.lr)
        if key not in groups:
            groups[key] = next(letters)
        parts.append(sgd_panel(r, groups[key], smooth_window))
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(parts, ignore_index=True)[COLUMNS]
