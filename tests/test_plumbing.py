"""The plumbing between the numerical core and what a user reads, each against an oracle written out here: the
monitor's stability threshold for torch.optim.SGD with dampening and Nesterov momentum (closed forms derived
below), the overall verdict of a claim (the documented precedence, every combination), the Figure-5 best cells
of the replication record when two runs share (n, b, η, seed), C5's own bootstrap over seeds (exact outcomes of
the resampling), and docs/replication/README.md against the CSV files kept beside it."""

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lssr
from lssr.claims.common import VERDICTS
from lssr.report import statement_summary

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "replication"


# --- the monitor's threshold -----------------------------------------------------------------------------------
def heavy_ball_threshold(lr, beta, tau):
    """torch.optim.SGD with momentum β and dampening τ: b ← βb + (1 − τ)g, θ ← θ − ηb. On ½λθ² the iteration
    (θ, b) has the characteristic polynomial z² − (1 + β − η(1 − τ)λ)z + β; a root leaves the unit disc through
    z = −1 when 1 + (1 + β − η(1 − τ)λ) + β = 0, i.e. λ = (2 + 2β)/(η(1 − τ))."""
    return (2 + 2 * beta) / (lr * (1 - tau))


def nesterov_threshold(lr, beta):
    """Nesterov (torch's form, no dampening): b ← βb + g, θ ← θ − η(g + βb). On ½λθ² the characteristic
    polynomial is z² − (1 + β − η(1 + β)λ)z + β(1 − ηλ); at z = −1 it vanishes when 2 + 2β − η(1 + 2β)λ = 0, i.e.
    λ = (2 + 2β)/(η(1 + 2β))."""
    return (2 + 2 * beta) / (lr * (1 + 2 * beta))


