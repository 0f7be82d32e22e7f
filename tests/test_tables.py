"""Tables from synthetic run folders with known slopes, crossings and optima.

The helpers here (write_run, gd_diag, sgd_diag, valley_diag, heatmap_runs, build_all) are also used
by tests/test_figures.py and tests/test_claims.py.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lssr import tables
from lssr.scaling import gamma as _gamma
from lssr.scaling import rho_b as _rho_b
from lssr.tables import fig1, fig2, fig3, fig4, fig5, figC5

N = 1024
RHO = 2.0**-5


def eq12(rho: float, n: int, b, replacement: bool = False):
    """ρ_b by eq. (12), written out here (not lssr.scaling): 1 / ((γ_{n,b}/b)/ρ + 1 − γ_{n,b}/b) with
    γ_{n,b} = (n − b)/(n − 1) without replacement, 1 with replacement."""
    b = np.asarray(b, dtype=float)
    g = np.ones_like(b) if replacement else (n - b) / (n - 1)
    return 1.0 / ((g / b) / rho + 1.0 - g / b)


# ---------------------------------------------------------------------------------------------
# synthetic run folders
# ---------------------------------------------------------------------------------------------
def write_run(
    path: Path,
    *,
    dataset="synth",
    n=N,
    loss="ce",
    lr=0.02,
    b="full",
    replacement=False,
    status="completed",
    test_acc=0.9,
    train_acc=0.99,
    diag=None,
    metrics=None,
    seed=0,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "data": {"dataset": dataset, "n": n, "seed": 0},
        "model": {"name": "synthetic", "batch_norm": False},
        "loss": loss,
        "optim": {"lr": lr, "batch_size": b, "replacement": replacement},
        "seed": seed,
    }
    meta = {
        "status": status,
        "steps": int(diag["step"].max()) + 1 if diag is not None else 100,
        "config": cfg,
        "final": {"train_loss": 0.1, "train_acc": train_acc, "test_loss": 0.3, "test_acc": test_acc},
        "wall_time_s": 1.0,
        "device": "cpu",
    }
    (path / "run.json").write_text(json.dumps(meta))
    if diag is not None:
        diag.to_csv(path / "diagnostics.csv", index=False)
    if metrics is not None:
        metrics.to_csv(path / "metrics.csv", index=False)
    return path


def gd_diag(
    lr: float,
    loss: str = "ce",
    T: int = 160,
    slope_factor: float = 1.0,
    eos_level: float = 1.0,
    converge_at: int | None = 60,
):
    """GD: ‖H‖ exceeds 2/η at step 15; ‖H‖_{S_n} climbs 0.25..1.05 × 2/η over steps 15..23 (entry 23),
    then oscillates around eos_level × 2/η while ‖H‖ = 1.2 × 2/η. loss_change follows eq. (9) exactly
    (times slope_factor) up to the entry. For CE, accuracy reaches 100% at ``converge_at`` and the
    sharpness then decays to 0.2-0.3 × 2/η. Returns (diagnostics, metrics)."""
    two = 2.0 / lr
    t = np.arange(T, dtype=float)
    top = np.where(t < 20, two * (0.5 + 0.7 * t / 20), two * 1.2 * (1 + 0.02 * np.sin(t)))
    ias = np.where(t < 15, 0.1 * two, two * (0.25 + 0.1 * (t - 15)))
    ias = np.where(t > 23, two * eos_level * (1 + 0.08 * np.sin(t)), ias)
    if loss == "ce" and converge_at is not None:
        ias = np.where(t >= converge_at, 0.2 * two, ias)
        top = np.where(t >= converge_at, 0.3 * two, top)
    tr_s_n = 1.0 + 0.5 * np.cos(t / 7)
    change = slope_factor * lr**2 / 2 * (ias - two) * tr_s_n
    change = np.where(t > 23, 0.5 * change, change)  # gentler after the entry (Figure 2)
    lossv = 2.0 * np.exp(-t / 200)
    diag = pd.DataFrame(
        {
            "step": t.astype(int),
            "lr": lr,
            "two_over_eta": two,
            "b_run": N,
            "loss": lossv,
            "loss_next": lossv + change,
            "loss_change": change,
            "tr_S_n": tr_s_n,
            "tr_S_1": tr_s_n / RHO,
            "tr_HS_n": ias * tr_s_n,
            "ias_n": ias,
            "top_eig": top,
            "expected_change": change,
        }
    )
    acc = np.clip(0.5 + t / (2 * (converge_at or 10_000)), 0, 1.0)
    ev = t[::10]
    metrics = pd.DataFrame(
        {
            "step": ev.astype(int),
            "epoch": ev,
            "batch_loss": 1.0,
            "train_loss": 2.0 * np.exp(-ev / 200),
            "train_acc": acc[::10],
            "test_loss": 1.0,
            "test_acc": 0.8,
        }
    )
    return diag, metrics


def sgd_diag(
    lr: float,
    b: int,
    n: int = N,
    rho: float = RHO,
    T: int = 80,
    ratio_level: float = 0.95,
    slope_factor: float = 1.0,
    probe_bs=(8, 32),
) -> pd.DataFrame:
    """SGD with ρ_1 = rho: the instability ratio climbs 0.15..1.05 × 2/η over steps 0..9 (entry 9) and
    then oscillates around ratio_level × 2/η, so ‖H‖_{S_b} / (2ρ_b/η) ≈ ratio_level. expected_change
    follows eq. (6) exactly (times slope_factor) up to the entry. ρ_b follows eq. (12) for every b."""
    two = 2.0 / lr
    t = np.arange(T, dtype=float)
    inst = np.where(t <= 9, two * (0.15 + 0.1 * t), two * ratio_level * (1 + 0.1 * np.sin(t)))
    tr_s_n = 1.0 + 0.5 * np.cos(t / 5)
    cols = {
        "step": t.astype(int),
        "lr": lr,
        "two_over_eta": two,
        "b_run": b,
        "loss": 2.0 * np.exp(-t / 100),
        "tr_S_n": tr_s_n,
        "tr_S_1": tr_s_n / rho,
        "tr_HS_n": 0.5 * two * tr_s_n,
        "ias_n": 0.5 * two,
        "top_eig": 1.5 * two,
    }
    change = slope_factor * lr**2 / 2 * (inst - two) * tr_s_n
    cols["expected_change"] = np.where(t > 9, 0.5 * change, change)
    cols["loss_change"] = cols["expected_change"] + 0.01 * np.sin(3 * t)  # a noisy realisation
    for bb in sorted(set(probe_bs) | {b}):
        rb = float(eq12(rho, n, bb))
        inst_bb = inst if bb == b else inst * 0.9
        cols[f"tr_S_b_{bb}"] = tr_s_n / rb
        cols[f"tr_HS_b_{bb}"] = inst_bb * tr_s_n
        cols[f"rho_b_{bb}"] = np.full(T, rb)
        cols[f"ias_b_{bb}"] = inst_bb * rb
        cols[f"instability_b_{bb}"] = inst_bb
        cols[f"resultant_b_{bb}"] = np.full(T, rb * 1.05)
        cols[f"tr_S_b_mc_{bb}"] = tr_s_n / rb
        cols[f"tr_S_b_mc_{bb}_se"] = 0.1 * tr_s_n / rb
        cols[f"rho_b_mc_{bb}"] = np.full(T, rb)
    return pd.DataFrame(cols)


S_GRID = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)
ALPHAS = (0.25, 0.5, 0.75, 1.0, 1.25)


def valley_diag(lr: float = 0.04, T: int = 10) -> pd.DataFrame:
    """GD valley probes: ΔL(s) = k s (s − s_z) with s_z on the s grid (so the normalised curve is
    exactly x² − 2x); ‖H‖_{S_n} alternates below/above 2/η; step 3 has no second zero in the grid."""
    two = 2.0 / lr
    rows = []
    for t in range(T):
        ias = two * (0.9 if t % 2 == 0 else 1.1)
        r = {
            "step": t,
            "lr": lr,
            "two_over_eta": two,
            "ias_n": ias,
            "tr_S_n": 1.0,
            "tr_HS_n": ias,
            "top_eig": 1.3 * two,
        }
        for a in ALPHAS:
            r[f"valley_ratio_a{a:g}"] = 1 + (0.1 if t % 2 == 0 else -0.1) * a
        s_z = (1.0, 1.5, 2.0)[t % 3] if t != 3 else 10.0
        k = 0.3 + 0.1 * t
        for s in S_GRID:
            r[f"valley_dL_s{s:g}"] = k * s * (s - s_z)
            r[f"valley_quad_s{s:g}"] = k * s * (s - 1.2)
        rows.append(r)
    return pd.DataFrame(rows)


def acc_model(log2_lr: float, log2_opt: float) -> float:
    return 0.95 - 0.02 * (log2_lr - log2_opt) ** 2


def heatmap_runs(root: Path, dataset: str, rule: str, bs, log2_lrs, n: int = N, rho: float = RHO, log2_c: float = -1.0):
    """One run folder per (b, η): accuracy peaks at η*(b) = c·ρ_b (rule 'lssr') or c·√b ('srsr');
    runs with η > 2 η* diverge."""
    paths = []
    for b in bs:
        if rule == "lssr":
            opt = log2_c + math.log2(float(eq12(rho, n, b)))
        else:
            opt = log2_c + 0.5 * math.log2(b)
        for l2 in log2_lrs:
            div = l2 > opt + 1.0
            paths.append(
                write_run(
                    root / f"{dataset}_b{b}_lr{l2:g}",
                    dataset=dataset,
                    n=n,
                    loss="ce",
                    lr=2.0**l2,
                    b=b,
                    status="diverged" if div else "completed",
                    test_acc=0.1 if div else acc_model(l2, opt),
                    train_acc=0.1 if div else 1.0,
                )
            )
    return paths


def build_all(root: Path) -> dict:
    """Every synthetic run folder used by the tests, grouped by purpose."""
    runs: dict[str, list[Path]] = {}
    lr = 0.02
    gd_ce, m_ce = gd_diag(lr, "ce")
    gd_mse, m_mse = gd_diag(lr, "mse", converge_at=None)
    gd_ce2, m_ce2 = gd_diag(0.01, "ce")
    runs["gd"] = [
        write_run(root / "gd_ce", loss="ce", lr=lr, diag=gd_ce, metrics=m_ce),
        write_run(root / "gd_mse", loss="mse", lr=lr, diag=gd_mse, metrics=m_mse),
        write_run(root / "gd_ce_lr0.01", loss="ce", lr=0.01, diag=gd_ce2, metrics=m_ce2),
    ]
    runs["sgd"] = [
        write_run(root / "sgd_ce_b32", loss="ce", lr=lr, b=32, diag=sgd_diag(lr, 32)),
        write_run(root / "sgd_mse_b32", loss="mse", lr=lr, b=32, diag=sgd_diag(lr, 32)),
    ]
    runs["sgd_bs"] = [
        write_run(
            root / "iir" / f"sgd_b{b}", loss="ce", lr=0.08, b=b, diag=sgd_diag(0.08, b, probe_bs=(8, 32, 128, 512))
        )
        for b in (8, 32, 128, 512)
    ]
    runs["sgd_bs_bad"] = [
        write_run(
            root / "iir_bad" / f"sgd_b{b}",
            dataset="bad",
            loss="ce",
            lr=0.08,
            b=b,
            diag=sgd_diag(0.08, b, ratio_level=2.0),
        )
        for b in (8, 32, 128)
    ]
    runs["valley"] = [write_run(root / "valley", loss="mse", lr=0.04, diag=valley_diag())]
    lrs_fine = [k / 4 for k in range(-28, 1)]
    runs["heat"] = heatmap_runs(root / "heat", "lssr_ds", "lssr", [2**k for k in range(3, 11)], lrs_fine)
    runs["heat"] += heatmap_runs(
        root / "heat", "srsr_ds", "srsr", [2**k for k in range(3, 11)], [k / 4 for k in range(-20, 5)], log2_c=-5.0
    )
    runs["heat"] += heatmap_runs(root / "heat", "tiny_ds", "lssr", [8, 16], [-3.0, -2.0, -1.0])
    return runs


_SHARED: dict = {}


def shared_runs(tmp_path_factory) -> dict:
    """build_all once per test session (the folders are only read by the tests)."""
    if "runs" not in _SHARED:
        _SHARED["runs"] = build_all(tmp_path_factory.mktemp("runs"))
    return _SHARED["runs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return shared_runs(tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# eq. (12) helpers and fits
# ---------------------------------------------------------------------------------------------
def test_gamma_and_rho_b_limits():
    assert _gamma(N, 1, False) == pytest.approx(1.0)
    assert _gamma(N, N, False) == pytest.approx(0.0)
    assert _gamma(N, 7, True) == pytest.approx(1.0)
    assert _rho_b(RHO, N, 1, False) == pytest.approx(RHO)
    assert _rho_b(RHO, N, N, False) == pytest.approx(1.0)
    # linear regime: ρ_b ≈ bρ/γ for small b
    assert _rho_b(2.0**-10, N, 4, True) == pytest.approx(4 * 2.0**-10, rel=0.01)


def test_fit_scaling_rules_recovers_rho_and_rules():
    b = np.array([2.0**k for k in range(2, 11)])
    lr = 0.5 * eq12(2.0**-6, N, b)
    fits = tables.fit_scaling_rules(b, lr, N, False)
    assert math.log2(fits["LSSR"]["rho"]) == pytest.approx(-6, abs=1e-3)
    assert fits["LSSR"]["log2_c"] == pytest.approx(-1, abs=1e-3)
    assert fits["LSSR"]["rmse_log2"] < 1e-4 < fits["LSR"]["rmse_log2"]
    lsr = tables.fit_scaling_rules(b, 0.01 * b, N, False)
    assert lsr["LSR"]["rmse_log2"] < 1e-9 and lsr["LSR"]["log2_c"] == pytest.approx(math.log2(0.01))
    assert tables.fit_scaling_rules(b[:2], lr[:2], N, False).keys() == {"LSR", "SRSR"}


# ---------------------------------------------------------------------------------------------
# Figures 1, 2
# ---------------------------------------------------------------------------------------------
def test_fig1_early_phase_and_exact_line(runs):
    t = fig1.build(runs["sgd"] + runs["gd"][:2])
    assert list(t.columns) == fig1.COLUMNS
    assert (t["phase"] == "early").all()
    # the constructed points lie exactly on the line of slope η²/2 through 2/η
    np.testing.assert_allclose(t["norm_change"], t["ref_line"], rtol=1e-9, atol=1e-12)
    gd = t[(t["optimizer"] == "GD") & (t["loss"] == "ce")]
    assert gd["step"].tolist() == list(range(15, 24))  # after ‖H‖ > 2/η (step 15) through the entry (23)
    sgd = t[(t["optimizer"] == "SGD") & (t["loss"] == "ce")]
    assert sgd["step"].tolist() == list(range(0, 10))
    assert (sgd["change_source"] == "expected").all() and (gd["change_source"] == "realised").all()
    # entry flagged for every run, 'x' only for CE
    entries = t[t["entry"]]
    assert sorted(entries["step"]) == [9, 9, 23, 23]
    assert set(t.loc[t["mark_x"], "loss"]) == {"ce"} and t["mark_x"].sum() == 2
    slope, icpt = np.polyfit(gd["instability_ratio"], gd["norm_change"], 1)
    assert slope == pytest.approx(0.02**2 / 2, rel=1e-6)
    assert -icpt / slope == pytest.approx(100.0, rel=1e-6)


def test_fig2_whole_run_with_phases(runs):
    t = fig2.build(runs["sgd"] + runs["gd"][:1])
    gd = t[t["optimizer"] == "GD"]
    assert len(gd) == 160
    assert set(gd.loc[gd["step"] < 15, "phase"]) == {"pre"}
    assert set(gd.loc[gd["step"] > 23, "phase"]) == {"eos"}
    # after the entry the change is gentler than the quadratic line
    eos = t[(t["phase"] == "eos") & (t["instability_ratio"] > t["two_over_eta"])]
    assert (eos["norm_change"] < eos["ref_line"]).all()


def test_instability_ratio_se_from_the_sketch(tmp_path):
    """The instability ratio's se is se(tr(H S_b))/tr(S_n); without a per-b se, γ_{n,b}/b times se(tr(H S_1)); GD: 0."""
    d = sgd_diag(0.02, 32)
    d["tr_HS_b_32_se"] = 0.1 * d["tr_HS_b_32"]
    t = fig1.build([write_run(tmp_path / "s", b=32, lr=0.02, diag=d)])
    np.testing.assert_allclose(t["instability_ratio_se"], 0.1 * t["instability_ratio"], rtol=1e-9)
    d = d.drop(columns=["tr_HS_b_32_se"]).assign(tr_HS_1_se=2.0)
    t = fig2.build([write_run(tmp_path / "s1", b=32, lr=0.02, diag=d)])
    gamma_over_b = (N - 32) / (N - 1) / 32
    np.testing.assert_allclose(t["instability_ratio_se"], gamma_over_b * 2.0 / t["tr_S_n"], rtol=1e-9)
    gd, _ = gd_diag(0.02, "mse", converge_at=None)
    assert (fig2.build([write_run(tmp_path / "g", loss="mse", diag=gd)])["instability_ratio_se"] == 0).all()


