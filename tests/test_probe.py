"""DiagnosticsProbe inside lssr.training.train: columns, invariants, no effect on the trajectory, BN refusal."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lssr.columns import probe_columns
from lssr.config import config_from_dict
from lssr.curvature import BatchNormModeError
from lssr.data import Subset
from lssr.diagnostics import Eigen
from lssr.models import build_model
from lssr.training import DiagnosticsProbe, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, C = 16, 3


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, 8, 8, generator=g)
    y = torch.arange(N) % C
    xt = torch.randn(8, 3, 8, 8, generator=g)
    yt = torch.arange(8) % C
    return Subset(x, y, xt, yt, manifest={"num_classes": C, "image_shape": [3, 8, 8], "sha256": {}})


def cfg_for(**over):
    raw = {
        "seed": 1,
        "device": "cpu",
        "data": {"dataset": "digits", "n": N},
        "model": {"name": "cnn6"},
        "loss": "mse",
        "optim": {"lr": 0.05, "batch_size": "full"},
        "stop": {"steps": 3},
        "eval_every": 1,
        "chunk_size": 8,
    }
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    return config_from_dict(raw)


def run(cfg, data, out, probed):
    probes = [DiagnosticsProbe(cfg, out / "diagnostics.csv")] if probed else []
    train(cfg, data, out, probes=probes, progress=False)
    return (out / "metrics.csv").read_bytes()


def explicit_gd_losses(cfg, data, steps: int) -> np.ndarray:
    """L(θ_0), ..., L(θ_steps) of full-batch GD with MSE = mean_i ½‖f(x_i) − onehot(y_i)‖², written out here and
    run in float64 from the θ_0 that training draws (``torch.manual_seed(seed)``, then the model)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, 3, C, False).double()
    x, target = data.x_train.double(), torch.nn.functional.one_hot(data.y_train, C).double()
    losses = []
    for _ in range(steps + 1):
        model.zero_grad()
        loss = 0.5 * (model(x) - target).pow(2).sum(dim=1).mean()
        loss.backward()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            for p in model.parameters():
                p -= cfg.optim.lr * p.grad
    return np.array(losses)


def test_probe_columns_written_out():
    """The diagnostics.csv column order, written out by hand for b = 8 with valley probes (not taken from
    lssr.columns, which both the probe and the tables use)."""
    expected = [
        "step", "lr", "two_over_eta", "b_run", "loss", "loss_next", "loss_change",
        "tr_S_n", "tr_S_1", "tr_S_1_se", "tr_HS_n", "tr_HS_1", "tr_HS_1_se", "ias_n",
        "top_eig", "top_eig_hvps", "cos_q1_grad", "expected_change", "expected_change_se", "cos_consecutive",
        "tr_S_b_8", "tr_HS_b_8", "tr_HS_b_8_se", "rho_b_8", "ias_b_8", "instability_b_8", "resultant_b_8",
        "tr_S_b_mc_8", "tr_S_b_mc_8_se", "rho_b_mc_8", "norm_g_b_mc_8",
        "valley_ratio_a0.25", "valley_ratio_a1",
        "valley_dL_s-0.5", "valley_quad_s-0.5", "valley_dL_s0", "valley_quad_s0", "valley_dL_s1.5", "valley_quad_s1.5",
    ]  # fmt: skip
    assert probe_columns([8], True, [0.25, 1.0], [-0.5, 0.0, 1.5]) == expected
    cfg = cfg_for(optim={"lr": 0.05, "batch_size": 8}, probe={"batch_sizes": [8], "valley": True,
                  "valley_alphas": [0.25, 1.0], "valley_s": [-0.5, 0.0, 1.5]})  # fmt: skip
    assert DiagnosticsProbe(cfg, "unused.csv").columns == expected


