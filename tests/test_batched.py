"""Batched training (lssr.training.train_batched): every member equals training it alone with train().

Why the member-by-member comparisons run in float64. The stacked model computes a member's convolutions
and batch norm with the grouped (vmapped) kernels, a run alone with the plain ones; the two round
differently, by one float32 ulp: after the first step the parameters differ by 1.19e-7. digits_cnn has
batch norm and 2x2 max pooling, and where two inputs of a pooling window are nearly tied that ulp flips the
argmax, so the gradient is routed to another position. That is a discrete jump, not slow round-off growth:
on an AMD EPYC (AVX-512) CPU the member (seed 1, η = 0.05) of
test_members_with_different_seeds_use_their_own_batches went from 1.2e-7 to 1.65e-5 max parameter
difference at step 2 and 7.5e-4 by step 6 (batch loss 2.10512 vs 2.10523 at step 5; after 20 steps 6.0e-3 in
the parameters and 1.3e-2 in the metrics), while the same run with average pooling instead of max pooling
stayed <= 2.4e-7 over 6 steps, and without batch norm <= 1.5e-8. Which CPU flips which tie depends on its
kernels, so no float32 tolerance bounds it honestly. In float64 (data and models, the engines keep the
data's dtype) round-off is ~1e-16 and a near-tie flip is improbable: the same members agree to 2.2e-16 in
the parameters and 4.4e-16 in the metrics, and the comparisons are bounded by float64 round-off
(``ATOL`` = 1e-9, far above 1e-16 and far below any real difference in the trajectory).
"""

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
from lssr.data import Subset, SubsetSpec, build_subset, load_subset
from lssr.training import METRIC_COLUMNS, BatchConfigError, check_batchable, train, train_batched

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 128
ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-9  # float64 round-off (~1e-16) with a wide margin


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    build_subset(SubsetSpec("digits", N, seed=0), folder)
    return folder


@pytest.fixture(scope="module")
def digits32(digits_dir):
    return load_subset(digits_dir)


@pytest.fixture(scope="module")
def digits(digits32):
    """The subset in float64 (the engines then build and train the models in float64, see the docstring),
    with the first N of its 773 test samples: float64 costs about 2.5x, and evaluation dominates these runs."""
    d = digits32
    return Subset(d.x_train.double(), d.y_train, d.x_test[:N].double(), d.y_test[:N], d.manifest)


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
    assert next(alone.model.parameters()).dtype == next(batched.model.parameters()).dtype == torch.float64
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
            torch.testing.assert_close(sb[k], sa[k], atol=atol, rtol=rtol)
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
    assert_same_run(alone[1], res[1], rtol=1e-9)
    run = json.loads((tmp_path / "m1" / "run.json").read_text())
    assert run["status"] == "diverged" and run["stopped_by"] == "divergence"
    assert json.loads((tmp_path / "m3" / "run.json").read_text())["steps"] == 0


def test_goal_stops_each_member_on_its_own(digits):
    stop = {"steps": 60, "train_acc_goal": 0.7}
    cfgs = [make_cfg(optim={"lr": lr, "batch_size": "full"}, stop=stop) for lr in (0.1, 0.2, 0.4)]
    res = train_batched(cfgs, digits, None, progress=False)
    steps = [r.steps for r in res]
    assert len(set(steps)) > 1, f"the members should reach the goal at different steps, got {steps}"
    for cfg, r in zip(cfgs, res):
        assert_same_run(train(cfg, digits, progress=False), r)


