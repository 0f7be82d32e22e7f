"""``lssr.diagnose(..., bn="batch")`` against brute force on a tiny batch-norm network: every b-subset B of the n
samples enumerated, ℓ(θ; B) written out by hand (batch statistics of B), g_B and the dense float64 Hessian of
ℓ(θ; B) by autograd, then tr S_b = mean ‖g_B‖², tr S_n = ‖mean g_B‖², H = mean ∇²ℓ(θ; B), tr(H S_b) =
mean g_Bᵀ H g_B and λ_max of each partition's Hessian."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lssr
from lssr.diagnostics import Compute, Eigen, Estimator
from lssr.diagnostics.batchstats import group_estimates
from lssr.errors import LssrError
from lssr.noise_scale import noise_scale

EPS = 1e-5


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, eps=EPS), nn.Tanh(), nn.Linear(4, 2)).double().train()


def data(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def batch_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ(θ; B) by hand: Linear(3,4), batch norm with B's own (biased) variance, tanh, Linear(4,2), mean CE."""
    W1, b1, gam, bet = theta[:12].view(4, 3), theta[12:16], theta[16:20], theta[20:24]
    W2, b2 = theta[24:32].view(2, 4), theta[32:34]
    h = x @ W1.T + b1
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + EPS) * gam + bet
    return F.cross_entropy(torch.tanh(h) @ W2.T + b2, y)


def truth(model: nn.Module, x, y, b: int) -> dict:
    """The exact tr S_b, tr S_n, tr(H S_b), tr S_1 and B_simple by (1), ρ_b, ‖H‖_{S_b}, the instability ratio,
    λ_max(H), H itself and λ_max of the Hessian of every partition's loss, over all b-subsets."""
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    subsets = [list(c) for c in itertools.combinations(range(x.shape[0]), b)]
    G, Hs = [], {}
    for B in subsets:
        f = lambda t, B=B: batch_loss(t, x[B], y[B])  # noqa: E731
        G.append(torch.autograd.functional.jacobian(f, theta))
        Hs[tuple(B)] = torch.autograd.functional.hessian(f, theta)
    G = torch.stack(G)
    H = torch.stack(list(Hs.values())).mean(0)
    tr_S_b, tr_S_n = float((G * G).sum(1).mean()), float(G.mean(0) @ G.mean(0))
    tr_HS_b = float(((G @ H) * G).sum(1).mean())
    parts = []
    for B in subsets:  # the partitions of n = 8 into two batches of 4 (or n = 7 into two of 3, one left out)
        for C in subsets:
            if B < C and not set(B) & set(C):
                parts.append(float(torch.linalg.eigvalsh((Hs[tuple(B)] + Hs[tuple(C)]) / 2)[-1]))
    return {
        "tr_S_b": tr_S_b,
        "tr_S_n": tr_S_n,
        "tr_HS_b": tr_HS_b,
        "tr_S_1": tr_S_n + b * (tr_S_b - tr_S_n),
        "b_simple": b * (tr_S_b - tr_S_n) / tr_S_n,
        "rho_b": tr_S_n / tr_S_b,
        "ias_b": tr_HS_b / tr_S_b,
        "instability_b": tr_HS_b / tr_S_n,
        "top": float(torch.linalg.eigvalsh(H)[-1]),
        "partition_tops": parts,
        "H": H,
    }


def measured(d) -> dict:
    out = {k: v for k, v in vars(d.at(d.batch_sizes[0])).items() if k not in ("b", "replacement")}
    out.update(tr_S_n=d.tr_S_n, tr_S_n_se=d.batch.estimates["tr_S_n_se"], tr_S_1=d.tr_S_1, b_simple=d.b_simple)
    out.update(tr_S_1_se=d.batch.estimates["tr_S_1_se"], b_simple_se=d.batch.estimates["b_simple_se"])
    return out


NAMES = ("tr_S_b", "tr_S_n", "tr_HS_b", "tr_S_1", "b_simple", "rho_b", "ias_b", "instability_b")


