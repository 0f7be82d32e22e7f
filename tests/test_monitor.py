"""lssr.SharpnessMonitor and the Lightning callback on small float64 models with batch norm and dropout:
training is unchanged (losses torch.equal with and without the monitor; every piece of state restored after
each measurement), each row equals an independent lssr.diagnose call at the same θ on the same samples, a
checkpointed monitor continues the same schedule and warm start, the SGD threshold is the one at which
torch.optim.SGD itself diverges on a quadratic, and a real Lightning Trainer logs the plain monitor's numbers.
The loops here call the monitor after backward(), where its default would be the streaming mode (tests/test_stream.py):
they ask for the rows of lssr.diagnose with stream=False."""

import copy
import io
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lssr
from lssr import LssrError
from lssr.diagnostics.options import Eigen

N, N_PROBE, B = 96, 48, 16
EXACT = ("tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_1_se", "tr_HS_n", "ias_n", "b_simple", "loss")


class Net(nn.Module):
    """conv -> BN -> tanh -> dropout -> linear, float64."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.tanh(self.bn(self.conv(x))).flatten(1)))


def make(seed=0):
    torch.manual_seed(seed)
    model = Net().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    return model, TensorDataset(x, y)


def probe_indices(total, n, seed):
    """The documented draw: the first n of a seeded permutation of the indices, sorted."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def train(steps=50, monitor_kwargs=None, seed=0, record=None):
    """SGD (momentum, weight decay) on a shuffling loader that draws from the global RNG, dropout active; the
    monitor (rows of lssr.diagnose: stream=False) called after backward()."""
    model, ds = make(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, weight_decay=1e-3)
    loader = DataLoader(ds, batch_size=B, shuffle=True)
    mon = None
    if monitor_kwargs is not None:
        mon = lssr.SharpnessMonitor(model, "ce", loader, opt, n=N_PROBE, **(dict(stream=False) | monitor_kwargs))
    losses, t = [], 0
    model.train()
    while t < steps:
        for x, y in loader:
            if t == steps:
                break
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if mon is not None:
                mon.step()
            if record is not None:
                record(t, model, opt, mon)
            opt.step()
            losses.append(loss.detach())
            t += 1
    return torch.stack(losses), model, opt, mon


def test_a_run_with_the_monitor_has_the_same_losses_as_without():
    """50 SGD steps with batch norm and dropout in train mode and a shuffling loader: measuring every 5 steps
    changes neither the losses (torch.equal) nor the final parameters and buffers."""
    plain, m0, _, _ = train()
    monitored, m1, _, mon = train(monitor_kwargs=dict(every=5, budget=None, batch_sizes=[4, B]))
    assert mon.measurements == 10
    assert_same_training((plain, m0), (monitored, m1))


def assert_same_training(without, with_monitor) -> None:
    """Two runs, each (losses, model), one without the monitor and one with it, trained identically: the losses and
    every parameter and buffer of the final models bit for bit (torch.equal)."""
    assert torch.equal(without[0], with_monitor[0])
    for a, b in zip(without[1].state_dict().values(), with_monitor[1].state_dict().values()):
        assert torch.equal(a, b)


def snapshot(model, opt):
    return dict(
        modes=[m.training for m in model.modules()],
        params=[p.detach().clone() for p in model.parameters()],
        grads=[None if p.grad is None else p.grad.clone() for p in model.parameters()],
        buffers=[b.clone() for b in model.buffers()],
        opt=copy.deepcopy(opt.state_dict()),
        torch_rng=torch.get_rng_state(),
        np_rng=np.random.get_state(),
        py_rng=random.getstate(),
    )


def assert_same(a, b):
    assert a["modes"] == b["modes"]
    for key in ("params", "buffers"):
        assert all(torch.equal(u, v) for u, v in zip(a[key], b[key]))
    assert all((u is None and v is None) or torch.equal(u, v) for u, v in zip(a["grads"], b["grads"]))
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys()
    for k in a["opt"]["state"]:
        assert all(torch.equal(a["opt"]["state"][k][s], b["opt"]["state"][k][s]) for s in a["opt"]["state"][k])
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert all(np.array_equal(u, v) for u, v in zip(a["np_rng"], b["np_rng"]))
    assert a["py_rng"] == b["py_rng"]