@pytest.mark.parametrize(
    "opt_kw, expected",
    [
        (dict(lr=0.1, momentum=0.9, dampening=0.5), heavy_ball_threshold(0.1, 0.9, 0.5)),
        (dict(lr=0.1, momentum=0.9, nesterov=True), nesterov_threshold(0.1, 0.9)),
        (dict(lr=0.05, momentum=0.0), 2 / 0.05),
    ],
    ids=["dampening", "nesterov", "plain"],
)
def test_monitor_rows_carry_the_threshold_of_the_optimiser_they_read(opt_kw, expected):
    """A SharpnessMonitor given a torch.optim.SGD writes, in each row, the threshold of that optimiser (its η, β,
    dampening τ and Nesterov flag) and edge_ratio = (‖H‖ + λ)/threshold."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.arange(12) % 3
    opt = torch.optim.SGD(model.parameters(), weight_decay=1e-3, **opt_kw)
    mon = lssr.SharpnessMonitor(model, "ce", (x, y), opt, n=12, every=1, batch_sizes=[4])
    row = mon.step()
    assert row["dampening"] == opt_kw.get("dampening", 0.0) and row["nesterov"] == opt_kw.get("nesterov", False)
    assert row["threshold"] == pytest.approx(expected, rel=1e-12)
    assert row["edge_ratio"] == pytest.approx((row["top_eig"] + 1e-3) / expected, rel=1e-12)


def test_the_closed_forms_are_where_the_iteration_diverges():
    """The closed forms above are the edge of the iteration they describe, run here by hand (not torch's code):
    on ½λθ², 2% below the threshold the iterate shrinks, 2% above it grows."""

    def run(lam, lr, beta, tau, nesterov, steps=3000):
        theta, buf = 1.0, None
        for _ in range(steps):
            g = lam * theta
            buf = g if buf is None else beta * buf + (1 - tau) * g
            theta -= lr * (g + beta * buf if nesterov else buf)
        return abs(theta)

    for lr, beta, tau, nesterov, thr in (
        (0.1, 0.9, 0.5, False, heavy_ball_threshold(0.1, 0.9, 0.5)),
        (0.1, 0.9, 0.0, True, nesterov_threshold(0.1, 0.9)),
    ):
        assert run(0.98 * thr, lr, beta, tau, nesterov) < 1e-3
        assert run(1.02 * thr, lr, beta, tau, nesterov) > 1e3


# --- the overall verdict of a claim ----------------------------------------------------------------------------
def documented_overall(present: set[str]) -> str:
    """The rule the report and the record state: fail when any row fails, else inconclusive when any row is,
    else pass when any row passes, else not-enough-data."""
    for v in ("fail", "inconclusive", "pass"):
        if v in present:
            return v
    return "not-enough-data"


def test_overall_verdict_follows_the_documented_precedence_for_every_mix_of_rows():
    """Every non-empty set of row verdicts (15), each as one claim: fail ranks above inconclusive, inconclusive
    above pass, pass above not-enough-data."""
    rows, expected, combos = [], {}, {}
    for k in range(1, len(VERDICTS) + 1):
        for combo in itertools.combinations(VERDICTS, k):
            cid = f"C{len(expected) + 1}"
            expected[cid], combos[frozenset(combo)] = documented_overall(set(combo)), cid
            for i, v in enumerate(combo):
                rows.append({"claim": cid, "kind": "claim", "description": "d", "source": "s", "subject": f"s{i}",
                             "statistic": "x", "value": 0.1 * i if v != "not-enough-data" else math.nan,
                             "comparison": "<=", "threshold": 0.2, "verdict": v})  # fmt: skip
    out = statement_summary(pd.DataFrame(rows)).set_index("claim")["verdict"].to_dict()
    assert len(out) == 15 and out == expected
    assert out[combos[frozenset({"fail", "inconclusive"})]] == "fail"
    assert out[combos[frozenset({"inconclusive", "pass"})]] == "inconclusive"


# --- the replication record: the Figure-5 best cells -------------------------------------------------------------
def test_record_matches_each_seed_to_its_own_run_when_two_runs_share_n_b_eta_and_seed(tmp_path):
    """runs.csv holds, besides the Figure-5 runs, another run with the same (n, b, η, seed) as the best b = 8 cell's
    seed 0 (another experiment's run) but another test accuracy, listed first. The cell's training accuracy is the
    mean over the runs whose test accuracy is the seed's: (0.90 + 0.80)/2 = 85.0 %, not (0.10 + 0.80)/2."""
    from test_replication import NOW, fake_tree, run

    from lssr.replication import best_cells, write_replication_record

    t = fake_tree(tmp_path)
    runs_csv = t["results"] / "tables" / "runs.csv"
    runs = pd.read_csv(runs_csv)
    twin = pd.DataFrame([run("other-experiment", 8, 0.5, 0, 0.10, 0.33, 5.0)])
    pd.concat([twin, runs], ignore_index=True).to_csv(runs_csv, index=False)
    best = best_cells(pd.read_csv(t["results"] / "tables" / "fig5.csv"), pd.read_csv(runs_csv))
    cell = best[best["b"] == 8].iloc[0]
    assert cell["train_acc"] == pytest.approx(0.85, abs=1e-12) and cell["train_seeds"] == 2
    page = write_replication_record(t["results"], t["figures"], t["config"], tmp_path / "record", now=NOW).read_text()
    assert "| cifar10-jpeg | 8 | 0.5 | 85.0 % | 45.0 % | 2 |  |" in page


# --- docs/replication/README.md against its CSV files ------------------------------------------------------------
def unescape(text: str) -> str:
    """Markdown / reStructuredText cell text without its backslash escapes."""
    return re.sub(r"\\(.)", r"\1", str(text)).strip()


def cells(line: str) -> list[str]:
    """The cells of a Markdown table line (``|`` escaped as ``\\|`` inside a cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def table_after(page: str, header_start: str) -> list[list[str]]:
    lines = page.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(header_start))
    out = []
    for ln in lines[i + 2 :]:
        if not ln.startswith("|"):
            break
        out.append(cells(ln))
    return out


def test_the_kept_replication_record_quotes_its_csv_files():
    """Every number on docs/replication/README.md is the one in the files kept beside it: per claim the verdict,
    the row counts (claims.csv's verdicts, counted here) and the deciding statistic (summary.csv), the overall
    verdict by the documented precedence; the best Figure-5 cells (fig5.csv); the commit and run count (runs.csv)
    and the wall-clock time (replication-time.json)."""
    page = (RECORD / "README.md").read_text()
    claims = pd.read_csv(RECORD / "claims.csv")
    summary = pd.read_csv(RECORD / "summary.csv", dtype=str, keep_default_na=False)
    lines = table_after(page, "| statement of the paper |")
    assert [c[2] for c in lines] == list(summary["claim"])
    for c, (_, s) in zip(lines, summary.iterrows()):
        cid = c[2]
        g = claims[claims["claim"] == cid]
        counts = {v: int((g["verdict"] == v).sum()) for v in VERDICTS}
        assert c[4] == ", ".join(f"{counts[v]} {v}" for v in VERDICTS), cid
        assert [int(s[v]) for v in VERDICTS] == [counts[v] for v in VERDICTS], cid
        assert c[3] == f"**{s['verdict']}**" and s["verdict"] == documented_overall(set(g["verdict"])), cid
        assert unescape(c[5]) == unescape(s["deciding_statistic"]), cid
        assert unescape(c[0]).startswith(unescape(g["description"].iloc[0])), cid
        assert unescape(c[1]) == unescape(g["source"].iloc[0]), cid
    runs = pd.read_csv(RECORD / "runs.csv")
    for commit, k in runs["git_commit"].value_counts().items():
        assert f"`{commit}` ({k} runs)" in page
    timing = json.loads((RECORD / "replication-time.json").read_text())
    assert f"{timing['seconds']} s = {timing['seconds'] / 60:.1f} min" in page
    fig5 = pd.read_csv(RECORD / "fig5.csv")
    best = fig5[(fig5["kind"] == "cell") & fig5["is_best"].astype(str).str.lower().eq("true")]
    best = best.sort_values(["dataset", "b"])
    rows = table_after(page, "| data set | b | η |")
    assert len(rows) == len(best) > 0
    seeds = fig5[fig5["kind"] == "seed"]
    for r, (_, cell) in zip(rows, best.iterrows()):
        assert unescape(r[0]) == cell["dataset"] and int(r[1]) == int(cell["b"])
        assert float(r[2]) == pytest.approx(cell["lr"], rel=1e-5)  # printed with 6 significant digits
        assert r[4] == f"{100 * cell['test_acc']:.1f} %"
        if "train_acc" in fig5.columns and not pd.isna(cell["train_acc"]):
            train = cell["train_acc"]
        else:  # the mean final training accuracy of the cell's seeds' runs, matched by their test accuracy
            s = seeds[(seeds["b"] == cell["b"]) & np.isclose(seeds["lr"], cell["lr"])]
            m = runs[pd.to_numeric(runs["b"], errors="coerce").eq(cell["b"]) & np.isclose(runs["lr"], cell["lr"])]
            train = np.mean([m[np.isclose(m["final_test_acc"], a)]["final_train_acc"].iloc[0] for a in s["test_acc"]])
        assert r[3] == f"{100 * train:.1f} %"
        assert r[5].split()[0] == str(int(cell["n_seeds"]))