@pytest.mark.parametrize("n,b", [(8, 4), (7, 3)])
def test_one_call_within_3_se_and_top_eig_is_a_partitions(n, b):
    """With K = 400 batches and 40 sketches every quantity is within 3 standard errors of the brute-force value;
    ‖H‖ is the top eigenvalue of the Hessian of one partition's loss (the mean over its ⌊n/b⌋ batches), so it
    matches one of the enumerated partitions' λ_max to 1e-6 (LOBPCG at tol 1e-9), not λ_max(H) of all subsets."""
    model, (x, y) = tiny(), data(n)
    t = truth(model, x, y, b)
    est = Estimator("sketch", probes=40, batches=400)
    d = lssr.diagnose(model, "ce", (x, y), batch_sizes=[b], bn="batch", seed=3, estimator=est, eigen=Eigen(tol=1e-9))
    m = measured(d)
    for k in NAMES:
        assert m[f"{k}_se"] > 0
        assert abs(m[k] - t[k]) <= 3 * m[f"{k}_se"], (k, m[k], t[k], m[f"{k}_se"])
    assert min(abs(d.top_eig - p) / p for p in t["partition_tops"]) < 1e-6
    assert d.batch.unused == n % b and d.batch.batches == 400 and d.batch.sketches == 40
    assert math.isnan(d.tr_HS_1) and math.isnan(d.tr_HS_n) and math.isnan(d.ias_n)


def test_unbiased_over_seeds_and_se_honest():
    """tr S_b, tr S_n (U-statistic), tr(H S_b) (sketches over random partitions) and the implied tr S_1: the mean
    over 30 seeds of small calls (K = 12 batches, 6 sketches) is within 3 of its own standard errors of the
    truth, and the reported se matches the spread over seeds (root mean square se / standard deviation over
    seeds between 0.6 and 1.6; z² itself is heavy-tailed with the jackknife's 5 degrees of freedom)."""
    model, (x, y) = tiny(), data(8)
    t = truth(model, x, y, 4)
    est = Estimator("sketch", probes=6, batches=12)
    runs = [
        measured(lssr.diagnose(model, "ce", (x, y), batch_sizes=[4], bn="batch", seed=s, estimator=est, eigen=False))
        for s in range(30)
    ]
    for k in ("tr_S_b", "tr_S_n", "tr_HS_b", "tr_S_1"):
        v = torch.tensor([r[k] for r in runs], dtype=torch.float64)
        se = torch.tensor([r[f"{k}_se"] for r in runs], dtype=torch.float64)
        assert abs(float(v.mean()) - t[k]) <= 3 * float(v.std()) / math.sqrt(len(runs)), k
        ratio = float(se.square().mean().sqrt() / v.std())
        assert 0.6 < ratio < 1.6, (k, ratio)
    for k in ("rho_b", "ias_b"):  # ratios (biased at O(1/K)): their jackknife se matches their spread too
        v = torch.tensor([r[k] for r in runs], dtype=torch.float64)
        se = torch.tensor([r[f"{k}_se"] for r in runs], dtype=torch.float64)
        assert 0.6 < float(se.square().mean().sqrt() / v.std()) < 1.6, k


@pytest.mark.parametrize("mode", ["forward", "reverse", "fd"])
def test_exact_estimator_uses_one_batch_per_form(mode):
    """``Estimator("exact")``: one group per batch, P = K forms g_kᵀ H_k g_k; within 3 se with each way of
    forming H·v (``graph``, the default here, in the tests above)."""
    model, (x, y) = tiny(), data(8)
    t = truth(model, x, y, 4)
    est, comp = Estimator("exact", batches=60), Compute(hvp_mode=mode)
    d = lssr.diagnose(model, "ce", (x, y), batch_sizes=[4], bn="batch", estimator=est, eigen=False, compute=comp)
    assert d.batch.sketches == 60 and d.probes == 60 and d.cost.hvp_mode == mode
    m = measured(d)
    assert abs(m["tr_HS_b"] - t["tr_HS_b"]) <= 3 * m["tr_HS_b_se"]


def test_group_estimates_jackknife_of_a_mean_is_the_standard_error():
    """With one batch a group the jackknife se of tr S_b is the sample standard error of the ‖g_k‖²."""
    sq = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    out = group_estimates(torch.ones(4, dtype=torch.float64), sq, torch.diag(sq), sq, b=2)
    assert out["tr_S_b"] == pytest.approx(3.5)
    assert out["tr_S_b_se"] == pytest.approx(float(sq.std()) / 2)
    assert out["tr_S_n"] == pytest.approx(0.0) and out["tr_HS_b_se"] == pytest.approx(float(sq.std()) / 2)


