"""The standard error of tr(H S_1) with finite-difference HVPs includes their error: on a tiny network with
hardsigmoid (no second derivative in PyTorch, so lssr.diagnose falls back to central differences) the float32
estimate is within 3 reported standard errors of tr(H S_1) = (1/n) Σ_i g_iᵀ H g_i computed in float64 from the
explicit Hessian of the same function (hardsigmoid written through clamp). The estimator's own se, 0 for the
exact estimator, would not cover the finite-difference error alone."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian, vmap

import lssr
from lssr.curvature import LossOperator
from lssr.diagnostics.uncertainty import fd_trace_error, with_fd_error
from lssr.losses import PerSampleLoss


class HardNet(nn.Module):
    """3 -> 6 -> hardsigmoid -> tanh(3·) -> 3; ``exact``: hardsigmoid written as clamp(h/6 + 1/2, 0, 1), the
    same function with a second derivative in autograd."""

    def __init__(self, exact: bool):
        super().__init__()
        self.l1, self.l2, self.exact = nn.Linear(3, 6), nn.Linear(6, 3), exact

    def forward(self, x):
        h = self.l1(x)
        h = torch.clamp(h / 6 + 0.5, 0, 1) if self.exact else F.hardsigmoid(h)
        return self.l2(torch.tanh(3 * h))


def gradients_and_hessian_float64(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(G, H) in float64: the per-sample gradients g_i (rows of G) and the explicit Hessian H of L = mean_i ℓ_i."""
    m = copy.deepcopy(model).double()
    names, shapes = zip(*[(k, p.shape) for k, p in m.named_parameters()])
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def loss(t, xx, yy):
        parts = dict(zip(names, (c.reshape(s) for c, s in zip(t.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(m, parts, (xx,)), yy)

    H = hessian(loss)(theta, x.double(), y)
    G = vmap(grad(loss), in_dims=(None, 0, 0))(theta, x.double().unsqueeze(1), y.unsqueeze(1))
    return G, H


def tr_HS_1_float64(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """(1/n) Σ_i g_iᵀ H g_i in float64."""
    G, H = gradients_and_hessian_float64(model, x, y)
    return float(torch.einsum("ni,ij,nj->", G, H, G)) / len(y)


def case(seed: int, n: int):
    torch.manual_seed(seed)
    hard, soft = HardNet(exact=False), HardNet(exact=True)
    soft.load_state_dict(hard.state_dict())
    g = torch.Generator().manual_seed(seed)
    x, y = 3 * torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)
    return hard, soft, x, y


def test_combined_standard_error_formula():
    assert with_fd_error(3.0, -10.0, 0.4) == pytest.approx(5.0)
    assert with_fd_error(0.0, 2.0, 1e-3) == pytest.approx(2e-3)
    assert with_fd_error(0.7, 2.0, math.nan) == 0.7  # exact HVPs: the se as it is
    assert with_fd_error(3.0, 10.0, 0.01, trace_error=4.0) == pytest.approx(5.0)  # the larger bound counts
    assert with_fd_error(3.0, 10.0, 0.4, trace_error=1.0) == pytest.approx(5.0)


def test_trace_bound_covers_the_quadratic_forms_it_differences():
    """fd_trace_error bounds the error of (1/k) Σ_{i<k} g_iᵀ D_ε(g_i), the central differences' quadratic forms of
    the first k samples, against the same forms from the float64 Hessian."""
    for seed in range(5):
        hard, soft, x, y = case(seed, 12)
        op = LossOperator(hard, PerSampleLoss("ce"), x, y, hvp_mode="fd")
        bound = fd_trace_error(op, k=4)
        forms = [float(g @ op.hvp_fd(g)) for g in op._per_sample_chunk(*op.take(slice(0, 4)))]
        G, H = gradients_and_hessian_float64(soft, x, y)
        truth = float(torch.einsum("ni,ij,nj->", G[:4], H, G[:4])) / 4
        assert 0 < abs(sum(forms) / 4 - truth) <= bound < 1e-3 * abs(truth), (seed, bound)


def test_exact_estimator_with_finite_differences_covers_the_float64_truth():
    """n = 12 ≤ probes: the exact estimator, whose own se is 0. Its error is the central difference's (float32
    arithmetic with exact HVPs, on the clamp network, is far closer), and the reported se, the finite differences'
    measured error (at least fd_rel_error·|estimate|, and under 0.1% of it), covers it."""
    errors = []
    for seed in range(5):
        hard, soft, x, y = case(seed, 12)
        truth = tr_HS_1_float64(soft, x, y)
        d = lssr.diagnose(hard, "ce", (x, y), batch_sizes=[4])
        e = lssr.diagnose(soft, "ce", (x, y), batch_sizes=[4])
        assert (d.cost.hvp_mode, d.estimator, e.cost.hvp_mode) == ("fd", "exact", "graph")
        assert e.tr_HS_1_se == 0.0 and 0 < d.cost.fd_rel_error < 1e-3
        assert d.cost.fd_rel_error * abs(d.tr_HS_1) <= d.tr_HS_1_se < 1e-3 * abs(d.tr_HS_1)
        err = abs(d.tr_HS_1 - truth)
        assert err <= 3 * d.tr_HS_1_se, (seed, d.tr_HS_1, truth, d.tr_HS_1_se)
        assert d.at(4).tr_HS_b_se > 0
        errors.append((err, abs(e.tr_HS_1 - truth)))
    # the estimator's own se (0) would be too small: the finite differences are off by far more than rounding
    assert max(fd for fd, _ in errors) > 30 * max(exact for _, exact in errors) > 0


def test_sketch_with_finite_differences_covers_the_float64_truth():
    """n = 40 > probes: the sketch; its reported se (jackknife and finite differences together) covers the truth."""
    for seed in range(3):
        hard, soft, x, y = case(seed, 40)
        d = lssr.diagnose(hard, "ce", (x, y), batch_sizes=[4])
        assert (d.cost.hvp_mode, d.estimator) == ("fd", "sketch")
        assert d.tr_HS_1_se > d.cost.fd_rel_error * abs(d.tr_HS_1)
        assert abs(d.tr_HS_1 - tr_HS_1_float64(soft, x, y)) <= 3 * d.tr_HS_1_se
