"""Figure tables: run folders -> one tidy DataFrame per figure.

Data flow is one-way: run folders (``run.json``, ``metrics.csv``, ``diagnostics.csv`` written by
:mod:`lssr.train` and its probes) -> tables (this module) -> figures (:mod:`lssr.figures`, plotting
only) and claims (:mod:`lssr.claims`). Every paper quantity is computed here, once:

- normalised loss change ``norm_change = (E[L_{t+1}] - L_t) / tr(S_n)``: ``expected_change`` when
  the probe sampled batches (SGD), ``loss_change`` for GD (they are equal) or as a fallback (one
  realised step, noisier; ``change_source`` says which);
- instability ratio ``tr(H S_b) / tr(S_n)`` for the run's own b (``ias_n`` for GD); a missing
  per-b column is rebuilt from S_b = (γ/b) S_1 + (1 − γ/b) S_n, eq. (1);
- phases (Figures 1-2): GD: ``pre`` until ‖H‖ first exceeds 2/η, then ``early`` up to and
  including the first probed step with ‖H‖_{S_n} ≥ 2/η (the *entry*), then ``eos``. SGD: ``early``
  up to and including the first step whose instability ratio reaches 2/η, then ``eos``. Without a
  measured ‖H‖ the GD early phase starts at the first probed step. ``mark_x`` flags the entry of
  cross-entropy runs (the paper's 'x' marker);
- Figure 3 valley curves normalised so that every curve has the same zeros and minimum: with
  ΔL(s) = L(θ − sη∇L) − L(θ), ΔL(0) = 0 and s_z the first zero crossing after the minimum,
  x = 2 s / s_z and y = ΔL / |min ΔL| (minimum over the probed s grid). A locally quadratic loss
  then gives exactly the baseline
  y = x² − 2x (zeros 0 and 2, minimum −1 at x = 1); a minimum right of x = 1 means the far side of
  the valley is sharper, left of it that it is flatter. Curves without a descent or without a
  second zero inside the probed s grid are left out;
- Figure 4 windows: GD: from the first step with ‖H‖_{S_n} ≥ 2/η; for CE runs the window ends at
  the first later step where the training loss falls below 1e-2 × its first probed value or the
  training accuracy reaches 100% (the CE sharpness decays once the loss goes to 0), for MSE at the
  end of the run. SGD: from the first step whose instability ratio reaches 2/η (the midpoint step
  if never) to the end of the run. Each b's level 2ρ_b/η is reported per step and as its median
  over the window (``level_median``). ``value_smooth`` is a centred rolling median over
  ``smooth_window`` probed steps (default 5, ``min_periods=1``), for display only;
- Figure 5: one heatmap cell per (data set, b, η) with the mean final test accuracy over seeds
  (diverged cells flagged: a cell is diverged when most of its seeds diverged or none has a finite
  accuracy), the best η per b (highest accuracy among non-diverged cells, the smaller η on ties),
  and log-space least-squares fits of best η vs b: LSSR η*(b) = c·ρ_b(ρ) (eq. 12, c and ρ fitted),
  LSR η* = c·b, SRSR η* = c·√b (c fitted); ``rmse_log2`` is the fit error in log2 η units. The
  left panel's analytic curves (n = 8192, ρ = 2^-7) are normalised to ρ at b = 1;
- Figure C.5: per probed step and b, measured ρ_b vs R̄_b², and vs eq. (12) evaluated at the
  measured ρ_1 = tr(S_n)/tr(S_1) (``rel_err`` = |ρ_b − eq12| / eq12).

GD vs SGD is read from each run's config: GD iff batch_size is "full" or n, without replacement.
γ, ρ_b(ρ) (eq. 12) and the log-space fits come from :mod:`lssr.scaling`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from . import LssrError, scaling
from .io import write_csv

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "figC5")

# Figure 5 left panel (the paper's values)
ANALYTIC_N = 8192
ANALYTIC_RHO = 2.0**-7

CE_LOSS_DROP = 1e-2  # CE window end: training loss below this fraction of its first probed value
SMOOTH_WINDOW = 5


class TableError(LssrError):
    """A run folder or table input that cannot be used: the message names the path and the fix."""


# ---------------------------------------------------------------------------------------------
# scaling-rule fits (eq. 12 and the fits live in lssr.scaling)
# ---------------------------------------------------------------------------------------------
def fit_scaling_rules(b: Sequence[float], lr: Sequence[float], n: int, replacement: bool = False) -> dict[str, dict]:
    """Least-squares fits in log2 space of the best η per b (:mod:`lssr.scaling`).

    Returns {"LSSR": {...}, "LSR": {...}, "SRSR": {...}}, each with ``log2_c``, ``rmse_log2``,
    ``n_params`` and ``predict`` (b -> η); LSSR also has ``rho``. LSSR needs 3 points, LSR and SRSR 2;
    a rule without enough points is left out.
    """
    b = np.asarray(b, dtype=float)
    lr = np.asarray(lr, dtype=float)
    out: dict[str, dict] = {}
    if len(b) < 2:
        return out
    fits = [scaling.fit_lsr(b, lr), scaling.fit_srsr(b, lr)]
    if len(b) >= 3:
        fits.append(scaling.fit_lssr(b, lr, n, replacement))
    for f in fits:
        out[f.rule] = {
            "log2_c": math.log2(f.params["c"]),
            "rmse_log2": float(f.rmse_log2),
            "n_params": len(f.params),
            "predict": f.predict,
        }
        if "rho" in f.params:
            out[f.rule]["rho"] = float(f.params["rho"])
    return out


# ---------------------------------------------------------------------------------------------
# run folders
# ---------------------------------------------------------------------------------------------
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
        """The data set's label: the source (cifar10, digits, ...); for an image folder, the folder's name
        (e.g. ``cifar10-jpeg``), since ``imagefolder`` alone would not say which data it was."""
        d = self.config["data"]
        if d["dataset"] == "imagefolder" and d.get("root"):
            return Path(str(d["root"]).rstrip("/")).name or "imagefolder"
        return str(d["dataset"])

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

    @property
    def is_gd(self) -> bool:
        return self.b == self.n and not self.replacement

    @property
    def optimizer(self) -> str:
        return "GD" if self.is_gd else "SGD"

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "completed"))

    def col(self, name: str) -> pd.Series:
        """A diagnostics column as floats (all-NaN if absent)."""
        d = self.diag
        if d is None:
            raise TableError(f"{self.path}: no diagnostics.csv (train with a probe config)")
        if name in d.columns:
            return d[name]
        return pd.Series(np.nan, index=d.index, dtype=float)


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


def _load(runs: Iterable[str | Path | Run]) -> list[Run]:
    return [r if isinstance(r, Run) else load_run(r) for r in runs]


def split_gd_sgd(runs: Iterable[str | Path | Run]) -> tuple[list[Run], list[Run]]:
    """(gd, sgd) by each run's config."""
    loaded = _load(runs)
    return [r for r in loaded if r.is_gd], [r for r in loaded if not r.is_gd]


