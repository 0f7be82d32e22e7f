"""Figure 4 table: ‖H‖ and ‖H‖_{S_n} per step for GD runs, ‖H‖_{S_b} and its level 2ρ_b/η for SGD runs.

Windows (read by claims C2 and C3):
- GD: from the first step with ‖H‖_{S_n} ≥ 2/η; for CE runs the window ends at the first later step
  where the training loss falls below 1e-2 × its first probed value or the training accuracy reaches
  100% (the CE sharpness decays once the loss goes to 0), for MSE at the end of the run.
- SGD: the last :data:`SGD_FINAL_FRACTION` of the run's steps (counted in steps, not probed rows), up to the
  end of the run, for CE to the same end as GD: where a ‖H‖_{S_b} that "reaches its level after a few steps and
  stays there" (Fig. 4(d)) must be at it, however late it got there. The window depends on the step count and
  the loss only, never on ‖H‖_{S_b}, the quantity C3 tests, nor on a trigger that small b meet at step 0. No window
  (all ``in_window`` False, ``level_median`` NaN) when ‖H‖ was not measured or never reached the level 2ρ_b/η by
  the window's end (then ‖H‖_{S_b} ≤ ‖H‖ cannot be at its level: the run never sharpened); ``window_rule`` says
  which. ``value_se`` and ``level_se`` are the standard errors of ‖H‖_{S_b} and of 2ρ_b/η at each step (from
  the sketch's se of tr(H S_1) and of tr(S_1); 0 where those are exact).

Each b's level 2ρ_b/η is reported per step and as its median over the window (``level_median``).
``value_smooth`` is a centred rolling median over ``smooth_window`` probed steps (default 5,
``min_periods=1``), for display only.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from .. import scaling
from .runs import Run, RunLike, base_columns, diag_runs, first_index, for_b, ias_n

CE_LOSS_DROP = 1e-2  # CE window end: training loss below this fraction of its first probed value
SMOOTH_WINDOW = 5
#: SGD window: the last quarter of the run's steps. Fig. 4(d): "after a few steps (around 125)" the curves "reach
#: the threshold" and stay at it, so the end of training is where every b must be at its level; a quarter keeps
#: a curve that gets there as late as 3/4 of the run (step 150 of 200) inside the claim.
SGD_FINAL_FRACTION = 0.25

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
    "value_se",
    "level",
    "level_se",
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
    """(start, end (exclusive), rule) of an SGD run's window: the probed steps in the last SGD_FINAL_FRACTION of
    the steps [first probed step, last step of the run or, for CE, of GD's end rule]. Chosen from the step count,
    the loss and ‖H‖ (which must have reached 2ρ_b/η by then), never from ‖H‖_{S_b}."""
    end_rule = CE_END_RULE if run.loss == "ce" else "to the end of the run"
    if not np.isfinite(top).any():
        return None, 0, "‖H‖ not measured: no window (C3 needs ‖H‖ ≥ 2ρ_b/η, where ‖H‖_{S_b} can reach its level)"
    end_idx = ce_end(0, loss, acc) if run.loss == "ce" else len(steps)
    t0, t1 = int(steps[0]), int(steps[end_idx - 1])
    first = t1 - SGD_FINAL_FRACTION * (t1 - t0)  # in steps: probes may be sparse after a dense start
    start = first_index(steps[:end_idx] >= first)
    rule = f"the last {SGD_FINAL_FRACTION:g} of steps {t0}-{t1}, {end_rule}"
    cross = first_index(np.isfinite(top[:end_idx]) & np.isfinite(level[:end_idx]) & (top[:end_idx] >= level[:end_idx]))
    if cross is None:
        return None, 0, f"‖H‖ never reached 2ρ_b/η by step {t1} (the run never sharpened enough): no window"
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
        "level_se": 0.0,
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
            pd.DataFrame(
                {
                    **common,
                    "quantity": q,
                    "value": v,
                    "value_smooth": smooth(pd.Series(v), smooth_window),
                    "value_se": 0.0 if q == "ias_n" else np.nan,
                }
            )  # fmt: skip
        )
    return pd.concat(parts, ignore_index=True)


def sgd_standard_errors(run: Run, q: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Standard errors of ‖H‖_{S_b} = tr(H S_b)/tr(S_b) and of 2ρ_b/η = 2 tr(S_n)/(η tr(S_b)) per step:
    se(tr H S_b)/tr(S_b) = ``instability_se``·ρ_b, and 2ρ_b/η · se(tr S_b)/tr(S_b) with se(tr S_b) = (γ/b)·se(tr S_1)
    (0 where tr(S_1) is exact, as from per-sample gradients)."""
    rho, tr_s_b = q["rho_b"].to_numpy(float), q["tr_S_b"].to_numpy(float)
    value_se = (q["instability_se"] * q["rho_b"]).to_numpy(float)
    se_s1 = run.col("tr_S_1_se").fillna(0.0).to_numpy(float)
    level_se = 2.0 * rho / run.lr * scaling.batch_weight(run.n, run.b, run.replacement) * se_s1 / tr_s_b
    return value_se, level_se


def sgd_panel(run: Run, panel: str, smooth_window: int) -> pd.DataFrame:
    """Panel rows of an SGD run: ‖H‖_{S_b} per step against its level 2ρ_b/η."""
    two = 2.0 / run.lr
    steps = run.diag["step"].to_numpy(int)
    q = for_b(run)
    ias = q["ias_b"].to_numpy(float)
    level = (2.0 * q["rho_b"] / run.lr).to_numpy(float)
    value_se, level_se = sgd_standard_errors(run, q)
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
            "value_se": value_se,
            "level": level,
            "level_se": level_se,
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