def test_gd_probe_columns_invariants_and_trajectory(data, tmp_path):
    probe = {
        "every": 1,
        "batch_sizes": [1, 4],
        "estimator": "auto",
        "probes": 16,
        "eig_tol": 1e-3,
        "valley": True,
        "valley_alphas": [0.5, 1.0],
        "valley_s": [0.0, 0.5, 1.0],
    }
    cfg = cfg_for(probe=probe)
    plain = run(cfg_for(), data, tmp_path / "plain", probed=False)
    probed = run(cfg, data, tmp_path / "probed", probed=True)
    assert plain == probed  # probing does not change the trajectory: metrics.csv is bit-identical
    df = pd.read_csv(tmp_path / "probed" / "diagnostics.csv")
    expected = probe_columns([1, 4, N], True, [0.5, 1.0], [0.0, 0.5, 1.0])
    assert list(df.columns) == expected
    for col in (
        "valley_ratio_a0.5",
        "valley_ratio_a1",
        "valley_dL_s0.5",
        "valley_quad_s1",
        "tr_HS_b_16_se",
        "resultant_b_4",
    ):
        assert col in df.columns
    assert list(df["step"]) == [0, 1, 2]
    assert (df["b_run"] == N).all() and np.allclose(df["two_over_eta"], 2 / 0.05)
    # ‖H‖_{S_n} = ∇LᵀH∇L/‖∇L‖² is a Rayleigh quotient: never above ‖H‖ (up to the solver's tolerance)
    assert (df["ias_n"] <= df["top_eig"] * (1 + 1e-3)).all()
    assert (df["top_eig"] > 0).all() and (df["top_eig_hvps"] >= 1).all()
    assert ((df["cos_q1_grad"] >= 0) & (df["cos_q1_grad"] <= 1 + 1e-6)).all()
    # exact estimator (n <= probes): zero se; b = n is S_n itself
    assert (df["tr_HS_1_se"] == 0).all()
    np.testing.assert_allclose(df[f"tr_HS_b_{N}"], df["tr_HS_n"], rtol=1e-6)
    np.testing.assert_allclose(df[f"rho_b_{N}"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(df["rho_b_1"], df["tr_S_n"] / df["tr_S_1"], rtol=1e-6)
    np.testing.assert_allclose(df[f"instability_b_{N}"], df["ias_n"], rtol=1e-6)
    # L(θ_t), L(θ_{t+1}) and their difference against GD done here in float64 from the same θ_0
    ref = explicit_gd_losses(cfg, data, steps=3)
    np.testing.assert_allclose(df["loss"], ref[:-1], rtol=1e-5)
    np.testing.assert_allclose(df["loss_next"], ref[1:], rtol=1e-5)
    np.testing.assert_allclose(df["loss_change"], np.diff(ref), rtol=1e-3, atol=1e-6)
    # GD: the expected change is the realised change L(θ_{t+1}) − L(θ_t)
    np.testing.assert_allclose(df["expected_change"], df["loss_change"], rtol=1e-3, atol=1e-6)
    assert (df["expected_change_se"] == 0).all()
    # the valley probe at s = 1 is the GD step itself; s = 0 is no move; quad is the 2nd-order model
    np.testing.assert_allclose(df["valley_dL_s1"], df["loss_change"], rtol=1e-3, atol=1e-6)
    assert (df["valley_dL_s0"] == 0).all() and (df["valley_quad_s0"] == 0).all()
    eta = 0.05
    quad = -0.5 * eta * df["tr_S_n"] + 0.125 * eta**2 * df["tr_HS_n"]
    np.testing.assert_allclose(df["valley_quad_s0.5"], quad, rtol=1e-9)
    # consecutive probed steps: cos(g_t, g_{t+1}) filled except at the last row
    assert df["cos_consecutive"].iloc[:-1].notna().all() and math.isnan(df["cos_consecutive"].iloc[-1])
    assert df[f"resultant_b_{N}"].isna().all()  # resultant_batches = 0: off


def test_sgd_probe_sketch_resultant_and_trajectory(data, tmp_path):
    optim = {"lr": 0.05, "batch_size": 4, "replacement": True}
    probe = {
        "every": 2,
        "batch_sizes": [2, 8],
        "estimator": "sketch",
        "probes": 6,
        "stage1": 3,
        "rel_se": None,
        "expected_change_batches": 3,
        "resultant_batches": 4,
        "seed": 7,
    }
    cfg = cfg_for(optim=optim, probe=probe, stop={"steps": 4})
    plain = run(cfg_for(optim=optim, stop={"steps": 4}), data, tmp_path / "plain", probed=False)
    probed = run(cfg, data, tmp_path / "probed", probed=True)
    assert plain == probed
    df = pd.read_csv(tmp_path / "probed" / "diagnostics.csv")
    assert list(df["step"]) == [0, 2]
    assert list(df.columns) == probe_columns([2, 4, 8], False, [], [])
    assert (df["tr_HS_1_se"] > 0).all() and (df["tr_HS_b_4_se"] > 0).all()
    assert df["cos_consecutive"].isna().all()  # probed steps are not consecutive
    assert df["expected_change"].notna().all() and (df["expected_change_se"] > 0).all()
    for b in (2, 4, 8):
        r = df[f"resultant_b_{b}"]
        assert r.notna().all() and (r <= 1 + 1e-6).all()
    # with replacement ρ_b = 1/((1/b)/ρ + 1 − 1/b)
    rho = df["tr_S_n"] / df["tr_S_1"]
    np.testing.assert_allclose(df["rho_b_8"], 1 / ((1 / 8) / rho + 1 - 1 / 8), rtol=1e-6)


def test_batch_norm_needs_bn_mode_eval(data, tmp_path):
    cfg = cfg_for(model={"name": "cnn6", "batch_norm": True}, probe={"every": 1})
    with pytest.raises(BatchNormModeError, match="bn_mode: eval"):
        DiagnosticsProbe(cfg, tmp_path / "d.csv")
    over = dict(model={"name": "cnn6", "batch_norm": True}, bn_mode="eval", stop={"steps": 2})
    cfg = cfg_for(probe={"every": 1, "estimator": "sketch", "probes": 4, "stage1": 3}, **over)
    plain = run(cfg_for(**over), data, tmp_path / "plain", probed=False)
    probed = run(cfg, data, tmp_path / "probed", probed=True)
    assert plain == probed
    df = pd.read_csv(tmp_path / "probed" / "diagnostics.csv")
    assert len(df) == 2 and df["top_eig"].notna().all()


def test_monte_carlo_tr_S_b_agrees_with_identity(data, tmp_path):
    """tr S_b = mean_k ‖g_{B_k}‖² over sampled batches (an estimate independent of identity (1)) agrees
    with the exact tr S_b = (γ/b) tr S_1 + (1 − γ/b) tr S_n within its standard error, without replacement;
    ρ_b^MC = tr S_n / tr S_b^MC; the full batch b = n has ρ = 1 exactly."""
    optim = {"lr": 0.05, "batch_size": 4, "replacement": False}
    probe = {"every": 1, "batch_sizes": [2, 8, N], "estimator": "exact", "resultant_batches": 200, "seed": 3}
    cfg = cfg_for(model={"name": "digits_cnn"}, optim=optim, probe=probe, stop={"steps": 2})
    run(cfg, data, tmp_path / "mc", probed=True)
    df = pd.read_csv(tmp_path / "mc" / "diagnostics.csv")
    assert len(df) == 2
    for b in (2, 4, 8):
        exact, mc, se = df[f"tr_S_b_{b}"], df[f"tr_S_b_mc_{b}"], df[f"tr_S_b_mc_{b}_se"]
        assert (se > 0).all() and (se < 0.2 * exact).all()
        assert ((mc - exact).abs() <= 4 * se).all(), (b, list(mc), list(exact), list(se))
        np.testing.assert_allclose(df[f"rho_b_mc_{b}"], df["tr_S_n"] / mc, rtol=1e-12)
        # E‖g_b‖ from the same batches: mean_k ‖g_k‖ <= sqrt(mean_k ‖g_k‖²) on the sample (Jensen), and
        # E‖g_b‖ >= ‖E g_b‖ = ‖∇L‖ (Jensen, unbiased batches), up to Monte-Carlo error
        norm = df[f"norm_g_b_mc_{b}"]
        assert (norm <= np.sqrt(mc) * (1 + 1e-12)).all()
        assert (norm >= 0.9 * np.sqrt(df["tr_S_n"])).all()
    np.testing.assert_allclose(df[f"norm_g_b_mc_{N}"], np.sqrt(df["tr_S_n"]), rtol=1e-12)
    np.testing.assert_allclose(df[f"rho_b_mc_{N}"], 1.0)
    assert (df[f"tr_S_b_mc_{N}_se"] == 0).all()


@pytest.mark.parametrize("batch_size", [4, "full"], ids=["sgd", "gd"])
def test_consecutive_steps_give_the_cosine_of_consecutive_batch_gradients(data, tmp_path, batch_size):
    # probe every 2 steps with `consecutive: true` observes steps 0,1, 2,3 (rows 0, 2): its cos(g_t, g_{t+1})
    # (the direct batch-mean gradient of step t+1) must equal that of a probe at every step
    # (g_{t+1} from the per-sample gradients weighted by the batch), on the same trajectory.
    base = {"optim": {"lr": 0.05, "batch_size": batch_size}, "stop": {"steps": 4}, "model": {"name": "digits_cnn"}}
    light = cfg_for(**base, probe={"every": 2, "consecutive": True, "eigen": False})
    dense = cfg_for(**base, probe={"every": 1, "eigen": False})
    a, b = tmp_path / "light", tmp_path / "dense"
    assert run(light, data, a, True) == run(dense, data, b, True), "the probes changed the trajectory"
    got = pd.read_csv(a / "diagnostics.csv").set_index("step")
    want = pd.read_csv(b / "diagnostics.csv").set_index("step")
    assert list(got.index) == [0, 2], "the step after a probed step adds no row"
    np.testing.assert_allclose(got["cos_consecutive"], want.loc[[0, 2], "cos_consecutive"], atol=2e-5)
    assert got["cos_consecutive"].notna().all()


def test_probe_rows_are_lssr_diagnose_numbers(data):
    """The probe's moments, ‖H‖ and per-b columns at θ_0 are those of the public call on the same model and data
    (exact mode: no randomness in the moments; ‖H‖ to its tolerance from another start)."""
    import lssr
    from lssr.losses import per_sample_loss
    from lssr.models import CNN6
    from lssr.training.single import StepContext

    cfg = cfg_for(probe={"every": 1, "batch_sizes": [1, 4], "estimator": "exact", "eig_tol": 1e-6})
    torch.manual_seed(3)
    model = CNN6(3, C)
    probe = DiagnosticsProbe(cfg, "unused.csv")
    ps = per_sample_loss("mse")
    loss0 = float(ps(model(data.x_train), data.y_train).mean())
    ctx = StepContext(0, model, torch.arange(N), 0.05, data, ps, train_loss_before=loss0)
    probe.before_step(ctx)
    ctx.train_loss_after = loss0
    probe.after_step(ctx)
    row = probe.rows[0]
    d = lssr.diagnose(
        model, "mse", (data.x_train, data.y_train), batch_sizes=[1, 4, N], estimator="exact", eigen=Eigen(tol=1e-6)
    )
    for k in ("tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_n", "ias_n"):
        assert row[k] == pytest.approx(getattr(d, k), rel=1e-5)
    for b in (1, 4, N):
        assert row[f"ias_b_{b}"] == pytest.approx(d.at(b).ias_b, rel=1e-5)
        assert row[f"instability_b_{b}"] == pytest.approx(d.at(b).instability_b, rel=1e-5)
    assert row["top_eig"] == pytest.approx(d.top_eig, rel=1e-4)
