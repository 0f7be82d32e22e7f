"""The monitor's streaming mode against dense float64 truths on a tiny network: every per-sample gradient and
the explicit Hessian H of the full loss give tr S_1, ‖∇L‖², tr(H S_b) and ‖H‖ exactly; the streaming rows,
fed mini-batch gradients drawn with replacement at a fixed θ, must be unbiased for them with standard errors
that match the rows' spread."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_monitor import assert_same_training
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

import lssr
from lssr import LssrError
from lssr.diagnostics.stream import jackknife, window_moments

N, B, WINDOW, GROUPS, ROWS = 48, 6, 16, 8, 240


def tiny(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    return model, TensorDataset(x, y)


def truths(model, ds) -> dict:
    """Dense float64: per-sample gradients g_i (vmap of grad), H by torch.autograd.functional.hessian of L over
    the flat parameters; tr S_1 = mean ‖g_i‖², tr S_n = ‖∇L‖², tr(H S_1) = mean g_iᵀHg_i, tr(H S_n) = ∇LᵀH∇L,
    and with replacement tr S_b = tr S_n + (tr S_1 − tr S_n)/b (the same for tr(H S_b))."""
    x, y = ds.tensors
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(t):
        return {k: v.reshape(s) for k, v, s in zip(names, t.split(sizes), shapes)}

    def loss_one(t, xi, yi):
        return F.cross_entropy(functional_call(model, unflat(t), (xi[None],)), yi[None])

    G = vmap(grad(loss_one), in_dims=(None, 0, 0))(theta, x, y)  # (N, m)
    H = torch.autograd.functional.hessian(lambda t: F.cross_entropy(functional_call(model, unflat(t), (x,)), y), theta)
    mu = G.mean(0)
    tr1, trn = float(G.square().sum(1).mean()), float(mu @ mu)
    th1, thn = float(((G @ H) * G).sum(1).mean()), float(mu @ H @ mu)
    return dict(
        tr_S_1=tr1,
        tr_S_n=trn,
        tr_S_b=trn + (tr1 - trn) / B,
        tr_HS_b=thn + (th1 - thn) / B,
        top_eig=float(torch.linalg.eigvalsh(H)[-1]),
    )


def stream_rows(model, ds, rows: int = ROWS, seed: int = 0, *, b: int = B, draw=None, stream_n: int = 16, **kw):
    """Windows of mini-batch gradients at a fixed θ (no optimiser step): batches of b indices ``draw(generator)``
    (default: drawn with replacement); the monitor's rows."""
    out = []
    mon = lssr.SharpnessMonitor(
        model,
        "ce",
        DataLoader(ds, batch_size=b),
        stream=True,
        budget=math.inf,
        window=WINDOW,
        groups=GROUPS,
        stream_n=stream_n,
        callback=out.append,
        **kw,
    )
    g = torch.Generator().manual_seed(seed + 1)
    x, y = ds.tensors
    draw = draw or (lambda gen: torch.randint(0, len(ds), (b,), generator=gen))
    for _ in range(rows * WINDOW):
        idx = draw(g)
        model.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        mon.step()
    assert mon.stream and len(out) == rows
    return out


def assert_unbiased(rows: list[dict], key: str, truth: dict) -> None:
    """The rows' mean of ``key`` is within 3 standard errors (of that mean) of its truth (tr S_n for the window's
    U-statistic ``tr_S_n_window``)."""
    v = torch.tensor([r[key] for r in rows], dtype=torch.float64)
    se = float(v.std() / math.sqrt(len(v)))
    want = truth["tr_S_n" if key == "tr_S_n_window" else key]
    assert abs(float(v.mean()) - want) <= 3 * se, (key, float(v.mean()), want, se)


@pytest.fixture(scope="module")
def run():
    model, ds = tiny()
    return truths(model, ds), stream_rows(model, ds)