def _diag_runs(runs: list[Run], what: str) -> list[Run]:
    """The runs that have probed diagnostics (others cannot contribute to figure ``what``)."""
    return [r for r in runs if r.diag is not None and len(r.diag)]


def _base(run: Run) -> dict:
    return {
        "run": run.name,
        "dataset": run.dataset,
        "loss": run.loss,
        "optimizer": run.optimizer,
        "b": run.b,
        "n": run.n,
        "lr": run.lr,
    }


def _for_b(run: Run, b: int) -> pd.DataFrame:
    """tr(S_b), tr(H S_b), ρ_b, ‖H‖_{S_b}, tr(H S_b)/tr(S_n) per probed step: measured columns
    when present, else rebuilt from tr_S_1/tr_S_n, tr_HS_1/tr_HS_n by eq. (1)."""
    tr_s_n, tr_hs_n = run.col("tr_S_n"), run.col("tr_HS_n")
    ias_n = run.col("ias_n").fillna(tr_hs_n / tr_s_n)
    if b == run.n and not run.replacement:
        return pd.DataFrame({"tr_S_b": tr_s_n, "tr_HS_b": tr_hs_n, "rho_b": 1.0, "ias_b": ias_n, "instability": ias_n})
    g = float(scaling.gamma(run.n, b, run.replacement)) / b
    tr_s_b = run.col(f"tr_S_b_{b}").fillna(g * run.col("tr_S_1") + (1 - g) * tr_s_n)
    tr_hs_b = run.col(f"tr_HS_b_{b}").fillna(g * run.col("tr_HS_1") + (1 - g) * tr_hs_n)
    rho = run.col(f"rho_b_{b}").fillna(tr_s_n / tr_s_b)
    ias = run.col(f"ias_b_{b}").fillna(tr_hs_b / tr_s_b)
    inst = run.col(f"instability_b_{b}").fillna(tr_hs_b / tr_s_n).fillna(ias / rho)
    return pd.DataFrame({"tr_S_b": tr_s_b, "tr_HS_b": tr_hs_b, "rho_b": rho, "ias_b": ias, "instability": inst})


