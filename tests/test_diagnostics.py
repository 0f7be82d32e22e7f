"""The gradient moments and every b of lssr.diagnose against brute force: every batch enumerated,
S_b = E[g_b g_bᵀ] formed directly and the explicit Hessian from torch.autograd.functional.hessian (tiny float64
problems)."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import lssr
from lssr.curvature import LossOperator
from lssr.diagnostics import FRAME_COLUMNS, Compute, Estimator, gradient_moments
from lssr.losses import get_loss


class Tiny(nn.Module):
    """A few dozen parameters: 3 -> 4 (tanh) -> 3."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 3)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


def stats(model, loss_fn, x, y, batch_sizes, *, replacement=False, **options):
    """The frame of lssr.diagnose (‖H‖ not measured): one row per b of tr S_b, tr(H S_b), ρ_b, ‖H‖_{S_b} ..."""
    d = lssr.diagnose(model, loss_fn, (x, y), batch_sizes=batch_sizes, replacement=replacement, eigen=False, **options)
    return d.frame()


def make_problem(n, seed=0, loss="ce"):
    torch.manual_seed(seed)
    model = Tiny().double()
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, get_loss(loss), x, y


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loss_at(model, loss_fn, x, y):
    """L as a function of the flat parameter vector, by assigning slices (no lssr code involved)."""
    shapes = [(name, p.shape, p.numel()) for name, p in model.named_parameters()]

    def f(theta):
        params, k = {}, 0
        for name, shape, size in shapes:
            params[name] = theta[k : k + size].reshape(shape)
            k += size
        return loss_fn(torch.func.functional_call(model, params, (x,)), y)

    return f


def oracle(model, loss_fn, x, y, b, replacement):
    """tr S_b and tr(H S_b) by enumerating every batch of size b."""
    theta = flat_params(model)
    n = len(y)
    H = torch.autograd.functional.hessian(loss_at(model, loss_fn, x, y), theta)
    if replacement:
        # every ordered draw of b indices; batch gradient = mean of the drawn per-sample gradients
        G = torch.stack(
            [
                torch.autograd.functional.jacobian(loss_at(model, loss_fn, x[i : i + 1], y[i : i + 1]), theta)
                for i in range(n)
            ]
        )
        draws = torch.tensor(list(itertools.product(range(n), repeat=b)))
        gb = G[draws].mean(1)  # (n^b, m)
    else:
        batches = list(itertools.combinations(range(n), b))
        gb = torch.stack(
            [
                torch.autograd.functional.jacobian(loss_at(model, loss_fn, x[list(B)], y[list(B)]), theta)
                for B in batches
            ]
        )
    S_b = gb.T @ gb / gb.shape[0]
    return float(torch.trace(S_b)), float(torch.trace(H @ S_b))


@pytest.mark.parametrize("replacement", [False, True])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_exact_matches_brute_force(replacement, loss):
    n = 5
    model, loss_fn, x, y = make_problem(n, seed=1, loss=loss)
    bs = [1, 2, 3, n]
    comp = Compute(chunk_size=2, per_sample_chunk=2)
    df = stats(model, loss_fn, x, y, bs, replacement=replacement, estimator="exact", compute=comp)
    assert list(df["b"]) == bs
    for b in bs:
        tr_S_b, tr_HS_b = oracle(model, loss_fn, x, y, b, replacement)
        row = df.set_index("b").loc[b]
        assert row["tr_S_b"] == pytest.approx(tr_S_b, rel=1e-8)
        assert row["tr_HS_b"] == pytest.approx(tr_HS_b, rel=1e-8)
        assert row["ias_b"] == pytest.approx(tr_HS_b / tr_S_b, rel=1e-8)
        assert row["tr_HS_b_se"] == 0.0
    # b = 1 is S_1; b = n without replacement is S_n (ρ_n = 1)
    r1 = df.set_index("b").loc[1]
    assert r1["tr_S_b"] == pytest.approx(r1["tr_S_1"], rel=1e-12)
    if not replacement:
        rn = df.set_index("b").loc[n]
        assert rn["rho_b"] == pytest.approx(1.0, rel=1e-12)
        assert rn["tr_HS_b"] == pytest.approx(rn["tr_HS_n"], rel=1e-12)
        assert rn["instability_b"] == pytest.approx(rn["tr_HS_n"] / rn["tr_S_n"], rel=1e-12)


