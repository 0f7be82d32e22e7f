"""lssr.recommend against independent oracles: per-sample gradients built with a known B_simple (a centred noise
added to a mean gradient, so tr S_1 and tr S_N are known in closed form), eq. (12) written out here, tr(H S_b)
averaged over every batch of a tiny linear-regression problem, and the interval's coverage of the true B_simple
over repeated seeded draws from a population whose B_simple is known."""

import itertools
import math

import numpy as np
import pytest
import torch
from synthetic_gradients import gradients_with
from torch import nn

from lssr import LssrError
from lssr.recommend import (
    NoiseScale,
    check_optimizer,
    measure_and_recommend,
    noise_scale,
    noise_scale_from_diagnostics,
    noise_scale_from_gradients,
    recommend,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def eq12_lr(b, b_ref, lr_ref, B, N=None):
    """η(b) = η_ref ρ_b/ρ_{b_ref}, ρ_b = 1/(1 + (γ_{N,b}/b) B), γ = (N − b)/(N − 1) (N None: with replacement)."""
    g = (lambda bb: 1.0) if N is None else (lambda bb: (N - bb) / (N - 1))
    rho = lambda bb: 1.0 / (1.0 + g(bb) / bb * B)  # noqa: E731
    return lr_ref * rho(b) / rho(b_ref)


def test_the_recommended_curve_is_eq12_from_gradients_of_known_b_simple():
    """The measured B_simple is the one built in, and η(b) is eq. (12) with it, with and without replacement;
    LSR and SRSR are η_ref·b/b_ref and η_ref·√(b/b_ref); the regime follows x = (γ/b)·B_simple."""
    N, B = 400, 50.0
    G = gradients_with(N, 30, B)
    ns = noise_scale_from_gradients(G, n_total=N)
    assert ns.tr_S_n == pytest.approx(1.0, rel=1e-12)
    assert ns.tr_S_1 == pytest.approx(1.0 + B, rel=1e-12)
    assert ns.b_simple == pytest.approx(B, rel=1e-10)
    assert ns.b_simple_se == 0.0  # all N samples: B_simple at θ is exact
    bs = [1, 4, 8, 12, 16, 50, 200, 400]
    for rep in (False, True):
        rec = recommend(ns, 8, 0.1, bs, replacement=rep)
        f = rec.frame()
        want = [eq12_lr(b, 8, 0.1, B, None if rep else N) for b in bs]
        np.testing.assert_allclose(f["lr"], want, rtol=1e-12)
        np.testing.assert_allclose(f["lsr"], [0.1 * b / 8 for b in bs], rtol=1e-14)
        np.testing.assert_allclose(f["srsr"], [0.1 * math.sqrt(b / 8) for b in bs], rtol=1e-14)
        assert rec.lr(8) == pytest.approx(0.1)
    f = recommend(ns, 8, 0.1, [4, 12, 16, 200], replacement=True).frame()
    # x = 50/4 and 50/12 > 4, 1/4 < 50/16 < 4, 50/200 < 1/4
    assert list(f["regime"]) == ["linear", "linear", "between", "saturated"]
    # without replacement at b = N the batch is the whole set: ρ_N = 1, the saturated end
    assert recommend(ns, 8, 0.1, [N]).frame()["rho_b"].iloc[0] == pytest.approx(1.0)


def test_a_subset_of_the_training_set_gives_an_unbiased_tr_S_N():
    """On n of N samples, ‖ḡ‖² overestimates ‖∇L_N‖² by (1/n − 1/N) s² in expectation; averaged over many draws
    the corrected tr S_N is the population's (1) within its Monte-Carlo error, the raw one is not."""
    N, n, B = 2000, 100, 40.0
    G = gradients_with(N, 20, B, seed=1)
    rng = np.random.default_rng(2)
    est, raw = [], []
    for _ in range(400):
        S = G[rng.choice(N, n, replace=False)]
        est.append(noise_scale_from_gradients(S, n_total=N).tr_S_n)
        raw.append(float(np.square(S.mean(0)).sum()))
    sem = np.std(est) / math.sqrt(len(est))
    assert abs(np.mean(est) - 1.0) < 4 * sem
    assert np.mean(raw) - 1.0 > 10 * sem  # the bias the correction removes: (1/n − 1/N)·B ≈ 0.38


@pytest.mark.parametrize("population", ["finite", "infinite"])
def test_the_interval_covers_the_true_b_simple_at_its_nominal_rate(population):
    """300 seeded draws of n = 200 samples: the 90% interval of η(b) (b = 256 from b_ref = 8) covers the truth
    (eq. (12) with the population's B_simple) in 90% ± 5% of them (3.3 binomial standard deviations), from a finite
    training set (N = 3000, drawn without replacement, the interval narrowed by 1 − n/N) and from a Gaussian
    population."""
    n, B, R = 200, 30.0, 300
    rng = np.random.default_rng(3)
    if population == "finite":
        N = 3000
        pop = gradients_with(N, 20, B, seed=4)
        draw = lambda: pop[rng.choice(N, n, replace=False)]  # noqa: E731
    else:
        N = None
        mu = np.zeros(20)
        mu[0] = 1.0
        draw = lambda: mu + math.sqrt(B / 20) * rng.standard_normal((n, 20))  # noqa: E731
    truth = eq12_lr(256, 8, 0.1, B, N)
    hits = 0
    for _ in range(R):
        rec = recommend(noise_scale_from_gradients(draw(), n_total=N), 8, 0.1, [256], level=0.9)
        row = rec.frame().iloc[0]
        hits += row["lr_lo"] <= truth <= row["lr_hi"]
    coverage = hits / R
    print(f"coverage of the 90% interval ({population} population): {coverage:.3f}")
    assert 0.85 <= coverage <= 0.95


def test_the_noise_scale_of_a_model_is_that_of_its_per_sample_gradients_and_the_ceiling_is_brute_force():
    """ℓ_i = ½(wᵀx_i − 1)² at w = 0: g_i = −x_i and H = (1/n) Σ x_i x_iᵀ. B_simple from the model equals the one of
    −X; η_max(b) = 2·tr S_N / tr(H S_b) with S_b averaged over every batch of size b (all subsets without
    replacement, all ordered draws with)."""
    n, d = 8, 3
    X = torch.tensor(gradients_with(n, d, 2.5, seed=5)) * -1.0
    y = torch.ones(n, dtype=torch.float64)
    net = nn.Linear(d, 1, bias=False).double()
    nn.init.zeros_(net.weight)
    loss = lambda out, t: 0.5 * (out[:, 0] - t) ** 2  # noqa: E731
    Xn = X.numpy()
    H = Xn.T @ Xn / n
    gbar = -Xn.mean(0)
    for rep in (False, True):
        bs = [1, 2, 4] if rep else [1, 2, 4, 8]
        rec, diag, ns = measure_and_recommend(net, loss, (X, y), 2, 0.05, bs, replacement=rep, estimator="exact")
        ref = noise_scale_from_gradients(-Xn, n_total=n)
        assert ns.b_simple == pytest.approx(ref.b_simple, rel=1e-10)
        assert ns.b_simple == pytest.approx(2.5, rel=1e-10)
        for b, cap in zip(bs, rec.frame()["lr_max"]):
            if rep:
                batches = list(itertools.product(range(n), repeat=b))
            else:
                batches = list(itertools.combinations(range(n), b))
            S_b = np.mean([np.outer(-Xn[list(B)].mean(0), -Xn[list(B)].mean(0)) for B in batches], axis=0)
            assert cap == pytest.approx(2 * (gbar @ gbar) / np.trace(H @ S_b), rel=1e-9)
        rec_m = recommend(ns, 2, 0.05, bs, replacement=rep, momentum=0.9, diagnostics=diag)
        np.testing.assert_allclose(rec_m.frame()["lr"], rec.frame()["lr"], rtol=1e-14)  # same β: same η ratio
        np.testing.assert_allclose(rec_m.frame()["lr_max"], 1.9 * rec.frame()["lr_max"], rtol=1e-12)


def test_a_model_on_a_subset_measures_the_training_sets_b_simple():
    """noise_scale on a seeded subset (n of N) equals noise_scale_from_gradients of those samples' gradients with
    n_total = N, and its se is positive (a sample of the training set)."""
    N, n, d = 60, 20, 4
    X = torch.tensor(gradients_with(N, d, 3.0, seed=6)) * -1.0
    y = torch.ones(N, dtype=torch.float64)
    net = nn.Linear(d, 1, bias=False).double()
    nn.init.zeros_(net.weight)
    loss = lambda out, t: 0.5 * (out[:, 0] - t) ** 2  # noqa: E731
    from lssr.diagnostics.batches import subset_indices

    idx = subset_indices(N, n, 0)
    ns = noise_scale(net, loss, (X, y), n=n, seed=0)
    ref = noise_scale_from_gradients(-X.numpy()[np.asarray(idx)], n_total=N)
    assert ns.n == n and ns.n_total == N
    assert ns.b_simple == pytest.approx(ref.b_simple, rel=1e-10)
    assert ns.b_simple_se == pytest.approx(ref.b_simple_se, rel=1e-8) and ns.b_simple_se > 0


def test_several_measurement_points_widen_the_interval_to_all_of_them():
    """Two points (B_simple 20 and 80): η comes from the first; the interval of B_simple reaches both."""
    a = noise_scale_from_gradients(gradients_with(100, 10, 20.0), n_total=100)
    b = noise_scale_from_gradients(gradients_with(100, 10, 80.0), n_total=100)
    rec = recommend([a, b], 8, 0.1, [64])
    row = rec.frame().iloc[0]
    assert row["lr"] == pytest.approx(eq12_lr(64, 8, 0.1, 20.0, 100))
    assert rec.b_simple_lo == pytest.approx(20.0) and rec.b_simple_hi == pytest.approx(80.0)
    assert row["lr_lo"] == pytest.approx(eq12_lr(64, 8, 0.1, 20.0, 100))
    assert row["lr_hi"] == pytest.approx(eq12_lr(64, 8, 0.1, 80.0, 100))


def test_a_diagnostics_dict_gives_b_simple_without_an_interval():
    d = {"n": 100, "n_total": 100, "tr_S_1": 11.0, "tr_S_n": 1.0}
    ns = noise_scale_from_diagnostics(d)
    assert ns.b_simple == pytest.approx(10.0) and math.isnan(ns.b_simple_se)
    row = recommend(d, 4, 0.1, [32]).frame().iloc[0]
    assert row["lr"] == pytest.approx(eq12_lr(32, 4, 0.1, 10.0, 100))
    assert math.isnan(row["lr_lo"]) and math.isnan(row["lr_max"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr_ref": 0.0}, "η_ref = 0.0 must be a finite number > 0"),
        ({"lr_ref": -1.0}, "η_ref = -1.0"),
        ({"b_ref": 0}, "b_ref = 0 is out of range"),
        ({"batch_sizes": [8, 101]}, r"target b = 101 is out of range: without replacement b <= N = 100"),
        ({"batch_sizes": [0]}, "target b = 0 is out of range"),
        ({"optimizer": "adamw"}, "optimiser 'adamw' is adaptive"),
        ({"optimizer": torch.optim.Adam([torch.zeros(1, requires_grad=True)])}, "optimiser 'adam' is adaptive"),
        ({"optimizer": "lbfgs"}, "unknown optimiser 'lbfgs'"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_inputs_get_one_line_errors(kwargs, match):
    ns = noise_scale_from_gradients(gradients_with(100, 10, 20.0), n_total=100)
    args = {"b_ref": 8, "lr_ref": 0.1, "batch_sizes": [16]} | kwargs
    with pytest.raises(LssrError, match=match) as e:
        recommend(ns, args.pop("b_ref"), args.pop("lr_ref"), args.pop("batch_sizes"), **args)
    assert "\n" not in str(e.value)


def test_a_vanishing_or_negative_b_simple_is_refused():
    """tr S_N = 0 (centred gradients, a stationary point) and a negative B_simple both get the error naming the fix."""
    G = gradients_with(50, 5, 3.0)
    G[:, 0] -= 1.0  # mean zero
    for ns in (noise_scale_from_gradients(G, n_total=50), NoiseScale(50, 50, 1.0, 2.0, -0.5, 0.1)):
        with pytest.raises(LssrError, match="not a finite positive number.*fix: measure") as e:
            recommend(ns, 8, 0.1, [16])
        assert "\n" not in str(e.value)


def test_check_optimizer_accepts_sgd_with_momentum():
    assert check_optimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)) == "sgd"


FACTORY = """
import torch
from torch import nn


def make(width=8, num_classes=10, in_features=64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, num_classes))
"""


def test_the_command_line_measures_and_recommends_and_reads_its_own_json(tmp_path, monkeypatch, capsys):
    """`lssr recommend` on a model factory and a digits subset at two checkpoints: the CSV's η is eq. (12) with
    B_simple of lssr.recommend.noise_scale on the first checkpoint's model, the interval reaches the second's
    B_simple, the PNG and JSON are written; given the diagnostics.json it wrote, the same table; given one of
    `lssr diagnose`, the same η without an interval; bad inputs exit 2 with one line."""
    import json

    import pandas as pd

    from lssr.cli import main
    from lssr.data import SubsetSpec, build_subset, load_subset

    (tmp_path / "userfactory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import userfactory

    subset = build_subset(SubsetSpec("digits", 64, seed=0), tmp_path / "subset")
    sub = load_subset(subset)
    nets = [userfactory.make(width=6), userfactory.make(width=6)]
    with torch.no_grad():
        for p in nets[1].parameters():
            p.mul_(1.5)
    ckpts = []
    for k, net in enumerate(nets):
        ckpts += ["--checkpoint", str(tmp_path / f"m{k}.pt")]
        torch.save(net.state_dict(), tmp_path / f"m{k}.pt")
    out = tmp_path / "out"
    argv = ["recommend", "--model", "userfactory:make", "--model-arg", "width=6", *ckpts, "--data", str(subset)]
    ref = ["--b-ref", "4", "--lr-ref", "0.05", "--batch-sizes", "2", "8", "32"]
    argv += [*ref, "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "B_simple" in printed and "regime" in printed
    B = [noise_scale(net, "ce", (sub.x_train, sub.y_train)).b_simple for net in nets]
    frame = pd.read_csv(out / "recommendation.csv")
    np.testing.assert_allclose(frame["lr"], [eq12_lr(b, 4, 0.05, B[0], 64) for b in (2, 8, 32)], rtol=1e-9)
    saved = json.loads((out / "recommendation.json").read_text())
    assert saved["b_simple_lo"] <= min(B) * (1 + 1e-9) and saved["b_simple_hi"] >= max(B) * (1 - 1e-9)
    assert (out / "recommendation.png").stat().st_size > 10_000 and (out / "diagnostics-1.json").is_file()
    assert np.isfinite(frame["lr_max"]).all() and (frame["lr_max"] > 0).all()

    again = tmp_path / "again"
    assert main(["recommend", "--diagnostics", str(out / "diagnostics.json"), str(out / "diagnostics-1.json"),
                 *ref, "--out", str(again)]) == 0  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_csv(again / "recommendation.csv"), frame)

    diag_out = tmp_path / "diag"
    assert main(["diagnose", "--model", "userfactory:make", "--model-arg", "width=6", "--checkpoint", ckpts[1],
                 "--data", str(subset), "--batch-sizes", "4", "--out", str(diag_out)]) == 0  # fmt: skip
    assert main(["recommend", "--diagnostics", str(diag_out / "diagnostics.json"), *ref, "--out", str(again)]) == 0
    row = pd.read_csv(again / "recommendation.csv").iloc[0]
    # float32 sums in another order than noise_scale's
    assert row["lr"] == pytest.approx(eq12_lr(2, 4, 0.05, B[0], 64), rel=1e-6) and np.isnan(row["lr_lo"])
    capsys.readouterr()

    for extra, message in (
        (["--optimizer", "adam"], "optimiser 'adam' is adaptive"),
        (["--lr-ref", "0"], "η_ref = 0.0 must be a finite number > 0"),
        (["--batch-sizes", "65"], "target b = 65 is out of range: without replacement b <= N = 64"),
    ):
        assert (
            main(["recommend", "--diagnostics", str(out / "diagnostics.json"), *ref, "--out", str(again), *extra]) == 2
        )
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["recommend", *ref, "--out", str(again)]) == 2
    assert "give --diagnostics FILE, --monitor-log CSV, or --model and --data" in capsys.readouterr().err


def lightning_setup(L, batch_size, opt="sgd"):
    """A LightningModule of ℓ_i = ½(wᵀx_i − 1)² at w = 0 on 64 samples whose per-sample gradients −x_i have
    B_simple = 6 exactly (all of the training set measured), its SGD (momentum 0.9) configured for b_ref = 8 with
    η = 0.1 and a StepLR that keeps η (γ = 1); ``batch_size`` is the attribute BatchSizeFinder scales."""
    from torch.utils.data import DataLoader, TensorDataset

    X = torch.tensor(gradients_with(64, 5, 6.0, seed=7), dtype=torch.float32) * -1.0
    ds = TensorDataset(X, torch.ones(64))

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(5, 1, bias=False)
            nn.init.zeros_(self.net.weight)
            self.batch_size = batch_size

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return 0.5 * ((self(x)[:, 0] - y) ** 2).mean()

        def train_dataloader(self):
            return DataLoader(ds, batch_size=self.batch_size)

        def configure_optimizers(self):
            if opt == "adam":
                return torch.optim.Adam(self.parameters(), lr=0.1)
            sgd = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            return [sgd], [torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=1.0)]

    return Module()


def fit(L, module, callback, extra=(), **kw):
    trainer = L.Trainer(
        callbacks=[*extra, callback],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        num_sanity_val_steps=0,
        **({"max_epochs": 1} | kw),
    )
    trainer.fit(module)
    return trainer


def test_in_lightning_the_learning_rate_follows_the_batch_size(caplog):
    """A real Trainer at b = 32 with the optimiser tuned for b = 8: after fit every group's η and the scheduler's
    base η are 0.1·ρ_32/ρ_8 (eq. (12) with B_simple = 6, N = 64), announced in one log line; follow=False logs
    the same line ('would set') and leaves η at 0.1; BatchSizeFinder's new b gets its own η; Adam is refused."""
    import logging

    L = pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra (pip install lightning)")
    import lssr

    caplog.set_level(logging.INFO)
    module = lightning_setup(L, 32)
    cb = lssr.LearningRateForBatchSize(8, loss=lambda out, t: 0.5 * (out[:, 0] - t) ** 2)  # n = 512 > 64: all
    trainer = fit(L, module, cb)
    want = eq12_lr(32, 8, 0.1, 6.0, 64)
    assert cb.b_simple == pytest.approx(6.0, rel=1e-5)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(want, rel=1e-5)
    assert trainer.lr_scheduler_configs[0].scheduler.base_lrs[0] == pytest.approx(want, rel=1e-5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lssr:")]
    assert len(lines) == 1 and "batch size 8 -> 32: set lr 0.1 -> " in lines[0]

    caplog.clear()
    source = noise_scale_from_gradients(gradients_with(64, 5, 6.0, seed=7), n_total=64)
    cb = lssr.LearningRateForBatchSize(8, source, follow=False)
    trainer = fit(L, lightning_setup(L, 32), cb, max_epochs=2)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lssr:")]
    assert len(lines) == 1 and "would set (follow=False) lr 0.1 -> " in lines[0]

    module = lightning_setup(L, 4)
    finder = L.callbacks.BatchSizeFinder(mode="power", init_val=4, max_trials=2, steps_per_trial=1)
    cb = lssr.LearningRateForBatchSize(8, source)
    trainer = fit(L, module, cb, extra=[finder])
    b = module.batch_size
    assert b != 4 and cb.b_now == b
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(eq12_lr(b, 8, 0.1, 6.0, 64), rel=1e-9)

    with pytest.raises(LssrError, match="optimiser 'adam' is adaptive"):
        fit(L, lightning_setup(L, 32, opt="adam"), lssr.LearningRateForBatchSize(8, source))


def test_the_validation_tables_in_the_docs_are_those_of_the_kept_record():
    """docs/RECOMMEND.md's generated tables equal what benchmarks/recommend_validation.py makes of the kept
    docs/recommend/validation.json (re-run the script with --tables after changing either)."""
    import importlib.util
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "recommend_validation", root / "benchmarks" / "recommend_validation.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    record = json.loads((root / "docs" / "recommend" / "validation.json").read_text())
    text = (root / "docs" / "RECOMMEND.md").read_text()
    made = mod.tables(record)
    assert set(made) == {"recommend-summary", "recommend-coverage", "recommend-demo", "recommend-record"}
    for key, table in made.items():
        kept = re.search(rf"<!-- begin: {key} -->\n(.*?)<!-- end: {key} -->", text, re.S).group(1)
        assert kept == table + "\n", key


def test_a_sharpness_monitor_log_gives_the_points_latest_first(tmp_path, capsys):
    """A SharpnessMonitor over 6 SGD steps of the linear problem (all 64 samples probed, so each row's B_simple is
    exact at its θ): points_from_log orders its rows latest first; η comes from the latest row's B_simple, the
    interval spans every row's, and the ceiling is the latest row's 2·tr S_N / tr(H S_b); `lssr recommend
    --monitor-log` gives the same table."""
    import pandas as pd

    import lssr
    from lssr.cli import main
    from lssr.recommend import points_from_log

    X = torch.tensor(gradients_with(64, 5, 6.0, seed=7)) * -1.0
    y = torch.ones(64, dtype=torch.float64)
    net = nn.Linear(5, 1, bias=False).double()
    nn.init.zeros_(net.weight)
    loss = lambda out, t: 0.5 * (out[:, 0] - t) ** 2  # noqa: E731
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    csv = tmp_path / "monitor.csv"
    mon = lssr.SharpnessMonitor(net, loss, (X, y), opt, n=None, every=2, csv=csv, estimator="exact", replacement=False)
    for step in range(6):
        mon.step(step)
        opt.zero_grad()
        loss(net(X), y).mean().backward()
        opt.step()
    mon.close()
    rows = pd.read_csv(csv)
    points = points_from_log(csv)
    assert [p["step"] for p in points] == sorted(rows["step"], reverse=True) and len(points) == 3
    B = [(r.tr_S_1 - r.tr_S_n) / r.tr_S_n for r in rows.itertuples()]
    assert B[0] == pytest.approx(6.0, rel=1e-9)
    rec = recommend(points, 8, 0.1, [16, 32])
    latest = rows.iloc[-1]
    np.testing.assert_allclose(rec.frame()["lr"], [eq12_lr(b, 8, 0.1, B[-1], 64) for b in (16, 32)], rtol=1e-9)
    assert rec.b_simple_lo == pytest.approx(min(B)) and rec.b_simple_hi == pytest.approx(max(B))
    for b, cap in zip((16, 32), rec.frame()["lr_max"]):
        w = (64 - b) / 63 / b
        tr_HS_b = w * latest["tr_HS_1"] + (1 - w) * latest["tr_HS_n"]
        assert cap == pytest.approx(2 * latest["tr_S_n"] / tr_HS_b, rel=1e-9)
    out = tmp_path / "rec"
    argv = ["recommend", "--monitor-log", str(csv), "--b-ref", "8", "--lr-ref", "0.1", "--batch-sizes", "16", "32"]
    assert main([*argv, "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "recommendation.csv"), rec.frame(), check_dtype=False)
    capsys.readouterr()
    assert main(["recommend", "--monitor-log", str(tmp_path / "none.csv"), *argv[3:], "--out", str(out)]) == 2
    assert "none.csv: no such file" in capsys.readouterr().err
    streaming = [{"step": 79, "kind": "stream", "tr_S_1": 2.0, "tr_S_n": 1.0}]  # no probe set's n, n_total
    with pytest.raises(LssrError, match=r"streaming mode's \(kind 'stream'\).*fix: .*stream=False"):
        points_from_log(streaming)