def test_every_measurement_leaves_the_training_state_as_it_was():
    """Mode (train, one submodule in eval), parameters, .grad (with a None), buffers, optimiser state and the
    torch / NumPy / Python random states are the same before and after each measurement."""
    checked = []

    def record(t, model, opt, mon):
        if t in (0, 7, 19):
            model.drop.eval()
            model.conv.bias.grad = None
            np.random.seed(t)
            random.seed(t)
            before = snapshot(model, opt)
            mon.measure()
            assert_same(before, snapshot(model, opt))
            model.drop.train()
            checked.append(t)

    train(steps=20, monitor_kwargs=dict(every=1000, budget=None), record=record)
    assert checked == [0, 7, 19]


def test_rows_equal_an_independent_diagnose_call_at_the_same_theta():
    """Each row: the numbers of lssr.diagnose on a copy of the model at that step, on the documented draw of
    the probe set, started from the eigenvector the monitor kept from its previous row (a cold start for the
    first); the threshold (2 + 2β)/η and ‖H‖ + λ from the optimiser's η, β and λ."""
    thetas, inits, rows = {}, {}, []

    def record(t, model, opt, mon):
        if mon.last is not None and mon.last["step"] == t:
            thetas[t] = copy.deepcopy(model)
            inits[t] = previous.get("vec")
            previous["vec"] = mon.eigenvector.clone()

    previous = {}
    _, _, _, mon = train(steps=25, monitor_kwargs=dict(every=8, budget=None, callback=rows.append), record=record)
    assert [r["step"] for r in rows] == [0, 8, 16, 24] == sorted(thetas)
    _, ds = make()
    x, y = ds.tensors
    idx = probe_indices(N, N_PROBE, 0)
    for row in rows:
        t = row["step"]
        d = lssr.diagnose(
            thetas[t],
            "ce",
            (x[idx], y[idx]),
            batch_sizes=[B],
            replacement=True,
            bn="eval",
            dropout="off",
            eigen=Eigen(init=inits[t]),
        )
        ref = d.to_dict()
        assert row["estimator"] == ref["estimator"] == "sketch"
        for key in EXACT + ("top_eig", f"tr_HS_b_{B}", f"ias_b_{B}", f"rho_b_{B}", f"instability_b_{B}"):
            assert row[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
        assert row["lr"] == 0.1 and row["momentum"] == 0.5 and row["weight_decay"] == 1e-3
        assert row["threshold"] == pytest.approx((2 + 2 * 0.5) / 0.1)
        assert row["top_eig_reg"] == pytest.approx(row["top_eig"] + 1e-3, rel=1e-12)
        assert row["edge_ratio"] == pytest.approx(row["top_eig_reg"] / row["threshold"], rel=1e-12)
    assert mon.eigenvector.shape == (sum(p.numel() for p in Net().parameters()),)


def test_the_option_objects_are_diagnoses_keywords():
    """Estimator, Eigen and Compute given to the monitor measure what lssr.diagnose measures with the same options,
    not the defaults (exact tr(H S_1) where the default would sketch, a loose eigen-tolerance, small chunks);
    eigen=False measures no ‖H‖; Eigen(init=...) is refused (the warm start is the monitor's), and so is
    Eigen(heldout=...) (its held-out batches are those of diagnose(bn="batch"))."""
    from lssr.diagnostics.options import Compute, Eigen, Estimator

    model, ds = make()
    x, y = ds.tensors
    kw = dict(estimator=Estimator(kind="exact"), eigen=Eigen(tol=1e-2, max_hvps=20), compute=Compute(chunk_size=7))
    row = lssr.SharpnessMonitor(model, "ce", ds, n=N_PROBE, batch_sizes=[B], every=1000, **kw).step()
    idx = probe_indices(N, N_PROBE, 0)
    ref = lssr.diagnose(
        model, "ce", (x[idx], y[idx]), batch_sizes=[B], replacement=True, bn="eval", dropout="off", estimator="exact",
        eigen=Eigen(tol=1e-2, max_hvps=20), compute=Compute(chunk_size=7),
    ).to_dict()  # fmt: skip
    assert row["estimator"] == ref["estimator"] == "exact"
    for key in EXACT + ("top_eig", "top_eig_residual", f"tr_HS_b_{B}", f"rho_b_{B}"):
        assert row[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    off = lssr.SharpnessMonitor(model, "ce", ds, n=N_PROBE, every=1000, eigen=False).step()
    assert math.isnan(off["top_eig"]) and off["tr_S_1"] == pytest.approx(ref["tr_S_1"], rel=1e-9)
    with pytest.raises(LssrError, match="init"):
        lssr.SharpnessMonitor(model, "ce", ds, n=N_PROBE, eigen=Eigen(init=torch.ones(3)))
    with pytest.raises(LssrError, match=r"heldout.*fix: drop heldout"):
        lssr.SharpnessMonitor(model, "ce", ds, n=N_PROBE, eigen=Eigen(heldout=4))


def test_a_resumed_run_continues_the_schedule_the_warm_start_and_the_csv(tmp_path):
    """A run whose monitor is checkpointed at step 15 and which then crashes after writing rows past the
    checkpoint: a new monitor loaded from the checkpoint, on the same trajectory from step 15, measures at the
    same steps from the same warm start (the same ‖H‖ and HVP counts) and leaves the uninterrupted run's CSV."""
    kw = dict(every=3, budget=None)
    full_rows, vec = [], {}

    def keep_vector(t, model, opt, mon):
        if t == 12:
            vec[12] = mon.eigenvector.clone()

    train(30, dict(kw, callback=full_rows.append, csv=tmp_path / "full.csv"), record=keep_vector)[3].close()
    ckpt = {}

    def save(t, model, opt, mon):
        if t == 14:  # after the monitor's call at step 14, before the update: the checkpoint of step 15
            buf = io.BytesIO()
            torch.save(mon.state_dict(), buf)
            ckpt["monitor"] = buf.getvalue()

    csv = tmp_path / "run.csv"
    train(20, dict(kw, csv=csv), record=save)  # writes rows 15 and 18 past the checkpoint, then "crashes"
    assert len(pd.read_csv(str(csv) + ".partial")) == 7

    # the resumed run: the same trajectory (the monitor does not change it), a new monitor from step 15
    model, ds = make()
    loader = DataLoader(ds, batch_size=B, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, weight_decay=1e-3)
    after = []
    mon = lssr.SharpnessMonitor(model, "ce", loader, opt, n=N_PROBE, callback=after.append, csv=csv, stream=False, **kw)
    mon.load_state_dict(torch.load(io.BytesIO(ckpt["monitor"])))
    assert mon.steps == 15 and torch.equal(mon.eigenvector, vec[12])
    model.train()
    t = 0
    while t < 30:
        for x, y in loader:
            if t == 30:
                break
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if t >= 15:
                mon.step()
            opt.step()
            t += 1
    mon.close()
    assert [r["step"] for r in after] == [15, 18, 21, 24, 27]
    timing = ["cost_seconds", "cost_grad_seconds", "cost_gradient_equivalents"]
    for a, b in zip(after, full_rows[5:]):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    full = pd.read_csv(tmp_path / "full.csv").drop(columns=timing)
    resumed = pd.read_csv(csv).drop(columns=timing)
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
    assert not Path(str(csv) + ".partial").exists()


class FakeClock:
    """A wall clock that moves only when told (seconds)."""

    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def budget_run(calls, clock, state=None, start=0):
    """A 1/8 budget on a loader of batch B (so the calibration is estimated at 4 n/B = 12 steps), with fake
    costs: 1 s per training step, 0.75 s then 0.5 s for the calibration's two gradients, 40 s for the first
    (cold) measurement and 30 s for each later one. Returns the monitor, the measured steps, the calibration's
    step and every call's (spent, train, steps_to_next) after the call."""
    model, ds = make()
    mon = lssr.SharpnessMonitor(model.eval(), "ce", DataLoader(ds, batch_size=B), n=N_PROBE, budget=0.125, clock=clock)
    if state is not None:
        mon.load_state_dict(state)
    canned = lssr.diagnose(model, "ce", [mon.probe], batch_sizes=[B], replacement=True)

    def fake_diagnose():
        clock.t += 40.0 if mon.measurements == 0 else 30.0
        return canned

    gradients = []

    def fake_gradient(*args, clock, **kwargs):
        gradients.append(0.75 if not gradients else 0.5)
        clock.t += gradients[-1]
        return gradients[-1]

    mon.diagnose = fake_diagnose
    measured, calibrated, account = [], [], []
    import lssr.diagnostics.monitor as monitor_module

    real = monitor_module.gradient_seconds
    monitor_module.gradient_seconds = fake_gradient
    try:
        for t in range(start, calls):
            before = mon.grad_seconds
            if mon.step() is not None:
                measured.append(t)
            if before is None and mon.grad_seconds is not None:
                calibrated.append(t)
            account.append((mon.spent_seconds, mon.train_seconds, mon.steps_to_next()))
            clock.t += 1.0  # the training step
    finally:
        monitor_module.gradient_seconds = real
    return mon, measured, calibrated, account


def test_the_budget_schedule_measures_as_soon_as_the_predicted_cost_fits_and_never_overspends():
    """With fake costs (no timing): the calibration at the first call t with t/8 >= 12 steps (t = 96), the
    first measurement when t/8 >= 1.25 + 100 x 0.5 (t = 410), then whenever t/8 >= the spent seconds plus the
    last measurement's (40 s then 30 s): t = 650, 810, 1050 (worked by hand). The spent seconds never exceed
    1/8 of the training's at any call, and steps_to_next names the next measured call exactly once calibrated."""
    assert (lssr.diagnostics.schedule.FIRST_COST, lssr.diagnostics.schedule.CALIBRATION_COST) == (100.0, 4.0)
    mon, measured, calibrated, account = budget_run(1100, FakeClock())
    assert calibrated == [96]
    assert measured == [410, 650, 810, 1050]
    assert all(spent <= 0.125 * train for spent, train, _ in account)
    for t, (_, _, k) in enumerate(account):
        following = [m for m in measured if m > t]
        if t >= 96 and following:
            assert t + 1 + k == following[0], t
    assert mon.measurements == 4 and mon.spent_seconds == 1.25 + 40 + 3 * 30


@pytest.mark.parametrize("cut", [10, 300, 700])
def test_a_resumed_budget_schedule_makes_the_same_decisions(cut):
    """Checkpointed before the calibration, before the first measurement or between measurements, a new
    monitor (with a clock at another origin) loading the state continues the same decisions."""
    _, measured, calibrated, _ = budget_run(1100, FakeClock())
    first, m1, c1, _ = budget_run(cut, FakeClock())
    state = first.state_dict()
    _, m2, c2, _ = budget_run(1100, FakeClock(5e6), state=state, start=cut)
    assert m1 + m2 == measured and c1 + c2 == calibrated


def test_every_alone_measures_at_its_multiples_whatever_the_cost():
    model, ds = make()
    every = lssr.SharpnessMonitor(model, "ce", ds, n=N_PROBE, every=4, budget=None)
    assert [s for s in range(12) if every.due(s)] == [0, 4, 8]
    assert every.steps_to_next() == 0 and not every.calibration_due()


def test_the_calibration_gradient_leaves_the_training_state_as_it_was():
    """calibrate() on a model in train mode (batch norm, dropout) with .grad set: modes, .grad, buffers,
    parameters and the global random state are as before."""
    model, ds = make()
    model.train()
    F.cross_entropy(model(ds.tensors[0][:8]), ds.tensors[1][:8]).backward()
    saved = copy.deepcopy(model.state_dict()), [p.grad.clone() for p in model.parameters()], torch.get_rng_state()
    mon = lssr.SharpnessMonitor(model, "ce", ds, n=N_PROBE)
    assert mon.calibrate() > 0 and mon.spent_seconds > mon.grad_seconds
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[0][k]), k
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), saved[1]))
    assert torch.equal(torch.get_rng_state(), saved[2])


