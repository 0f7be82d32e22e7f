"""lssr replication-record: a finished run's files copied into a kept folder, with a README.md whose numbers are
the ones in those files (checked here against the numbers this test wrote into a small fake results tree)."""

import json
import math
import signal
import struct
import subprocess
import sys
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lssr import LssrError
from lssr.cli import main
from lssr.replication import best_cells, write_replication_record
from lssr.workflow import plan

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2030, 1, 2, 3, 4, tzinfo=timezone.utc)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def png(width: int, height: int, grey: int) -> bytes:
    """A valid greyscale PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + bytes([grey]) * width for _ in range(height))
    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def claim(cid, verdict, value, subject, kind="claim", statistic="|x − 1|"):
    return {
        "claim": cid, "kind": kind, "source": f"Fig. {cid}", "subject": subject, "description": f"statement {cid}",
        "statistic": statistic, "estimate": math.nan, "target": math.nan, "value": value, "comparison": "<=",
        "threshold": 0.2, "verdict": verdict, "n_points": 9, "window": "", "notes": "",
    }  # fmt: skip


def run(name, b, lr, seed, train_acc, test_acc, wall):
    return {
        "run": name, "status": "completed", "steps": 10, "dataset": "imagefolder", "n": 64, "model": "digits_cnn",
        "batch_norm": True, "loss": "ce", "b": b, "lr": lr, "seed": seed, "replacement": False,
        "final_train_acc": train_acc, "final_test_acc": test_acc, "wall_time_s": wall, "git_commit": COMMIT,
    }  # fmt: skip


def fake_tree(root: Path) -> dict[str, Path]:
    """results/ (claims, verdicts, summary, runs and fig5 tables), figures/ (two PNGs) and a config."""
    res, figs = root / "results", root / "figures"
    (res / "tables").mkdir(parents=True)
    figs.mkdir()
    claims = [
        claim("C1", "pass", 0.1, "run a"), claim("C1", "pass", 0.05, "run b"), claim("C1", "fail", 0.5, "run c"),
        claim("C1", "not-enough-data", math.nan, "run d"),
        claim("C5", "not-enough-data", math.nan, "cifar10-jpeg"),
        claim("C3", "inconclusive", 0.19, "b=8"), claim("C3", "pass", 0.01, "all b"),
        claim("K1", "pass", 0.02, "all b", kind="check"),
    ]  # fmt: skip
    pd.DataFrame(claims).to_csv(res / "claims.csv", index=False)
    (res / "verdicts.csv").write_text("claim,verdict\nC1,pass\n")
    (res / "summary.csv").write_text("claim,verdict\nC1,fail\n")
    runs = [
        run("r8a", 8, 0.5, 0, 0.90, 0.50, 60.0), run("r8b", 8, 0.5, 1, 0.80, 0.40, 120.0),
        run("r8c", 8, 1.0, 0, 0.30, 0.20, 30.0), run("fig1", "full", 0.5, 0, 0.99, 0.45, 15.5),
        run("r16", 16, 0.25, 0, 0.70, 0.35, 4.5),
    ]  # fmt: skip
    pd.DataFrame(runs).to_csv(res / "tables" / "runs.csv", index=False)
    fig5 = [
        {"kind": "cell", "dataset": "cifar10-jpeg", "n": 64, "b": 8, "lr": 0.5, "test_acc": 0.45, "n_seeds": 2,
         "is_best": True, "censored": "", "lr_star": 0.6, "lr_star_lo": 0.42, "lr_star_hi": 0.9},
        {"kind": "cell", "dataset": "cifar10-jpeg", "n": 64, "b": 8, "lr": 1.0, "test_acc": 0.20, "n_seeds": 1,
         "is_best": False, "censored": ""},
        {"kind": "cell", "dataset": "cifar10-jpeg", "n": 64, "b": 16, "lr": 0.25, "test_acc": 0.35, "n_seeds": 1,
         "is_best": True, "censored": "low"},
        # b = 32: no cell reached the goal (the largest η reached more, but diverged)
        {"kind": "cell", "dataset": "cifar10-jpeg", "n": 64, "b": 32, "lr": 0.5, "test_acc": 0.30, "n_seeds": 1,
         "is_best": False, "train_acc": 0.90, "diverged": False, "train_acc_goal": 1.0},
        {"kind": "cell", "dataset": "cifar10-jpeg", "n": 64, "b": 32, "lr": 1.0, "test_acc": 0.31, "n_seeds": 1,
         "is_best": False, "train_acc": 0.95, "diverged": False, "train_acc_goal": 1.0},
        {"kind": "cell", "dataset": "cifar10-jpeg", "n": 64, "b": 32, "lr": 2.0, "test_acc": 0.10, "n_seeds": 1,
         "is_best": False, "train_acc": 0.99, "diverged": True, "train_acc_goal": 1.0},
        {"kind": "seed", "dataset": "cifar10-jpeg", "n": 64, "b": 8, "lr": 0.5, "seed": 0, "test_acc": 0.50},
        {"kind": "seed", "dataset": "cifar10-jpeg", "n": 64, "b": 8, "lr": 0.5, "seed": 1, "test_acc": 0.40},
        {"kind": "seed", "dataset": "cifar10-jpeg", "n": 64, "b": 8, "lr": 1.0, "seed": 0, "test_acc": 0.20},
        {"kind": "seed", "dataset": "cifar10-jpeg", "n": 64, "b": 16, "lr": 0.25, "seed": 0, "test_acc": 0.35},
    ]  # fmt: skip
    pd.DataFrame(fig5).to_csv(res / "tables" / "fig5.csv", index=False)
    (res / "tables" / "fig5_rho.csv").write_text("run,b,b_simple\nr8a,8,50.0\n")  # read by C5 beside fig5.csv
    x = np.linspace(2.0, 9.0, 8)  # C1's table: the normalised loss change on eq. (9)'s line, η = 0.2
    fig1 = {"run": "fig1", "loss": "mse", "optimizer": "GD", "b": 64, "lr": 0.2, "step": np.arange(8),
            "instability_ratio": x, "instability_ratio_se": 0.0, "norm_change": 0.02 * (x - 10.0), "phase": "early",
            "two_over_eta": 10.0}  # fmt: skip
    pd.DataFrame(fig1).to_csv(res / "tables" / "fig1.csv", index=False)
    raw = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    raw.update(name="tiny replication (CPU)", figures=["fig1", "fig5"])
    # Snakemake's benchmark files of two of the config's training jobs, and one of a job another config planned
    p = plan(raw)
    single = next(r for r in p.runs if r not in p.grouped_runs)
    jobs = ((f"train/{single}", 15.5), (f"train_group/{next(iter(p.groups))}", 124.5), ("train_group/other_b8", 99.0))
    for job, secs in jobs:
        (res / "benchmarks" / job).parent.mkdir(parents=True, exist_ok=True)
        (res / "benchmarks" / f"{job}.tsv").write_text(f"s\th:m:s\tmax_rss\n{secs}\t0:00:00\t1.0\n")
    timing = {"seconds": 1830, "cores": "2", "nproc": 2, "loadavg_before": "0.05 0.10 0.20",
              "loadavg_after": "2.01 2.00 1.90", "finished_utc": "2030-01-02T03:00:00Z"}  # fmt: skip
    (res / "replication-time.json").write_text(json.dumps(timing))
    (figs / "fig1.png").write_bytes(png(2, 3, 10))
    (figs / "fig5.png").write_bytes(png(4, 1, 200))
    (figs / "fig3.png").write_bytes(png(1, 1, 0))  # left by another config: not recorded
    cfg = root / "replication.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    return {"results": res, "figures": figs, "config": cfg}


def table_line(page: str, cid: str) -> str:
    (line,) = [ln for ln in page.splitlines() if ln.startswith("|") and f"| {cid} |" in ln]
    return line


def test_record_copies_the_files_and_writes_the_counts_it_read(tmp_path):
    t = fake_tree(tmp_path)
    out = tmp_path / "docs" / "replication"
    readme = write_replication_record(t["results"], t["figures"], t["config"], out, now=NOW)
    assert readme == out / "README.md"
    for src, dst in (
        ("claims.csv", "claims.csv"), ("verdicts.csv", "verdicts.csv"), ("summary.csv", "summary.csv"),
        ("tables/runs.csv", "runs.csv"), ("tables/fig5.csv", "fig5.csv"), ("tables/fig1.csv", "fig1.csv"),
        ("tables/fig5_rho.csv", "fig5_rho.csv"),
    ):  # fmt: skip
        assert (out / dst).read_bytes() == (t["results"] / src).read_bytes()
    for name in ("fig1.png", "fig5.png"):
        assert (out / "figures" / name).read_bytes() == (t["figures"] / name).read_bytes()
    page = readme.read_text()
    # one line per claim, in claim order, with the counts this test wrote
    lines = [ln for ln in page.splitlines() if ln.startswith("| statement of the paper")]
    assert len(lines) == 1
    c1, c3, c5, k1 = (table_line(page, c) for c in ("C1", "C3", "C5", "K1"))
    assert "2 pass, 1 fail, 0 inconclusive, 1 not-enough-data" in c1 and "**fail**" in c1 and "statement C1" in c1
    assert "1 pass, 0 fail, 1 inconclusive, 0 not-enough-data" in c3 and "**inconclusive**" in c3
    assert "0 pass, 0 fail, 0 inconclusive, 1 not-enough-data" in c5 and "none decided" in c5
    assert "1 pass, 0 fail, 0 inconclusive, 0 not-enough-data" in k1
    assert page.index(c1) < page.index(c3) < page.index(c5) < page.index(k1)
    # C1's decided values 0.05, 0.1, 0.5 (the NaN row is not-enough-data): range 0.05–0.5, markdown-escaped |
    assert "\\|x − 1\\| = 0.05–0.5 (3 subjects; pass if \\<= 0.2; 1 fail)" in c1
    # provenance, config, run time, best cells, figure links
    assert page.startswith("# Replication record: tiny replication (CPU)\n")
    assert COMMIT in page and "2030-01-02 03:04 UTC" in page
    assert "tiny replication (CPU)" in page and "data set `digits-256`: source: digits, n: 256" in page
    assert "(in the tables, figures and claims: `digits`, with its n)" in page  # the name the tables below use
    assert "- fig5: model: digits\\_cnn, batch\\_norm: True, epochs: 2, batch\\_sizes: \\[16, 64\\]" in page
    # the Makefile's wall-clock file (1830 s) and the config's jobs' benchmark files (15.5 + 124.5 = 140 s, 2 jobs)
    assert "1830 s = 30.5 min" in page and "before it started: 0.05 0.10 0.20" in page
    assert "Training jobs: 2, their wall times summed 140 s = 2.3 min" in page
    assert (out / "replication-time.json").read_bytes() == (t["results"] / "replication-time.json").read_bytes()
    # b = 8: η 0.5, train accuracy the mean of seeds 0 and 1 (0.90, 0.80), test accuracy the cell's 0.45
    assert "| cifar10-jpeg | 8 | 0.5 | 85.0 % | 45.0 % | 2 |  | 0.6 \\[0.42, 0.9\\] |" in page
    assert "| cifar10-jpeg | 16 | 0.25 | 70.0 % | 35.0 % | 1 | edge (low) |  |" in page
    # a b without a best cell is named, with its highest training accuracy among the cells that did not diverge
    assert (
        "- cifar10-jpeg, b = 32: the highest mean final training accuracy 95.0 % (at η = 1), short of the goal 100.0 %"
        in page
    )
    assert "[fig1](figures/fig1.png)" in page and "[fig5](figures/fig5.png)" in page
    # only the figures the config builds: fig3.png, left in the folder by another config, is not recorded
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["fig1.png", "fig5.png"] and "fig3" not in page


def test_record_alone_recomputes_its_claims(tmp_path):
    """The record keeps every table a claim reads of the figures its config builds (fig1.csv, and fig5.csv, checked
    byte for byte above): `lssr claims` run on the record's fig1.csv gives back the record's claims.csv row for row
    (here claims.csv holds Figure 1's claims only)."""
    import subprocess
    import sys

    from lssr.claims import check_claims, read_tables

    t = fake_tree(tmp_path)
    tables = t["results"] / "tables"
    check_claims(read_tables([("fig1", tables / "fig1.csv")])).to_csv(t["results"] / "claims.csv", index=False)
    out = tmp_path / "record"
    write_replication_record(t["results"], t["figures"], t["config"], out, now=NOW)
    lssr = Path(sys.executable).with_name("lssr")
    again = tmp_path / "again.csv"
    cmd = [str(lssr), "claims", "--table", f"fig1={out / 'fig1.csv'}", "--out", str(again)]
    subprocess.run(cmd, check=True, capture_output=True)
    kept, redone = pd.read_csv(out / "claims.csv"), pd.read_csv(again)
    pd.testing.assert_frame_equal(kept, redone)
    assert set(kept.loc[kept["claim"] == "C1", "verdict"]) == {"pass"}  # read from the copied fig1.csv


def test_best_cells_use_the_tables_train_accuracy_when_it_has_one(tmp_path):
    t = fake_tree(tmp_path)
    fig5 = pd.read_csv(t["results"] / "tables" / "fig5.csv").assign(train_acc=0.625)
    best = best_cells(fig5, pd.read_csv(t["results"] / "tables" / "runs.csv"))
    assert best["b"].tolist() == [8, 16] and best["lr"].tolist() == [0.5, 0.25]
    assert best["train_acc"].tolist() == [0.625, 0.625]


def test_missing_claims_names_the_file_and_the_command_and_keeps_the_old_record(tmp_path, capsys):
    t = fake_tree(tmp_path)
    out = tmp_path / "record"
    write_replication_record(t["results"], t["figures"], t["config"], out, now=NOW)
    before = (out / "README.md").read_bytes()
    (t["results"] / "claims.csv").unlink()
    with pytest.raises(LssrError, match=r"claims\.csv: no such file \(it is written by `lssr claims`"):
        write_replication_record(t["results"], t["figures"], t["config"], out, now=NOW)
    args = ["replication-record", "--results", str(t["results"]), "--figures", str(t["figures"]),
            "--config", str(t["config"]), "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "claims.csv" in err and "lssr claims" in err
    assert (out / "README.md").read_bytes() == before  # the old record is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".record")) == []  # no temp folder left


def test_record_replaces_the_old_folder_as_a_whole(tmp_path):
    t = fake_tree(tmp_path)
    out = tmp_path / "record"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    write_replication_record(t["results"], t["figures"], t["config"], out, now=NOW)
    assert not (out / "stale.png").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "claims.csv", "fig1.csv", "fig5.csv", "fig5_rho.csv", "figures", "replication-time.json",
        "runs.csv", "summary.csv", "verdicts.csv",
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".record")] == []


