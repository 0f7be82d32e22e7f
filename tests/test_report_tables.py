"""The benchmark tables of benchmarks/README.md and docs/PERFORMANCE.md are what benchmarks/report_tables.py writes
from the kept records (results/bench/*.json, config/paper.yaml): regenerating a page gives the same text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report_tables  # noqa: E402


@pytest.mark.parametrize("page", report_tables.PAGES, ids=lambda p: p.name)
def test_generated_sections_are_up_to_date(page):
    text = page.read_text()
    names = [m["name"] for m in report_tables.SECTION.finditer(text)]
    assert names, f"{page} has no generated section"
    assert report_tables.render(text, str(page)) == text, (
        f"{page} is out of date with results/bench/: run python benchmarks/report_tables.py"
    )


def test_every_section_is_used_and_a_stale_table_is_found(tmp_path):
    used = {m["name"] for page in report_tables.PAGES for m in report_tables.SECTION.finditer(page.read_text())}
    assert used == set(report_tables.SECTIONS)
    stale = "<!-- begin: se-study -->\n| probes s |\n|---|\n| 5 |\n<!-- end: se-study -->\n"
    fresh = report_tables.render(stale)
    assert fresh != stale and report_tables.render(fresh) == fresh