class Augmented(Dataset):
    """A torchvision-style data set whose `transform` adds noise from the global RNG."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.transform = lambda t: t + torch.randn_like(t)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i] if self.transform is None else self.transform(self.x[i])
        return x, self.y[i]


def test_the_probe_set_is_drawn_once_seeded_and_without_augmentation_on_request():
    """From a shuffling loader over an augmenting data set: transform= gives the clean samples of the seeded
    draw (whatever the loader's order), the data set keeps its transform, and the global RNG is untouched."""
    _, ds = make()
    x, y = ds.tensors
    aug = Augmented(x, y)
    loader = DataLoader(aug, batch_size=B, shuffle=True)
    model = make()[0].eval()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    mon = lssr.SharpnessMonitor(model, "ce", loader, n=N_PROBE, seed=3, transform=lambda t: t)
    assert torch.equal(torch.get_rng_state(), state) and aug.transform is not None
    idx = probe_indices(N, N_PROBE, 3)
    assert torch.equal(mon.probe[0], x[idx]) and torch.equal(mon.probe[1], y[idx])
    noisy = lssr.SharpnessMonitor(model, "ce", loader, n=N_PROBE, seed=3)
    assert torch.equal(noisy.probe[1], y[idx]) and not torch.equal(noisy.probe[0], x[idx])
    assert mon.batch_sizes == (B,)
    with pytest.raises(LssrError, match="transform= needs a data set with a `transform` attribute"):
        lssr.SharpnessMonitor(model, "ce", ds, n=N_PROBE, transform=lambda t: t)
    with pytest.raises(LssrError, match="batch size 64 is out of range"):
        lssr.SharpnessMonitor(model, "ce", ds, n=N_PROBE, batch_sizes=[64], replacement=False)


def test_the_package_works_without_lightning():
    """With `lightning` unimportable: import lssr, the monitor measures, and lssr.SharpnessCallback says what
    to install."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import torch, lssr
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
data = (torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
mon = lssr.SharpnessMonitor(model, "ce", data, n=10, every=1)
row = mon.step()
assert row["top_eig"] > 0 and "lightning" not in sys.modules
try:
    lssr.SharpnessCallback
except lssr.LssrError as e:
    print("ERR", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ERR lssr.SharpnessCallback needs PyTorch Lightning; fix: pip install lightning" in out


def lightning_module(L):
    class Module(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5, weight_decay=1e-3)

    return Module


def lightning_trainer(L, callback, **kw):
    kw = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0) | kw
    return L.Trainer(callbacks=[callback] + kw.pop("extra", []), **kw)


def test_a_lightning_checkpoint_resumes_the_monitor(tmp_path):
    """A Trainer checkpointed after its first epoch (6 steps) and resumed to 12 steps from that checkpoint
    measures at the uninterrupted run's steps, and at step 6 (the checkpoint's θ) with its numbers, ‖H‖ and
    HVP counts included: the monitor's state, warm start included, travels in the Lightning checkpoint."""
    L = pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra (pip install lightning)")
    Module = lightning_module(L)
    kw = dict(n=N_PROBE, every=3, budget=None, stream=False)

    def fit(max_steps, rows, ckpt_path=None, max_epochs=-1, extra=()):
        net, ds = make()
        net.drop.p = 0.0
        loader = DataLoader(ds, batch_size=B, shuffle=False)
        cb = lssr.SharpnessCallback("ce", callback=rows.append, **kw)
        trainer = lightning_trainer(
            L,
            cb,
            max_steps=max_steps,
            max_epochs=max_epochs,
            logger=False,
            extra=list(extra),
            enable_checkpointing=bool(extra),
            default_root_dir=tmp_path,
        )
        trainer.fit(Module(net), loader, ckpt_path=ckpt_path)
        return cb

    full, first, resumed = [], [], []
    fit(12, full)
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="epoch0")
    fit(-1, first, max_epochs=1, extra=[saver])
    cb = fit(12, resumed, ckpt_path=tmp_path / "ckpt" / "epoch0.ckpt")
    assert [r["step"] for r in full] == [0, 3, 6, 9] and [r["step"] for r in first] == [0, 3]
    assert [r["step"] for r in resumed] == [6, 9] and cb.monitor.measurements == 4
    timing = ["cost_seconds", "cost_grad_seconds", "cost_gradient_equivalents"]
    a, b = resumed[0], full[2]  # step 6: the same θ, so equal numbers need the checkpoint's warm start
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


