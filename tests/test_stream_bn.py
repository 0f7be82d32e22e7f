"""The monitor's streaming mode with batch norm in train mode, against brute force on a tiny network: every batch
B of b = 4 of the N = 8 samples (all 70), each normalised with its own statistics, gives g_B = ∇ℓ(θ; B) and the
dense float64 Hessian of ℓ(θ; B); their means over the batches give the exact S_b = E[g_B g_Bᵀ], ∇L_b = E[g_B]
and H = ∇²L_b of the loss L_b = E_B ℓ(θ; B) that SGD descends. Streaming rows fed the gradients of uniformly
random batches at a fixed θ must be unbiased for tr S_b, ‖∇L_b‖², tr(H S_b); training must be unchanged."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_stream import WINDOW, assert_unbiased
from test_stream import stream_rows as shared_stream_rows
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import lssr
from lssr import LssrError

N, B, ROWS = 8, 4, 200


def tiny(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    return model.train(), TensorDataset(x, y)


def truths(model, ds) -> dict:
    """Brute force over all C(N, B) batches, on a copy of the model (its running statistics are not the point)."""
    model = copy.deepcopy(model).train()
    x, y = ds.tensors
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(t, idx):
        params = {k: v.reshape(s) for k, v, s in zip(names, t.split(sizes), shapes)}
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        return F.cross_entropy(functional_call(model, (params, buffers), (x[idx],)), y[idx])

    batches = [list(c) for c in itertools.combinations(range(N), B)]
    G = torch.stack([torch.autograd.functional.jacobian(lambda t: loss(t, i), theta) for i in batches])
    H = sum(torch.autograd.functional.hessian(lambda t: loss(t, i), theta) for i in batches) / len(batches)
    mu = G.mean(0)
    tb, tn = float(G.square().sum(1).mean()), float(mu @ mu)
    return dict(
        tr_S_b=tb,
        tr_S_n=tn,
        tr_S_1=tn + B * (tb - tn),  # identity (1) with replacement (the monitor's default γ = 1)
        tr_HS_b=float(((G @ H) * G).sum(1).mean()),
        top_eig=float(torch.linalg.eigvalsh(H)[-1]),
    )


def stream_rows(model, ds, rows: int = ROWS, seed: int = 0) -> list[dict]:
    """Windows of the gradients of uniformly random batches of B distinct samples in train mode, at a fixed θ."""
    return shared_stream_rows(
        model, ds, rows, seed, b=B, draw=lambda gen: torch.randperm(N, generator=gen)[:B], stream_n=B
    )


@pytest.fixture(scope="module")
def run():
    model, ds = tiny()
    return truths(model, ds), stream_rows(model, ds)


@pytest.mark.parametrize("key", ["tr_S_b", "tr_S_n", "tr_S_n_window", "tr_S_1", "tr_HS_b"])
def test_the_streaming_estimators_are_unbiased_for_the_batch_normalised_loss(run, key):
    """The mean over 200 seeded windows is within 3 standard errors (of that mean) of the brute-force truth of
    L_b; each row's probe batch is one batch of b samples."""
    truth, rows = run
    assert_unbiased(rows, key, truth)
    assert all(r["kind"] == "stream" and r["probe_n"] == B for r in rows)


def test_the_per_sample_hessian_with_running_statistics_is_not_what_the_rows_measure(run):
    """A trap: the eval-mode (running statistics) loss has another tr S_b; the rows are far from it, so the test
    above distinguishes the two losses."""
    truth, rows = run
    model, ds = tiny()
    x, y = ds.tensors
    model.eval()
    g = [
        torch.cat(
            [
                t.reshape(-1)
                for t in torch.autograd.grad(F.cross_entropy(model(x[list(i)]), y[list(i)]), model.parameters())
            ]
        )
        for i in itertools.combinations(range(N), B)
    ]
    eval_tb = float(torch.stack(g).square().sum(1).mean())
    v = torch.tensor([r["tr_S_b"] for r in rows], dtype=torch.float64)
    se = float(v.std() / math.sqrt(len(v)))
    assert abs(float(v.mean()) - eval_tb) > 10 * se, (float(v.mean()), eval_tb, se)


def test_training_with_batch_norm_is_unchanged_by_the_streaming_monitor():
    """SGD with batch norm in train mode, with and without the monitor (a row every 8 steps): the losses, the
    parameters and the running statistics are bit-identical."""
    x, y = tiny()[1].tensors

    def train(monitor: bool):
        model, ds = tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = (
            lssr.SharpnessMonitor(
                model,
                "ce",
                DataLoader(ds, batch_size=B),
                opt,
                stream=True,
                budget=math.inf,
                window=8,
                groups=2,
                stream_n=B,
            )
            if monitor
            else None
        )
        g = torch.Generator().manual_seed(3)
        losses = []
        for _ in range(40):
            idx = torch.randperm(N, generator=g)[:B]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            if mon is not None:
                mon.step()
            opt.step()
            losses.append(loss.item())
        if mon is not None:
            assert mon.streamer.rows == 5
        return losses, model.state_dict()

    (la, sa), (lb, sb) = train(False), train(True)
    assert la == lb
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_batch_norm_in_train_mode_needs_the_training_batch_size():
    """Without a DataLoader or batch_sizes the probe batches' size is unknown: a one-line error naming the fix."""
    model, ds = tiny()
    x, y = ds.tensors
    mon = lssr.SharpnessMonitor(model, "ce", ds, stream=True, window=WINDOW)
    F.cross_entropy(model(x[:B]), y[:B]).backward()
    with pytest.raises(LssrError, match=r"batch norm in train mode.*fix: pass the training DataLoader") as err:
        mon.step()
    assert "\n" not in str(err.value)