def test_missing_figures_or_config_are_one_line_errors(tmp_path):
    t = fake_tree(tmp_path)
    (t["figures"] / "fig5.png").unlink()
    with pytest.raises(LssrError, match=r"fig5\.png: no such file \(it is written by `lssr figure fig5`"):
        write_replication_record(t["results"], t["figures"], t["config"], tmp_path / "r")
    (t["figures"] / "fig5.png").write_bytes(png(1, 1, 0))
    (t["results"] / "tables" / "fig5.csv").unlink()
    with pytest.raises(LssrError, match=r"fig5\.csv: no such file \(it is written by `lssr table fig5`"):
        write_replication_record(t["results"], t["figures"], t["config"], tmp_path / "r")
    (t["results"] / "tables" / "fig5.csv").write_text("b\n8\n")
    (t["results"] / "tables" / "fig5_rho.csv").unlink()
    with pytest.raises(LssrError, match=r"fig5_rho\.csv: no such file \(it is written by `lssr fig5-rho`"):
        write_replication_record(t["results"], t["figures"], t["config"], tmp_path / "r")
    with pytest.raises(LssrError, match="nope.yaml: no such config file"):
        write_replication_record(t["results"], t["figures"], tmp_path / "nope.yaml", tmp_path / "r")


def _lssr_timed(tmp: Path, *command: str) -> subprocess.Popen:
    args = ["--log", str(tmp / "inv.jsonl"), "--summary", str(tmp / "time.json"), "--done", str(tmp / "claims.csv")]
    return subprocess.Popen([sys.executable, "-m", "lssr", "timed", *args, "--cores", "2", "--", *command])


