"""lssr.curvature against explicit oracles: torch.autograd.functional.hessian / jacobian and eigvalsh."""

import pytest
import torch
from torch import nn

from lssr import LssrError
from lssr.curvature import (
    BatchNormModeError,
    LossOperator,
    lobpcg_top,
    top_eigenvalue,
)
from lssr.losses import get_loss


def tiny(seed=0, n=7, classes=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, classes)).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    y = torch.randint(0, classes, (n,))
    return model, x, y


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def as_function(model, loss_fn, x, y):
    names = [(k, p.shape, p.numel()) for k, p in model.named_parameters()]

    def f(theta):
        params, i = {}, 0
        for k, s, m in names:
            params[k] = theta[i : i + m].reshape(s)
            i += m
        return loss_fn(torch.func.functional_call(model, params, (x,)), y)

    return f


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_hvp_gradient_and_per_sample_against_explicit(loss):
    model, x, y = tiny()
    lf = get_loss(loss)
    theta = flat(model)
    H = torch.autograd.functional.hessian(as_function(model, lf, x, y), theta)
    g = torch.autograd.functional.jacobian(as_function(model, lf, x, y), theta)
    op = LossOperator(model, lf, x, y, chunk_size=3, per_sample_chunk=2)  # chunks that do not divide n
    v = torch.randn(theta.numel(), dtype=torch.float64)
    V = torch.randn(3, theta.numel(), dtype=torch.float64)
    torch.testing.assert_close(op.gradient(), g, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(op.hvp(v), H @ v, rtol=1e-10, atol=1e-13)
    hv, gv = op.hvp(v, return_grad=True)
    torch.testing.assert_close(gv, g, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(op.hvp_double_backward(v), H @ v, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(op.hvp_many(V, batch=2), V @ H, rtol=1e-10, atol=1e-13)
    assert op.loss() == pytest.approx(float(as_function(model, lf, x, y)(theta)), rel=1e-12)
    G = torch.cat([Gc for _, Gc in op.per_sample_grads()])
    G_ref = torch.stack(
        [
            torch.autograd.functional.jacobian(as_function(model, lf, x[i : i + 1], y[i : i + 1]), theta)
            for i in range(len(y))
        ]
    )
    torch.testing.assert_close(G, G_ref, rtol=1e-10, atol=1e-13)
    # where the rows go: an (n, m) matrix, the views a callable returns, one reused block; one sample a chunk
    into = torch.full_like(G_ref, torch.nan)
    assert all(Gc.data_ptr() == into[sl].data_ptr() for sl, Gc in op.per_sample_grads(out=into))
    torch.testing.assert_close(into, G_ref, rtol=1e-10, atol=1e-13)
    blocks = {}

    def block_for(sl):
        return blocks.setdefault(sl.start, G_ref.new_full((sl.stop - sl.start, G.shape[1]), 7.0))

    for sl, Gc in op.per_sample_grads(out=block_for):
        assert Gc.data_ptr() == blocks[sl.start].data_ptr()
    torch.testing.assert_close(torch.cat(list(blocks.values())), G_ref, rtol=1e-10, atol=1e-13)
    seen = [(Gc.data_ptr(), Gc.clone()) for _, Gc in op.per_sample_grads(reuse=True)]
    assert len({ptr for ptr, _ in seen}) == 1
    torch.testing.assert_close(torch.cat([g for _, g in seen]), G_ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(torch.cat([g for _, g in op.per_sample_grads(chunk=1)]), G_ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(op.per_sample_jvp(V), G_ref @ V.T, rtol=1e-10, atol=1e-13)
    W = torch.randn(2, len(y), dtype=torch.float64)  # Σ_i W_ji g_i, over chunks of 3 samples of 7
    grads = op.counts["grad"]
    torch.testing.assert_close(op.weighted_gradients(W), W @ G_ref, rtol=1e-10, atol=1e-13)
    assert op.counts["grad"] == grads + 2
    # at other parameters
    theta2 = theta + 0.1 * v
    H2 = torch.autograd.functional.hessian(as_function(model, lf, x, y), theta2)
    torch.testing.assert_close(op.at(theta2).hvp(v), H2 @ v, rtol=1e-10, atol=1e-13)
    assert op.hvp(v).dtype == torch.float64
    # the kept first-order graph (hvp_mode 'graph'), over chunks that do not divide n, and rebuilt at θ'
    kept = LossOperator(model, lf, x, y, chunk_size=3, hvp_mode="graph", graph_budget=1 << 30)
    torch.testing.assert_close(kept.hvp(v), H @ v, rtol=1e-10, atol=1e-13)
    hv, gv = kept.hvp(v, return_grad=True)
    torch.testing.assert_close(gv, g, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(kept.hvp_many(V), V @ H, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(kept.at(theta2).hvp(v), H2 @ v, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(kept.hvp(v), H @ v, rtol=1e-10, atol=1e-13)  # the original θ's graph untouched
    with pytest.raises(LssrError, match="needs more than"):
        LossOperator(model, lf, x, y, hvp_mode="graph", graph_budget=64)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_top_eigenvalue_and_warm_start(loss):
    model, x, y = tiny(seed=2, n=9)
    lf = get_loss(loss)
    theta = flat(model)
    H = torch.autograd.functional.hessian(as_function(model, lf, x, y), theta)
    lam_max = float(torch.linalg.eigvalsh(H)[-1])
    tol = 1e-3
    cold = top_eigenvalue(model, lf, x, y, tol=tol, max_hvps=200, generator=torch.Generator().manual_seed(0))
    assert cold.converged and cold.residual <= tol
    assert abs(cold.value - lam_max) <= tol * abs(lam_max)
    assert cold.value <= lam_max * (1 + 1e-12)  # a Rayleigh quotient
    assert cold.vector.shape == theta.shape and cold.vector.dtype == torch.float64
    torch.testing.assert_close(cold.grad, torch.autograd.functional.jacobian(as_function(model, lf, x, y), theta))
    # a small step later: warm start from the previous vector needs fewer HVPs than a cold start
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    H2 = torch.autograd.functional.hessian(as_function(model, lf, x, y), flat(model))
    lam2 = float(torch.linalg.eigvalsh(H2)[-1])
    warm = top_eigenvalue(model, lf, x, y, tol=tol, init=cold.vector, max_hvps=200)
    cold2 = top_eigenvalue(model, lf, x, y, tol=tol, max_hvps=200, generator=torch.Generator().manual_seed(1))
    assert abs(warm.value - lam2) <= tol * abs(lam2)
    assert warm.hvp_count < cold2.hvp_count


def test_lobpcg_on_explicit_matrices():
    torch.manual_seed(0)
    for keep in (False, True):
        A = torch.randn(60, 60, dtype=torch.float64)
        A = A + A.T
        lam = float(torch.linalg.eigvalsh(A)[-1])
        r = lobpcg_top(
            lambda v: A @ v, torch.randn(60, dtype=torch.float64), tol=1e-9, max_matvecs=400, keep=keep, max_basis=60
        )
        assert r.converged and r.value == pytest.approx(lam, rel=1e-9)
        assert float((A @ r.vector - r.value * r.vector).norm()) <= 1e-9 * abs(r.value)
    # started from a subspace with known images
    V = torch.randn(4, 60, dtype=torch.float64)
    r = lobpcg_top(lambda v: A @ v, None, subspace=(V, V @ A), tol=1e-9, max_matvecs=400)
    assert r.value == pytest.approx(lam, rel=1e-9)


def test_kept_subspace_solver_in_float32_on_a_long_vector():
    """The kept-subspace solver (keep=True) in float32 with m = 10^6 against a diagonal operator of known top
    eigenvalue: Rayleigh–Ritz on a growing span never loses more than round-off (λ non-decreasing to 1e-6
    relative), and it stops within its tolerance of the true ‖H‖ (a float32 sum over 10^6 terms in the small
    matrices would move λ by ~1e-4)."""
    m = 1_000_000
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(m, generator=gen) * 90.0
    d[:3] = torch.tensor([100.0, 97.0, 95.0])
    d = d[torch.randperm(m, generator=gen)]
    V = torch.randn(6, m, generator=gen)
    r = lobpcg_top(lambda v: d * v, None, subspace=(V, V * d), keep=True, tol=1e-4, max_matvecs=200)
    assert r.converged and abs(r.value - 100.0) <= 1e-3
    lams = [lam for _, lam, _ in r.history]
    assert all(b >= a * (1 - 1e-6) for a, b in zip(lams, lams[1:])), lams
    assert float((d * r.vector - r.value * r.vector).norm()) <= 2e-4 * r.value


def test_batch_norm_train_mode_refused_eval_mode_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3)).double()
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    model(x)  # materialise the lazy layer
    with pytest.raises(BatchNormModeError, match="bn_mode: eval"):
        top_eigenvalue(model, get_loss("ce"), x, y)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = LossOperator(model, get_loss("ce"), x, y)
    op.hvp(torch.ones(op.space.dim, dtype=torch.float64))
    list(op.per_sample_grads())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_float32_and_inputs_cast():
    """A float32 model: the solver runs in float32 and still finds ‖H‖ of the explicit float64 Hessian."""
    model, x, y = tiny()
    lf = get_loss("ce")
    model = model.float()
    tol = 1e-3
    r = top_eigenvalue(model, lf, x, y, tol=tol)  # float64 inputs are cast to the parameter dtype
    assert r.vector.dtype == torch.float32 and r.converged
    # the same (float32-rounded) weights in float64: H explicit, its largest eigenvalue by eigvalsh
    model64 = model.double()
    lam_max = float(
        torch.linalg.eigvalsh(torch.autograd.functional.hessian(as_function(model64, lf, x, y), flat(model64)))[-1]
    )
    # for a symmetric H, ‖Hx − λx‖ ≤ tol·|λ| puts an eigenvalue within tol·|λ| of λ (the next one is 27% lower
    # here, so it is λ_max); float32 HVPs add round-off of about 1e-6 relative: allowed 1e-5
    assert abs(r.value - lam_max) <= (tol + 1e-5) * abs(lam_max)


def test_the_kept_graph_of_the_gradient_is_freed_with_its_operator():
    """hvp_mode 'graph' keeps the graph of ∇L (with the hook that counts its bytes): after the operator is gone,
    no tensor of it is left (a saved output holding its own node would keep the whole graph alive); its H·v
    equals reverse-over-reverse's."""
    import gc

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3), torch.nn.ReLU()
    ).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))

    def live() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    ref = LossOperator(model, get_loss("ce"), x, y, hvp_mode="reverse").hvp(v)
    counts = []
    for _ in range(4):
        op = LossOperator(model, get_loss("ce"), x, y, chunk_size=8, hvp_mode="graph", graph_budget=1 << 30)
        assert torch.allclose(op.hvp(v), ref, rtol=1e-12, atol=1e-12)
        del op
        counts.append(live())
    assert counts[-1] == counts[1], counts