def test_members_reaching_the_goal_stop_there_and_leave_the_stack(digits, tmp_path, monkeypatch):
    """Figure 5's stop rule in a batched group (batch norm, SGD b = 32, goal 90% training accuracy checked every
    epoch, a 10-epoch cap): each member stops at the step where it stops when trained alone with train(), with the
    same weights and rows; run.json records goal_step (null for the member that runs to the cap); and from the
    step a member stops, the group's SGD steps no longer compute it (the stack holds only the members still
    training)."""
    from lssr.training import batched

    widths: list[int] = []
    sgd_step = batched._Group.sgd_step

    def counted(self, idx):  # the members the step computes: the leading axis of the stacked parameters
        widths.append(next(iter(self.stack.params.values())).shape[0])
        return sgd_step(self, idx)

    monkeypatch.setattr(batched._Group, "sgd_step", counted)
    bn = {"name": "digits_cnn", "batch_norm": True}
    stop = {"steps": None, "epochs": 10, "train_acc_goal": 0.9}
    cfgs = [make_cfg(seed=1, optim={"lr": lr}, model=bn, stop=stop, eval_every=4) for lr in (0.003, 0.05, 0.1, 0.3)]
    outs = [tmp_path / f"b{i}" for i in range(len(cfgs))]
    res = train_batched(cfgs, digits, outs, progress=False)
    assert len({r.steps for r in res[1:]}) == 3 and max(r.steps for r in res[1:]) < 40  # three goal steps
    for i, cfg in enumerate(cfgs):
        alone = train(cfg, digits, tmp_path / f"a{i}", progress=False)
        assert_same_run(alone, res[i], tmp_path / f"a{i}", outs[i])
        rec, rec_alone = (json.loads((d / "run.json").read_text()) for d in (outs[i], tmp_path / f"a{i}"))
        reached = alone.metrics["train_acc"].dropna().iloc[-1] >= 0.9
        assert rec["stopped_by"] == rec_alone["stopped_by"] == ("goal" if reached else "budget")
        assert rec["goal_step"] == rec_alone["goal_step"] == (alone.steps if reached else None)
        assert rec["train_acc_goal"] == 0.9
    assert res[0].steps == 40 and json.loads((outs[0] / "run.json").read_text())["goal_step"] is None
    # step t computes exactly the members that have not stopped by t
    assert widths == [sum(r.steps > t for r in res) for t in range(40)]


def test_batch_norm_model_with_running_statistics(digits, tmp_path):
    cfgs = [make_cfg(model={"name": "digits_cnn", "batch_norm": True}, optim={"lr": lr}) for lr in (0.02, 0.05, 0.1)]
    outs = [tmp_path / f"bn{i}" for i in range(3)]
    res = train_batched(cfgs, digits, outs, progress=False)
    for i, cfg in enumerate(cfgs):
        alone = train(cfg, digits, tmp_path / f"alone{i}", progress=False)
        assert_same_run(alone, res[i], tmp_path / f"alone{i}", outs[i])
        state = res[i].model.state_dict()
        # 20 steps, one forward pass each: batch norm sees the whole batch of 32, not chunks of chunk_size 24
        assert int(state["features.1.num_batches_tracked"]) == 20
        assert not torch.allclose(state["features.1.running_var"], torch.ones_like(state["features.1.running_var"]))


def test_members_with_different_seeds_use_their_own_batches(digits):
    bn = {"name": "digits_cnn", "batch_norm": True}
    cfgs = [make_cfg(seed=s, optim={"lr": lr}, model=bn) for s in (1, 2) for lr in (0.02, 0.05)]
    res = train_batched(cfgs, digits, None, progress=False)
    for cfg, r in zip(cfgs, res):
        assert_same_run(train(cfg, digits, progress=False), r)


def test_members_per_pass_gives_the_same_results(digits):
    cfgs = [make_cfg(optim={"lr": lr}, stop={"steps": 6}) for lr in (0.05, 0.1, 0.2)]
    a = train_batched(cfgs, digits, None, progress=False)
    b = train_batched(cfgs, digits, None, progress=False, members_per_pass=2)
    for x, y in zip(a, b):
        np.testing.assert_allclose(
            x.metrics.values.astype(float), y.metrics.values.astype(float), atol=ATOL, equal_nan=True
        )


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
    one_out = ["--config", str(paths[0]), "--config", str(paths[1]), "--out", str(tmp_path / "x")]
    assert main(["train-batch", *one_out]) == 2


def test_dtype_follows_the_data(digits32, digits):
    cfgs = [make_cfg(optim={"lr": lr}, stop={"steps": 2}) for lr in (0.05, 0.1)]
    for data, dtype in ((digits32, torch.float32), (digits, torch.float64)):
        models = [r.model for r in train_batched(cfgs, data, None, progress=False)]
        models.append(train(cfgs[0], data, progress=False).model)
        assert all(p.dtype == dtype for m in models for p in m.parameters())


