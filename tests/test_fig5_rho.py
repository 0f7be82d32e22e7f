"""Table fig5_rho: B_simple of trained Figure-5 models against explicit float64 per-sample gradients."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lssr.cli import main
from lssr.config import config_from_dict
from lssr.data import SubsetSpec, build_subset, load_subset
from lssr.models import build_model
from lssr.tables import fig5_rho
from lssr.tables.runs import goal_columns, load_run
from lssr.training import train_batched

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 64
LRS = (0.1, 0.2, 0.4, 0.001)
GOAL = 0.7


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A batched Figure-5 group on digits (batch norm, b = 16, goal 70% training accuracy checked every 4 steps,
    a 40-step cap): three members meet the goal at different steps (one at the cap's step), η = 0.001 does not."""
    root = tmp_path_factory.mktemp("fig5rho")
    build_subset(SubsetSpec("digits", N, seed=0), root / "data")
    raw = {
        "seed": 1,
        "device": "cpu",
        "data": {"dataset": "digits", "n": N},
        "model": {"name": "digits_cnn", "batch_norm": True},
        "loss": "ce",
        "stop": {"steps": 40, "train_acc_goal": GOAL},
        "eval_every": 4,
        "chunk_size": 64,
    }
    cfgs = [config_from_dict({**raw, "optim": {"lr": lr, "batch_size": 16}}) for lr in LRS]
    outs = [root / "runs" / f"lr{lr:g}" for lr in LRS]
    train_batched(cfgs, load_subset(root / "data"), outs, progress=False)
    return root, outs


def b_simple_by_hand(run_dir, data) -> tuple[float, float, float]:
    """tr S_1, tr S_n and B_simple of the saved model, batch norm in eval mode, from the per-sample gradients of
    the cross-entropy written out here (torch.func.vmap of grad over the samples), all in float64."""
    model = build_model("digits_cnn", 1, 10, True)
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    model = model.double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss_i(p, x, onehot):  # ℓ_i = −log softmax(f(x_i))_{y_i}
        out = torch.func.functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return -(torch.log_softmax(out[0], -1) * onehot).sum()

    x, y = data.x_train.double(), data.y_train
    onehot = torch.nn.functional.one_hot(y, 10).double()
    grads = torch.func.vmap(torch.func.grad(loss_i), in_dims=(None, 0, 0))(params, x, onehot)
    G = torch.cat([g.reshape(len(y), -1) for g in grads.values()], 1)  # rows g_i
    tr_s_1 = float((G * G).sum(1).mean())
    mean = G.mean(0)
    tr_s_n = float(mean @ mean)
    return tr_s_1, tr_s_n, (tr_s_1 - tr_s_n) / tr_s_n


def test_b_simple_of_the_runs_that_reached_the_goal(trained, tmp_path):
    root, outs = trained
    runs = [load_run(o) for o in outs]
    reached = [r.reached_goal for r in runs]
    assert reached == [True, True, True, False]  # η = 0.001 does not fit 70% of the training set in 40 steps
    assert goal_columns(runs[3]) == {"reached_goal": False, "goal_step": pytest.approx(float("nan"), nan_ok=True),
                                     "train_acc_goal": GOAL}  # fmt: skip
    table = fig5_rho.write(outs, root / "data", tmp_path / "rho.csv")
    assert list(table.columns) == fig5_rho.COLUMNS
    assert set(table["lr"]) == set(LRS[:3])
    data = load_subset(root / "data")
    for _, row in table.iterrows():
        run = next(r for r in runs if r.lr == row["lr"])
        tr_s_1, tr_s_n, b_simple = b_simple_by_hand(run.path, data)
        assert row["tr_S_1"] == pytest.approx(tr_s_1, rel=1e-9)
        assert row["tr_S_n"] == pytest.approx(tr_s_n, rel=1e-9)
        assert row["b_simple"] == pytest.approx(b_simple, rel=1e-9)
        assert (row["step"], row["where"], row["b"], row["n"]) == (run.goal_step, "final", 16, N)
    assert table["step"].nunique() > 1  # measured where each run stopped
    assert pd.read_csv(tmp_path / "rho.csv")["b_simple"].tolist() == pytest.approx(table["b_simple"].tolist())


def test_the_cap_keeps_the_best_test_accuracy_and_the_cli_joins_parts(trained, tmp_path, capsys):
    root, outs = trained
    finals = {json.loads((o / "run.json").read_text())["config"]["optim"]["lr"]: o for o in outs}
    accs = {lr: json.loads((o / "run.json").read_text())["final"]["test_acc"] for lr, o in finals.items()}
    best = max(LRS[:3], key=lambda lr: (accs[lr], -lr))
    part = tmp_path / "part.csv"
    args = ["fig5-rho", "--runs", *map(str, outs), "--data", str(root / "data"), "--rho-runs", "1", "--out", str(part)]
    assert main(args) == 0
    one = pd.read_csv(part)
    assert one["lr"].tolist() == [best]
    assert main(["fig5-rho", "--join", str(part), str(part), "--out", str(tmp_path / "all.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "all.csv")) == 2
    assert main(["fig5-rho", "--runs", str(outs[0]), "--out", str(tmp_path / "x.csv")]) == 2
    assert "give --data" in capsys.readouterr().err
