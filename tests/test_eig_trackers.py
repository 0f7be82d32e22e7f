"""The directions benchmarks/study_eig_trackers.py scores beside its trackers without tracking anything: the top
principal directions of the training's gradients, the top Ritz vector of their span and the last linear layer's top
eigenvector, against SVD and a dense float64 Hessian of a tiny network."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from study_eig_trackers import free_directions, last_layer_mask, top_directions  # noqa: E402


def tiny():
    """A tiny network ending in a linear layer, its flat parameters and the dense Hessian of its CE loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,))
    params = list(model.parameters())
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def loss(flat):
        i, ws = 0, []
        for p in params:
            ws.append(flat[i : i + p.numel()].reshape(p.shape))
            i += p.numel()
        return nn.functional.cross_entropy(torch.tanh(x @ ws[0].T + ws[1]) @ ws[2].T + ws[3], y)

    return model, torch.autograd.functional.hessian(loss, flat0)


def test_top_directions_are_the_top_right_singular_vectors():
    G = torch.randn(12, 30, dtype=torch.float64)
    _, _, Vh = torch.linalg.svd(G, full_matrices=False)
    for k, d in enumerate(top_directions(G, 3)):
        assert abs(float(d @ Vh[k])) > 1 - 1e-9


def test_last_layer_mask_selects_the_final_linear_layers_weight_and_bias():
    model, _ = tiny()
    mask = last_layer_mask(model)
    assert mask.tolist() == [0.0] * (3 * 4 + 4) + [1.0] * (4 * 3 + 3)


def test_free_directions_against_a_dense_hessian():
    model, H = tiny()
    mask = last_layer_mask(model).bool()
    lam, vecs = torch.linalg.eigh(H)
    top = vecs[:, -1]
    gen = torch.Generator().manual_seed(1)
    # gradients whose span holds the top eigenvector (with noise in a few other directions)
    G = torch.randn(20, 1, generator=gen, dtype=torch.float64) * top + 0.01 * torch.randn(
        20, H.shape[0], generator=gen, dtype=torch.float64
    )
    got = free_directions(G, [lambda u: H @ u], mask.double())

    pc, val = got["grad-pc1"]
    assert abs(float(pc @ top_directions(G, 1)[0])) > 1 - 1e-9 and abs(val - float(pc @ H @ pc)) < 1e-12

    ritz, val = got["grad-ritz4"]
    assert abs(val - float(lam[-1])) < 1e-3 * float(lam[-1]) and abs(float(ritz @ top)) > 0.999

    block = H[mask][:, mask]
    vec, val = got["last-layer"]
    assert abs(val - float(torch.linalg.eigvalsh(block)[-1])) < 1e-6 * float(lam[-1])
    assert float(vec[~mask].abs().max()) == 0.0 and abs(float(vec.norm()) - 1) < 1e-12