def test_instability_rebuilt_from_eq1_when_column_missing(tmp_path):
    d = sgd_diag(0.02, 64, probe_bs=(8,))
    full = d.copy()
    d = d.drop(columns=[c for c in d.columns if c.endswith("_64")])
    d["tr_HS_1"] = full["instability_b_64"] * full["tr_S_n"]  # with tr_HS_n = same: tr(H S_b) identical for every b
    d["tr_HS_n"] = d["tr_HS_1"]
    run = write_run(tmp_path / "r", b=64, lr=0.02, diag=d)
    t = fig2.build([run])
    np.testing.assert_allclose(t["instability_ratio"], full["instability_b_64"], rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Figure 3
# ---------------------------------------------------------------------------------------------
def test_fig3_ratio_regimes_and_normalised_valleys(runs):
    t = fig3.build(runs["valley"])
    assert list(t.columns) == fig3.COLUMNS
    ratio = t[t["panel"] == "ratio"]
    assert len(ratio) == 10 * len(ALPHAS)
    assert set(ratio.loc[ratio["step"] % 2 == 0, "regime"]) == {"below"}
    assert set(ratio.loc[ratio["step"] % 2 == 1, "regime"]) == {"above"}
    valley = t[t["panel"] == "valley"]
    assert 3 not in set(valley["step"])  # no second zero inside the grid: left out
    assert valley["step"].nunique() == 9
    np.testing.assert_allclose(valley["y"], valley["x"] ** 2 - 2 * valley["x"], atol=1e-9)
    for _, c in valley.groupby("curve"):
        assert c["y"].min() == pytest.approx(-1.0) and c["x"].iloc[np.argmin(c["y"].to_numpy())] == pytest.approx(1.0)
    np.testing.assert_allclose(valley["x_min"], 1.0, atol=1e-9)  # quadratic profiles
    np.testing.assert_allclose(valley["x_min_quad"], 1.0, atol=1e-9)  # the quadratic model, zero at s = 1.2
    quad = t[t["panel"] == "quadratic"]
    np.testing.assert_allclose(quad["y"], quad["x"] ** 2 - 2 * quad["x"])


def test_normalise_valley_asymmetric():
    s = np.array(S_GRID)
    # sharper far side: steeper right wall -> minimum right of x = 1 (true minimum x = 2·0.5/0.75 = 1.33)
    f = np.where(s < 0.5, -2 * s + 2 * s**2, -0.5 + 8 * (s - 0.5) ** 2)
    f = np.where(s < 0.5, f, np.minimum(f, 10))
    v = fig3.normalise_valley(s, f)
    assert v.y.min() >= -1.0 - 1e-12 and v.x_min > 1.1
    assert fig3.normalise_valley(s, s**2) is None  # no descent


@pytest.mark.parametrize("eta_h", [1.4, 1.6, 1.8, 1.95, 2.05, 2.4, 2.6])
def test_quadratic_valley_minimum_at_one_on_the_default_grid(eta_h):
    """ΔL(s) = −sη‖∇L‖² + ½s²η²∇LᵀH∇L with η‖H‖_{S_n} = eta_h (‖∇L‖ = 1, units of η): zeros 0 and 2/eta_h, minimum at
    1/eta_h, so x_min = 1 exactly, on the probe's default s grid (step 0.25), whatever eta_h."""
    from lssr.config import ProbeConfig

    s = np.array(ProbeConfig().valley_s)
    v = fig3.normalise_valley(s, -s + 0.5 * eta_h * s**2)
    assert v.x_min == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(v.x, s * eta_h, rtol=1e-9)  # s_z = 2/eta_h exactly
    assert v.y.min() == pytest.approx(-1.0, abs=0.1)  # the grid need not hold the vertex


# ---------------------------------------------------------------------------------------------
# Figure 4
# ---------------------------------------------------------------------------------------------
def test_fig4_gd_panels_and_ce_window(runs):
    t = fig4.build(runs["gd"] + runs["sgd_bs"])
    assert list(t.columns) == fig4.COLUMNS
    gd = t[t["optimizer"] == "GD"]
    # panels sorted by (loss, η): CE 0.01 (a), CE 0.02 (b), MSE 0.02 (c); SGD (d)
    order = gd.groupby("panel")[["loss", "lr"]].first()
    assert order.loc["a"].tolist() == ["ce", 0.01] and order.loc["b"].tolist() == ["ce", 0.02]
    assert order.loc["c"].tolist() == ["mse", 0.02]
    assert set(t.loc[t["optimizer"] == "SGD", "panel"]) == {"d"}
    ce = gd[(gd["panel"] == "b") & (gd["quantity"] == "ias_n")]
    assert ce["window_start"].iloc[0] == 23
    # accuracy (evaluated every 10 steps) reaches 100% at step 60: window ends just before
    assert ce["window_end"].iloc[0] == 59
    assert ce.loc[ce["in_window"], "step"].tolist() == list(range(23, 60))
    mse = gd[(gd["panel"] == "c") & (gd["quantity"] == "ias_n")]
    assert mse["window_end"].iloc[0] == 159
    assert set(gd["quantity"]) == {"top_eig", "ias_n"}


def test_fig4_sgd_levels_and_smoothing(runs):
    t = fig4.build(runs["sgd_bs"], smooth_window=5)
    assert set(t["b"]) == {8, 32, 128, 512}
    for b, g in t.groupby("b"):
        assert g["level_median"].iloc[0] == pytest.approx(2 * float(eq12(RHO, N, b)) / 0.08)
        # the last quarter of steps 0-79: from step 59.25 on
        assert g["window_start"].iloc[0] == 60 and g["window_end"].iloc[0] == 79
        # ‖H‖_{S_b}/(2ρ_b/η) equals instability/(2/η) by construction
        np.testing.assert_allclose(g["value"] / g["level"], g["instability_ratio"] / g["two_over_eta"])
        raw = g["value"].reset_index(drop=True)
        np.testing.assert_allclose(g["value_smooth"], raw.rolling(5, center=True, min_periods=1).median())
    assert t.groupby("b")["level_median"].first().is_monotonic_increasing


def test_fig4_sgd_window_is_the_last_quarter_of_the_steps(tmp_path):
    """The SGD window is the last quarter of the run's steps whatever ‖H‖_{S_b} does (here far below its level) and
    whenever ‖H‖ reached 2ρ_b/η (step 30); a run whose ‖H‖ never gets there has no window and says why."""
    lr, b = 0.08, 64
    level = 2 * float(eq12(RHO, N, b)) / lr
    d = sgd_diag(lr, b, ratio_level=0.3)  # ‖H‖_{S_b} far below its level throughout
    d["top_eig"] = np.where(d["step"] < 30, 0.5 * level, 1.2 * level)
    t = fig4.build([write_run(tmp_path / "low", loss="mse", lr=lr, b=b, diag=d)])
    assert t["window_start"].iloc[0] == 60 and t["window_end"].iloc[0] == d["step"].max() == 79
    assert t.loc[t["in_window"], "step"].min() == 60 and (t.loc[t["in_window"], "value"] < 0.5 * level).all()
    assert "‖H‖ first ≥ 2ρ_b/η at step 30" in t["window_rule"].iloc[0]
    d["top_eig"] = 0.9 * level
    never = fig4.build([write_run(tmp_path / "never", loss="mse", lr=lr, b=b, diag=d)])
    assert not never["in_window"].any() and "never reached 2ρ_b/η" in never["window_rule"].iloc[0]


def test_trap_fig4_sgd_window_counts_steps_not_probed_rows(tmp_path):
    """Probes every step until 50, then every 25 steps up to 1000 (89 rows): the last quarter of the steps is
    750-1000 (11 probes), not the last quarter of the rows (22 probes from step 475)."""
    lr, b = 0.08, 64
    d = sgd_diag(lr, b, T=1001)
    d = d[(d["step"] < 50) | (d["step"] % 25 == 0)].reset_index(drop=True)
    t = fig4.build([write_run(tmp_path / "sparse", loss="mse", lr=lr, b=b, diag=d)])
    assert len(t) == 89 and t["window_start"].iloc[0] == 750 and t["in_window"].sum() == 11


# ---------------------------------------------------------------------------------------------
# Figure 5
# ---------------------------------------------------------------------------------------------
def test_fig5_cells_best_and_fits(runs):
    t = fig5.build(runs["heat"])
    assert list(t.columns) == fig5.COLUMNS
    an = t[t["kind"] == "analytic"]
    assert set(an["model"]) == {"LSSR", "LSR", "SRSR"}
    lssr = an[an["model"] == "LSSR"]
    assert lssr["value"].iloc[0] == pytest.approx(2.0**-7) and lssr["value"].iloc[-1] == pytest.approx(1.0)
    assert an["b"].max() == pytest.approx(8192)
    cells = t[(t["kind"] == "cell") & (t["dataset"] == "lssr_ds")]
    assert len(cells) == 8 * 29
    assert cells["diverged"].any() and (cells.loc[cells["diverged"], "status"] == "diverged").all()
    best = fig5.best_lr_per_b(t, "lssr_ds")
    assert len(best) == 8
    opt = -1.0 + np.log2(eq12(RHO, N, best["b"].to_numpy(float)))
    assert np.all(np.abs(np.log2(best["lr"]) - opt) <= 0.125 + 1e-9)  # nearest grid point (η grid 2^(k/4))
    # the accuracy is a parabola in log2 η: the vertex through the best cell and its neighbours is the optimum
    star = t[(t["kind"] == "cell") & (t["dataset"] == "lssr_ds") & t["is_best"]].sort_values("b")
    np.testing.assert_allclose(np.log2(star["lr_star"].to_numpy(float)), opt, atol=1e-9)
    assert (star["lr_star_lo"] <= star["lr_star"]).all() and (star["lr_star"] <= star["lr_star_hi"]).all()
    fit = t[(t["kind"] == "fit") & (t["dataset"] == "lssr_ds")]
    assert set(fit["model"]) == {"LSSR", "LSR", "SRSR"}
    rho_fit = fit.loc[fit["model"] == "LSSR", "rho"].iloc[0]
    assert math.log2(rho_fit) == pytest.approx(math.log2(RHO), abs=0.5)
    rmse = fit.groupby("model")["rmse_log2"].first()
    assert rmse["LSSR"] < rmse["LSR"] and rmse["LSSR"] < rmse["SRSR"]
    srsr = t[(t["kind"] == "fit") & (t["dataset"] == "srsr_ds")].groupby("model")["rmse_log2"].first()
    assert srsr["SRSR"] < srsr["LSSR"]
    tiny = t[(t["kind"] == "fit") & (t["dataset"] == "tiny_ds")]
    assert "LSSR" not in set(tiny["model"])


def test_fig5_seed_aggregation(tmp_path):
    p = [
        write_run(tmp_path / "a", b=8, lr=0.1, test_acc=0.8, train_acc=1.0, seed=0),
        write_run(tmp_path / "b", b=8, lr=0.1, test_acc=0.6, train_acc=0.9, seed=1),
        write_run(tmp_path / "c", b=8, lr=0.1, status="diverged", test_acc=None, train_acc=0.1, seed=2),
        write_run(tmp_path / "d", b=8, lr=0.2, status="diverged", test_acc=0.1, seed=0),
    ]
    t = fig5.build(p)
    cells = t[t["kind"] == "cell"].set_index("lr")
    assert cells.loc[0.1, "test_acc"] == pytest.approx(0.7) and not cells.loc[0.1, "diverged"]
    # the training accuracy of a cell is the mean over its seeds that did not diverge: (1.0 + 0.9) / 2
    assert cells.loc[0.1, "train_acc"] == pytest.approx(0.95)
    seeds = t[t["kind"] == "seed"].set_index("seed")
    assert seeds.loc[1, "train_acc"] == pytest.approx(0.9) and np.isnan(seeds.loc[2, "train_acc"])
    assert cells.loc[0.1, "n_seeds"] == 3
    # seed 1 ends at 90% training accuracy: the cell did not reach the goal (no stop.train_acc_goal: 99.9%), so it
    # is no best cell and b = 8 has no best η
    assert not cells.loc[0.1, "reached_goal"] and not cells.loc[0.1, "is_best"]
    goal = t[(t["kind"] == "seed") & (t["lr"] == 0.1)].set_index("seed")["reached_goal"]
    assert goal[0] and not goal[1] and not goal[2]
    assert cells.loc[0.2, "diverged"] and not cells.loc[0.2, "is_best"]


def test_fig5_goal_columns_come_from_the_runs(tmp_path):
    """A run stopped by its training-accuracy goal carries the goal, its step and reached_goal; a run that ran out
    of steps below its goal did not reach it; a cell reaches it when all its non-diverged seeds do."""

    def run(name, lr, seed, train_acc, stopped_by, steps):
        p = write_run(tmp_path / name, b=8, lr=lr, test_acc=0.5 + lr, train_acc=train_acc, seed=seed)
        meta = json.loads((p / "run.json").read_text())
        meta["config"]["stop"] = {"train_acc_goal": 0.95}
        meta.update(stopped_by=stopped_by, steps=steps)
        (p / "run.json").write_text(json.dumps(meta))
        return p

    t = fig5.build([run("a", 0.1, 0, 0.96, "goal", 40), run("b", 0.1, 1, 0.97, "goal", 55),
                    run("c", 0.2, 0, 0.90, "budget", 100), run("d", 0.2, 1, 0.99, "goal", 30)])  # fmt: skip
    cells = t[t["kind"] == "cell"].set_index("lr")
    assert cells.loc[0.1, "reached_goal"] and cells.loc[0.1, "goal_step"] == 55
    assert cells.loc[0.1, "train_acc_goal"] == 0.95
    assert not cells.loc[0.2, "reached_goal"] and np.isnan(cells.loc[0.2, "goal_step"])
    # η = 0.2 has the higher test accuracy but one seed did not reach the goal: the best cell is η = 0.1
    assert cells.loc[0.1, "is_best"] and not cells.loc[0.2, "is_best"]
    seeds = t[t["kind"] == "seed"].set_index(["lr", "seed"])
    assert seeds.loc[(0.2, 0), "reached_goal"] == False and seeds.loc[(0.2, 1), "goal_step"] == 30  # noqa: E712


def test_fig5_best_eta_at_the_grid_edge_is_censored(runs):
    """tiny_ds probes η = 2^-3..2^-1 while the optimum c·ρ_b (c = 1/2) lies below 2^-3 for b = 8, 16: the best η is the
    smallest probed one, flagged ``low``; lssr_ds's optima lie inside its η grid: not flagged."""
    t = fig5.build(runs["heat"])
    best = t[(t["kind"] == "cell") & t["is_best"]]
    assert set(best.loc[best["dataset"] == "tiny_ds", "censored"]) == {"low"}
    assert set(best.loc[best["dataset"] == "lssr_ds", "censored"]) == {""}


def test_fig5_resampling_draws_each_cells_seeds_independently():
    """Each cell draws as many seeds as it has from its own seeds; two cells' draws are independent (whole-seed
    resampling would give them identical counts), and a cell with one seed always gets it."""
    present = np.ones((3, 2, 2), dtype=bool)
    present[1:, 1, 1] = False  # cell (1, 1) has seed 0 only
    rng = np.random.default_rng(0)
    w = np.array([fig5.resample_weights(present, rng) for _ in range(4000)])
    np.testing.assert_array_equal(w.sum(axis=1), np.broadcast_to(present.sum(axis=0), (4000, 2, 2)))
    assert (w[:, 0, 1, 1] == 1).all() and (w[:, 1:, 1, 1] == 0).all()
    a, b = w[:, 0, 0, 0], w[:, 0, 0, 1]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05  # independent cells
    assert a.mean() == pytest.approx(1.0, abs=0.05) and a.var() == pytest.approx(2 / 3, abs=0.05)  # Binomial(3, 1/3)


def test_fig5_largest_stable_eta():
    """Per b the largest η below the first diverged cell (a later non-diverged cell does not count); −1 when the
    smallest η already diverged."""
    div = np.zeros((1, 3, 4), dtype=bool)
    div[0, 0, 2:] = True  # b0: η0, η1 stable
    div[0, 1, 1] = True  # b1: η1 diverged, η2 not: the edge is η0
    div[0, 2, :] = True  # b2: nothing stable
    present = np.ones_like(div)
    np.testing.assert_array_equal(fig5.largest_stable_index(div, present, np.ones(1)), [1, 0, -1])
    np.testing.assert_array_equal(fig5.censored(np.array([3, 0, -1]), present), ["high", "low", ""])


# ---------------------------------------------------------------------------------------------
# Figure C.5
# ---------------------------------------------------------------------------------------------
def test_figC5_rho_vs_eq12(runs):
    t = figC5.build(runs["sgd_bs"])
    assert list(t.columns) == figC5.COLUMNS
    assert set(t["b"]) == {8, 32, 128, 512}
    np.testing.assert_allclose(t["rho_1"], RHO)
    np.testing.assert_allclose(t["rel_err"], 0.0, atol=1e-12)
    np.testing.assert_allclose(t["rho_b_se"], 0.1 * t["rho_b"])  # delta method: ρ_b · se/tr S_b
    np.testing.assert_allclose(t["resultant"], 1.05 * t["rho_b"])


def test_figC5_uses_monte_carlo_rho_not_the_identity(runs, tmp_path):
    """ρ_b measured from sampled batches (rho_b_mc) is what is compared with eq. (12); the identity
    column rho_b, which equals eq. (12) by construction, is ignored; rel_err is signed."""
    d = sgd_diag(0.08, 32, probe_bs=(8,))
    d["rho_b_mc_8"] *= 0.8
    d["rho_b_8"] *= 3.0  # must not matter
    d["tr_S_b_mc_32"] = np.nan  # no Monte-Carlo batches for b = 32: left out
    d["rho_b_mc_32"] = np.nan
    t = figC5.build([write_run(tmp_path / "r", lr=0.08, b=32, diag=d)])
    assert set(t["b"]) == {8}
    np.testing.assert_allclose(t["rel_err"], -0.2, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# dispatch, folders, CLI
# ---------------------------------------------------------------------------------------------
def test_build_table_splits_gd_sgd_and_expands_folders(runs, tmp_path):
    root = runs["sgd_bs"][0].parent  # a folder of run folders
    t = tables.build_table("fig4", [root, *runs["gd"]])
    assert set(t["optimizer"]) == {"GD", "SGD"}
    assert len(tables.expand_run_dirs([root, runs["sgd_bs"][0]])) == 4  # de-duplicated
    with pytest.raises(tables.TableError, match="run.json"):
        tables.expand_run_dirs([tmp_path / "nope"])
    with pytest.raises(tables.TableError, match="unknown figure"):
        tables.build_table("fig9", [root])


def test_write_table_writes_csv_and_summary(runs, tmp_path):
    """What ``lssr table`` does: expand the run folders, write the table atomically, print one line."""
    out = tmp_path / "t" / "fig1.csv"
    dirs = tables.expand_run_dirs(runs["sgd"] + runs["gd"])
    written = tables.write_table("fig1", dirs, out)
    t = pd.read_csv(out)
    assert list(t.columns) == fig1.COLUMNS and len(t) == len(written) > 0
    assert not list(out.parent.glob(".*.tmp"))
    line = tables.table_summary("fig1", written, dirs, out)
    assert line == f"wrote fig1 table ({len(t)} rows) from 5 runs (5 with diagnostics.csv) to {out}"


def test_every_registered_figure_has_a_table_module():
    from lssr.registry import FIGURES

    for name in FIGURES:
        module = importlib.import_module(f"lssr.tables.{name}")
        assert tables.build_table(name, []).columns.tolist() == module.COLUMNS


def test_image_folder_runs_are_labelled_by_their_folder(tmp_path):
    """An image-folder run's data set label is the folder's name (cifar10-jpeg), not 'imagefolder'."""
    diag, metrics = gd_diag(0.02)
    path = write_run(tmp_path / "r", dataset="imagefolder", diag=diag, metrics=metrics)
    meta = json.loads((path / "run.json").read_text())
    meta["config"]["data"]["root"] = "../shared/data/cifar10-jpeg/"
    (path / "run.json").write_text(json.dumps(meta))
    t = tables.build_table("fig4", [path])
    assert set(t["dataset"]) == {"cifar10-jpeg"}
    other = write_run(tmp_path / "s", dataset="stl10", diag=diag, metrics=metrics)
    assert set(tables.build_table("fig4", [other])["dataset"]) == {"stl10"}


def test_base_columns_name_the_keys_of_base_columns(tmp_path):
    from lssr.tables.runs import BASE_COLUMNS, base_columns

    class FakeRun:
        name, dataset, loss, optimizer, b, n, lr = "r", "d", "ce", "SGD", 8, 64, 0.1

    assert list(base_columns(FakeRun())) == BASE_COLUMNS