def test_frame_columns_and_dtype():
    model, loss_fn, x, y = make_problem(6)
    df = stats(model, loss_fn, x, y, [1, 3], estimator="exact")
    for c in FRAME_COLUMNS:
        assert c in df.columns
        if c != "b":
            assert f"{c}_se" in df.columns
    assert (df[[c for c in df.columns if c.endswith("_se")]] == 0).all().all()
    op = LossOperator(model, loss_fn, x, y)
    mom = gradient_moments(op, exact=True, top=False)
    assert mom.grad.dtype == torch.float64
    # ρ_b grows with b, tr S_b falls
    assert df["rho_b"].is_monotonic_increasing and df["tr_S_b"].is_monotonic_decreasing
    # a loss without .per_sample falls back to single-sample calls and gives the same numbers
    plain = lambda o, t: nn.functional.cross_entropy(o, t)  # noqa: E731
    df2 = stats(model, plain, x, y, [1, 3], estimator="exact")
    np.testing.assert_allclose(df2["tr_HS_b"], df["tr_HS_b"], rtol=1e-10)


def test_sketch_is_unbiased_and_se_is_honest():
    """30 seeds: the mean estimate lies within 2 standard errors (of the mean) of the exact value, and the
    jackknife se is honest: not below the observed spread, not useless (≤ 4x), 2 se cover ≥ 80% of seeds."""
    n = 24
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (n,))
    loss_fn = get_loss("ce")
    op = LossOperator(model, loss_fn, x, y)
    exact = gradient_moments(op, exact=True, top=False).tr_HS_1
    est, ses, resid = [], [], []
    for seed in range(30):
        mom = gradient_moments(
            op, exact=False, probes=5, stage1=5, top=False, generator=torch.Generator().manual_seed(seed)
        )
        est.append(mom.tr_HS_1)
        ses.append(mom.tr_HS_1_se)
        resid.append(mom.tr_HS_1 - mom.exact_part)
    est, ses = np.array(est), np.array(ses)
    assert np.mean(np.abs(resid)) > 0.05 * abs(exact)  # the sketched part is not negligible here
    sd = est.std(ddof=1)
    assert abs(est.mean() - exact) <= 2 * sd / math.sqrt(est.size)
    assert sd <= np.sqrt((ses**2).mean()) <= 4 * sd
    assert np.mean(np.abs(est - exact) <= 2 * ses) >= 0.8
    # deflation pays: the sketch is far more precise than a plain random-sign sketch would be
    assert sd < 0.5 * abs(exact)


def test_sketch_adaptive_and_every_b_estimated():
    model, loss_fn, x, y = make_problem(16, seed=4)
    exact = stats(model, loss_fn, x, y, [1, 4, 16], estimator="exact")
    est = stats(model, loss_fn, x, y, [1, 4, 16], estimator=Estimator("sketch", probes=32, stage1=4, rel_se=0.05))
    # exact quantities agree, estimated ones within 5 se (or tiny)
    for c in ("tr_S_b", "rho_b", "tr_S_1", "tr_S_n", "tr_HS_n"):
        np.testing.assert_allclose(est[c], exact[c], rtol=1e-10)
    diff = (est["tr_HS_b"] - exact["tr_HS_b"]).abs()
    assert (diff <= 5 * est["tr_HS_b_se"] + 1e-10 * exact["tr_HS_b"].abs()).all()
    assert (est["tr_HS_1_se"] <= 0.05 * est["tr_HS_1"].abs() + 1e-12).all()
    assert est.loc[est["b"] == 16, "tr_HS_b_se"].iloc[0] == 0.0  # b = n: S_n only, exact