@pytest.mark.parametrize("key", ["tr_S_b", "tr_S_n", "tr_S_n_window", "tr_S_1", "tr_HS_b"])
def test_the_streaming_estimators_are_unbiased(run, key):
    """The mean over 240 seeded windows is within 3 standard errors (of that mean) of the dense truth (tr S_n for
    both of its estimates: the probe gradient against the last mini-batch gradient, and the window's U-statistic)."""
    truth, rows = run
    assert_unbiased(rows, key, truth)
    assert all(r["kind"] == "stream" and r["window_steps"] == WINDOW for r in rows)


@pytest.mark.parametrize("key", ["tr_S_b", "tr_S_n", "tr_S_n_window", "tr_S_1", "tr_HS_b", "top_eig"])
def test_the_rows_standard_errors_match_their_spread(run, key):
    """From the ninth row on (a full spread of consecutive rows, a settled ‖H‖), the rows' squared standard
    errors average to between 0.65 and 1.6 times the variance of the rows' values (the jackknife of the
    U-statistic tr S_n is conservative, about 1.4 here), and at least 80% of the rows cover the truth within 2
    standard errors (a t distribution with 7 degrees of freedom covers 91%)."""
    truth, rows = run
    rows = rows[8:]
    v = torch.tensor([r[key] for r in rows], dtype=torch.float64)
    se = torch.tensor([r[f"{key}_se"] for r in rows], dtype=torch.float64)
    ratio = float(se.square().mean() / v.var())
    assert 0.65 <= ratio <= 1.6, (key, ratio)
    cover = float(((v - truth["tr_S_n" if key == "tr_S_n_window" else key]).abs() <= 2 * se).double().mean())
    assert cover >= 0.8, (key, cover)


