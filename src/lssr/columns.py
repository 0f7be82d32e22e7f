"""Column names of ``diagnostics.csv``: written by the probe, read by every table, in one place.

Per-b columns carry the batch size as a suffix (``tr_S_b_32``), valley columns the step multiple
(``valley_dL_s0.5``) or α (``valley_ratio_a0.25``). Build names with the functions below and parse
them back with :func:`batch_sizes_in` / :func:`valley_values`; never with ad-hoc f-strings or regexes.
"""

from __future__ import annotations

import re
from typing import Iterable

#: Columns measured once per probed step (θ_t), in file order.
STEP_COLUMNS = [
    "step", "lr", "two_over_eta", "b_run", "loss", "loss_next", "loss_change",
    "tr_S_n", "tr_S_1", "tr_S_1_se", "tr_HS_n", "tr_HS_1", "tr_HS_1_se", "ias_n",
    "top_eig", "top_eig_hvps", "cos_q1_grad", "expected_change", "expected_change_se", "cos_consecutive",
]  # fmt: skip

#: Per-b quantities from identity (1) (``tr_S_b`` = tr(S_b), ``tr_HS_b`` = tr(H S_b), ``rho_b`` = ρ_b,
#: ``ias_b`` = ‖H‖_{S_b}, ``instability_b`` = tr(H S_b)/tr(S_n)), then the sampled-batch ones
#: (``resultant_b`` = R̄_b², ``tr_S_b_mc`` / ``rho_b_mc`` = Monte-Carlo tr(S_b) and ρ_b, ``norm_g_b_mc`` = the mean
#: of ‖g_{B_k}‖ over the sampled batches, so that std‖g_b‖/E‖g_b‖ = sqrt(tr_S_b_mc/norm_g_b_mc² − 1)).
PER_B = (
    "tr_S_b", "tr_HS_b", "tr_HS_b_se", "rho_b", "ias_b", "instability_b", "resultant_b", "tr_S_b_mc", "tr_S_b_mc_se",
    "rho_b_mc", "norm_g_b_mc",
)  # fmt: skip


def fmt_value(x: float) -> str:
    """How α and s appear in column names (``%g``)."""
    return f"{x:g}"


def per_b(quantity: str, b: int) -> str:
    """The column of ``quantity`` (one of :data:`PER_B`) at batch size b, e.g. ``tr_HS_b_32_se``."""
    if quantity not in PER_B:
        raise KeyError(f"unknown per-b quantity {quantity!r}; known: {', '.join(PER_B)}")
    if quantity.endswith("_se"):
        return f"{quantity[:-3]}_{int(b)}_se"
    return f"{quantity}_{int(b)}"


def valley_ratio(alpha: float) -> str:
    """‖H_α‖_{S_n}/‖H‖_{S_n} at θ − αη∇L (Figure 3 left)."""
    return f"valley_ratio_a{fmt_value(alpha)}"


def valley_dl(s: float) -> str:
    """L(θ − sη∇L) − L(θ) (Figure 3 right)."""
    return f"valley_dL_s{fmt_value(s)}"


def valley_quad(s: float) -> str:
    """Its quadratic model −sη‖∇L‖² + ½s²η²∇LᵀH∇L."""
    return f"valley_quad_s{fmt_value(s)}"


def probe_columns(batch_sizes: Iterable[int], valley: bool, alphas: Iterable[float], ss: Iterable[float]) -> list[str]:
    """The column names of ``diagnostics.csv`` in file order."""
    cols = list(STEP_COLUMNS)
    for b in batch_sizes:
        cols += [per_b(q, b) for q in PER_B]
    if valley:
        cols += [valley_ratio(a) for a in alphas]
        for s in ss:
            cols += [valley_dl(s), valley_quad(s)]
    return cols


def batch_sizes_in(columns: Iterable[str], quantity: str = "rho_b") -> list[int]:
    """The batch sizes b for which ``columns`` hold ``per_b(quantity, b)``, ascending."""
    pattern = re.compile(rf"^{re.escape(quantity)}_(\d+)$")
    return sorted(int(m.group(1)) for c in columns if (m := pattern.match(c)))


def valley_values(columns: Iterable[str], kind: str) -> list[tuple[float, str]]:
    """(value, column) pairs of the valley columns of ``kind`` (``ratio`` -> α, ``dL`` / ``quad`` -> s)."""
    prefix = {"ratio": "valley_ratio_a", "dL": "valley_dL_s", "quad": "valley_quad_s"}[kind]
    return [(float(c[len(prefix) :]), c) for c in columns if c.startswith(prefix)]