def check_gpu_bench_json(result: dict) -> None:
    """The JSON that ``benchmarks/gpu.sh --cpu`` writes (LSSR_GPU_BENCH_SKIP_DIAGNOSTICS set), field by field."""
    members = 2  # MEMBERS in CPU mode
    assert set(result) == {
        "mode",
        "device",
        "torch",
        "members",
        "lrs",
        "throughput",
        "per_sample",
        "diagnostics",
        "skipped",
        "wall_s",
    }  # no "tf32" off the GPU
    assert result["mode"] == "cpu-tiny" and result["device"] == "cpu (1 thread)"
    assert result["torch"] == torch.__version__
    assert result["members"] == members
    assert result["lrs"] == pytest.approx([1e-3 * 1.5**k for k in range(members)], rel=1e-12)
    assert result["skipped"] == [], "nothing may be skipped: the CPU mode is far inside the 420 s budget"
    assert result["diagnostics"] == {"skipped": "LSSR_GPU_BENCH_SKIP_DIAGNOSTICS is set"}
    wall = result["wall_s"]
    assert isinstance(wall, float) and wall > 0
    (row,) = result["throughput"]  # the CPU plan: one (b = 32, 2 and 6 steps) measurement
    assert {k: row[k] for k in ("model", "px", "n", "b")} == {"model": "cnn6", "px": 8, "n": 256, "b": 32}
    assert set(row) == {
        "model",
        "px",
        "n",
        "b",
        "single_step_s",
        "single_steps_per_s",
        "batched_step_s",
        "batched_member_steps_per_s",
        "speedup",
        "single_per_sample_ms",
        "batched_per_member_sample_ms",
    }
    single, batched, b = row["single_step_s"], row["batched_step_s"], row["b"]
    # Timings are the benchmark's output, not this test's subject: under load a step time (a difference of
    # two timed runs) can come out tiny or even negative, so only types, finiteness and consistency are checked.
    for key in set(row) - {"model", "px", "n", "b"}:
        assert isinstance(row[key], float) and math.isfinite(row[key]), key
    # the derived fields agree with the two measured step times
    assert row["single_steps_per_s"] == pytest.approx(1 / single, rel=1e-12)
    assert row["batched_member_steps_per_s"] == pytest.approx(members / batched, rel=1e-12)
    assert row["speedup"] == pytest.approx(members * single / batched, rel=1e-12)
    assert row["single_per_sample_ms"] == pytest.approx(1e3 * single / b, rel=1e-12)
    assert row["batched_per_member_sample_ms"] == pytest.approx(1e3 * batched / (members * b), rel=1e-12)
    (ps,) = result["per_sample"]
    assert set(ps) == {"model", "px", "b", "single_per_sample_ms", "batched_per_member_sample_ms"}
    assert {k: ps[k] for k in ("model", "px", "b")} == {"model": "cnn6", "px": 8, "b": 32}
    for key in ("single_per_sample_ms", "batched_per_member_sample_ms"):
        assert isinstance(ps[key], float) and math.isfinite(ps[key]), key