def test_sketch_adds_probes_one_at_a_time_when_gradients_are_stored(monkeypatch):
    """With the per-sample gradients kept (store_mb) each extra probe costs one HVP; without them each round also
    costs a per-sample pass, so probes come two at a time. Same signs, same probes used: the same estimate."""
    import lssr.diagnostics.moments as moments

    model, loss_fn, x, y = make_problem(12, seed=6)
    runs, rounds, real = {}, [], moments.exchangeable_trace
    monkeypatch.setattr(moments, "exchangeable_trace", lambda M, *a: rounds.append(M.shape[0]) or real(M, *a))
    for store_mb in (1024, 0):
        rounds.clear()
        op = LossOperator(model, loss_fn, x, y)
        kw = dict(probes=6, stage1=3, top=False, rel_se=1e-12, store_mb=store_mb)
        mom = gradient_moments(op, generator=torch.Generator().manual_seed(2), **kw)
        runs[store_mb] = (mom, dict(op.counts), [d - 1 for d in rounds])  # minus the base [∇L]
    (kept, c_kept, r_kept), (passes, c_pass, r_pass) = runs[1024], runs[0]
    assert r_kept == [3, 4, 5, 6] and r_pass == [3, 5, 6]
    assert kept.probes == passes.probes == 6
    assert c_kept["hvp"] == c_pass["hvp"] == 1 + 6  # H∇L and one HVP per probe
    assert c_kept["per_sample_pass"] == 1  # rounds at 3, 4, 5, 6 probes read the kept G
    assert c_pass["per_sample_pass"] == 1 + 3  # the first pass, then rounds at 3, 5, 6 probes
    assert kept.tr_HS_1 == pytest.approx(passes.tr_HS_1, rel=1e-10)
    op = LossOperator(model, loss_fn, x, y)
    loose = gradient_moments(op, probes=6, stage1=3, top=False, rel_se=1e9, generator=torch.Generator().manual_seed(2))
    assert loose.probes == 3 and op.counts["hvp"] == 1 + 3


@pytest.mark.parametrize("jvp_products", [True, False])
def test_probes_past_the_first_pass_are_sign_weighted_gradients(jvp_products):
    """Per-sample gradients not kept: the first pass forms the first UPFRONT_PROBES·stage1 probes, each later one
    is a gradient of the sign-weighted loss; the estimate is the one from the kept gradients (same signs)."""
    import lssr.diagnostics.moments as moments

    model, loss_fn, x, y = make_problem(16, seed=3)
    kw = dict(probes=10, stage1=3, top=True, rel_se=None)
    ops = {store: LossOperator(model, loss_fn, x, y, chunk_size=5, per_sample_chunk=4) for store in (1024, 0)}
    kw.update(jvp_products=jvp_products)
    kept, later = (gradient_moments(ops[s], generator=torch.Generator().manual_seed(4), store_mb=s, **kw) for s in ops)
    assert kept.probes == later.probes == 10
    assert ops[1024].counts["grad"] == 0
    assert ops[0].counts["grad"] == 10 - moments.UPFRONT_PROBES * 3  # one gradient per later probe
    for name in ("tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_1_se", "tr_HS_n"):
        assert getattr(later, name) == pytest.approx(getattr(kept, name), rel=1e-10), name
    assert later.eig.value == pytest.approx(kept.eig.value, rel=1e-10)


def test_weighted_gradients_and_no_global_rng():
    model, loss_fn, x, y = make_problem(8, seed=5)
    op = LossOperator(model, loss_fn, x, y)
    W = torch.zeros(8, 2, dtype=torch.float64)
    W[[1, 3], 0] = 0.5
    W[:, 1] = 1 / 8
    state = torch.get_rng_state()
    mom = gradient_moments(op, probes=4, stage1=3, top=True, weights=W, generator=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())
    gB = torch.autograd.functional.jacobian(loss_at(model, loss_fn, x[[1, 3]], y[[1, 3]]), flat_params(model))
    torch.testing.assert_close(mom.weighted_grads[0], gB, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mom.weighted_grads[1], mom.grad, rtol=1e-10, atol=1e-12)
    H = torch.autograd.functional.hessian(loss_at(model, loss_fn, x, y), flat_params(model))
    assert mom.eig.value == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-3)


def test_probe_schedule_dense_window_then_every(tmp_path):
    """`dense_until`: every step in [start, dense_until), then start + k·every, before `stop` (by enumeration)."""
    from lssr.config import config_from_dict
    from lssr.training import DiagnosticsProbe

    raw = {
        "device": "cpu",
        "data": {"dataset": "digits", "n": 16},
        "model": {"name": "digits_cnn"},
        "loss": "mse",
        "optim": {"lr": 0.05, "batch_size": "full"},
        "stop": {"steps": 40},
        "probe": {"every": 10, "dense_until": 5, "start": 2, "stop": 33},
    }
    probe = DiagnosticsProbe(config_from_dict(raw), tmp_path / "d.csv")
    assert [s for s in range(40) if probe.wants(s)] == [2, 3, 4, 12, 22, 32]
    raw["probe"] = {"every": 10}
    assert [s for s in range(40) if DiagnosticsProbe(config_from_dict(raw), tmp_path / "e.csv").wants(s)] == [
        0,
        10,
        20,
        30,
    ]
