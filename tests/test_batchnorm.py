"""Batch norm in training sees the whole mini-batch of b samples, whatever chunk_size is.

Oracle: the statistics of a batch do not depend on how memory is chunked, so training with chunk_size 16
and 64 must give the same trajectory; a forward pass in ghost batches of 16 (``bn_ghost_batch: 16``, the
old behaviour of chunk_size 16) normalises with other statistics and must not. Runs are in float64 (data
and models; see the docstring of tests/test_batched.py: digits_cnn's max-pooling near-ties make float32
trajectories part by a discrete jump on some CPUs), so "the same" is float64 round-off (``ATOL``).
Activation checkpointing recomputes the forward pass in backward; the step (and the batch-norm running
statistics, which the recomputation would update twice) must be the same as a plain step's.
"""

import json

import numpy as np
import pytest
import torch

from lssr.config import ConfigError, config_from_dict
from lssr.data import Subset, SubsetSpec, build_subset, load_subset
from lssr.figures import fig5 as fig5_figure
from lssr.report import runs_table
from lssr.tables import fig5
from lssr.training import train, train_batched

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 128
ATOL = 1e-9
METRICS = ["batch_loss", "train_loss", "train_acc", "test_loss", "test_acc"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    build_subset(SubsetSpec("digits", N, seed=0), folder)
    d = load_subset(folder)
    return Subset(d.x_train.double(), d.y_train, d.x_test[:N].double(), d.y_test[:N], d.manifest)


def make_cfg(b, **over):
    raw = {
        "seed": 1,
        "device": "cpu",
        "data": {"dataset": "digits", "n": N},
        "model": {"name": "digits_cnn", "batch_norm": True},
        "loss": "ce",
        "optim": {"lr": 0.1, "batch_size": b},
        "stop": {"steps": 10},
        "eval_every": 5,
        "chunk_size": 64,
    }
    raw.update(over)
    return config_from_dict(raw)


def metrics(res):
    return res.metrics[METRICS].to_numpy(float)


def max_diff(a, b):
    return float(np.nanmax(np.abs(metrics(a) - metrics(b))))


@pytest.mark.parametrize("b", [64, "full"], ids=["sgd-b64", "gd"])
def test_statistics_of_the_whole_batch_whatever_the_chunk(digits, b):
    ref = train(make_cfg(b, chunk_size=64), digits, progress=False)
    same = train(make_cfg(b, chunk_size=16), digits, progress=False)
    np.testing.assert_allclose(metrics(same), metrics(ref), atol=ATOL, rtol=0)
    ghost = train(make_cfg(b, chunk_size=64, bn_ghost_batch=16), digits, progress=False)
    assert max_diff(ghost, ref) > 1e-3  # ghost batches of 16 normalise with other statistics
    # the batched engine: the same two facts, member by member
    cfgs = [make_cfg(b, chunk_size=16, optim={"lr": lr, "batch_size": b}) for lr in (0.1, 0.05)]
    res = train_batched(cfgs, digits, progress=False)
    np.testing.assert_allclose(metrics(res[0]), metrics(ref), atol=ATOL, rtol=0)
    ghosts = [make_cfg(b, bn_ghost_batch=16, optim={"lr": lr, "batch_size": b}) for lr in (0.1, 0.05)]
    np.testing.assert_allclose(
        metrics(train_batched(ghosts, digits, progress=False)[0]), metrics(ghost), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("b", [32, "full"], ids=["sgd-b32", "gd"])
def test_activation_checkpointing_changes_nothing(digits, b):
    plain = train(make_cfg(b, activation_checkpointing="never"), digits, progress=False)
    ck = train(make_cfg(b, activation_checkpointing="always"), digits, progress=False)
    np.testing.assert_allclose(metrics(ck), metrics(plain), atol=ATOL, rtol=0)
    for k, v in plain.model.state_dict().items():  # running statistics updated once per step, not twice
        torch.testing.assert_close(ck.model.state_dict()[k], v, atol=ATOL, rtol=0)
    cfgs = [make_cfg(b, activation_checkpointing="always", optim={"lr": lr, "batch_size": b}) for lr in (0.1, 0.3)]
    res = train_batched(cfgs, digits, progress=False)
    np.testing.assert_allclose(metrics(res[0]), metrics(plain), atol=ATOL, rtol=0)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(res[0].model.state_dict()[k], v, atol=ATOL, rtol=0)


def test_ghost_batch_recorded_in_run_json_and_run_table(digits, tmp_path):
    cfg = make_cfg(32, bn_ghost_batch=16, stop={"steps": 2})
    train(cfg, digits, tmp_path / "ghost", progress=False)
    train(make_cfg(32, stop={"steps": 2}, optim={"lr": 0.05, "batch_size": 32}), digits, tmp_path / "batch",
          progress=False)  # fmt: skip
    rec = json.loads((tmp_path / "ghost" / "run.json").read_text())
    assert rec["config"]["bn_ghost_batch"] == 16
    assert rec["training_forward"]["bn_statistics"] == "ghost"
    assert rec["training_forward"]["samples_per_pass"] == 16
    rec = json.loads((tmp_path / "batch" / "run.json").read_text())
    assert rec["training_forward"]["bn_statistics"] == "batch" and rec["training_forward"]["samples_per_pass"] == 32
    table = runs_table([tmp_path / "ghost", tmp_path / "batch"])
    assert list(table["bn_ghost_batch"].fillna(0).astype(int)) == [16, 0]
    # Figure 5: the ghost-batch cell carries its size, the other none; the figure marks it (and draws)
    t = fig5.build([tmp_path / "ghost", tmp_path / "batch"])
    cells = t[t["kind"] == "cell"].set_index("lr")
    assert cells.loc[0.1, "bn_ghost_batch"] == 16 and np.isnan(cells.loc[0.05, "bn_ghost_batch"])
    fig, _ = fig5_figure.plot(t)
    labels = [h.get_label() for h in fig.legends[0].legend_handles]
    assert "ghost-batch BN (16)" in labels


def test_ghost_batch_and_checkpointing_values(digits):
    with pytest.raises(ConfigError, match="bn_ghost_batch"):
        make_cfg(32, bn_ghost_batch=0)
    with pytest.raises(ConfigError, match="activation_checkpointing.*auto, always or never"):
        make_cfg(32, activation_checkpointing="yes")
    # without batch norm a ghost batch changes nothing: the gradient does not depend on the chunking
    no_bn = {"name": "digits_cnn", "batch_norm": False}
    a = train(make_cfg(32, model=no_bn, chunk_size=32), digits, progress=False)
    b = train(make_cfg(32, model=no_bn, chunk_size=32, bn_ghost_batch=8), digits, progress=False)
    np.testing.assert_allclose(metrics(b), metrics(a), atol=ATOL, rtol=0)
