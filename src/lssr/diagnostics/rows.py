"""The monitor's rows: the optimiser's hyper-parameters and the SGD stability threshold at each row (HEAD), the
streaming mode's columns (STREAM_COLS), and a :func:`lssr.diagnose` result in those columns (a calibration row)."""

from __future__ import annotations

import math

import torch

from ..scaling import sgd_threshold
from .results import Diagnostics

#: Columns before the diagnostics in every row.
HEAD = ("step", "lr", "momentum", "dampening", "nesterov", "weight_decay", "threshold", "top_eig_reg", "edge_ratio")
#: The streaming mode's columns after HEAD (calibration rows of :func:`lssr.diagnose` have the same ones):
#: ``kind`` (``stream`` or ``diagnose``), the window of steps averaged (``window_start`` .. ``step``,
#: ``window_steps`` of them; 0 for a calibration row, measured at θ_step), the training batch size b, each
#: quantity with its standard error, ``rho_threshold`` = ρ_b × threshold (2ρ_b/η without momentum), the probe
#: samples of the row's HVPs and its cost.
STREAM_COLS = (
    "kind",
    "window_start",
    "window_steps",
    "b",
    "tr_S_b",
    "tr_S_b_se",
    "tr_S_n",
    "tr_S_n_se",
    "tr_S_n_window",
    "tr_S_n_window_se",
    "tr_S_1",
    "tr_S_1_se",
    "b_simple",
    "b_simple_se",
    "rho_b",
    "rho_b_se",
    "tr_HS_b",
    "tr_HS_b_se",
    "ias_b",
    "ias_b_se",
    "top_eig",
    "top_eig_se",
    "top_eig_residual",
    "rho_threshold",
    "probe_n",
    "groups",
    "cost_seconds",
)


def optimizer_hyper(optimizer: torch.optim.Optimizer | None) -> dict:
    """η, β, τ, Nesterov and λ of the first parameter group (SGD names; NaN for what the optimiser lacks).
    The threshold applies to ``torch.optim.SGD`` only; for other optimisers it is NaN."""
    out = dict(lr=math.nan, momentum=math.nan, dampening=math.nan, nesterov=False, weight_decay=math.nan)
    if optimizer is None:
        return out
    group = optimizer.param_groups[0]
    for key in ("lr", "momentum", "dampening", "weight_decay"):
        if key in group:
            out[key] = float(group[key])
    out["nesterov"] = bool(group.get("nesterov", False))
    if not isinstance(optimizer, torch.optim.SGD):
        out["threshold"] = math.nan
    return out


def hyper(optimizer: torch.optim.Optimizer | None, lr: float | None = None, momentum: float | None = None) -> dict:
    """η, β, τ, Nesterov, λ and the SGD threshold (:func:`lssr.scaling.sgd_threshold`) now: the optimiser's,
    overridden by ``lr`` / ``momentum``."""
    h = optimizer_hyper(optimizer)
    if lr is not None:
        h["lr"] = float(lr)
    if momentum is not None:
        h["momentum"] = float(momentum)
    if "threshold" not in h:
        mom = 0.0 if math.isnan(h["momentum"]) else h["momentum"]
        damp = 0.0 if math.isnan(h["dampening"]) else h["dampening"]
        h["threshold"] = sgd_threshold(h["lr"], mom, damp, h["nesterov"]) if not math.isnan(h["lr"]) else math.nan
    return h


def head(step: int, h: dict, top_eig: float) -> dict:
    """The HEAD columns of a row at ``step`` from the hyper-parameters ``h`` (:func:`hyper`) and ‖H‖: the
    threshold, ‖H‖ + λ (``top_eig_reg``) and their ratio ``edge_ratio``."""
    wd = 0.0 if math.isnan(h["weight_decay"]) else h["weight_decay"]
    top_reg = top_eig + wd
    row = {"step": step, **h, "top_eig_reg": top_reg, "edge_ratio": top_reg / h["threshold"]}
    return {k: row[k] for k in HEAD}


def stream_row(head_cols: dict, values: dict) -> dict:
    """A row in the streaming mode's columns: HEAD, then STREAM_COLS from ``values`` (``rho_threshold`` added,
    ``cost_seconds`` NaN until the caller sets it)."""
    values = dict(values, rho_threshold=values["rho_b"] * head_cols["threshold"], cost_seconds=math.nan)
    return head_cols | {k: values[k] for k in STREAM_COLS}


def calibration_values(d: Diagnostics, b: int, step: int) -> dict:
    """A :func:`lssr.diagnose` result in the streaming columns at batch size b (kind ``diagnose``, measured at
    θ_step: an empty window; the exact terms have standard error 0, ‖H‖ none)."""
    a = d.at(b)
    return dict(
        kind="diagnose",
        window_start=step,
        window_steps=0,
        b=b,
        tr_S_b=a.tr_S_b,
        tr_S_b_se=a.tr_S_b_se,
        tr_S_n=d.tr_S_n,
        tr_S_n_se=0.0,
        tr_S_n_window=math.nan,
        tr_S_n_window_se=math.nan,
        tr_S_1=d.tr_S_1,
        tr_S_1_se=0.0,
        b_simple=d.b_simple,
        b_simple_se=0.0,
        rho_b=a.rho_b,
        rho_b_se=a.rho_b_se,
        tr_HS_b=a.tr_HS_b,
        tr_HS_b_se=a.tr_HS_b_se,
        ias_b=a.ias_b,
        ias_b_se=a.ias_b_se,
        top_eig=d.top_eig,
        top_eig_se=math.nan,
        top_eig_residual=d.top_eig_residual,
        probe_n=d.n,
        groups=0,
    )