def _first_index(mask: np.ndarray, start: int = 0) -> int | None:
    idx = np.flatnonzero(np.asarray(mask, dtype=bool)[start:])
    return int(idx[0]) + start if len(idx) else None


# ---------------------------------------------------------------------------------------------
# Figures 1 and 2
# ---------------------------------------------------------------------------------------------
def _loss_change_rows(run: Run) -> pd.DataFrame:
    d = run.diag
    two = 2.0 / run.lr
    q = _for_b(run, run.b)
    x = q["instability"].to_numpy(float)
    exp, real = run.col("expected_change"), run.col("loss_change")
    if run.is_gd:
        change, source = real.fillna(exp), np.where(real.notna(), "realised", "expected")
    else:
        change, source = exp.fillna(real), np.where(exp.notna(), "expected", "realised")
    tr_s_n = run.col("tr_S_n")
    y = (change / tr_s_n).to_numpy(float)
    top = run.col("top_eig").to_numpy(float)
    steps = d["step"].to_numpy(int)
    ok = np.isfinite(x) & np.isfinite(y)

    n = len(steps)
    start = 0
    if run.is_gd and np.isfinite(top).any():
        s = _first_index(np.isfinite(top) & (top > two))
        start = n if s is None else s
    entry = _first_index(ok & (x >= two), start) if start < n else None
    phase = np.full(n, "early", dtype=object)
    phase[:start] = "pre"
    if entry is not None:
        phase[entry + 1 :] = "eos"
    is_entry = np.zeros(n, dtype=bool)
    if entry is not None:
        is_entry[entry] = True
    frame = pd.DataFrame(
        {
            **_base(run),
            "step": steps,
            "instability_ratio": x,
            "norm_change": y,
            "change_source": source,
            "phase": phase,
            "entry": is_entry,
            "mark_x": is_entry & (run.loss == "ce"),
            "two_over_eta": two,
            "slope_ref": run.lr**2 / 2,
            "ref_line": run.lr**2 / 2 * (x - two),
            "tr_S_n": tr_s_n.to_numpy(float),
            "ias_n": run.col("ias_n").to_numpy(float),
            "top_eig": top,
        }
    )
    return frame[ok].reset_index(drop=True)


FIG12_COLUMNS = [
    "run",
    "dataset",
    "loss",
    "optimizer",
    "b",
    "n",
    "lr",
    "step",
    "instability_ratio",
    "norm_change",
    "change_source",
    "phase",
    "entry",
    "mark_x",
    "two_over_eta",
    "slope_ref",
    "ref_line",
    "tr_S_n",
    "ias_n",
    "top_eig",
]