def test_two_lightning_callbacks_keep_their_own_checkpoint_states(tmp_path):
    """Two callbacks in one Trainer (prefixes a/ every 3 steps, b/ every 2), checkpointed after the first epoch (6
    steps) and resumed to 12: each continues its own schedule and warm start (its steps from 6 on, its measurement
    count and its numbers at step 6, the checkpoint's θ, are the uninterrupted run's), which needs each state under
    its own key."""
    L = pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra (pip install lightning)")
    Module = lightning_module(L)
    every = {"a/": 3, "b/": 2}

    def fit(max_steps, ckpt_path=None, max_epochs=-1, saver=None):
        net, ds = make()
        net.drop.p = 0.0
        rows = {p: [] for p in every}
        cbs = [
            lssr.SharpnessCallback(
                "ce", prefix=p, n=N_PROBE, every=k, budget=None, stream=False, callback=rows[p].append
            )
            for p, k in every.items()
        ]
        trainer = lightning_trainer(
            L,
            cbs[0],
            max_steps=max_steps,
            max_epochs=max_epochs,
            logger=False,
            extra=cbs[1:] + ([saver] if saver else []),
            enable_checkpointing=saver is not None,
            default_root_dir=tmp_path,
        )
        trainer.fit(Module(net), DataLoader(ds, batch_size=B, shuffle=False), ckpt_path=ckpt_path)
        return rows, {cb.prefix: cb.monitor.measurements for cb in cbs}

    full, full_count = fit(12)
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="epoch0")
    fit(-1, max_epochs=1, saver=saver)
    state = torch.load(tmp_path / "ckpt" / "epoch0.ckpt", weights_only=False)["callbacks"]
    assert sorted(k for k in state if "Sharpness" in k) == [
        "SharpnessCallback{'prefix': 'a/'}",
        "SharpnessCallback{'prefix': 'b/'}",
    ]
    resumed, count = fit(12, ckpt_path=tmp_path / "ckpt" / "epoch0.ckpt")
    assert [r["step"] for r in full["a/"]] == [0, 3, 6, 9] and [r["step"] for r in full["b/"]] == [0, 2, 4, 6, 8, 10]
    assert count == full_count == {"a/": 4, "b/": 6}
    timing = ["cost_seconds", "cost_grad_seconds", "cost_gradient_equivalents"]
    for p in every:
        later = [r for r in full[p] if r["step"] >= 6]
        assert [r["step"] for r in resumed[p]] == [r["step"] for r in later]
        a, b = resumed[p][0], later[0]  # step 6: the same θ, so equal numbers need each callback's own warm start
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


