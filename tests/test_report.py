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
