"""Claims on synthetic tables: for each claim, a table where it holds (pass), one where it fails the way the
paper rules out (fail) and one with too little data (not-enough-data). The oracles are the constructed inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lssr import claims
from lssr.claims import alignment, edge, iir, rules, valleys
from lssr.io import write_csv

ETA = 0.1
TWO = 2 / ETA


def verdict_of(rows, statistic_start: str = "", subject: str = "") -> list[str]:
    r = pd.DataFrame(rows)
    r = r[r["statistic"].str.startswith(statistic_start) & r["subject"].str.contains(subject, regex=False)]
    return r["verdict"].tolist()


# --- C1 / C6: lines of the normalised loss change ------------------------------------------------------------
def loss_table(slope_factor: float, n: int, phase: str, x0: float = 5.0, x1: float = 35.0, run: str = "r"):
    x = np.linspace(x0, x1, n)
    return pd.DataFrame({"run": run, "loss": "mse", "optimizer": "GD", "b": 64, "lr": ETA, "step": np.arange(n),
                         "instability_ratio": x, "norm_change": slope_factor * ETA**2 / 2 * (x - TWO),
                         "phase": phase, "two_over_eta": TWO})  # fmt: skip


def test_c1_pass_fail_and_too_few_points():
    assert set(verdict_of(edge.claim_c1(loss_table(1.0, 8, "early")))) == {"pass"}
    assert verdict_of(edge.claim_c1(loss_table(2.0, 8, "early")), "|slope") == ["fail"]
    assert set(verdict_of(edge.claim_c1(loss_table(1.0, 4, "early")))) == {"not-enough-data"}


def test_c6_gentler_slope_after_the_edge():
    assert set(verdict_of(edge.claim_c6(loss_table(0.5, 10, "eos")))) == {"pass"}
    assert set(verdict_of(edge.claim_c6(loss_table(1.0, 10, "eos")))) == {"fail"}  # the quadratic slope itself
    few = edge.claim_c6(loss_table(0.5, 4, "eos"))
    assert set(verdict_of(few)) == {"not-enough-data"}
    est = pd.DataFrame(edge.claim_c6(loss_table(0.5, 10, "eos")))["estimate"]
    np.testing.assert_allclose(est, 0.5 * ETA**2 / 2)


# --- C2 / C3: the Figure 4 table ----------------------------------------------------------------------------
def gd_fig4(ias_level: float, top_level: float, n_window: int) -> pd.DataFrame:
    steps = np.arange(20)
    osc = 0.05 * np.where(steps % 2, 1, -1)
    in_win = steps >= 20 - n_window
    base = {"panel": "a", "optimizer": "GD", "run": "gd", "dataset": "d", "loss": "mse", "lr": ETA, "b": 64, "n": 64,
            "step": steps, "level": TWO, "level_median": TWO, "two_over_eta": TWO, "in_window": in_win,
            "window_start": 20 - n_window, "window_end": 19, "window_rule": "test"}  # fmt: skip
    return pd.concat([pd.DataFrame({**base, "quantity": "ias_n", "value": TWO * (ias_level + osc)}),
                      pd.DataFrame({**base, "quantity": "top_eig", "value": TWO * (top_level + osc)})])  # fmt: skip


def test_c2_edge_and_tighter_relation():
    ok = edge.claim_c2(gd_fig4(1.0, 1.3, 10))
    assert verdict_of(ok) == ["pass", "pass", "pass"]
    # ‖H‖_{S_n} far below 2/η while ‖H‖ sits on it: the edge is not marked by ‖H‖_{S_n}, nor more tightly
    bad = edge.claim_c2(gd_fig4(0.5, 1.0, 10))
    assert verdict_of(bad, "|median") == ["fail"] and verdict_of(bad, "median|log") == ["fail"]
    assert set(verdict_of(edge.claim_c2(gd_fig4(1.0, 1.3, 3)))) == {"not-enough-data"}


def sgd_fig4(levels: dict[int, float], n_window: int = 10, reached: bool = True) -> pd.DataFrame:
    parts = []
    for b, ratio in levels.items():
        steps = np.arange(20)
        level = TWO * b / (b + 64)  # 2ρ_b/η with a ρ_b that rises with b
        in_win = (steps >= 20 - n_window) & reached
        parts.append(pd.DataFrame({
            "panel": "d", "optimizer": "SGD", "run": f"b{b}", "dataset": "d", "loss": "ce", "lr": ETA, "b": b,
            "n": 1024, "step": steps, "quantity": "ias_b", "value": level * ratio, "level": level,
            "level_median": level if reached else np.nan, "two_over_eta": TWO, "in_window": in_win,
            "window_start": 20 - n_window if reached else np.nan, "window_end": 19 if reached else np.nan,
            "window_rule": "test"}))  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def test_c3_two_sided_and_shape():
    ok = iir.claim_c3(sgd_fig4({8: 1.0, 64: 1.0, 512: 1.0, 4096: 1.0}))
    assert set(verdict_of(ok)) == {"pass"}
    low = iir.claim_c3(sgd_fig4({8: 0.5, 64: 0.5, 512: 0.5, 4096: 0.5}))  # never reaches its level
    assert set(verdict_of(low, "median(")) == {"pass", "fail"}
    assert verdict_of(low, "|plateau") == ["fail"]  # the largest b ends far below 2/η
    high = iir.claim_c3(sgd_fig4({8: 1.5, 64: 1.0, 512: 1.0, 4096: 1.0}))
    assert verdict_of(high, "median(", "b=8 ") == ["pass", "fail"]  # ≥ lower, > upper
    falling = iir.claim_c3(sgd_fig4({8: 100.0, 64: 10.0, 512: 1.0, 4096: 0.5}))
    assert verdict_of(falling, "Spearman") == ["fail"]
    never = iir.claim_c3(sgd_fig4({8: 1.0, 64: 1.0}, reached=False))
    assert set(verdict_of(never)) == {"not-enough-data"}


# --- C4 / K1: the Figure C.5 table ---------------------------------------------------------------------------
def c5_table(rho_over_r: float, rel_err: float, n: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"run": "r", "b": np.repeat([8, 64], n), "rho_b": 0.3 * rho_over_r, "resultant": 0.3,
                         "norm_cv": 0.1, "rho_b_eq12": 0.3, "rel_err": rel_err, "rho_b_se": 0.01})  # fmt: skip


def test_c4_rho_b_against_the_resultant_and_k1():
    assert set(verdict_of(iir.claim_c4(c5_table(1.05, 0.0)))) == {"pass"}
    assert set(verdict_of(iir.claim_c4(c5_table(2.0, 0.0)))) == {"fail"}
    assert set(verdict_of(iir.claim_c4(c5_table(1.0, 0.0, n=2)))) == {"not-enough-data"}
    k1 = pd.DataFrame(iir.check_k1(c5_table(1.0, 0.3)))
    assert set(k1["kind"]) == {"check"} and set(k1["verdict"]) == {"fail"}
    assert set(verdict_of(iir.check_k1(c5_table(1.0, 0.02)))) == {"pass"}
    assert "std‖g_b‖/E‖g_b‖ = 0.1" in pd.DataFrame(iir.claim_c4(c5_table(1.0, 0.0)))["notes"].iloc[0]


# --- C5: best η per b over seeds -----------------------------------------------------------------------------
def heat_seeds(best_log2_lr, seeds: int, noise: float = 0.0, rng_seed: int = 0) -> pd.DataFrame:
    """Seed rows whose accuracy peaks at the given log2 η per b (a parabola in log2 η) plus noise."""
    rng = np.random.default_rng(rng_seed)
    bs = 2 ** np.arange(3, 3 + len(best_log2_lr))
    rows = []
    for b, peak in zip(bs, best_log2_lr):
        for lg in range(-10, 3):
            for s in range(seeds):
                acc = 0.9 - 0.01 * (lg - peak) ** 2 + noise * rng.standard_normal()
                rows.append({"kind": "seed", "dataset": "d", "n": 1024, "replacement": False, "b": int(b),
                             "lr": 2.0**lg, "seed": s, "test_acc": acc, "diverged": False})  # fmt: skip
    return pd.DataFrame(rows)


# best η of LSSR (eq. 12 with ρ = 2^-6, n = 1024): linear in b for small b, then flat
LSSR_BEST = [-9, -8, -7, -6, -5, -5, -5]
LSR_BEST = [-9, -8, -7, -6, -5, -4, -3]


def test_c5_out_of_sample_with_seeds():
    ok = rules.claim_c5(heat_seeds(LSSR_BEST, 3))
    assert verdict_of(ok) == ["pass"]
    bad = rules.claim_c5(heat_seeds(LSR_BEST, 3))  # exactly LSR: LSSR has nothing to add
    assert verdict_of(bad) == ["fail"]
    noisy = rules.claim_c5(heat_seeds(LSSR_BEST, 3, noise=0.2))  # seeds disagree wildly
    assert verdict_of(noisy) == ["inconclusive"]
    assert verdict_of(rules.claim_c5(heat_seeds(LSSR_BEST, 1))) == ["not-enough-data"]  # one seed
    assert verdict_of(rules.claim_c5(heat_seeds(LSSR_BEST[:3], 3))) == ["not-enough-data"]  # 3 batch sizes


def test_c5_fails_when_lsr_holds():
    r = pd.DataFrame(rules.claim_c5(heat_seeds(LSR_BEST, 3)))
    assert r["value"].iloc[0] > 0  # LSR's leave-one-out error is 0 on its own line


# --- C7: the Figure 3 table ----------------------------------------------------------------------------------
def fig3_table(ratio_below: float, ratio_above: float, xmin_below: float, xmin_above: float, steps: int = 6):
    rows = []
    for t in range(steps):
        for regime, ratio, xmin in (("below", ratio_below, xmin_below), ("above", ratio_above, xmin_above)):
            base = {
                "run": "g",
                "loss": "mse",
                "lr": ETA,
                "step": f"{regime}{t}",
                "regime": regime,
                "curve": f"{regime}{t}",
            }
            rows += [{**base, "panel": "ratio", "alpha": a, "x": a, "y": ratio} for a in (0.25, 0.5)]
            x = np.linspace(0, 2, 21)
            y = np.where(x < xmin, -x / xmin, -(2 - x) / (2 - xmin))
            rows += [{**base, "panel": "valley", "x": xi, "y": yi} for xi, yi in zip(x, y)]
    return pd.DataFrame(rows)


def test_c7_asymmetric_valleys():
    assert set(verdict_of(valleys.claim_c7(fig3_table(1.1, 0.9, 1.3, 0.7)))) == {"pass"}
    assert set(verdict_of(valleys.claim_c7(fig3_table(0.9, 1.1, 0.7, 1.3)))) == {"fail"}  # the reverse
    assert set(verdict_of(valleys.claim_c7(fig3_table(1.1, 0.9, 1.3, 0.7, steps=1)), "fraction of profiles")) == {
        "not-enough-data"
    }


# --- C8 / C9: the Figure S1 table ----------------------------------------------------------------------------
def s1_table(cos_after: float, cons_after: float, cross: float = 10.0, n: int = 30) -> pd.DataFrame:
    steps = np.arange(n)
    return pd.DataFrame({"run": "g", "loss": "mse", "optimizer": "GD", "b": 64, "lr": ETA, "step": steps,
                         "cos_q1_grad": np.where(steps >= cross + 3, cos_after, 0.01),
                         "cos_consecutive": np.where(steps >= cross, cons_after, 0.9),
                         "cross_step": cross, "edge_step": cross})  # fmt: skip


def test_c8_alignment_and_c9_consecutive_cosine():
    assert verdict_of(alignment.claim_c8(s1_table(0.9, -0.5))) == ["pass"]
    assert verdict_of(alignment.claim_c8(s1_table(0.1, -0.5))) == ["fail"]
    assert verdict_of(alignment.claim_c8(s1_table(0.9, -0.5, cross=np.nan))) == ["not-enough-data"]
    assert verdict_of(alignment.claim_c9(s1_table(0.9, -0.5))) == ["pass"]
    assert verdict_of(alignment.claim_c9(s1_table(0.9, 0.5))) == ["fail"]
    assert verdict_of(alignment.claim_c9(s1_table(0.9, np.nan))) == ["not-enough-data"]


# --- all together --------------------------------------------------------------------------------------------
def all_tables() -> dict[str, pd.DataFrame]:
    return {
        "fig1": loss_table(1.0, 8, "early"),
        "fig2": loss_table(0.5, 10, "eos"),
        "fig3": fig3_table(1.1, 0.9, 1.3, 0.7),
        "fig4": pd.concat([gd_fig4(1.0, 1.3, 10), sgd_fig4({8: 1.0, 64: 1.0, 512: 1.0})]),
        "fig5": heat_seeds(LSSR_BEST, 3),
        "figC5": c5_table(1.0, 0.0),
        "figS1": s1_table(0.9, -0.5),
    }


def test_columns_kinds_sources_and_only_given_tables():
    res = claims.check_claims(all_tables())
    assert list(res.columns) == claims.CLAIM_COLUMNS
    assert set(res["claim"]) == {f"C{i}" for i in range(1, 10)} | {"K1"}
    assert set(res["kind"]) == {"claim", "check"} and set(res.loc[res["claim"] == "K1", "kind"]) == {"check"}
    assert res["source"].str.len().gt(0).all() and set(res["verdict"]) <= set(claims.VERDICTS)
    only = claims.check_claims({"fig1": loss_table(1.0, 8, "early")})
    assert set(only["claim"]) == {"C1"}
    empty = claims.check_claims({"fig5": heat_seeds(LSSR_BEST, 3).iloc[0:0]})
    assert only.shape[0] and empty["verdict"].tolist() == ["not-enough-data"]


def test_two_table_sets_in_one_tree(tmp_path):
    """Config A (all figures) and config B (Figure 1 only) write their tables into one tree: B's claims, read
    from B's explicit tables, hold no row of A."""
    a = all_tables()
    for name, t in a.items():
        write_csv(tmp_path / "results" / "tables" / f"{name}.csv", t)
    b_table = loss_table(1.0, 8, "early", run="config-b-run")
    write_csv(tmp_path / "results" / "tables" / "b" / "fig1.csv", b_table)
    res = claims.check_claims(claims.read_tables([("fig1", tmp_path / "results" / "tables" / "b" / "fig1.csv")]))
    assert set(res["claim"]) == {"C1"} and res["subject"].str.endswith("config-b-run").all()
    with pytest.raises(Exception, match="no claim reads"):
        claims.read_tables([("runs", tmp_path / "x.csv")])


def test_cli_claims_reads_only_the_given_tables(tmp_path):
    """`lssr claims --table NAME=CSV`: config B's claims.csv, in the tree where config A wrote every table, has no
    row of A (only B's Figure-1 table is given)."""
    import subprocess
    import sys
    from pathlib import Path

    tables = tmp_path / "results" / "tables"
    for name, t in all_tables().items():
        write_csv(tables / f"{name}.csv", t)  # config A
    write_csv(tables / "b-fig1.csv", loss_table(1.0, 8, "early", run="config-b-run"))  # config B
    lssr = Path(sys.executable).with_name("lssr")
    out = tmp_path / "results" / "claims-b.csv"
    subprocess.run([str(lssr), "claims", "--table", f"fig1={tables / 'b-fig1.csv'}", "--out", str(out)], check=True)
    res = pd.read_csv(out)
    assert set(res["claim"]) == {"C1"} and res["subject"].str.endswith("config-b-run").all()