def test_model_state_restored():
    """Running statistics, train flags, track_running_stats and .grad are as before the call."""
    model, (x, y) = tiny(), data(8)
    model[1].running_mean.fill_(0.3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    model[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    lssr.diagnose(model, "ce", (x, y), batch_sizes=[4], bn="batch", estimator=Estimator(batches=8), eigen=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags and model[1].track_running_stats
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(batch_sizes=()), "one batch size"),
        (dict(batch_sizes=[2, 4]), "one batch size"),
        (dict(batch_sizes=[1]), "2 <= b <= n"),
        (dict(batch_sizes=[9]), "2 <= b <= n"),
        (dict(batch_sizes=[4], replacement=True), "replacement=False"),
    ],
)
def test_bad_calls_refused(kw, match):
    model, (x, y) = tiny(), data(8)
    with pytest.raises(LssrError, match=match) as e:
        lssr.diagnose(model, "ce", (x, y), bn="batch", **kw)
    assert "\n" not in str(e.value) and "fix:" in str(e.value)


def test_model_without_train_mode_batch_norm_refused():
    model, (x, y) = tiny().eval(), data(8)
    with pytest.raises(LssrError, match="no batch norm in train mode.*bn='refuse'"):
        lssr.diagnose(model, "ce", (x, y), batch_sizes=[4], bn="batch")
    with pytest.raises(LssrError, match="batches"):
        Estimator(batches=2)
    with pytest.raises(LssrError, match="unknown bn='batch'"):
        noise_scale(tiny(), "ce", (x, y), bn="batch")


def _quotient(H: torch.Tensor, u: torch.Tensor) -> float:
    u = u.double() / u.double().norm()
    return float(u @ H @ u)


@pytest.mark.parametrize("n,b", [(8, 4), (7, 3)])
def test_heldout_quotient_is_the_eigenvectors_quotient_under_the_loss_hessian(n, b):
    """``Eigen(heldout=400)``: the eigenvector u of one partition's Hessian, scored on 400 independent batches, is
    within 3 of its standard errors of uᵀHu with H the brute-force Hessian of L_b (the mean over all b-subsets),
    so at most λ_max(H) plus 3 se, while ‖H‖ itself is that partition's λ_max; the other numbers do not change."""
    model, (x, y) = tiny(), data(n)
    t = truth(model, x, y, b)
    H = t["H"]
    est = Estimator("sketch", probes=8, batches=40)
    kw = dict(batch_sizes=[b], bn="batch", seed=5, estimator=est)
    d = lssr.diagnose(model, "ce", (x, y), eigen=Eigen(tol=1e-9, heldout=400), **kw)
    plain = lssr.diagnose(model, "ce", (x, y), eigen=Eigen(tol=1e-9), **kw)
    q, se = d.batch.top_eig_heldout, d.batch.top_eig_heldout_se
    assert se > 0 and d.batch.heldout == 400
    assert abs(q - _quotient(H, d.eigenvector)) <= 3 * se, (q, _quotient(H, d.eigenvector), se)
    assert q <= t["top"] + 3 * se
    assert d.top_eig == plain.top_eig and measured(d) == measured(plain)
    assert d.scalars()["top_eig_heldout"] == q and math.isnan(plain.scalars()["top_eig_heldout"])
    assert d.cost.hvps >= plain.cost.hvps + 400


def test_heldout_standard_error_matches_the_spread_over_seeds():
    """Over 30 seeds of ``Eigen(heldout=10)``, z = (held-out quotient − uᵀHu)/se, with u each call's eigenvector and
    H the brute-force Hessian of L_b, has mean within 3/√30 of 0 and a root mean square between 0.6 and 1.6 (the se
    of 10 batches has 9 degrees of freedom)."""
    model, (x, y) = tiny(), data(8)
    H = truth(model, x, y, 4)["H"]
    est = Estimator("sketch", probes=4, batches=8)
    z = []
    for s in range(30):
        d = lssr.diagnose(
            model, "ce", (x, y), batch_sizes=[4], bn="batch", seed=s, estimator=est, eigen=Eigen(heldout=10)
        )
        z.append((d.batch.top_eig_heldout - _quotient(H, d.eigenvector)) / d.batch.top_eig_heldout_se)
    z = torch.tensor(z, dtype=torch.float64)
    assert abs(float(z.mean())) <= 3 / math.sqrt(len(z)), z
    assert 0.6 < float(z.square().mean().sqrt()) < 1.6, z


def test_heldout_needs_batch_statistics():
    model, (x, y) = tiny().eval(), data(8)
    with pytest.raises(LssrError, match=r"Eigen\(heldout=5\).*fix: bn='batch'"):
        lssr.diagnose(model, "ce", (x, y), batch_sizes=[4], bn="eval", eigen=Eigen(heldout=5))
    with pytest.raises(LssrError, match="heldout must be an integer >= 0"):
        Eigen(heldout=-1)