def _fig12(sgd_runs, gd_runs, early_only: bool) -> pd.DataFrame:
    runs = _load(list(sgd_runs) + list(gd_runs))
    frames = [_loss_change_rows(r) for r in _diag_runs(runs, "fig1")]
    if not frames:
        return pd.DataFrame(columns=FIG12_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    if early_only:
        out = out[out["phase"] == "early"].reset_index(drop=True)
    return out[FIG12_COLUMNS]


def fig1_table(sgd_runs: Sequence[Path], gd_runs: Sequence[Path]) -> pd.DataFrame:
    """Figure 1: normalised loss change vs instability ratio, early phase only (entry included)."""
    return _fig12(sgd_runs, gd_runs, early_only=True)


def fig2_table(sgd_runs: Sequence[Path], gd_runs: Sequence[Path]) -> pd.DataFrame:
    """Figure 2: the same quantities over the whole run, with the phase of every step."""
    return _fig12(sgd_runs, gd_runs, early_only=False)


# ---------------------------------------------------------------------------------------------
# Figure 3
# ---------------------------------------------------------------------------------------------
_ALPHA = re.compile(r"^valley_ratio_a(.+)$")
_S_DL = re.compile(r"^valley_dL_s(.+)$")

FIG3_COLUMNS = [
    "panel",
    "run",
    "dataset",
    "loss",
    "lr",
    "step",
    "curve",
    "ias_n",
    "two_over_eta",
    "regime",
    "alpha",
    "s",
    "dL",
    "dL_quad",
    "x",
    "y",
]


def _normalise_valley(s: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """x = 2 s / s_z, y = f / |min f| (see module docstring); None when undefined."""
    ok = np.isfinite(s) & np.isfinite(f)
    s, f = s[ok], f[ok]
    pos = s > 0
    if pos.sum() < 2:
        return None
    sp, fp = s[pos], f[pos]
    i_min = int(np.argmin(fp))
    f_min = fp[i_min]
    if not f_min < 0:
        return None
    after = np.flatnonzero(fp[i_min:] >= 0)
    if not len(after):
        return None
    j = i_min + int(after[0])  # first non-negative point after the minimum; j - 1 is negative
    s0, s1, f0, f1 = sp[j - 1], sp[j], fp[j - 1], fp[j]
    s_z = s0 + (s1 - s0) * (-f0) / (f1 - f0)
    if not s_z > 0:
        return None
    return 2.0 * s / s_z, f / abs(f_min)


def fig3_table(gd_runs: Sequence[Path]) -> pd.DataFrame:
    """Figure 3: ‖H_α‖_{S_n}/‖H‖_{S_n} vs α per step (panel ``ratio``), normalised valley curves
    (panel ``valley``) and the normalised quadratic baseline (panel ``quadratic``)."""
    rows: list[pd.DataFrame] = []
    for run in _diag_runs(_load(gd_runs), "fig3"):
        d = run.diag
        two = 2.0 / run.lr
        ias = run.col("ias_n").fillna(run.col("tr_HS_n") / run.col("tr_S_n")).to_numpy(float)
        regime = np.where(ias < two, "below", "above")
        base = {"run": run.name, "dataset": run.dataset, "loss": run.loss, "lr": run.lr, "two_over_eta": two}
        alphas = sorted(((float(m.group(1)), c) for c in d.columns if (m := _ALPHA.match(c))))
        s_cols = sorted(((float(m.group(1)), c) for c in d.columns if (m := _S_DL.match(c))))
        for i, step in enumerate(d["step"].to_numpy(int)):
            if not np.isfinite(ias[i]):
                continue
            common = {**base, "step": step, "curve": f"{run.name}#{step}", "ias_n": ias[i], "regime": regime[i]}
            if alphas:
                a = np.array([a for a, _ in alphas])
                v = np.array([d.at[i, c] for _, c in alphas], dtype=float)
                m = np.isfinite(v)
                if m.any():
                    rows.append(pd.DataFrame({**common, "panel": "ratio", "alpha": a[m], "x": a[m], "y": v[m]}))
            if s_cols:
                s = np.array([s for s, _ in s_cols])
                f = np.array([d.at[i, c] for _, c in s_cols], dtype=float)
                qcols = [f"valley_quad_s{c[len('valley_dL_s') :]}" for _, c in s_cols]
                fq = np.array([d.at[i, c] if c in d.columns else np.nan for c in qcols], dtype=float)
                norm = _normalise_valley(s, f)
                if norm is not None:
                    ok = np.isfinite(s) & np.isfinite(f)
                    rows.append(
                        pd.DataFrame(
                            {
                                **common,
                                "panel": "valley",
                                "s": s[ok],
                                "dL": f[ok],
                                "dL_quad": fq[ok],
                                "x": norm[0],
                                "y": norm[1],
                            }
                        )
                    )
    if not rows:
        return pd.DataFrame(columns=FIG3_COLUMNS)
    out = pd.concat(rows, ignore_index=True)
    valley = out[out["panel"] == "valley"]
    if len(valley):
        xs = np.linspace(max(valley["x"].min(), -1.0), min(valley["x"].max(), 4.0), 121)
        out = pd.concat(
            [out, pd.DataFrame({"panel": "quadratic", "curve": "quadratic", "x": xs, "y": xs**2 - 2 * xs})],
            ignore_index=True,
        )
    return out.reindex(columns=FIG3_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Figure 4
# ---------------------------------------------------------------------------------------------
FIG4_COLUMNS = [
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


def _train_acc(run: Run, steps: np.ndarray) -> np.ndarray:
    """Training accuracy at each probed step (last evaluation at or before it)."""
    m = run.metrics
    if m is None or "train_acc" not in m.columns or m["train_acc"].notna().sum() == 0:
        return np.full(len(steps), np.nan)
    ev = m.dropna(subset=["train_acc"])[["step", "train_acc"]].sort_values("step")
    left = pd.DataFrame({"step": steps.astype("int64")})
    ev = ev.astype({"step": "int64"})
    return pd.merge_asof(left, ev, on="step", direction="backward")["train_acc"].to_numpy(float)


def _smooth(v: pd.Series, window: int) -> np.ndarray:
    return v.rolling(window, center=True, min_periods=1).median().to_numpy(float)


def _gd_panel(run: Run, panel: str, smooth_window: int) -> pd.DataFrame:
    d = run.diag
    two = 2.0 / run.lr
    steps = d["step"].to_numpy(int)
    top = run.col("top_eig").to_numpy(float)
    ias = run.col("ias_n").fillna(run.col("tr_HS_n") / run.col("tr_S_n")).to_numpy(float)
    loss = run.col("loss").to_numpy(float)
    acc = _train_acc(run, steps)
    start = _first_index(np.isfinite(ias) & (ias >= two))
    end_idx, rule = len(steps), "from the first step with ‖H‖_{S_n} ≥ 2/η to the end of the run"
    if run.loss == "ce":
        rule = (
            f"from the first step with ‖H‖_{{S_n}} ≥ 2/η until the training loss < {CE_LOSS_DROP:g} × its first "
            "probed value or training accuracy = 100% (exclusive), else the end of the run"
        )
        if start is not None:
            first_loss = loss[np.isfinite(loss)][0] if np.isfinite(loss).any() else np.nan
            done = (np.isfinite(loss) & (loss < CE_LOSS_DROP * first_loss)) | (np.isfinite(acc) & (acc >= 1.0 - 1e-12))
            e = _first_index(done, start + 1)
            if e is not None:
                end_idx = e
    in_win = np.zeros(len(steps), dtype=bool)
    w_start = w_end = np.nan
    if start is not None:
        in_win[start:end_idx] = True
        w_start, w_end = steps[start], steps[end_idx - 1]
    common = {
        "panel": panel,
        **_base(run),
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
            pd.DataFrame({**common, "quantity": q, "value": v, "value_smooth": _smooth(pd.Series(v), smooth_window)})
        )
    return pd.concat(parts, ignore_index=True)


def _sgd_panel(run: Run, panel: str, smooth_window: int) -> pd.DataFrame:
    d = run.diag
    two = 2.0 / run.lr
    steps = d["step"].to_numpy(int)
    q = _for_b(run, run.b)
    ias = q["ias_b"].to_numpy(float)
    level = (2.0 * q["rho_b"] / run.lr).to_numpy(float)
    inst = q["instability"].to_numpy(float)
    start = _first_index(np.isfinite(inst) & (inst >= two))
    rule = "from the first step whose instability ratio tr(HS_b)/tr(S_n) reaches 2/η to the end of the run"
    if start is None:
        start = len(steps) // 2
        rule = "instability ratio never reached 2/η: second half of the run"
    in_win = np.zeros(len(steps), dtype=bool)
    in_win[start:] = True
    lvl_med = float(np.nanmedian(level[in_win])) if np.isfinite(level[in_win]).any() else np.nan
    frame = pd.DataFrame(
        {
            "panel": panel,
            **_base(run),
            "step": steps,
            "quantity": "ias_b",
            "value": ias,
            "value_smooth": _smooth(pd.Series(ias), smooth_window),
            "level": level,
            "level_smooth": _smooth(pd.Series(level), smooth_window),
            "level_median": lvl_med,
            "two_over_eta": two,
            "instability_ratio": inst,
            "train_loss": run.col("loss").to_numpy(float),
            "train_acc": _train_acc(run, steps),
            "in_window": in_win,
            "window_start": steps[start] if len(steps) else np.nan,
            "window_end": steps[-1] if len(steps) else np.nan,
            "window_rule": rule,
        }
    )
    return frame


def fig4_table(gd_runs: Sequence[Path], sgd_runs: Sequence[Path], smooth_window: int = SMOOTH_WINDOW) -> pd.DataFrame:
    """Figure 4: (a)-(c) ‖H‖ and ‖H‖_{S_n} per step for each GD run (sorted by loss, then η),
    then one panel per (data set, loss, η) of SGD runs with ‖H‖_{S_b} per b and its level 2ρ_b/η."""
    gd = sorted(_diag_runs(_load(gd_runs), "fig4"), key=lambda r: (r.loss, r.lr, r.name))
    sgd = sorted(_diag_runs(_load(sgd_runs), "fig4"), key=lambda r: (r.dataset, r.loss, r.lr, r.b, r.name))
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    parts = [_gd_panel(r, next(letters), smooth_window) for r in gd]
    groups: dict[tuple, str] = {}
    for r in sgd:
        key = (r.dataset, r.loss, r.lr)
        if key not in groups:
            groups[key] = next(letters)
        parts.append(_sgd_panel(r, groups[key], smooth_window))
    if not parts:
        return pd.DataFrame(columns=FIG4_COLUMNS)
    return pd.concat(parts, ignore_index=True)[FIG4_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Figure 5
# ---------------------------------------------------------------------------------------------
FIG5_COLUMNS = [
    "kind",
    "dataset",
    "model",
    "n",
    "replacement",
    "b",
    "lr",
    "log2_b",
    "log2_lr",
    "test_acc",
    "status",
    "diverged",
    "n_seeds",
    "is_best",
    "value",
    "rho",
    "log2_c",
    "rmse_log2",
    "n_params",
    "n_points",
]


def _cells(runs: list[Run]) -> pd.DataFrame:
    recs = []
    for r in runs:
        acc = (r.meta.get("final") or {}).get("test_acc")
        acc = float(acc) if acc is not None else np.nan
        div = r.status == "diverged" or not math.isfinite(acc)
        recs.append(
            {"dataset": r.dataset, "n": r.n, "replacement": r.replacement, "b": r.b, "lr": r.lr, "acc": acc, "div": div}
        )
    if not recs:
        return pd.DataFrame()
    raw = pd.DataFrame(recs)
    cells = []
    for (ds, b, lr), g in raw.groupby(["dataset", "b", "lr"], sort=True):
        ok = g[~g["div"]]
        diverged = bool(g["div"].mean() > 0.5 or ok.empty)
        cells.append(
            {
                "kind": "cell",
                "dataset": ds,
                "n": int(g["n"].iloc[0]),
                "replacement": bool(g["replacement"].iloc[0]),
                "b": int(b),
                "lr": float(lr),
                "test_acc": float(ok["acc"].mean()) if not ok.empty else np.nan,
                "status": "diverged" if diverged else "completed",
                "diverged": diverged,
                "n_seeds": len(g),
            }
        )
    out = pd.DataFrame(cells)
    out["is_best"] = False
    for _, g in out[~out["diverged"] & out["test_acc"].notna()].groupby(["dataset", "b"]):
        g = g.sort_values("lr", kind="stable")
        out.loc[g["test_acc"].idxmax(), "is_best"] = True
    return out


def best_lr_per_b(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The best-η cells of one data set's heatmap (columns b, lr, test_acc), sorted by b."""
    c = table[(table["kind"] == "cell") & (table["dataset"] == dataset)]
    c = c[c["is_best"].astype(bool)]
    return c[["b", "lr", "test_acc"]].sort_values("b").reset_index(drop=True)


def fig5_table(runs: Sequence[Path], n_analytic: int = ANALYTIC_N, rho_analytic: float = ANALYTIC_RHO) -> pd.DataFrame:
    """Figure 5: analytic LSSR/LSR/SRSR curves (left) and, per data set, heatmap cells over (b, η)
    with the best η per b and the fitted LSSR/LSR/SRSR curves (right)."""
    parts = []
    bb = 2.0 ** np.linspace(0, math.log2(n_analytic), 8 * int(round(math.log2(n_analytic))) + 1)
    for model, v in (
        ("LSSR", scaling.rho_b(rho_analytic, n_analytic, bb, False)),
        ("LSR", rho_analytic * bb),
        ("SRSR", rho_analytic * np.sqrt(bb)),
    ):
        parts.append(
            pd.DataFrame(
                {
                    "kind": "analytic",
                    "dataset": "analytic",
                    "model": model,
                    "n": n_analytic,
                    "replacement": False,
                    "b": bb,
                    "value": v,
                    "rho": rho_analytic,
                }
            )
        )
    cells = _cells(_load(runs))
    if len(cells):
        parts.append(cells)
        for ds, g in cells.groupby("dataset", sort=True):
            best = g[g["is_best"]].sort_values("b")
            n, repl = int(g["n"].iloc[0]), bool(g["replacement"].iloc[0])
            fits = fit_scaling_rules(best["b"], best["lr"], n, repl)
            grid = 2.0 ** np.linspace(math.log2(g["b"].min()), math.log2(g["b"].max()), 65)
            for model, f in fits.items():
                pred = f["predict"](grid)
                parts.append(
                    pd.DataFrame(
                        {
                            "kind": "fit",
                            "dataset": ds,
                            "model": model,
                            "n": n,
                            "replacement": repl,
                            "b": grid,
                            "lr": pred,
                            "value": pred,
                            "rho": f.get("rho", np.nan),
                            "log2_c": f["log2_c"],
                            "rmse_log2": f["rmse_log2"],
                            "n_params": f["n_params"],
                            "n_points": len(best),
                        }
                    )
                )
    out = pd.concat(parts, ignore_index=True).reindex(columns=FIG5_COLUMNS)
    out["log2_b"] = np.log2(out["b"].astype(float))
    out["log2_lr"] = np.log2(out["lr"].astype(float))
    out["is_best"] = out["is_best"].fillna(False).astype(bool)
    out["diverged"] = out["diverged"].fillna(False).astype(bool)
    return out


# ---------------------------------------------------------------------------------------------
# Figure C.5
# ---------------------------------------------------------------------------------------------
_RHO_COL = re.compile(r"^rho_b_(\d+)$")
FIGC5_COLUMNS = [
    "run",
    "dataset",
    "loss",
    "optimizer",
    "n",
    "replacement",
    "lr",
    "step",
    "b",
    "rho_b",
    "rho_b_se",
    "resultant",
    "rho_1",
    "rho_b_eq12",
    "rel_err",
]


def figC5_table(runs: Sequence[Path]) -> pd.DataFrame:
    """Figure C.5: measured ρ_b vs R̄_b², and vs eq. (12) at the measured ρ_1 = tr(S_n)/tr(S_1).

    "Measured" ρ_b is the Monte-Carlo one, tr(S_n) / mean_k ‖g_{B_k}‖² over the probe's sampled batches
    (``rho_b_mc_<b>``), not the ``rho_b_<b>`` column, which identity (1) computes from ρ_1 and so agrees with
    eq. (12) by construction. ``rho_b_se`` is its delta-method standard error ρ_b · se(tr S_b)/tr S_b;
    ``rel_err`` is signed, (ρ_b − eq12)/eq12. Steps without Monte-Carlo batches are left out."""
    parts = []
    for run in _diag_runs(_load(runs), "figC5"):
        d = run.diag
        rho_1 = (run.col("tr_S_n") / run.col("tr_S_1")).to_numpy(float)
        for b in sorted(int(m.group(1)) for c in d.columns if (m := _RHO_COL.match(c))):
            rho = run.col(f"rho_b_mc_{b}").to_numpy(float)
            tr_mc = run.col(f"tr_S_b_mc_{b}").to_numpy(float)
            rho_se = rho * run.col(f"tr_S_b_mc_{b}_se").to_numpy(float) / tr_mc
            pred = scaling.rho_b(np.where(rho_1 > 0, rho_1, np.nan), run.n, b, run.replacement)
            parts.append(
                pd.DataFrame(
                    {
                        "run": run.name,
                        "dataset": run.dataset,
                        "loss": run.loss,
                        "optimizer": run.optimizer,
                        "n": run.n,
                        "replacement": run.replacement,
                        "lr": run.lr,
                        "step": d["step"].to_numpy(int),
                        "b": b,
                        "rho_b": rho,
                        "rho_b_se": rho_se,
                        "resultant": run.col(f"resultant_b_{b}").to_numpy(float),
                        "rho_1": rho_1,
                        "rho_b_eq12": pred,
                        "rel_err": (rho - pred) / pred,
                    }
                )
            )
    if not parts:
        return pd.DataFrame(columns=FIGC5_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    return out[out["rho_b"].notna()].reset_index(drop=True)[FIGC5_COLUMNS]


# ---------------------------------------------------------------------------------------------
# dispatch + CLI
# ---------------------------------------------------------------------------------------------
def build_table(fig: str, runs: Sequence[str | Path], smooth_window: int = SMOOTH_WINDOW) -> pd.DataFrame:
    """The table of figure ``fig`` from run folders (GD/SGD split read from each run's config)."""
    if fig not in FIGURES:
        raise TableError(f"unknown figure {fig!r}: choose one of {', '.join(FIGURES)}")
    loaded = _load(expand_run_dirs(runs))
    gd = [r for r in loaded if r.is_gd]
    sgd = [r for r in loaded if not r.is_gd]
    if fig == "fig1":
        return fig1_table(sgd, gd)
    if fig == "fig2":
        return fig2_table(sgd, gd)
    if fig == "fig3":
        return fig3_table(loaded)
    if fig == "fig4":
        return fig4_table(gd, sgd, smooth_window=smooth_window)
    if fig == "fig5":
        return fig5_table(loaded)
    return figC5_table(loaded)


def write_table(fig: str, runs: Sequence[str | Path], out: str | Path, **kw) -> pd.DataFrame:
    table = build_table(fig, runs, **kw)
    write_csv(out, table)
    return table


def cmd_table(args) -> None:
    dirs = expand_run_dirs(args.runs)
    table = write_table(args.fig, dirs, args.out, smooth_window=args.smooth_window)
    n_diag = sum((d / "diagnostics.csv").exists() for d in dirs)
    print(
        f"wrote {args.fig} table ({len(table)} rows) from {len(dirs)} runs ({n_diag} with diagnostics.csv) to {args.out}"
    )


def register_cli(subparsers) -> None:
    t = subparsers.add_parser("table", help="build a figure's table (CSV) from run folders")
    t.add_argument("fig", choices=FIGURES)
    t.add_argument(
        "--runs",
        nargs="+",
        action="extend",
        required=True,
        metavar="DIR",
        help="run folders (or folders holding run folders); GD vs SGD is read from each config",
    )
    t.add_argument("--out", required=True, help="output CSV")
    t.add_argument(
        "--smooth-window", type=int, default=SMOOTH_WINDOW, help="Figure 4(d) rolling-median window (probed steps)"
    )
    t.set_defaults(func=cmd_table)
