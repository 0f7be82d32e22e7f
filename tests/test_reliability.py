"""Reliability: SIGKILL at any step and restart gives byte-identical tables; atomic outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lssr.data import SubsetSpec, build_subset

HERE = Path(__file__).resolve().parent
N = 64


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    build_subset(SubsetSpec("digits", N, seed=1), folder)
    return folder


def write_cfg(path, probe):
    raw = {
        "seed": 5,
        "device": "cpu",
        "data": {"dataset": "digits", "n": N, "seed": 1},
        "model": {"name": "digits_cnn"},
        "loss": "mse",
        "optim": {"lr": 0.05, "batch_size": 16},
        "stop": {"steps": 23},
        "eval_every": 4,
        "checkpoint_every": 5,
    }
    if probe:
        raw["probe"] = {"every": 3, "batch_sizes": [4], "estimator": "sketch", "probes": 4, "expected_change_batches": 2, "resultant_batches": 2}
    path.write_text(yaml.safe_dump(raw))
    return path


def run(cfg, data, out, kill_step=0, where="none"):
    return subprocess.run(
        [sys.executable, str(HERE / "killable_run.py"), str(cfg), str(data), str(out), str(kill_step), where],
        capture_output=True, text=True, timeout=600,
    )


def tables(out):
    return {name: (out / name).read_bytes() for name in ("metrics.csv", "diagnostics.csv") if (out / name).exists()}


@pytest.mark.slow  # about a minute each: seven training processes
@pytest.mark.parametrize("probe", [False, True], ids=["plain", "probed"])
def test_sigkill_and_resume_is_byte_identical(digits, tmp_path, probe):
    if probe:
        pytest.importorskip("lssr.diagnostics")
    cfg = write_cfg(tmp_path / "run.yaml", probe)
    ref = tmp_path / "ref"
    proc = run(cfg, digits, ref)
    assert proc.returncode == 0, proc.stderr
    expected = tables(ref)
    assert "metrics.csv" in expected and (not probe or "diagnostics.csv" in expected)
    # kill points: right after a checkpoint (5), at a probed step between a checkpoint and the probe
    # (9 is probed, last checkpoint at 5), during probing after the update between checkpoints (13)
    for kill_step, where in [(5, "before"), (9, "before"), (13, "after")]:
        out = tmp_path / f"kill{kill_step}{where}"
        proc = run(cfg, digits, out, kill_step, where)
        assert proc.returncode == -9, (kill_step, proc.stderr)
        # nothing final is half-written: final tables do not exist yet, partial logs parse
        assert not (out / "metrics.csv").exists() and not (out / "run.json").exists()
        partial = out / "metrics.csv.partial"
        if partial.exists() and partial.stat().st_size:
            pd.read_csv(partial)
        proc = run(cfg, digits, out)
        assert proc.returncode == 0, proc.stderr
        got = tables(out)
        assert got == expected, f"tables differ after kill at step {kill_step} ({where})"
        run_json = json.loads((out / "run.json").read_text())
        assert run_json["status"] == "completed" and run_json["resumed"] == (kill_step >= 5)
        assert not (out / "checkpoint.pt").exists()


def test_changed_config_does_not_resume_from_stale_checkpoint(digits, tmp_path):
    cfg = write_cfg(tmp_path / "run.yaml", False)
    out = tmp_path / "out"
    assert run(cfg, digits, out, 12, "before").returncode == -9
    raw = yaml.safe_load(cfg.read_text())
    raw["optim"]["lr"] = 0.02
    cfg.write_text(yaml.safe_dump(raw))
    assert run(cfg, digits, out).returncode == 0
    ref = tmp_path / "ref"
    assert run(cfg, digits, ref).returncode == 0
    assert tables(out) == tables(ref)
    assert json.loads((out / "run.json").read_text())["resumed"] is False