def test_timed_sums_a_run_stopped_and_resumed_and_keeps_the_timing_of_a_run_with_nothing_to_do(tmp_path):
    """The record's run time is the sum over every invocation of the workflow: the first one here is stopped by
    SIGTERM (logged, forwarded to the command, no summary), the second finishes and rebuilds the last output (the
    summary sums both), a third rebuilds nothing (logged; the summary stays)."""
    py = sys.executable
    started = tmp_path / "started"
    sleeper = f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"
    first = _lssr_timed(tmp_path, py, "-c", sleeper)
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 128 + signal.SIGTERM  # the command was stopped, not waited for (60 s)
    assert not (tmp_path / "time.json").exists()
    done = f"import pathlib, time; time.sleep(1.2); pathlib.Path({str(tmp_path / 'claims.csv')!r}).write_text('x')"
    assert _lssr_timed(tmp_path, py, "-c", done).wait(timeout=60) == 0
    lines = [json.loads(x) for x in (tmp_path / "inv.jsonl").read_text().splitlines()]
    assert [x["signal"] for x in lines] == ["SIGTERM", None] and lines[1]["returncode"] == 0
    assert all(x["seconds"] >= 1 for x in lines)
    t = json.loads((tmp_path / "time.json").read_text())
    assert t["seconds"] == lines[0]["seconds"] + lines[1]["seconds"] and t["invocations"] == 2
    assert t["invocation_seconds"] == [x["seconds"] for x in lines] and t["cores"] == "2"
    assert t["started_utc"] == lines[0]["start_utc"] and t["finished_utc"] == lines[1]["end_utc"]
    assert _lssr_timed(tmp_path, py, "-c", "pass").wait(timeout=60) == 0
    assert len((tmp_path / "inv.jsonl").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "time.json").read_text()) == t
    failing = subprocess.run([py, "-m", "lssr", "timed", "--log", str(tmp_path / "x.jsonl"), "--"], capture_output=True)
    assert failing.returncode != 0 and "no command given" in failing.stderr.decode()


def test_a_run_records_the_commit_read_when_it_started(monkeypatch):
    """The record's commits are the code each run trained with: ``git_commit`` reads ``git rev-parse HEAD`` once
    per process (training calls it when it starts), so a checkout that moves on before the run ends does not change
    what the run writes."""
    from types import SimpleNamespace

    from lssr.training import outputs

    heads = iter(["a" * 40, "b" * 40])
    monkeypatch.setattr(outputs.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0, stdout=next(heads)))
    outputs.git_commit.cache_clear()
    try:
        assert outputs.git_commit() == "a" * 40  # at the start
        assert outputs.git_commit() == "a" * 40  # at the end, after HEAD moved to b...
    finally:
        outputs.git_commit.cache_clear()