def test_gpu_script_syntax_and_tiny_cpu_mode(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash (an external program) is not installed")
    script = ROOT / "benchmarks" / "gpu.sh"
    subprocess.run([bash, "-n", str(script)], check=True)
    env = {**os.environ, "PYTHON": sys.executable, "LSSR_GPU_BENCH_SKIP_DIAGNOSTICS": "1"}
    cmd = [bash, str(script), "--cpu", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    check_gpu_bench_json(result)
    report = (tmp_path / "gpu_bench.md").read_text()
    assert report.startswith("# gpu.sh (cpu-tiny) on cpu (1 thread)") and "| cnn6@8px | 32 |" in report
    assert not (tmp_path / "nvidia-smi.txt").exists()


def test_goal_checks_evaluate_the_test_set_only_where_a_member_stops(digits, tmp_path, monkeypatch):
    """Goal checks (goal_every = 4 steps) between the evaluations (eval_every = 16): at a check the training set
    alone is evaluated, the test set only for a member that stops there; at steps 0, 16, 32 and the cap T = 40 the
    test set of every member still training. Batched and alone runs agree row by row (NaN test columns at the
    checks), each run evaluates the test set exactly that often (counted), and the final test loss and accuracy in
    run.json equal those of the saved model.pt evaluated here by a plain forward pass over the test set."""
    from lssr.models import build_model
    from lssr.training import core

    data = Subset(digits.x_train, digits.y_train, digits.x_test[:96], digits.y_test[:96], digits.manifest)
    test_members: list[int] = []  # per evaluation of the 96 test images: how many members it evaluated
    evaluate = core.evaluate

    def counted(forward, members, x, *rest):
        if len(x) == 96:
            test_members.append(members)
        return evaluate(forward, members, x, *rest)

    monkeypatch.setattr(core, "evaluate", counted)
    bn = {"name": "digits_cnn", "batch_norm": True}
    stop = {"steps": None, "epochs": 10, "train_acc_goal": 0.9}
    cfgs = [
        make_cfg(seed=1, optim={"lr": lr}, model=bn, stop=stop, eval_every=16, goal_every=4)
        for lr in (0.003, 0.05, 0.1, 0.3)
    ]
    outs = [tmp_path / f"b{i}" for i in range(len(cfgs))]
    res = train_batched(cfgs, data, outs, progress=False)
    batched_tests = sum(test_members)
    steps = [r.steps for r in res]
    assert steps[0] == 40 and any(s % 16 for s in steps), f"a member should stop at a pure goal check: {steps}"

    def expected_tests(s):  # test evaluations of a run that stopped at step s
        return sum(t <= s for t in (0, 16, 32, 40)) + (s not in (0, 16, 32, 40))

    assert batched_tests == sum(expected_tests(s) for s in steps)
    for i, cfg in enumerate(cfgs):
        test_members.clear()
        alone = train(cfg, data, tmp_path / f"a{i}", progress=False)
        assert len(test_members) == expected_tests(alone.steps)
        assert_same_run(alone, res[i], tmp_path / f"a{i}", outs[i])
        m = pd.read_csv(outs[i] / "metrics.csv").dropna(subset=["train_acc"]).set_index("step")
        checks = [t for t in m.index if t % 16 and t != res[i].steps]
        assert m.loc[checks, "test_acc"].isna().all() and m.loc[checks, "train_acc"].notna().all()
        assert m["test_acc"].notna().sum() == expected_tests(res[i].steps)
        # the oracle: the saved final weights, a plain model in eval mode, the test set
        model = build_model("digits_cnn", 1, 10, True).double()
        model.load_state_dict(torch.load(outs[i] / "model.pt", weights_only=True))
        with torch.no_grad():
            out = model.eval()(data.x_test)
        acc = (out.argmax(1) == data.y_test).double().mean().item()
        loss = torch.nn.functional.cross_entropy(out, data.y_test).item()
        final = json.loads((outs[i] / "run.json").read_text())["final"]
        assert final["test_acc"] == acc and final["test_acc"] == m["test_acc"].iloc[-1]
        assert final["test_loss"] == pytest.approx(loss, rel=1e-12, abs=0)


def test_goal_checks_without_the_test_set_change_no_final_number(digits32):
    """Float32, as the workflow trains: a group with goal checks (goal_every = 4, training set only) and the same
    group evaluating the training and test sets at every check (eval_every = 4) stop each member at the same step,
    for the same reason, with bit-identical weights and final training and test metrics."""
    bn = {"name": "digits_cnn", "batch_norm": True}
    stop = {"steps": None, "epochs": 10, "train_acc_goal": 0.9}
    lrs = (0.003, 0.05, 0.1, 0.3)
    full = [make_cfg(seed=1, optim={"lr": lr}, model=bn, stop=stop, eval_every=4) for lr in lrs]
    checks = [make_cfg(seed=1, optim={"lr": lr}, model=bn, stop=stop, eval_every=1000, goal_every=4) for lr in lrs]
    a, b = train_batched(full, digits32, None, progress=False), train_batched(checks, digits32, None, progress=False)
    assert len({r.steps for r in a}) > 1
    for ra, rb in zip(a, b):
        assert (ra.status, ra.steps) == (rb.status, rb.steps)
        last_a, last_b = ra.metrics.iloc[-1], rb.metrics.iloc[-1]
        for col in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert last_b[col] == last_a[col], col
        assert ra.metrics["train_acc"].equals(rb.metrics["train_acc"])
        sa, sb = ra.model.state_dict(), rb.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b[1].metrics["test_acc"].isna().sum() > 0  # the checks measured no test accuracy
