"""The exchangeable deflated sketch of tr(H S_1) (lssr.diagnostics.exchangeable) against explicit matrices:
tr(H S_1) = tr(Gᵀ H G)/n computed directly from a dense symmetric H and per-sample gradients G (float64)."""

import numpy as np
import pytest
import torch

from lssr.curvature.linalg import gram64
from lssr.diagnostics.exchangeable import exchangeable_trace


def problem(seed: int, m: int = 40, n: int = 30, rank: int = 5):
    """A symmetric H with a decaying spectrum and a few negative eigenvalues, and per-sample gradients with a
    few dominant directions plus isotropic noise and a common mean (rows g_i of G)."""
    g = np.random.default_rng(seed)
    U, _ = np.linalg.qr(g.normal(size=(m, m)))
    ev = 10 * 0.7 ** np.arange(m) - 0.2 * g.random(m)
    H = (U * ev) @ U.T
    G = g.normal(size=(m, rank)) @ g.normal(size=(rank, n)) * 3 + 0.5 * g.normal(size=(m, n)) + g.normal(size=(m, 1))
    return torch.tensor(H), torch.tensor(G.T.copy())


def exact_trace(H, G):
    return float(torch.einsum("im,mk,ik->", G, H, G)) / G.shape[0]


def estimate(H, G, s: int, seed: int, base: bool = True):
    n = G.shape[0]
    gen = torch.Generator().manual_seed(seed)
    Z = (torch.randint(0, 2, (n, s), generator=gen).double() * 2 - 1) / n**0.5
    D = Z.T @ G
    if base:
        D = torch.cat([G.mean(0, keepdim=True), D])
    HD = D @ H
    M, DH = gram64(D, D), gram64(D, HD)
    return exchangeable_trace(M, DH, G @ D.T, G @ HD.T, (G * G).sum(1), 1 if base else 0, 1e-10)


def test_probes_spanning_every_gradient_give_the_exact_value():
    """n = 6 samples, 16 probes: every leave-one-out set still spans all g_i, so nothing is left to sketch."""
    H, G = problem(0, n=6)
    est = estimate(H, G, 16, seed=1)
    assert est.residual_energy <= 1e-9 * float((G * G).sum(1).mean())
    assert est.value == pytest.approx(exact_trace(H, G), rel=1e-9)
    assert est.se <= 1e-9 * abs(est.value)


def test_even_curvature_is_removed_by_the_control_variate():
    """H = c·I: every residual has Rayleigh quotient c, so each T_k = c·tr S_1 exactly, whatever the signs."""
    _, G = problem(1)
    H = 2.5 * torch.eye(G.shape[1], dtype=torch.float64)
    est = estimate(H, G, 4, seed=3)
    assert est.value == pytest.approx(2.5 * float((G * G).sum(1).mean()), rel=1e-9)
    assert est.se <= 1e-8 * est.value
    assert 0 < est.residual_energy < float((G * G).sum(1).mean())


@pytest.mark.parametrize("base,problems", [(True, (0, 2)), (False, (5,))])
def test_unbiased_and_the_jackknife_se_is_not_too_small(base, problems):
    """300 seeds at s = 4 probes on two problems: the mean is within 3 standard errors of the mean of the exact
    value, and the jackknife se is not smaller than the observed spread (its rms ≥ 0.9 sd; a naive
    sd(T_k)/√s measured 0.70-0.85 sd here) and 2 se cover the exact value in ≥ 90% of the seeds."""
    for ps in problems:
        H, G = problem(ps)
        exact = exact_trace(H, G)
        runs = [estimate(H, G, 4, seed, base) for seed in range(300)]
        v = np.array([r.value for r in runs])
        se = np.array([r.se for r in runs])
        sd = v.std(ddof=1)
        assert abs(v.mean() - exact) <= 3 * sd / np.sqrt(v.size)
        assert np.sqrt((se**2).mean()) >= 0.9 * sd
        assert np.mean(np.abs(v - exact) <= 2 * se) >= 0.9
        naive = np.array([r.samples.std(ddof=1) / 2 for r in runs])
        assert np.sqrt((naive**2).mean()) < 0.9 * sd  # why the jackknife is needed


def test_more_probes_deflate_more():
    """The spread falls as probes are added (each deflates the others): s = 8 is several times tighter than s = 4."""
    H, G = problem(4)
    sd = {s: np.std([estimate(H, G, s, seed).value for seed in range(150)]) for s in (4, 8)}
    assert sd[8] < 0.5 * sd[4]


def test_needs_three_probes():
    H, G = problem(0)
    with pytest.raises(ValueError, match="at least 3 probes"):
        estimate(H, G, 2, seed=0)


def test_gram_matrices_grown_a_few_rows_at_a_time_equal_the_whole_products():
    """The sketch adds probes in rounds and updates M = D Dᵀ and D HDᵀ for the new rows only: after rounds of
    3, 1 and 2 rows (float32 rows, the products in float64) they equal the products of the whole matrices."""
    from lssr.diagnostics.moments import _Grams

    g = torch.Generator().manual_seed(3)
    D, HD = torch.randn(6, 1000, generator=g), torch.randn(6, 1000, generator=g)
    grams = _Grams()
    for a, b in ((0, 3), (3, 4), (4, 6)):
        M, DH = grams.add(D[a:b], HD[a:b])
    assert M.dtype == DH.dtype == torch.float64
    torch.testing.assert_close(M, D.double() @ D.double().T, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(DH, D.double() @ HD.double().T, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("s", [4, 6])
def test_the_se_is_the_delete_one_jackknife_over_the_probes(s):
    """The se is the delete-one jackknife of the estimate over the s probes, written out here: the estimate
    recomputed with probe j's row removed from the directions (j = 1..s), then √((s − 1)/s · Σ_j (v_(j) − v̄)²)."""
    H, G = problem(2)
    n = G.shape[0]
    gen = torch.Generator().manual_seed(7)
    Z = (torch.randint(0, 2, (n, s), generator=gen).double() * 2 - 1) / n**0.5
    D = torch.cat([G.mean(0, keepdim=True), Z.T @ G])  # the base ∇L, then the probes

    def trace(rows):
        d = D[rows]
        hd = d @ H
        return exchangeable_trace(gram64(d, d), gram64(d, hd), G @ d.T, G @ hd.T, (G * G).sum(1), 1, 1e-10)

    full = trace(list(range(s + 1)))
    loo = np.array([trace([0] + [k for k in range(1, s + 1) if k != j]).value for j in range(1, s + 1)])
    jackknife = np.sqrt((s - 1) / s * ((loo - loo.mean()) ** 2).sum())
    assert full.se == pytest.approx(jackknife, rel=1e-9) and full.se > 0
