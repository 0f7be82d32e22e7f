"""Training engine: convergence, determinism, sampling, divergence, probes."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from lssr.config import config_from_dict
from lssr.data import SubsetSpec, build_subset, load_subset
from lssr.losses import per_sample_loss
from lssr.models import build_model
from lssr.training import BatchSampler, chunked_loss_and_grad, train

N = 128


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    build_subset(SubsetSpec("digits", N, seed=0), folder)
    return folder


def make_cfg(**over):
    raw = {
        "seed": 3,
        "device": "cpu",
        "data": {"dataset": "digits", "n": N},
        "model": {"name": "digits_cnn"},
        "loss": "ce",
        "optim": {"lr": 0.5, "batch_size": "full"},
        "stop": {"steps": 400, "train_acc_goal": 1.0},
        "eval_every": 5,
    }
    for k, v in over.items():
        if isinstance(v, dict):
            raw[k] = {**raw.get(k, {}), **v}
        else:
            raw[k] = v
    return config_from_dict(raw)


@pytest.mark.parametrize(
    "optim",
    [
        {"lr": 0.5, "batch_size": "full"},
        {"lr": 0.1, "batch_size": 32, "replacement": False},
        {"lr": 0.1, "batch_size": 32, "replacement": True},
    ],
    ids=["gd", "sgd-wor", "sgd-wr"],
)
def test_reaches_full_training_accuracy_and_is_bit_identical(digits, tmp_path, optim):
    cfg = make_cfg(optim=optim)
    data = load_subset(digits)
    r1 = train(cfg, data, tmp_path / "a", progress=False)
    assert r1.status == "completed"
    final = r1.metrics.dropna(subset=["train_acc"]).iloc[-1]
    assert final["train_acc"] == 1.0
    assert r1.steps < 400  # stopped by the accuracy goal
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["status"] == "completed" and run["stopped_by"] == "goal" and run["seed"] == 3
    evaluated = r1.metrics.dropna(subset=["train_acc"])
    first = int(evaluated.loc[evaluated["train_acc"] >= 1.0, "step"].iloc[0])  # the first evaluation at the goal
    assert run["goal_step"] == first == r1.steps and run["train_acc_goal"] == 1.0
    assert (tmp_path / "a" / "model.pt").exists()
    train(cfg, load_subset(digits), tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()


def test_different_seed_changes_trajectory(digits, tmp_path):
    a = train(make_cfg(stop={"steps": 5, "train_acc_goal": None}), load_subset(digits), progress=False)
    b = train(make_cfg(seed=4, stop={"steps": 5, "train_acc_goal": None}), load_subset(digits), progress=False)
    assert not np.allclose(a.metrics["batch_loss"].dropna(), b.metrics["batch_loss"].dropna())


def test_divergence_is_recorded_and_cli_exits_zero(digits, tmp_path):
    cfg = make_cfg(optim={"lr": 1.0e4}, stop={"steps": 50, "train_acc_goal": None})
    r = train(cfg, load_subset(digits), tmp_path / "d", progress=False)
    assert r.status == "diverged" and r.steps < 50
    assert json.loads((tmp_path / "d" / "run.json").read_text())["status"] == "diverged"
    cfg_file = tmp_path / "div.yaml"
    cfg_file.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lssr.cli",
            "train",
            str(cfg_file),
            "--out",
            str(tmp_path / "cli"),
            "--data",
            str(digits),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["status"] == "diverged"


def test_sampler_without_replacement_covers_each_epoch():
    s = BatchSampler(12, 4, replacement=False, seed=0)
    for _ in range(3):
        epoch = torch.cat([s.next() for _ in range(3)])
        assert sorted(epoch.tolist()) == list(range(12))
    # b not dividing n: n // b batches an epoch, no index twice within an epoch
    s = BatchSampler(10, 4, replacement=False, seed=1)
    epoch = torch.cat([s.next() for _ in range(s.steps_per_epoch)])
    assert s.steps_per_epoch == 2 and len(set(epoch.tolist())) == 8


def test_sampler_with_replacement_is_uniform_and_repeats():
    s = BatchSampler(5, 50, replacement=True, seed=0)
    draws = torch.cat([s.next() for _ in range(400)])
    counts = torch.bincount(draws, minlength=5).double()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.01
    assert any(len(set(s.next().tolist())) < 50 for _ in range(3))


def test_chunked_gradient_equals_full_batch_gradient():
    torch.manual_seed(0)
    model = build_model("digits_cnn", 1, 10).double()
    x, y = torch.randn(37, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (37,))
    idx = torch.arange(37)
    lps = per_sample_loss("mse")
    grads = []
    for chunk in (37, 5):
        model.zero_grad()
        loss = chunked_loss_and_grad(model, x, y, idx, lps, chunk)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert math.isclose(loss.item(), lps(model(x), y).mean().item(), rel_tol=1e-12)
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-14)


class RecordingProbe:
    """Uses the global RNG and runs train-mode forwards: must not change the trajectory."""

    def __init__(self):
        self.seen = []

    def wants(self, step):
        return step % 3 == 0

    def before_step(self, ctx):
        torch.randn(100)
        ctx.model.train()
        ctx.model(ctx.data.x_train[:16])  # would update BN running stats if not restored
        self.params_before = torch.cat([p.detach().flatten().clone() for p in ctx.model.parameters()])

    def after_step(self, ctx):
        params_after = torch.cat([p.detach().flatten() for p in ctx.model.parameters()])
        self.seen.append(
            (
                ctx.step,
                ctx.batch_idx.clone(),
                ctx.train_loss_before,
                ctx.train_loss_after,
                self.params_before,
                params_after.clone(),
            )
        )

    def close(self):
        pass


def test_probe_observes_without_changing_trajectory(digits, tmp_path):
    cfg = make_cfg(
        model={"name": "digits_cnn", "batch_norm": True},
        optim={"lr": 0.05, "batch_size": 16},
        stop={"steps": 12, "train_acc_goal": None},
        eval_every=3,
    )
    plain = train(cfg, load_subset(digits), tmp_path / "plain", progress=False)
    probe = RecordingProbe()
    probed = train(cfg, load_subset(digits), tmp_path / "probed", probes=[probe], progress=False)
    assert (tmp_path / "plain" / "metrics.csv").read_bytes() == (tmp_path / "probed" / "metrics.csv").read_bytes()
    assert torch.equal(
        plain.model.state_dict()["features.1.running_mean"], probed.model.state_dict()["features.1.running_mean"]
    )
    assert [s[0] for s in probe.seen] == [0, 3, 6, 9]
    for step, idx, before, after, p0, p1 in probe.seen:
        assert len(idx) == 16 and math.isfinite(before) and math.isfinite(after)
        assert not torch.equal(p0, p1)  # θ_t before, θ_{t+1} after


def test_gd_probe_losses_are_full_training_losses(digits):
    cfg = make_cfg(
        loss="mse", optim={"lr": 0.1, "batch_size": "full"}, stop={"steps": 4, "train_acc_goal": None}, eval_every=1
    )
    probe = RecordingProbe()
    probe.wants = lambda step: True
    res = train(cfg, load_subset(digits), probes=[probe], progress=False)
    evals = res.metrics.set_index("step")["train_loss"]
    for step, _, before, after, *_ in probe.seen:
        assert math.isclose(before, evals[step], rel_tol=1e-5)
        assert math.isclose(after, evals[step + 1], rel_tol=1e-5)
