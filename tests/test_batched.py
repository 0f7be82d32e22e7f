"""Batched training (lssr.batched): every member equals training it alone with lssr.train.train."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lssr.config import config_from_dict
from lssr.data import SubsetSpec, build_subset, load_subset
from lssr.training import METRIC_COLUMNS, BatchConfigError, check_batchable, train, train_batched

N = 128
ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: OpenMP with 2 threads is many times slower under load.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    build_subset(SubsetSpec("digits", N, seed=0), folder)
    return folder


@pytest.fixture(scope="module")
def digits(digits_dir):
    return load_subset(digits_dir)


def make_cfg(**over):
    raw = {
        "seed": 3,
        "device": "cpu",
        "data": {"dataset": "digits", "n": N},
        "model": {"name": "digits_cnn"},
        "loss": "ce",
        "optim": {"lr": 0.1, "batch_size": 32},
        "stop": {"steps": 20},
        "eval_every": 5,
        "log_every": 1,
        "chunk_size": 24,  # smaller than b: exercises the chunked gradient (and chunked BN statistics)
    }
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(raw)


def assert_same_run(alone, batched, alone_dir=None, batched_dir=None, atol=ATOL, rtol=0.0):
    assert batched.status == alone.status
    assert batched.steps == alone.steps
    a, b = alone.metrics, batched.metrics
    assert list(b.columns) == METRIC_COLUMNS
    assert a.shape == b.shape
    assert (a.isna().values == b.isna().values).all(), "rows / logged columns differ"
    np.testing.assert_allclose(b.values.astype(float), a.values.astype(float), atol=atol, rtol=rtol, equal_nan=True)
    sa, sb = alone.model.state_dict(), batched.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if sa[k].is_floating_point() and math.isfinite(float(sa[k].abs().max())):
            torch.testing.assert_close(sb[k], sa[k], atol=max(atol, 1e-4), rtol=max(rtol, 1e-3))
        elif not sa[k].is_floating_point():
            assert torch.equal(sb[k], sa[k]), k
    if alone_dir is not None:
        ja, jb = (json.loads((d / "run.json").read_text()) for d in (alone_dir, batched_dir))
        for key in ("status", "steps", "stopped_by", "config", "config_hash", "seed", "subset_seed", "subset_sha256"):
            assert jb[key] == ja[key], key
        assert set(ja) <= set(jb)
        ca, cb = (pd.read_csv(d / "metrics.csv") for d in (alone_dir, batched_dir))
        assert list(cb.columns) == list(ca.columns) == METRIC_COLUMNS
        ma, mb = (torch.load(d / "model.pt", weights_only=True) for d in (alone_dir, batched_dir))
        assert list(ma) == list(mb)


@pytest.mark.parametrize("batch_size", [32, "full"], ids=["sgd-b32", "gd"])
def test_four_learning_rates_equal_training_one_by_one(digits, tmp_path, batch_size):
    lrs = [0.02, 0.05, 0.1, 0.2]
    cfgs = [make_cfg(optim={"lr": lr, "batch_size": batch_size}, name=f"lr{lr}") for lr in lrs]
    outs = [tmp_path / f"batched-{i}" for i in range(len(cfgs))]
    res = train_batched(cfgs, digits, outs, progress=False)
    for i, cfg in enumerate(cfgs):
        alone = train(cfg, digits, tmp_path / f"alone-{i}", progress=False)
        assert_same_run(alone, res[i], tmp_path / f"alone-{i}", outs[i])
        assert json.loads((outs[i] / "run.json").read_text())["batched"] == {"group_size": 4, "member": i}


def test_diverging_member_is_masked_and_the_others_complete(digits, tmp_path):
    # η = 1e4 explodes in the middle of an evaluation interval (the batch loss at step 1 is huge);
    # divergence_bound = 2.0 stops a member at its first evaluation (training loss 2.3 > 2.0).
    cfgs = [
        make_cfg(optim={"lr": 0.05}),
        make_cfg(optim={"lr": 1.0e4}),
        make_cfg(optim={"lr": 0.1}),
        make_cfg(optim={"lr": 0.1}, stop={"divergence_bound": 2.0}),
    ]
    res = train_batched(cfgs, digits, [tmp_path / f"m{i}" for i in range(4)], progress=False)
    assert [r.status for r in res] == ["completed", "diverged", "completed", "diverged"]
    alone = [train(c, digits, progress=False) for c in cfgs]
    for i in (0, 2, 3):
        assert_same_run(alone[i], res[i])
    # The exploding member: same stopping step, same rows; values are huge, compare relatively.
    assert res[1].steps == alone[1].steps > 0
    assert_same_run(alone[1], res[1], atol=1e-5, rtol=1e-3)
    run = json.loads((tmp_path / "m1" / "run.json").read_text())
    assert run["status"] == "diverged" and run["stopped_by"] == "divergence"
    assert json.loads((tmp_path / "m3" / "run.json").read_text())["steps"] == 0


def test_goal_stops_each_member_on_its_own(digits):
    cfgs = [make_cfg(optim={"lr": lr, "batch_size": "full"}, stop={"steps": 60, "train_acc_goal": 0.7}) for lr in (0.1, 0.2, 0.4)]
    res = train_batched(cfgs, digits, None, progress=False)
    steps = [r.steps for r in res]
    assert len(set(steps)) > 1, f"the members should reach the goal at different steps, got {steps}"
    for cfg, r in zip(cfgs, res):
        assert_same_run(train(cfg, digits, progress=False), r)


def test_batch_norm_model_with_running_statistics(digits, tmp_path):
    cfgs = [make_cfg(model={"name": "digits_cnn", "batch_norm": True}, optim={"lr": lr}) for lr in (0.02, 0.05, 0.1)]
    outs = [tmp_path / f"bn{i}" for i in range(3)]
    res = train_batched(cfgs, digits, outs, progress=False)
    for i, cfg in enumerate(cfgs):
        alone = train(cfg, digits, tmp_path / f"alone{i}", progress=False)
        assert_same_run(alone, res[i], tmp_path / f"alone{i}", outs[i])
        state = res[i].model.state_dict()
        assert int(state["features.1.num_batches_tracked"]) == 20 * 2  # 20 steps x 2 chunks (24 + 8)
        assert not torch.allclose(state["features.1.running_var"], torch.ones_like(state["features.1.running_var"]))


def test_members_with_different_seeds_use_their_own_batches(digits):
    cfgs = [make_cfg(seed=s, optim={"lr": lr}, model={"name": "digits_cnn", "batch_norm": True}) for s in (1, 2) for lr in (0.02, 0.05)]
    res = train_batched(cfgs, digits, None, progress=False)
    for cfg, r in zip(cfgs, res):
        assert_same_run(train(cfg, digits, progress=False), r)


def test_members_per_pass_gives_the_same_results(digits):
    cfgs = [make_cfg(optim={"lr": lr}, stop={"steps": 6}) for lr in (0.05, 0.1, 0.2)]
    a = train_batched(cfgs, digits, None, progress=False)
    b = train_batched(cfgs, digits, None, progress=False, members_per_pass=2)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.metrics.values.astype(float), y.metrics.values.astype(float), atol=ATOL, equal_nan=True)


@pytest.mark.parametrize(
    "other, key",
    [
        ({"optim": {"batch_size": 16}}, "optim.batch_size"),
        ({"model": {"name": "digits_cnn", "batch_norm": True}}, "model.batch_norm"),
        ({"loss": "mse"}, "loss"),
        ({"stop": {"steps": 30}}, "stop.steps"),
        ({"data": {"dataset": "digits", "n": 64}}, "data.n"),
        ({"probe": {"every": 5}}, "probe"),
    ],
)
def test_mismatched_configs_raise_an_error_naming_the_key(other, key):
    with pytest.raises(BatchConfigError, match=f"'{key}'"):
        check_batchable([make_cfg(), make_cfg(**other)])


def test_output_folders_must_match_the_configs(digits, tmp_path):
    with pytest.raises(BatchConfigError, match="output folders"):
        train_batched([make_cfg(), make_cfg()], digits, [tmp_path / "a"], progress=False)
    with pytest.raises(BatchConfigError, match="same output folder"):
        train_batched([make_cfg(), make_cfg()], digits, [tmp_path / "a", tmp_path / "a"], progress=False)


def test_cli_train_batch(digits_dir, tmp_path):
    from lssr.cli import main

    paths = []
    for i, lr in enumerate((0.05, 0.1)):
        raw = make_cfg(optim={"lr": lr}, stop={"steps": 4}).to_dict()
        raw["probe"] = None
        p = tmp_path / f"c{i}.yaml"
        p.write_text(yaml.safe_dump(raw))
        paths.append(p)
    args = ["train-batch", "--config", str(paths[0]), "--config", str(paths[1])]
    args += ["--out", str(tmp_path / "o0"), "--out", str(tmp_path / "o1"), "--data", str(digits_dir), "--no-progress"]
    assert main(args) == 0
    for d in ("o0", "o1"):
        assert {"metrics.csv", "run.json", "model.pt"} <= {f.name for f in (tmp_path / d).iterdir()}
    assert main(["train-batch", "--config", str(paths[0]), "--config", str(paths[1]), "--out", str(tmp_path / "x")]) == 2


def test_gpu_script_syntax_and_tiny_cpu_mode(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not available")
    script = ROOT / "benchmarks" / "gpu.sh"
    subprocess.run([bash, "-n", str(script)], check=True)
    env = {**os.environ, "PYTHON": sys.executable, "LSSR_GPU_BENCH_SKIP_DIAGNOSTICS": "1"}
    proc = subprocess.run([bash, str(script), "--cpu", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["mode"] == "cpu-tiny"
    assert all(r["batched_member_steps_per_s"] > 0 and r["single_steps_per_s"] > 0 for r in result["throughput"])
