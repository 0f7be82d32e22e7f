"""The docs name only commands that exist: every ``lssr <subcommand>`` and each ``--option`` of such a command in
README.md, docs/ and benchmarks/README.md is one of the parser's (``lssr.cli.build_parser``), and every
``make <target>`` is a target of the Makefile.

Only code is read (fenced blocks and inline code spans), and options only within an ``lssr`` command: a span or a
code line that starts with ``lssr`` (or the text after ``-m lssr``), with its continuation lines. Options of other
tools (``snakemake --cores``, ``torchrun --nproc-per-node``) are therefore not checked, and none is whitelisted.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from lssr.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"`([^`]+)`")
START = re.compile(r"^\s*(?:\$\s+)?lssr(?=\s|$)|-m\s+lssr(?:\.cli)?(?=\s|$)")
SUBCOMMAND = re.compile(r"\s*([A-Za-z][\w-]*)")
OPTION = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")
MAKE = re.compile(r"(?:^|[\s;&(])make\s+(?:[\w.-]+=\S*\s+)*([A-Za-z][\w.-]*)")
TARGET = re.compile(r"^([A-Za-z][\w.-]*)\s*:(?!=)", re.M)


def code_pieces(text: str) -> list[str]:
    """The code of a Markdown text: each command of a fenced block (a line with the indented or ``\\``-continued
    lines after it) and each inline code span (which may wrap across lines)."""
    pieces: list[str] = []
    for block in FENCE.findall(text):
        last = None  # the piece the block's previous line started
        for line in block.splitlines()[1:-1]:
            if last is not None and line.strip() and (line[:1].isspace() or pieces[last].rstrip().endswith("\\")):
                pieces[last] += " " + line.strip()
            else:
                pieces.append(line)
                last = len(pieces) - 1
    rest = FENCE.sub("", text)
    pieces += [m.group(1).replace("\n", " ") for m in SPAN.finditer(rest)]
    return pieces


def lssr_commands(piece: str) -> list[str]:
    """The ``lssr`` command in a piece of code: its text after ``lssr`` (a comment after ``#`` dropped)."""
    piece = piece.split(" #", 1)[0]
    m = START.search(piece)
    return [] if m is None else [piece[m.end() :]]


def make_targets(piece: str) -> list[str]:
    return MAKE.findall(piece.split(" #", 1)[0])


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def problems(text: str, parser: argparse.ArgumentParser, targets: set[str], where: str = "") -> list[str]:
    """Every ``lssr`` subcommand, option of an ``lssr`` command and ``make`` target named in the code of ``text``
    that does not exist, each as one line naming it."""
    subs = subparsers(parser)
    top = set(parser._option_string_actions)
    out = []
    for piece in code_pieces(text):
        for target in make_targets(piece):
            if target not in targets:
                out.append(f"{where}: `make {target}`: no such target in the Makefile ({piece.strip()!r})")
        for cmd in lssr_commands(piece):
            m = SUBCOMMAND.match(cmd)
            if m is None:  # `lssr` alone, or `lssr --help`
                known, name = top, "lssr"
            elif m.group(1) not in subs:
                out.append(f"{where}: `lssr {m.group(1)}`: no such subcommand ({piece.strip()!r})")
                continue
            else:
                name = f"lssr {m.group(1)}"
                known = set(subs[m.group(1)]._option_string_actions)
            for opt in OPTION.findall(cmd):
                if opt not in known:
                    out.append(f"{where}: `{name} {opt}`: no such option ({piece.strip()!r})")
    return out


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.fixture(scope="module")
def targets():
    return set(TARGET.findall((ROOT / "Makefile").read_text()))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_only_real_commands_options_and_make_targets(doc, parser, targets):
    assert problems(doc.read_text(), parser, targets, str(doc.relative_to(ROOT))) == []


def test_the_checker_finds_removed_options_subcommands_and_targets(tmp_path, parser, targets):
    page = tmp_path / "PAGE.md"
    page.write_text(
        "Run `lssr diagnose --model m:f --no-such-option` or `make bench-nothing`, then `lssr frobnicate`.\n\n"
        "```\n"
        "snakemake --cores all --not-an-lssr-option      # another tool: not checked\n"
        "make demo\n"
        "lssr train-batch --config A.yaml --out DIR \\\n"
        "    --members-per-pass 2 --planted-bad 1     # a continuation line\n"
        "torchrun --nproc-per-node 2 -m lssr train-batch --data-parallel 2 --also-bad\n"
        "```\n"
        "Good ones: `lssr diagnose --help`, `lssr train --json`, `python -m lssr recommend --b-ref 8`, `make test`,\n"
        "`lssr --version`, and a span that wraps: `lssr train-batch\n--members-per-pass 2`.\n"
    )
    found = problems(page.read_text(), parser, targets, "PAGE.md")
    assert [f.split(": ", 1)[1].split(" (")[0] for f in found] == [
        "`lssr train-batch --planted-bad`: no such option",
        "`lssr train-batch --also-bad`: no such option",
        "`lssr diagnose --no-such-option`: no such option",
        "`make bench-nothing`: no such target in the Makefile",
        "`lssr frobnicate`: no such subcommand",
    ]


def test_readme_names_every_doc_and_every_make_target():
    """A user finds every page of docs/ and every target of the Makefile's .PHONY list from README.md."""
    readme = (ROOT / "README.md").read_text()
    pieces = code_pieces(readme)
    named = {t for p in pieces for t in make_targets(p)}
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert sorted(set(phony) - named) == []
    pages = [p.name for p in (ROOT / "docs").glob("*.md")] + [
        p.name + "/" for p in (ROOT / "docs").iterdir() if p.is_dir()
    ]
    assert [p for p in sorted(pages) if p not in readme] == []
