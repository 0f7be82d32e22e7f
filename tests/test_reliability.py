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
        raw["probe"] = {
            "every": 3,
            "batch_sizes": [4],
            "estimator": "sketch",
            "probes": 4,
            "expected_change_batches": 2,
            "resultant_batches": 2,
        }
    path.write_text(yaml.safe_dump(raw))
    return path


def run(cfg, data, out, kill_step=0, where="none"):
    return subprocess.run(
        [sys.executable, str(HERE / "killable_run.py"), str(cfg), str(data), str(out), str(kill_step), where],
        capture_output=True,
        text=True,
        timeout=600,
    )


def tables(out):
    return {name: (out / name).read_bytes() for name in ("metrics.csv", "diagnostics.csv") if (out / name).exists()}


def comparable_run_json(out):
    """run.json without what may differ between an interrupted and an uninterrupted run."""
    record = json.loads((out / "run.json").read_text())
    return {k: v for k, v in record.items() if k not in ("wall_time_s", "resumed")}


@pytest.mark.slow  # about a minute each: seven training processes
@pytest.mark.parametrize("probe", [False, True], ids=["plain", "probed"])
def test_sigkill_and_resume_is_byte_identical(digits, tmp_path, probe):
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
        assert comparable_run_json(out) == comparable_run_json(ref)
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


# -- batched groups (lssr train-batch) ---------------------------------------------------------------

# Five members, steps 23, evaluation every 4 steps, a checkpoint every 3 (so some checkpoints fall between
# evaluations): "b" (η = 3) diverges at step 3, before the first checkpoint; "e" (η = 2) diverges at step 5,
# between the checkpoint at 3 and the one at 6, and is still (masked) in the stack at the checkpoint at 6;
# "c" reaches its loss goal at the evaluation at 12, right after the checkpoint at 12; "a" and "d" run to 23.
MEMBERS = {"a": (0.05, {}), "b": (3.0, {}), "e": (2.0, {}), "c": (0.2, {"train_loss_goal": 0.39}), "d": (0.1, {})}
EXPECTED = {
    "a": ("completed", 23),
    "b": ("diverged", 3),
    "e": ("diverged", 5),
    "c": ("completed", 12),
    "d": ("completed", 23),
}


def write_group(folder, seeds):
    paths = []
    for i, (name, (lr, stop)) in enumerate(MEMBERS.items()):
        raw = {
            "name": name,
            "seed": 5 + i if seeds else 5,
            "device": "cpu",
            "data": {"dataset": "digits", "n": N, "seed": 1},
            "model": {"name": "digits_cnn"},
            "loss": "mse",
            "optim": {"lr": lr, "batch_size": 16},
            "stop": {"steps": 23, **stop},
            "eval_every": 4,
            "checkpoint_every": 3,
        }
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        paths.append(path)
    return paths


def run_group(cfgs, data, out, kill_step=-1, per_pass=0):
    pairs = [str(a) for c in cfgs for a in (c, out / c.stem)]
    return subprocess.run(
        [sys.executable, str(HERE / "killable_batch.py"), str(data), str(kill_step), str(per_pass), *pairs],
        capture_output=True,
        text=True,
        timeout=600,
    )


def group_outputs(out):
    return {m: ((out / m / "metrics.csv").read_bytes(), comparable_run_json(out / m)) for m in MEMBERS}


@pytest.mark.slow  # one to three minutes: up to twelve training processes
@pytest.mark.parametrize("seeds", [False, True], ids=["shared-sampler", "own-samplers"])
def test_sigkilled_group_resumes_byte_identical(digits, tmp_path, seeds):
    cfgs = write_group(tmp_path, seeds)
    # (kill before the SGD step of this process, members per pass, delete the stopped members' outputs
    # before the restart as Snakemake does with the outputs of a failed job)
    cases = [(6, 0, False), (7, 0, True), (13, 0, False), (16, 0, True)]
    if not seeds:
        cases.append((23 + 12 + 5, 2, True))  # the third pass at its step 5; passes one and two are done
    else:
        cases = cases[1:3]
    expected = {}
    for per_pass in sorted({c[1] for c in cases}):  # passes of other sizes may round differently (float32)
        ref = tmp_path / f"ref{per_pass}"
        proc = run_group(cfgs, digits, ref, per_pass=per_pass)
        assert proc.returncode == 0, proc.stderr
        expected[per_pass] = group_outputs(ref)
        if not seeds:  # the scenario the kill points are chosen for
            assert {m: (v[1]["status"], v[1]["steps"]) for m, v in expected[per_pass].items()} == EXPECTED
    for kill_step, per_pass, delete in cases:
        out = tmp_path / f"kill{kill_step}-{per_pass}-{delete}"
        proc = run_group(cfgs, digits, out, kill_step, per_pass)
        assert proc.returncode == -9, (kill_step, proc.stderr)
        assert (out / "a" / "checkpoint.pt").exists()
        if delete:
            for m in MEMBERS:
                for name in ("metrics.csv", "run.json", "model.pt"):
                    (out / m / name).unlink(missing_ok=True)
        proc = run_group(cfgs, digits, out, per_pass=per_pass)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr, proc.stderr
        assert group_outputs(out) == expected[per_pass], f"outputs differ after a kill at step {kill_step}"
        resumed = {m: json.loads((out / m / "run.json").read_text())["resumed"] for m in MEMBERS}
        assert resumed["d"], resumed  # it went on from a checkpoint
        assert not list(out.glob("*/checkpoint.pt"))
