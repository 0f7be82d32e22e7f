"""lssr.report: the verdict table that opens report.html renders as reStructuredText without errors."""

import math

import docutils.core
import pandas as pd
import pytest

from lssr import LssrError
from lssr.io import write_csv
from lssr.report import VERDICT_COLUMNS, rst_text, verdict_table


def claims_frame() -> pd.DataFrame:
    row = {
        "claim": "C2", "kind": "claim", "source": "§5.1, Fig. 4(a)-(c)", "subject": "GD CE η=0.1 results/runs/x_b*",
        "statistic": "|median(‖H‖_{S_n})·η/2 − 1|", "estimate": 0.9, "target": 1.0, "value": 0.0912345678,
        "comparison": "<=", "threshold": 0.15, "verdict": "pass", "n_points": 12, "window": "w", "notes": "`x`",
    }  # fmt: skip
    other = dict(row, claim="C5", kind="check", value=math.nan, verdict="not-enough-data", statistic="a\\b")
    return pd.DataFrame([row, other])


def test_rst_text_escapes_every_inline_markup_character():
    assert rst_text("|a|_*b*`c`\\") == "\\|a\\|\\_\\*b\\*\\`c\\`\\\\"
    assert rst_text(math.nan) == "" and rst_text(None) == ""
    assert rst_text(0.0912345678) == "0.09123"


def test_verdict_table_renders_in_a_csv_table_without_docutils_errors(tmp_path):
    table = verdict_table(claims_frame())
    assert list(table.columns) == VERDICT_COLUMNS
    path = tmp_path / "verdicts.csv"
    write_csv(path, table)
    source = f".. csv-table:: Verdicts\n   :file: {path}\n   :header-rows: 1\n"
    html = docutils.core.publish_parts(source, writer="html", settings_overrides={"report_level": 2})["html_body"]
    assert "system-message" not in html, html
    # the statistic comes back verbatim (the escapes are consumed by the parser), NaN as an empty cell
    assert "|median(‖H‖_{S_n})·η/2 − 1|" in html and "a\\b" in html
    assert "not-enough-data" in html and "0.09123" in html


def test_verdict_table_names_missing_columns():
    with pytest.raises(LssrError, match="verdict"):
        verdict_table(claims_frame().drop(columns=["verdict"]))


def _row(claim, verdict, value, subject="run a", statistic="|x − 1|", kind="claim", comparison="<=", threshold=0.2):
    return {
        "claim": claim, "kind": kind, "source": f"§{claim}", "subject": subject, "description": f"{claim} says *so*",
        "statistic": statistic, "value": value, "comparison": comparison, "threshold": threshold, "verdict": verdict,
    }  # fmt: skip


def summary_claims() -> pd.DataFrame:
    """Claims out of order; C2 mixed (2 pass, 1 fail, 1 inconclusive, 1 not-enough-data) over two statistics,
    C10 only not-enough-data, C3 a per-b range plus one pooled row, K1 a check."""
    return pd.DataFrame(
        [
            _row("K1", "pass", 0.01, kind="check"),
            _row("C10", "not-enough-data", math.nan),
            _row("C10", "not-enough-data", 0.7, subject="run b"),
            _row("C2", "pass", 0.10, subject="run a"),
            _row("C2", "fail", 0.40, subject="run b"),
            _row("C2", "inconclusive", 0.19, subject="run c"),
            _row("C2", "not-enough-data", 5.0, subject="run d"),
            _row("C2", "pass", 3.0, subject="run a", statistic="ratio", comparison=">", threshold=1.0),
            _row("C3", "pass", 0.05, subject="b=8", statistic="s"),
            _row("C3", "pass", 0.15, subject="b=32", statistic="s"),
            _row("C3", "pass", 0.6, subject="panel d", statistic="Spearman", comparison=">", threshold=0.5),
        ]
    )


def test_statement_summary_counts_each_claims_verdicts_in_claim_order():
    from lssr.report import SUMMARY_COLUMNS, statement_summary

    s = statement_summary(summary_claims()).set_index("claim")
    assert list(s.index) == ["C2", "C3", "C10", "K1"]  # claims by number, then checks
    assert list(s.columns) == [c for c in SUMMARY_COLUMNS if c != "claim"]
    counts = s[["pass", "fail", "inconclusive", "not-enough-data"]]
    assert counts.loc["C2"].tolist() == [2, 1, 1, 1]
    assert counts.loc["C3"].tolist() == [3, 0, 0, 0]
    assert counts.loc["C10"].tolist() == [0, 0, 0, 2]
    assert counts.loc["K1"].tolist() == [1, 0, 0, 0]
    # one failing row makes the claim fail; only not-enough-data rows: not-enough-data
    assert s["verdict"].to_dict() == {"C2": "fail", "C3": "pass", "C10": "not-enough-data", "K1": "pass"}
    assert s.loc["C2", "description"] == "C2 says *so*" and s.loc["K1", "kind"] == "check"


def test_statement_summary_deciding_statistic_over_decided_rows():
    from lssr.report import statement_summary

    s = statement_summary(summary_claims()).set_index("claim")["deciding_statistic"]
    # C2's first statistic: range over runs a-c (run d's 5.0 is not-enough-data and left out), one fail
    assert s["C2"] == "|x − 1| = 0.1–0.4 (3 subjects; pass if <= 0.2; 1 fail); ratio = 3 (run a; pass if > 1)"
    assert s["C3"] == "s = 0.05–0.15 (2 subjects; pass if <= 0.2); Spearman = 0.6 (panel d; pass if > 0.5)"
    assert s["C10"] == "none decided"
    assert s["K1"] == "|x − 1| = 0.01 (pass if <= 0.2) on run a"


def test_statement_summary_refuses_unknown_verdicts_and_missing_columns():
    from lssr.report import statement_summary

    with pytest.raises(LssrError, match="maybe"):
        statement_summary(summary_claims().assign(verdict="maybe"))
    with pytest.raises(LssrError, match="description"):
        statement_summary(summary_claims().drop(columns=["description"]))


def test_report_opens_with_the_summary_then_the_verdict_table(tmp_path):
    """workflow/report/workflow.rst renders with both tables, the one-line-per-statement table first."""
    from pathlib import Path

    from lssr.report import summary_table

    root = Path(__file__).resolve().parents[1]
    rst = (root / "workflow" / "report" / "workflow.rst").read_text()
    assert rst.index("results/summary.csv") < rst.index("results/verdicts.csv")
    write_csv(tmp_path / "results" / "summary.csv", summary_table(summary_claims()))
    write_csv(tmp_path / "results" / "verdicts.csv", verdict_table(claims_frame()))
    (tmp_path / "workflow.rst").write_text(rst)
    html = docutils.core.publish_parts(
        rst, source_path=str(tmp_path / "workflow.rst"), writer="html", settings_overrides={"report_level": 2}
    )["html_body"]
    assert "system-message" not in html, html
    first, second = html.index("C2 says *so*"), html.index("|median(‖H‖_{S_n})·η/2 − 1|")
    assert first < second and "none decided" in html