def plain_loop_rows(model, loader, steps: int, *, losses=None, monitored=True, **monitor_kw) -> list[dict]:
    """The plain loop the Lightning tests compare with: SGD (η = 0.1, β = 0.5, λ = 1e-3) on ``loader``'s batches
    in order, epoch after epoch, for ``steps`` steps, with a SharpnessMonitor called after backward() (none when
    not ``monitored``); its rows. ``model`` is trained in place; ``losses``: a list that gets each step's loss."""
    rows = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, weight_decay=1e-3)
    mon = lssr.SharpnessMonitor(model, "ce", loader, opt, callback=rows.append, **monitor_kw) if monitored else None
    model.train()
    batches = (batch for _ in range(steps) for batch in loader)
    for _, (x, y) in zip(range(steps), batches):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if mon is not None:
            mon.step()
        opt.step()
        if losses is not None:
            losses.append(loss.detach())
    return rows


def test_a_lightning_trainer_logs_the_plain_monitors_numbers(tmp_path):
    """lssr.SharpnessCallback in a real lightning Trainer (CPU, CSVLogger, 20 steps, measuring every 4): the
    logged rows are the plain loop's monitor rows at the same steps, on the same trajectory (same initial
    model, data order and SGD; the final parameters agree)."""
    L = pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra (pip install lightning)")
    Module = lightning_module(L)

    net, ds = make()
    net.drop.p = 0.0  # the two runs draw dropout masks at different points of the global RNG stream
    init = copy.deepcopy(net)
    kw = dict(n=N_PROBE, every=4, budget=None, stream=False)
    module = Module(net)
    loader = DataLoader(ds, batch_size=B, shuffle=False)
    logger = L.loggers.CSVLogger(tmp_path, name="run")
    trainer = lightning_trainer(
        L, lssr.SharpnessCallback("ce", **kw), max_steps=20, logger=logger, enable_checkpointing=False
    )
    trainer.fit(module, loader)
    logged = pd.read_csv(Path(logger.log_dir) / "metrics.csv")
    logged = logged.dropna(subset=["sharpness/top_eig"]).reset_index(drop=True)

    model = init
    rows = plain_loop_rows(model, loader, 20, **kw)
    for a, b in zip(model.parameters(), module.net.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert list(logged["step"]) == [r["step"] for r in rows] == [0, 4, 8, 12, 16]
    for key in EXACT + ("top_eig", "threshold", "top_eig_reg", f"ias_b_{B}", f"rho_b_{B}", f"tr_HS_b_{B}"):
        assert np.allclose(logged[f"sharpness/{key}"], [r[key] for r in rows], rtol=1e-9, atol=1e-12), key


def guide_blocks():
    root = Path(__file__).resolve().parents[1]
    section = (root / "docs" / "DIAGNOSTICS.md").read_text().split("## During training", 1)[1]
    return [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]


def test_the_guides_plain_loop_runs_as_written(tmp_path, monkeypatch, capsys):
    """The plain-loop example of docs/DIAGNOSTICS.md's "During training" runs, prints two rows and leaves the
    CSV (two rows) and a checkpoint whose monitor state resumes a new monitor."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    scope = {}
    exec(compile(guide_blocks()[0], "DIAGNOSTICS.md", "exec"), scope)
    printed = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [p[0] for p in printed] == ["0", "8"]
    table = pd.read_csv(tmp_path / "sharpness.csv")
    assert list(table["step"]) == [0, 8] and np.allclose(table["threshold"], (2 + 2 * 0.9) / 0.05)
    state = torch.load(tmp_path / "ckpt.pt")["monitor"]
    mon = lssr.SharpnessMonitor(scope["model"], "ce", scope["loader"], scope["opt"], every=8)
    mon.load_state_dict(state)
    assert mon.stream is False and all(table["kind"] == "diagnose")
    assert mon.steps == 16 and mon.due() and torch.equal(mon.eigenvector, state["eigenvector"])


def test_the_guides_lightning_example_runs_as_written(tmp_path, monkeypatch):
    """The Lightning example of the same section runs and its CSV logger holds the monitor's two rows."""
    pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra (pip install lightning)")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(guide_blocks()[1], "DIAGNOSTICS.md", "exec"), {})
    (metrics,) = tmp_path.glob("logs/*/version_0/metrics.csv")
    logged = pd.read_csv(metrics).dropna(subset=["sharpness/top_eig"])
    assert list(logged["step"]) == [0, 8] and np.allclose(logged["sharpness/threshold"], (2 + 2 * 0.9) / 0.05)