def test_the_top_eigenvalue_converges_to_the_dense_one(run):
    """The warm-started power steps (one HVP per row on 16 fresh samples) settle at ‖H‖ of the dense Hessian: the
    mean of the Rayleigh quotients over the second half of the rows is within 3 of its standard errors, or 5%
    (the vector wanders about the top eigenvector with the probe samples, so the quotients sit slightly low)."""
    truth, rows = run
    v = torch.tensor([r["top_eig"] for r in rows[len(rows) // 2 :]], dtype=torch.float64)
    se = float(v.std() / math.sqrt(len(v)))
    assert abs(float(v.mean()) - truth["top_eig"]) <= max(3 * se, 0.05 * truth["top_eig"]), (
        float(v.mean()),
        truth["top_eig"],
        se,
    )


def test_window_moments_are_the_u_statistic_and_its_jackknife():
    """tr S_b and tr S_n of a window against a direct computation over all pairs of steps; the jackknife
    against a recomputation with each group left out."""
    g = torch.Generator().manual_seed(3)
    M, per, m = 4, 3, 5
    gs = torch.randn(M, per, m, generator=g, dtype=torch.float64) + 0.5
    A, q, k = gs.sum(1), gs.square().sum((1, 2)).tolist(), [per] * M

    def direct(sel):
        flat = gs[sel].reshape(-1, m)
        K = flat.shape[0]
        P = flat @ flat.T
        return float(P.diagonal().mean()), float((P.sum() - P.diagonal().sum()) / (K * (K - 1)))

    tb, tn, tb_loo, tn_loo = window_moments(A, q, k)
    assert (tb, tn) == pytest.approx(direct(list(range(M))), rel=1e-12)
    for i in range(M):
        rest = [j for j in range(M) if j != i]
        assert (float(tb_loo[i]), float(tn_loo[i])) == pytest.approx(direct(rest), rel=1e-12)
    vals = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    assert jackknife(vals) == pytest.approx(math.sqrt(3 / 4 * float((vals - vals.mean()).square().sum())))


def test_the_streaming_mode_leaves_the_training_unchanged():
    """A short SGD run with the streaming monitor (rows every 16 steps) has the same losses and final
    parameters as without it (torch.equal), and the rows say which kind they are and which window they average."""

    def train(monitored: bool):
        model, ds = tiny(1)
        model = torch.nn.Sequential(model[0], torch.nn.Dropout(0.2), *model[1:])
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(5)
        loader = DataLoader(ds, batch_size=B, shuffle=True)
        rows = []
        mon = (
            lssr.SharpnessMonitor(
                model, "ce", loader, opt, window=WINDOW, budget=math.inf, stream=True, callback=rows.append
            )
            if monitored
            else None
        )
        losses = []
        for _ in range(6):
            for x, y in loader:
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                if mon is not None:
                    mon.step()
                opt.step()
                losses.append(loss.detach())
        return torch.stack(losses), model, rows

    plain, m0, _ = train(False)
    monitored, m1, rows = train(True)
    assert_same_training((plain, m0), (monitored, m1))
    assert [r["step"] for r in rows] == [15, 31, 47]
    assert [(r["window_start"], r["window_steps"]) for r in rows] == [(0, 16), (16, 16), (32, 16)]
    assert rows[0]["threshold"] == pytest.approx((2 + 2 * 0.9) / 0.1)
    assert rows[0]["rho_threshold"] == pytest.approx(rows[0]["rho_b"] * rows[0]["threshold"])


def test_tr_hs_b_from_the_whole_window_is_unbiased_too():
    """hvp_steps=None (tr(H S_b) from the sign sketch of all the window's gradients, centred on their mean, instead
    of the last hvp_steps): the mean over 240 seeded windows at a fixed θ is within 3 standard errors of the dense
    tr(H S_b)."""
    model, ds = tiny()
    truth = truths(model, ds)["tr_HS_b"]
    rows = stream_rows(model, ds, seed=7, hvp_steps=None)
    v = torch.tensor([r["tr_HS_b"] for r in rows], dtype=torch.float64)
    assert abs(float(v.mean()) - truth) <= 3 * float(v.std() / math.sqrt(len(v))), (float(v.mean()), truth)


def test_a_window_of_vanishing_gradients_gives_nan_ratios():
    """A window whose gradients are all zero (a network whose units all died): tr S_b = tr S_n = 0 and the ratios
    ρ_b, ‖H‖_{S_b} and B_simple are NaN, not an error."""
    model, ds = tiny()
    rows = []
    mon = lssr.SharpnessMonitor(
        model, "ce", ds, stream=True, window=4, groups=2, hvp_steps=2, budget=math.inf, callback=rows.append
    )
    for _ in range(4):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        mon.step()
    (row,) = rows
    assert row["tr_S_b"] == 0 and row["tr_HS_b"] == 0 and row["tr_S_n"] == 0
    assert all(math.isnan(row[k]) for k in ("rho_b", "ias_b", "b_simple"))


def test_the_streaming_mode_needs_gradients_and_a_long_enough_window():
    model, ds = tiny()
    mon = lssr.SharpnessMonitor(model, "ce", ds, stream=True)
    with pytest.raises(LssrError, match="after loss.backward"):
        mon.step()
    with pytest.raises(LssrError, match="window"):
        lssr.SharpnessMonitor(model, "ce", ds, window=10, groups=8)
    for bad in (1, 81, 2.5):
        with pytest.raises(LssrError, match="hvp_steps"):
            lssr.SharpnessMonitor(model, "ce", ds, window=80, hvp_steps=bad)
    with pytest.raises(LssrError, match=r"stream must be None \(auto\), True or False, got 'yes'"):
        lssr.SharpnessMonitor(model, "ce", ds, stream="yes")
    for bad in (0, True, 1.5):
        with pytest.raises(LssrError, match="accumulate must be a positive integer"):
            lssr.SharpnessMonitor(model, "ce", ds, accumulate=bad)


def test_stream_false_gives_diagnose_rows_after_backward():
    """stream=False: a call after backward() measures lssr.diagnose on the probe set: the row (kind "diagnose")
    has ‖H‖ and tr S_n equal to the dense truths at θ on the probe set (all N samples here) and no streaming
    column; with neither every nor budget (the 10% budget) no streaming window opens either."""
    model, ds = tiny()
    x, y = ds.tensors
    rows = []
    mon = lssr.SharpnessMonitor(
        model, "ce", DataLoader(ds, batch_size=B), every=1, n=N, callback=rows.append, stream=False
    )
    F.cross_entropy(model(x[:B]), y[:B]).backward()
    mon.step()
    truth = truths(model, ds)
    assert mon.stream is False and len(rows) == 1 and rows[0]["kind"] == "diagnose" and "window_steps" not in rows[0]
    assert rows[0]["top_eig"] == pytest.approx(truth["top_eig"], rel=1e-6)
    assert rows[0]["tr_S_n"] == pytest.approx(truth["tr_S_n"], rel=1e-9)
    quiet = []
    mon = lssr.SharpnessMonitor(model, "ce", DataLoader(ds, batch_size=B), n=N, callback=quiet.append, stream=False)
    for _ in range(3):
        mon.step()
    assert mon.stream is False and mon.streamer.current is None and all(r["kind"] == "diagnose" for r in quiet)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_the_auto_mode_streams_when_called_after_backward():
    """stream not given, called after backward(): the first call chooses the streaming mode (monitor.stream None
    before it, True after), its rows (kind "stream") are those of a monitor forced with stream=True on the same
    gradients, and each row's tr S_b is the mean of ‖g_t‖² over its window's steps, computed here from the
    gradients the loop made."""
    model, ds = tiny()
    x, y = ds.tensors
    kw = dict(budget=math.inf, window=WINDOW, groups=GROUPS, stream_n=16)
    rows, forced = [], []
    auto = lssr.SharpnessMonitor(model, "ce", DataLoader(ds, batch_size=B), callback=rows.append, **kw)
    ref = lssr.SharpnessMonitor(model, "ce", DataLoader(ds, batch_size=B), callback=forced.append, stream=True, **kw)
    assert auto.stream is None
    g = torch.Generator().manual_seed(4)
    sq = []
    for _ in range(2 * WINDOW):
        idx = torch.randint(0, N, (B,), generator=g)
        model.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        sq.append(float(flat_grad(model).square().sum()))
        auto.step()
        ref.step()
        assert auto.stream is True and auto.stream_refusal is None
    assert [r["step"] for r in rows] == [WINDOW - 1, 2 * WINDOW - 1] and all(r["kind"] == "stream" for r in rows)
    for a, b in zip(rows, forced):
        assert a.keys() == b.keys()
        for k in a.keys() - {"cost_seconds"}:
            assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), k
    for r in rows:
        window = sq[r["window_start"] : r["step"] + 1]
        assert r["tr_S_b"] == pytest.approx(sum(window) / len(window), rel=1e-12) and r["b"] == B


def test_the_auto_mode_gives_diagnose_rows_when_called_before_backward():
    """stream not given, called after zero_grad() (set_to_none=True, torch's default) and before backward(): no
    parameter has a gradient, so the monitor makes rows of lssr.diagnose (kind "diagnose") at every step, whose
    ‖H‖ and tr S_n are the dense truths at that step's θ on the probe set (all N samples)."""
    model, ds = tiny()
    x, y = ds.tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rows, want = [], []
    mon = lssr.SharpnessMonitor(model, "ce", DataLoader(ds, batch_size=B), opt, every=1, n=N, callback=rows.append)
    for t in range(3):
        opt.zero_grad()
        want.append(truths(model, ds))
        mon.step()
        assert mon.stream is False and mon.stream_refusal is None
        F.cross_entropy(model(x[t * B : (t + 1) * B]), y[t * B : (t + 1) * B]).backward()
        opt.step()
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["kind"] == "diagnose" for r in rows)
    for r, truth in zip(rows, want):
        assert r["top_eig"] == pytest.approx(truth["top_eig"], rel=1e-6)
        assert r["tr_S_n"] == pytest.approx(truth["tr_S_n"], rel=1e-9)


def test_the_auto_choice_travels_in_the_checkpoint():
    """A monitor whose first call chose the streaming mode (after backward) checkpoints the choice: a new monitor
    with stream not given loads it (monitor.stream True before any call) and, called without gradients, says so
    instead of choosing diagnose rows; one that chose diagnose rows (no gradients) keeps them in a new monitor
    called with gradients; a state saved before any call leaves the choice to the new monitor's first call."""
    import io

    model, ds = tiny()
    x, y = ds.tensors

    def new(**kw):
        return lssr.SharpnessMonitor(model, "ce", DataLoader(ds, batch_size=B), n=N, every=1, **kw)

    def reload(state, **kw):
        buf = io.BytesIO()
        torch.save(state, buf)
        mon = new(**kw)
        mon.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
        return mon

    untouched = reload(new().state_dict())
    assert untouched.stream is None
    F.cross_entropy(model(x[:B]), y[:B]).backward()
    first = new()
    first.step()
    resumed = reload(first.state_dict())
    assert first.stream is True and resumed.stream is True and resumed.steps == 1
    model.zero_grad(set_to_none=True)
    with pytest.raises(LssrError, match="after loss.backward"):
        resumed.step()
    chose = new()
    chose.step()
    assert chose.stream is False
    F.cross_entropy(model(x[:B]), y[:B]).backward()
    rows = []
    kept = reload(chose.state_dict(), callback=rows.append)
    assert kept.stream is False
    kept.step()
    assert kept.stream is False and [r["kind"] for r in rows] == ["diagnose"]
    untouched.step()
    assert untouched.stream is True


@pytest.mark.parametrize("bn", [False, True], ids=["no-bn", "bn-train"])
def test_the_auto_mode_leaves_the_training_unchanged(bn):
    """The conv net of test_monitor (dropout, and batch norm in train mode or not) trained by SGD on a shuffling
    loader for 32 steps with the monitor in auto mode called after backward(): the losses, final parameters and
    buffers are those of the same loop without it (torch.equal). The rows are of one kind: streaming rows at the
    windows' ends without batch norm; with it, whichever the monitor chose (diagnose rows at every 8th step when
    the streaming mode refuses batch norm in train mode)."""
    from test_monitor import N_PROBE, make, plain_loop_rows
    from test_monitor import B as B2

    def run(monitored):
        net, ds = make()
        if not bn:
            net.bn = torch.nn.Identity()
        torch.manual_seed(3)
        loader = DataLoader(ds, batch_size=B2, shuffle=True)
        losses = []
        kw = dict(n=N_PROBE, every=8, budget=None, window=16, stream_n=8)
        rows = plain_loop_rows(net, loader, 32, losses=losses, monitored=monitored, **kw)
        return torch.stack(losses), net, rows

    plain, m0, _ = run(False)
    monitored, m1, rows = run(True)
    assert_same_training((plain, m0), (monitored, m1))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"stream"} if not bn else len(kinds) == 1
    (kind,) = kinds
    assert [r["step"] for r in rows] == {"stream": [15, 31], "diagnose": [0, 8, 16, 24]}[kind]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_lightning_callback_streams_by_default(tmp_path, accumulate):
    """lssr.SharpnessCallback with no stream option in a real lightning Trainer (CPU, 32 optimiser steps, a row
    every 16) streams (the gradients are there in on_before_optimizer_step): its rows are the plain loop's rows of
    a SharpnessMonitor with no stream option either (called after backward) at the same steps on the same
    trajectory. With accumulate_grad_batches = 2 over batches of 8, each optimiser step's gradient is that of the
    plain loop's batch of 16 (the same samples), and the rows' b (and the monitor's batch size) is 16."""
    L = pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra (pip install lightning)")
    from test_monitor import N_PROBE, lightning_module, lightning_trainer, make, plain_loop_rows
    from test_monitor import B as B2

    net, ds = make()
    net.drop.p = 0.0  # the two runs draw dropout masks at different points of the global RNG stream
    net.bn = torch.nn.Identity()  # batch statistics of 8 samples are not those of 16
    init = copy.deepcopy(net)
    kw = dict(n=N_PROBE, window=16, stream_n=8, budget=math.inf)
    logged = []
    cb = lssr.SharpnessCallback("ce", callback=logged.append, **kw)
    trainer = lightning_trainer(
        L,
        cb,
        max_steps=32,
        logger=False,
        enable_checkpointing=False,
        accumulate_grad_batches=accumulate,
    )
    module = lightning_module(L)(net)
    trainer.fit(module, DataLoader(ds, batch_size=B2 // accumulate, shuffle=False))

    model = init
    rows = plain_loop_rows(model, DataLoader(ds, batch_size=B2, shuffle=False), 32, **kw)
    for a, b in zip(model.parameters(), module.net.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert [r["step"] for r in logged] == [r["step"] for r in rows] == [15, 31]
    assert all(r["kind"] == "stream" and r["b"] == B2 for r in logged + rows)
    assert cb.monitor.stream is True and cb.monitor.batch_sizes == (B2,)
    for key in ("tr_S_b", "tr_S_n", "tr_S_n_window", "tr_S_1", "tr_HS_b", "top_eig", "rho_b", "ias_b"):
        assert np.allclose([r[key] for r in logged], [r[key] for r in rows], rtol=1e-9, atol=1e-12), key


def test_an_eigen_option_gives_the_rows_lobpcg_on_their_probe_samples():
    """With ``eigen=lssr.Eigen(...)`` and every sample a probe sample (stream_n = N), each row's ‖H‖ is LOBPCG on the
    full loss's Hessian: the dense float64 λ_max within 1e-6 relative, from the first row on."""
    model, ds = tiny()
    truth = truths(model, ds)["top_eig"]
    rows = stream_rows(model, ds, rows=3, stream_n=N, eigen=lssr.Eigen(tol=1e-9, max_hvps=40))
    for r in rows:
        assert r["top_eig"] == pytest.approx(truth, rel=1e-6)
        assert r["top_eig_residual"] <= 1e-6


class _DenseOperator:
    """H v for a dense symmetric H, counting the products (``return_grad``: also a fixed gradient)."""

    def __init__(self, H: torch.Tensor):
        self.H, self.calls = H, 0

    def hvp(self, v, return_grad=False):
        self.calls += 1
        h = self.H @ v
        return (h, torch.ones_like(v)) if return_grad else h


@pytest.mark.parametrize("max_hvps", [1, 3, 12])
def test_row_products_spends_at_most_max_hvps_on_the_top_eigenvalue(max_hvps):
    """One product for tr(H S_b) and at most ``max_hvps`` for ‖H‖; the reported value is a Rayleigh quotient (≤
    λ_max) that reaches λ_max of the dense H (m = 12) when the products span the space."""
    from lssr.diagnostics.stream import Window, row_products

    g = torch.Generator().manual_seed(3)
    A = torch.randn(12, 12, generator=g, dtype=torch.float64)
    H = A @ A.T / 12 - 0.3 * torch.eye(12, dtype=torch.float64)
    w = Window([torch.zeros(12, dtype=torch.float64)], 2, generator=g, start=0, recent=4)
    for _ in range(4):
        w.add([torch.randn(12, generator=g, dtype=torch.float64)])
    op = _DenseOperator(H)
    out = row_products(op, w, None, lssr.Eigen(tol=1e-12, max_hvps=max_hvps))
    top = float(torch.linalg.eigvalsh(H)[-1])
    assert op.calls <= 1 + max_hvps
    assert out["top_eig"] <= top * (1 + 1e-12)
    if max_hvps == 12:
        assert out["top_eig"] == pytest.approx(top, rel=1e-9)
    assert float(out["x"].norm()) == pytest.approx(1.0)
