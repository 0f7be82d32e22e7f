"""Scaling rules: γ, ρ_b (eq. 12) and the log-space fits, against closed forms and synthetic data."""

import math

import numpy as np
import pytest

from lssr import LssrError
from lssr.scaling import (
    batch_weight,
    fit_lsr,
    fit_lssr,
    fit_rules,
    fit_srsr,
    gamma,
    lsr,
    lssr,
    rho_b,
    sgd_threshold,
    srsr,
)


def test_gamma_closed_forms():
    n = 10
    assert gamma(n, 1) == 1.0
    assert gamma(n, n) == 0.0
    assert gamma(n, 4) == pytest.approx(6 / 9)
    np.testing.assert_allclose(gamma(n, np.array([1, 2, 10])), [1.0, 8 / 9, 0.0])
    assert gamma(n, 7, replacement=True) == 1.0
    assert gamma(n, 50, replacement=True) == 1.0  # with replacement b may exceed n
    assert gamma(1, 1) == 0.0
    with pytest.raises(LssrError):
        gamma(n, 11)
    with pytest.raises(LssrError):
        gamma(n, 0)
    assert batch_weight(n, 4) == pytest.approx((6 / 9) / 4)


def test_rho_b_limits_and_formula():
    n, rho = 1000, 0.01
    assert rho_b(rho, n, 1) == pytest.approx(rho)  # b = 1 gives ρ
    assert rho_b(rho, n, n) == pytest.approx(1.0)  # b = n gives 1 without replacement
    assert rho_b(rho, n, 1, replacement=True) == pytest.approx(rho)
    assert rho_b(rho, n, 10**9, replacement=True) == pytest.approx(1.0, rel=1e-6)
    # eq. (12) written out for one b
    b = 16
    g = (n - b) / (n - 1)
    assert rho_b(rho, n, b) == pytest.approx(1 / ((g / b) / rho + 1 - g / b))
    # linear regime: ρ_b ≈ bρ/γ for small b; monotone in b
    bs = np.arange(1, n + 1)
    r = rho_b(rho, n, bs)
    assert np.all(np.diff(r) > 0)
    assert r[1] == pytest.approx(2 * rho / gamma(n, 2), rel=0.02)
    # ρ_b = tr S_n / tr S_b from the moments directly
    tr_S_1, tr_S_n = 3.0, 3.0 * rho
    w = batch_weight(n, b)
    assert rho_b(rho, n, b) == pytest.approx(tr_S_n / (w * tr_S_1 + (1 - w) * tr_S_n))


def test_rule_curves():
    b = np.array([1, 4, 16])
    np.testing.assert_allclose(lsr(b, 0.5), [0.5, 2, 8])
    np.testing.assert_allclose(srsr(b, 0.5), [0.5, 1, 2])
    np.testing.assert_allclose(lssr(b, 2.0, 0.1, 100), 2.0 * rho_b(0.1, 100, b))


def test_fits_recover_known_parameters():
    b = 2.0 ** np.arange(0, 11)
    f = fit_lsr(b, lsr(b, 0.003))
    assert f.params["c"] == pytest.approx(0.003, rel=1e-9) and f.rmse_log2 < 1e-9
    f = fit_srsr(b, srsr(b, 0.02))
    assert f.params["c"] == pytest.approx(0.02, rel=1e-9) and f.rmse_log2 < 1e-9
    n = 1024
    for rep in (False, True):
        eta = lssr(b, 0.7, 0.004, n, rep)
        f = fit_lssr(b, eta, n, rep)
        assert f.params["rho"] == pytest.approx(0.004, rel=1e-4)
        assert f.params["c"] == pytest.approx(0.7, rel=1e-4)
        assert f.rmse_log2 < 1e-6
        np.testing.assert_allclose(f.predict(b), eta, rtol=1e-4)


def test_fit_with_noise_and_model_selection():
    rng = np.random.default_rng(0)
    b = 2.0 ** np.arange(0, 11)
    n = 1024
    eta = lssr(b, 1.0, 0.01, n) * 2.0 ** rng.normal(0, 0.1, b.size)
    table = fit_rules(b, eta, n)
    best = table.sort_values("rmse_log2").iloc[0]
    assert best["rule"] == "LSSR"
    assert best["rho"] == pytest.approx(0.01, rel=0.3)
    assert math.isnan(table.set_index("rule").loc["LSR", "rho"])
    with pytest.raises(LssrError):
        fit_lsr([1, 2], [0.1])


def test_named_ratios_of_the_paper():
    # ρ_b, ‖H‖_{S_b} and the instability ratio on numbers worked by hand; a zero denominator gives NaN
    from lssr.scaling import concentration, instability_ratio, interaction_aware_sharpness

    assert concentration(2.0, 8.0) == 0.25
    assert interaction_aware_sharpness(6.0, 8.0) == 0.75
    assert instability_ratio(6.0, 2.0) == 3.0
    assert math.isnan(concentration(1.0, 0.0))
    np.testing.assert_allclose(concentration(np.array([1.0, 3.0]), np.array([2.0, 4.0])), [0.5, 0.75])


@pytest.mark.parametrize(
    "momentum, dampening, nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.5, 0.3, False), (0.9, 0.0, True)]
)
def test_the_sgd_threshold_is_where_torch_sgd_diverges_on_a_quadratic(momentum, dampening, nesterov):
    """torch.optim.SGD on ½λθ² (with weight decay w, curvature λ + w) shrinks θ for λ + w 2% below
    sgd_threshold and blows it up 2% above; NaN for η ≤ 0 or dampening 1."""
    import torch

    lr, wd = 0.1, 0.05
    thr = sgd_threshold(lr, momentum, dampening, nesterov)
    for factor, grows in ((0.98, False), (1.02, True)):
        lam = factor * thr - wd
        theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD(
            [theta], lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd
        )
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * lam * theta**2).sum().backward()
            opt.step()
        assert (abs(float(theta.detach())) > 1.0) == grows
    assert math.isnan(sgd_threshold(0.0)) and math.isnan(sgd_threshold(0.1, 0.9, 1.0))
