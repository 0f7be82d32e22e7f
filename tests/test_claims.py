"""Claims on tables built from synthetic runs: pass, fail and not-enough-data cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_tables import gd_diag, sgd_diag, shared_runs, write_run

from lssr import claims, tables
from lssr.io import write_csv
from lssr.tables import fig1, fig4, fig5, figC5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return shared_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def result(runs):
    t = {
        "fig1": fig1.build(runs["sgd"] + runs["gd"]),
        "fig4": fig4.build(runs["gd"] + runs["sgd_bs"] + runs["sgd_bs_bad"]),
        "figC5": figC5.build(runs["sgd_bs"]),
        "fig5": fig5.build(runs["heat"]),
    }
    return claims.check_claims(t)


def verdicts(res: pd.DataFrame, claim: str, contains: str = "") -> list[str]:
    r = res[(res["claim"] == claim) & res["subject"].str.contains(contains, regex=False)]
    return r["verdict"].tolist()


def test_columns_and_verdict_values(result):
    assert list(result.columns) == claims.CLAIM_COLUMNS
    assert set(result["verdict"]) <= {"pass", "fail", "not-enough-data"}
    assert set(result["claim"]) == {"C1", "C2", "C3", "C4", "C5"}


def test_c1_recovers_slope_and_intercept(result):
    c1 = result[result["claim"] == "C1"]
    assert len(c1) == 2 * 5  # slope and x-intercept for each of 5 runs
    assert (c1["verdict"] == "pass").all()
    slope = c1[c1["statistic"].str.startswith("|slope")]
    np.testing.assert_allclose(slope["estimate"], slope["target"], rtol=1e-6)
    assert set(slope["target"].round(8)) == {0.02**2 / 2, 0.01**2 / 2}


def test_c1_fails_for_double_slope_and_needs_five_points(tmp_path):
    d, m = gd_diag(0.02, "mse", slope_factor=2.0, converge_at=None)
    bad = write_run(tmp_path / "double", loss="mse", lr=0.02, diag=d, metrics=m)
    sparse = write_run(tmp_path / "sparse", loss="mse", lr=0.02, diag=d.iloc[::4].copy(), metrics=m)
    res = pd.DataFrame(claims.claim_c1(fig1.build([bad, sparse])))
    dbl = res[res["subject"].str.contains("/double")].set_index("statistic")["verdict"]
    assert dbl["|slope/(η²/2) − 1|"] == "fail"
    assert dbl["|x-intercept/(2/η) − 1|"] == "pass"  # same intercept 2/η
    assert set(res.loc[res["subject"].str.contains("/sparse"), "verdict"]) == {"not-enough-data"}


def test_c2_edge_of_stability_and_ce_window(result, runs, tmp_path):
    c2 = result[result["claim"] == "C2"]
    assert len(c2) == 2 * 3 and (c2["verdict"] == "pass").all()
    ce = c2[c2["subject"].str.contains("gd_ce") & ~c2["subject"].str.contains("lr0.01")]
    assert ce["window"].str.startswith("steps 23-59").all()
    assert ce["window"].str.contains("training accuracy = 100%").all()
    # the same CE run judged over the whole run after the crossing would fail: the window matters
    t = fig4.build(runs["gd"][:1])
    t["in_window"] = t["step"] >= 23
    whole = pd.DataFrame(claims.claim_c2(t))
    assert whole["verdict"].tolist() == ["fail", "fail"]
    # MSE run whose ‖H‖_{S_n} settles at half of 2/η: fail
    d, m = gd_diag(0.02, "mse", eos_level=0.5, converge_at=None)
    low = write_run(tmp_path / "low", loss="mse", lr=0.02, diag=d, metrics=m)
    res = pd.DataFrame(claims.claim_c2(fig4.build([low])))
    assert res["verdict"].tolist() == ["fail", "pass"]  # ‖H‖_{S_n} at 0.5 × 2/η; ‖H‖ still above 2/η


def test_c3_iir(result):
    c3 = result[result["claim"] == "C3"]
    good = c3[c3["subject"].str.contains("/iir/")]
    assert good["verdict"].tolist() == ["pass"] * 4
    assert good["subject"].str.extract(r"b=(\d+)")[0].astype(int).tolist() == [8, 32, 128, 512]
    bad = c3[c3["subject"].str.contains("/iir_bad/")]
    assert bad["verdict"].tolist() == ["fail"] * 3
    np.testing.assert_allclose(bad["estimate"], 2.0, rtol=0.05)
    spear = c3[c3["statistic"].str.startswith("Spearman")]
    assert len(spear) == 2 and (spear["verdict"] == "pass").all() and (spear["value"] == 1.0).all()


def test_c3_spearman_fails_when_plateau_falls_with_b(tmp_path):
    paths = []
    for b, level in ((8, 1.0), (32, 0.5), (128, 0.25)):
        d = sgd_diag(0.08, b, probe_bs=())
        d[f"ias_b_{b}"] = d[f"ias_b_{b}"] * level / d[f"rho_b_{b}"] * 0.01  # plateau falls with b
        paths.append(write_run(tmp_path / f"b{b}", lr=0.08, b=b, diag=d))
    res = pd.DataFrame(claims.claim_c3(fig4.build(paths)))
    assert res.loc[res["statistic"].str.startswith("Spearman"), "verdict"].tolist() == ["fail"]


def test_c4_eq12(result, tmp_path):
    c4 = result[result["claim"] == "C4"]
    assert c4["subject"].tolist() == ["b=8", "b=32", "b=128", "b=512", "all b"]
    assert (c4["verdict"] == "pass").all()
    d = sgd_diag(0.08, 32, probe_bs=(8,))
    d["rho_b_mc_8"] *= 1.5
    bad = write_run(tmp_path / "bad", lr=0.08, b=32, diag=d)
    res = pd.DataFrame(claims.claim_c4(figC5.build([bad]))).set_index("subject")
    assert res.loc["b=8", "verdict"] == "fail" and res.loc["b=8", "value"] == pytest.approx(0.5)
    assert res.loc["b=32", "verdict"] == "pass"
    # zero-mean noise of ±30% around eq. (12) passes (the median signed error is 0), a 12% bias fails
    d = sgd_diag(0.08, 32, probe_bs=(8,))
    i = np.arange(len(d)) % 3
    d["rho_b_mc_8"] *= np.where(i == 0, 1.3, np.where(i == 1, 0.7, 1.0))
    d["rho_b_mc_32"] *= 1.12
    noisy = write_run(tmp_path / "noisy", lr=0.08, b=32, diag=d)
    res = pd.DataFrame(claims.claim_c4(figC5.build([noisy]))).set_index("subject")
    assert res.loc["b=8", "verdict"] == "pass" and res.loc["b=32", "verdict"] == "fail"


def test_c5_lssr_vs_lsr_srsr(result):
    c5 = result[result["claim"] == "C5"].set_index("subject")
    assert c5.loc["lssr_ds (n=1024)", "verdict"] == "pass"
    assert np.log2(c5.loc["lssr_ds (n=1024)", "estimate"]) == pytest.approx(-5, abs=0.5)  # fitted ρ
    assert "leave-one-out" in c5.loc["lssr_ds (n=1024)", "notes"]
    assert c5.loc["srsr_ds (n=1024)", "verdict"] == "fail"
    assert c5.loc["tiny_ds (n=1024)", "verdict"] == "not-enough-data"


def test_missing_tables_give_not_enough_data():
    res = claims.check_claims({})
    assert res["claim"].tolist() == ["C1", "C2", "C3", "C4", "C5"]
    assert (res["verdict"] == "not-enough-data").all()
    assert res["notes"].str.contains("missing").all()


def test_claims_from_a_tables_folder(result, runs, tmp_path):
    """What ``lssr claims`` does: read the claim tables found in a folder, write the verdicts, print one line."""
    tdir = tmp_path / "tables"
    tables.write_table("fig1", runs["sgd"], tdir / "fig1.csv")
    tables.write_table("figC5", runs["sgd_bs"], tdir / "figC5.csv")
    out = tmp_path / "results" / "claims.csv"
    assert set(claims.load_tables(tdir)) == {"fig1", "figC5"}
    checked = claims.check_claims(claims.load_tables(tdir))
    write_csv(out, checked)
    res = pd.read_csv(out)
    line = claims.claims_summary(checked, out)
    assert line.startswith(f"wrote {len(res)} claim rows to {out}: ") and "pass " in line
    assert list(res.columns) == claims.CLAIM_COLUMNS
    assert (res.loc[res["claim"].isin(["C1", "C4"]), "verdict"] == "pass").all()
    assert (res.loc[res["claim"].isin(["C2", "C3", "C5"]), "verdict"] == "not-enough-data").all()
