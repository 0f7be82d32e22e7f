"""The exact reference of benchmarks/bench_own_model.py: tr(H S_1) = (1/n) Σ_i g_iᵀ H g_i from one HVP per sample,
against a dense float64 Hessian and per-sample gradients taken one sample at a time, and its cost (n HVPs)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from lssr.curvature import LossOperator
from lssr.losses import get_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_own_model import exact_tr_HS1  # noqa: E402


def test_exact_reference_matches_a_dense_hessian_and_costs_one_hvp_per_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    n = 7
    x, y = torch.randn(n, 4, dtype=torch.float64), torch.randint(0, 3, (n,))
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_at(flat, xs, ys):
        out, i = xs, 0
        ws = []
        for s in shapes:
            k = s.numel()
            ws.append(flat[i : i + k].reshape(s))
            i += k
        out = torch.tanh(out @ ws[0].T + ws[1]) @ ws[2].T + ws[3]
        return nn.functional.cross_entropy(out, ys)

    H = torch.autograd.functional.hessian(lambda f: loss_at(f, x, y), flat0)
    G = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda f, i=i: loss_at(f, x[i : i + 1], y[i : i + 1]), flat0)
            for i in range(n)
        ]
    )
    want = float(torch.einsum("im,mk,ik->", G, H, G)) / n

    op = LossOperator(model, get_loss("ce"), x, y, chunk_size=3)
    G_op = torch.cat([g for _, g in op.per_sample_grads()])
    assert torch.allclose(G_op, G, rtol=1e-10, atol=1e-12)
    before = op.counts["hvp"]
    got = exact_tr_HS1(op, G_op)
    assert op.counts["hvp"] - before == n
    assert abs(got - want) <= 1e-10 * abs(want)
