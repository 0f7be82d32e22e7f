"""lssr.diagnose against independent oracles on tiny float64 problems: the dense Hessian of L from
torch.autograd.functional.hessian, per-sample gradients from one backward pass per sample, and tr(S_b),
tr(H S_b) averaged over every batch of size b (all subsets without replacement, all ordered draws with)."""

import copy
import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import lssr
from lssr import LssrError
from lssr.curvature import LossOperator
from lssr.diagnostics import Compute, Eigen, Estimator
from lssr.diagnostics.guards import RandomForwardError
from lssr.losses import PerSampleLoss


def mlp(seed=0):
    """3 -> 5 -> BN -> tanh -> dropout -> 5 (frozen) -> tanh -> 3, float64, in eval mode."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Linear(3, 5),
        nn.BatchNorm1d(5),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.Linear(5, 5),
        nn.Tanh(),
        nn.Linear(5, 3),
    ).double()
    m[1].running_mean.normal_()
    m[1].running_var.uniform_(0.5, 2.0)
    m[4].requires_grad_(False)
    return m.eval()


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.drop = nn.Dropout2d(0.3)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.tanh(self.bn(self.conv(x)))).flatten(1))


def cnn(seed=0):
    torch.manual_seed(seed)
    m = SmallCNN().double()
    m.bn.running_mean.normal_()
    m.bn.running_var.uniform_(0.5, 2.0)
    m.conv.bias.requires_grad_(False)
    return m.eval()


def data(kind, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3) if kind == "mlp" else (n, 1, 5, 5)
    return torch.randn(*shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def oracle(model, x, y, ps=lambda o, t: F.cross_entropy(o, t, reduction="none")):
    """(per-sample gradients G (n, m), dense H (m, m), L) over the trainable parameters, with one backward
    pass per sample and torch.autograd.functional.hessian."""
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    G = []
    for i in range(x.shape[0]):
        li = ps(model(x[i : i + 1]), y[i : i + 1]).sum()
        G.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(li, params)]))
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def L(flat):
        d = {k: t.reshape(s) for k, t, s in zip(names, flat.split(sizes), shapes)}
        return ps(functional_call(model, d, (x,)), y).mean()

    H = torch.autograd.functional.hessian(L, theta)
    return torch.stack(G).detach(), H.detach(), float(L(theta))


def brute_force(G, H, b, replacement):
    """tr(S_b) = E‖g_B‖² and tr(H S_b) = E g_BᵀHg_B over every batch of b (g_B the batch's mean gradient)."""
    n = G.shape[0]
    draws = itertools.product(range(n), repeat=b) if replacement else itertools.combinations(range(n), b)
    sq, quad, k = 0.0, 0.0, 0
    for B in draws:
        gB = G[list(B)].mean(0)
        sq, quad, k = sq + float(gB @ gB), quad + float(gB @ H @ gB), k + 1
    return sq / k, quad / k


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("replacement", [False, True])
def test_exact_mode_matches_dense_hessian_and_every_batch(kind, replacement):
    n = 6
    model = mlp() if kind == "mlp" else cnn()
    x, y = data(kind, n)
    G, H, L = oracle(model, x, y)
    bs = [1, 2, 3] + ([] if replacement else [6])
    d = lssr.diagnose(
        model,
        "ce",
        (x, y),
        batch_sizes=bs,
        estimator="exact",
        replacement=replacement,
        eigen=Eigen(tol=1e-9, max_hvps=400),
    )
    m = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (d.m, d.m_frozen) == (m, sum(p.numel() for p in model.parameters()) - m)
    gbar = G.mean(0)
    tr_S_1, tr_S_n = float((G * G).sum(1).mean()), float(gbar @ gbar)
    assert rel(d.loss, L) < 1e-12
    assert rel(d.tr_S_1, tr_S_1) < 1e-10 and rel(d.tr_S_n, tr_S_n) < 1e-10
    assert rel(d.tr_HS_1, float(((G @ H) * G).sum(1).mean())) < 1e-10
    assert rel(d.tr_HS_n, float(gbar @ H @ gbar)) < 1e-10
    assert rel(d.b_simple, (tr_S_1 - tr_S_n) / tr_S_n) < 1e-10
    assert rel(d.top_eig, float(torch.linalg.eigvalsh(H)[-1])) < 1e-8
    frame = d.frame()
    assert list(frame["b"]) == bs
    for b in bs:
        tr_S_b, tr_HS_b = brute_force(G, H, b, replacement)
        at = d.at(b)
        assert rel(at.tr_S_b, tr_S_b) < 1e-8 and rel(at.tr_HS_b, tr_HS_b) < 1e-8
        assert rel(at.ias_b, tr_HS_b / tr_S_b) < 1e-8
        assert rel(at.rho_b, tr_S_n / tr_S_b) < 1e-8
        assert rel(at.instability_b, tr_HS_b / tr_S_n) < 1e-8
        assert at.tr_HS_b_se == 0.0 and at.ias_b_se == 0.0
        row = frame[frame["b"] == b].iloc[0]
        assert rel(row["tr_HS_b"], tr_HS_b) < 1e-8 and rel(row["ias_b"], tr_HS_b / tr_S_b) < 1e-8
    flat = d.to_dict(prefix="diag/")
    assert rel(flat["diag/ias_b_2"], d.at(2).ias_b) == 0 and "diag/tr_HS_b_3_se" in flat
    assert "diag/cost_hvps" in flat and flat["diag/cost_hvp_mode"] == "graph"


class Dicts(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


class Stream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def by_key(model, batch):
    return model(batch["image"]), batch["label"]


@pytest.mark.parametrize("exact", [True, False])
def test_every_data_form_and_chunking_agree(exact):
    n = 11
    model = mlp()
    x, y = data("mlp", n)
    est = Estimator("exact" if exact else "sketch", probes=8, stage1=4, rel_se=None)
    kw = dict(batch_sizes=[2, 5], estimator=est, eigen=Eigen(tol=1e-8, max_hvps=200))
    ref = lssr.diagnose(model, "ce", (x, y), compute=Compute(chunk_size=n), **kw)
    forms = {
        "tensors": ((x, y), None),
        "dataset": (TensorDataset(x, y), None),
        "loader (ragged)": (DataLoader(TensorDataset(x, y), batch_size=4), None),
        "list of batches": ([(x[i : i + 3], y[i : i + 3]) for i in range(0, n, 3)], None),
        "dict dataset": (Dicts(x, y), by_key),
        "iterable dataset": (Stream(x, y), None),
        "dict batches": ([{"image": x[i : i + 4], "label": y[i : i + 4]} for i in range(0, n, 4)], by_key),
    }
    keys = ("loss", "top_eig", "tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_1_se", "tr_HS_n", "b_simple")
    for name, (dat, fwd) in forms.items():
        for chunk in (1, 5, n):
            comp = Compute(chunk_size=chunk, per_sample_chunk=chunk)
            d = lssr.diagnose(model, "ce", dat, forward=fwd, compute=comp, **kw)
            for k in keys:
                a, b = getattr(d, k), getattr(ref, k)
                assert abs(a - b) <= 1e-10 * max(abs(b), 1e-3), (name, chunk, k, a, b)
            assert abs(d.at(5).ias_b - ref.at(5).ias_b) <= 1e-10 * abs(ref.at(5).ias_b)
    assert ref.estimator == ("exact" if exact else "sketch")


def documented_subset(total, n, seed):
    """The subset docs/DIAGNOSTICS.md describes, drawn here: the first n entries of a permutation of the samples
    from a generator seeded with ``seed``, in increasing order."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def test_seeded_subset_is_the_listed_samples():
    model = mlp()
    x, y = data("mlp", 30)
    d = lssr.diagnose(model, "ce", (x, y), n=7, seed=3, estimator="exact", batch_sizes=[2])
    idx, other = documented_subset(30, 7, 3), documented_subset(30, 7, 4)
    assert len(set(idx.tolist())) == 7 and idx.tolist() != list(range(7)) and idx.tolist() != other.tolist()
    e = lssr.diagnose(model, "ce", (x[idx], y[idx]), estimator="exact", batch_sizes=[2])
    assert (d.n, d.n_total) == (7, 30) and d.tr_HS_1 == e.tr_HS_1 and d.tr_S_n == e.tr_S_n
    f = lssr.diagnose(model, "ce", TensorDataset(x, y), n=7, seed=3, estimator="exact", batch_sizes=[2])
    assert f.tr_HS_1 == d.tr_HS_1
    g = lssr.diagnose(model, "ce", (x, y), n=7, seed=4, estimator="exact", batch_sizes=[2])
    h = lssr.diagnose(model, "ce", (x[other], y[other]), estimator="exact", batch_sizes=[2])
    assert g.tr_HS_1 == h.tr_HS_1 != d.tr_HS_1
    with pytest.raises(LssrError, match="n = 40"):
        lssr.diagnose(model, "ce", (x, y), n=40)


def reference_per_sample(loss, o, t):
    """ℓ_i = the loss of sample i alone (elementwise losses averaged for reduction='none')."""
    out = []
    for i in range(o.shape[0]):
        v = loss(o[i : i + 1], t[i : i + 1])
        out.append(v.mean() if v.dim() else v)
    return torch.stack(out)


@pytest.mark.parametrize(
    "make, target, reduction",
    [
        (lambda: nn.CrossEntropyLoss(), "int", "mean"),
        (lambda: nn.CrossEntropyLoss(reduction="sum"), "int", "sum"),
        (lambda: nn.CrossEntropyLoss(reduction="none"), "int", "none"),
        (lambda: nn.CrossEntropyLoss(label_smoothing=0.2), "int", "mean"),
        (lambda: nn.MSELoss(), "float", "mean"),
        (lambda: nn.MSELoss(reduction="sum"), "float", "sum"),
        (lambda: lambda o, t: F.mse_loss(o, t), "float", "mean"),
        (lambda: lambda o, t: F.cross_entropy(o, t, reduction="none"), "int", "mean"),
    ],
)
def test_loss_adapters_match_a_per_sample_reference(make, target, reduction):
    loss = make()
    n = 7
    model = mlp()
    x, yi = data("mlp", n)
    y = yi if target == "int" else torch.randn(n, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ps = PerSampleLoss(loss)
    assert ps.reduction == reduction
    with torch.no_grad():
        o = model(x)
    ref = reference_per_sample(loss, o, y)
    assert torch.allclose(ps.per_sample(o, y), ref, rtol=1e-12, atol=0)
    G, _, L = oracle(model, x, y, ps=lambda o, t: reference_per_sample(loss, o, t))
    d = lssr.diagnose(model, loss, (x, y), estimator="exact", batch_sizes=[3])
    assert rel(d.loss, L) < 1e-12 and d.reduction == reduction
    assert rel(d.tr_S_1, float((G * G).sum(1).mean())) < 1e-10


def test_weighted_mean_cross_entropy_is_refused():
    with pytest.raises(LssrError, match="reduction='sum'"):
        PerSampleLoss(nn.CrossEntropyLoss(weight=torch.ones(3)))


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_train_mode_batch_norm_and_active_dropout_are_refused():
    x, y = data("mlp", 6)
    model = mlp().train()
    model[3].p = 0.0  # dropout off: only batch norm is at fault
    with pytest.raises(LssrError) as e:
        lssr.diagnose(model, "ce", (x, y))
    assert "bn='eval'" in one_line(e)
    model[3].p = 0.5
    with pytest.raises(RandomForwardError) as e:
        lssr.diagnose(model, "ce", (x, y), bn="eval")
    assert "dropout='off'" in one_line(e)
    with pytest.raises(LssrError, match="known: refuse, eval"):
        lssr.diagnose(model, "ce", (x, y), bn="train")


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3).double()

    def forward(self, x):
        return self.fc(x + 0.1 * torch.randn_like(x))


def test_random_forward_is_refused():
    x, y = data("mlp", 6)
    with pytest.raises(RandomForwardError) as e:
        lssr.diagnose(Noisy(), "ce", (x, y))
    assert "random" in one_line(e)


def test_model_state_and_global_random_state_are_unchanged():
    x, y = data("mlp", 8)
    model = mlp().train()
    model[6].weight.grad = torch.full_like(model[6].weight, 3.0)
    grad_before = model[6].weight.grad
    modes = [m.training for m in model.modules()]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    rng, py, npy = torch.get_rng_state(), random.getstate(), np.random.get_state()
    small = Estimator(probes=4, stage1=3)
    d = lssr.diagnose(model, "ce", (x, y), bn="eval", dropout="off", batch_sizes=[4], estimator=small)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert model[6].weight.grad is grad_before and torch.equal(grad_before, torch.full_like(grad_before, 3.0))
    assert model[0].weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng) and random.getstate() == py
    assert np.array_equal(np.random.get_state()[1], npy[1])
    e = lssr.diagnose(mlp().eval(), "ce", (x, y), batch_sizes=[4], estimator=small)
    assert d.tr_HS_1 == e.tr_HS_1 and d.top_eig == e.top_eig  # bn='eval', dropout='off' = eval mode


def test_wrappers_mixed_precision_and_warm_start():
    x, y = data("mlp", 9)
    model = mlp()
    kw = dict(batch_sizes=[3], estimator="exact")
    d = lssr.diagnose(model, "ce", (x, y), **kw)
    for wrapped in (nn.DataParallel(model), torch.compile(model)):
        w = lssr.diagnose(wrapped, "ce", (x, y), **kw)
        assert w.tr_HS_1 == d.tr_HS_1 and w.m == d.m
    half = mlp().to(torch.bfloat16)
    h = lssr.diagnose(half, "ce", (x.float(), y), **kw)
    f = lssr.diagnose(copy.deepcopy(half).float(), "ce", (x.float(), y), **kw)
    assert half[0].weight.dtype == torch.bfloat16
    assert rel(h.tr_HS_1, f.tr_HS_1) < 1e-6 and rel(h.top_eig, f.top_eig) < 1e-4
    warm = lssr.diagnose(model, "ce", (x, y), eigen=Eigen(init=d), **kw)
    assert warm.top_eig_hvps < d.top_eig_hvps and rel(warm.top_eig, d.top_eig) < 1e-3


class HardNet(nn.Module):
    """tanh then hardsigmoid (no forward-mode or double-backward derivative in PyTorch), or the same function
    written with clamp (``exact``), which both HVP modes support."""

    def __init__(self, exact):
        super().__init__()
        self.l1, self.l2, self.exact = nn.Linear(3, 6), nn.Linear(6, 3), exact

    def forward(self, x):
        h = self.l1(x)
        h = torch.clamp(h / 6 + 0.5, 0, 1) if self.exact else F.hardsigmoid(h)
        return self.l2(torch.tanh(h * 3))


def test_hvp_modes_and_the_finite_difference_error_bound():
    x, y = data("mlp", 8)
    torch.manual_seed(0)
    hard = HardNet(exact=False).double()
    soft = HardNet(exact=True).double()
    soft.load_state_dict(hard.state_dict())
    kw = dict(batch_sizes=[2], estimator="exact", eigen=Eigen(tol=1e-8, max_hvps=200))
    graph = lssr.diagnose(soft, "ce", (x, y), **kw)
    fwd = lssr.diagnose(soft, "ce", (x, y), compute=Compute(hvp_mode="forward"), **kw)
    rev = lssr.diagnose(soft, "ce", (x, y), compute=Compute(hvp_mode="reverse"), **kw)
    fd = lssr.diagnose(hard, "ce", (x, y), **kw)
    modes = (graph.cost.hvp_mode, fwd.cost.hvp_mode, rev.cost.hvp_mode, fd.cost.hvp_mode)
    assert modes == ("graph", "forward", "reverse", "fd")
    assert rel(rev.tr_HS_1, fwd.tr_HS_1) < 1e-10 and rel(rev.top_eig, fwd.top_eig) < 1e-8
    assert rel(graph.tr_HS_1, fwd.tr_HS_1) < 1e-10 and rel(graph.top_eig, fwd.top_eig) < 1e-8
    assert 0 < fd.cost.fd_rel_error < 1e-5
    assert rel(fd.tr_HS_1, fwd.tr_HS_1) < 1e-5 and rel(fd.top_eig, fwd.top_eig) < 1e-5
    # the reported bound holds for single HVPs against the exact product
    op = LossOperator(soft, PerSampleLoss("ce"), x, y, hvp_mode="fd")
    ex = LossOperator(soft, PerSampleLoss("ce"), x, y)
    for s in range(3):
        v = torch.randn(op.space.dim, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        assert float((op.hvp(v) - ex.hvp(v)).norm() / ex.hvp(v).norm()) < 1e-6


def test_products_without_kept_per_sample_gradients():
    """With the per-sample gradients not kept (Compute(store_mb=0)), the sketch's per-sample products come from
    forward-mode directional derivatives (no more per-sample passes) and give the kept-gradient numbers; a
    model without forward-mode derivatives falls back to per-sample passes with the same numbers."""
    x, y = data("mlp", 24)
    model = mlp()
    kw = dict(batch_sizes=[4], estimator=Estimator("sketch", probes=8, stage1=4, rel_se=None))
    unkept = Compute(store_mb=0, per_sample_chunk=5)
    kept = lssr.diagnose(model, "ce", (x, y), **kw)
    jvp = lssr.diagnose(model, "ce", (x, y), compute=unkept, **kw)
    assert (kept.cost.per_sample_passes, kept.cost.jvps) == (1, 0)
    assert jvp.cost.per_sample_passes == 1 and jvp.cost.jvps > 0
    for name in ("tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_1_se", "tr_HS_n", "top_eig"):
        assert rel(getattr(jvp, name), getattr(kept, name)) < 1e-10, name
    torch.manual_seed(0)
    plain = NoForwardNet().double()
    a = lssr.diagnose(plain, "ce", (x, y), eigen=False, **kw)
    b = lssr.diagnose(plain, "ce", (x, y), eigen=False, compute=unkept, **kw)
    assert b.cost.per_sample_passes > 1 and b.cost.jvps == 0
    assert rel(b.tr_HS_1, a.tr_HS_1) < 1e-10 and rel(b.tr_HS_1_se, a.tr_HS_1_se) < 1e-10


class _TanhNoForward(torch.autograd.Function):
    """tanh with a backward formula only: no forward-mode derivative."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return g * (1 - t * t)


class NoForwardNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.l2(_TanhNoForward.apply(self.l1(x)))


def test_graph_mode_falls_back_when_the_graph_does_not_fit(monkeypatch):
    """auto keeps the graph of ∇L only within the memory budget; past it, forward-over-reverse gives the same
    numbers; an explicit hvp_mode='graph' that does not fit is a one-line error naming the other modes."""
    import lssr.diagnostics.api as api

    x, y = data("mlp", 8)
    model = mlp()
    kw = dict(batch_sizes=[2], estimator="exact", eigen=Eigen(tol=1e-8, max_hvps=200))
    kept = lssr.diagnose(model, "ce", (x, y), **kw)
    monkeypatch.setattr(api, "memory_budget", lambda device: 256)
    small = lssr.diagnose(model, "ce", (x, y), **kw)
    assert (kept.cost.hvp_mode, small.cost.hvp_mode) == ("graph", "forward")
    assert rel(small.tr_HS_1, kept.tr_HS_1) < 1e-10 and rel(small.top_eig, kept.top_eig) < 1e-8
    with pytest.raises(LssrError) as e:
        lssr.diagnose(model, "ce", (x, y), compute=Compute(hvp_mode="graph"), **kw)
    assert "use hvp_mode 'forward' or 'reverse'" in one_line(e)


def test_bad_inputs_give_one_line_errors():
    x, y = data("mlp", 6)
    model = mlp()
    with pytest.raises(LssrError) as e:
        lssr.diagnose(model, "ce", [{"image": x, "label": y}])
    assert "forward=" in one_line(e)
    with pytest.raises(LssrError) as e:
        lssr.diagnose(model, "hinge", (x, y))
    assert "known: ce, mse" in one_line(e)
    with pytest.raises(LssrError) as e:
        lssr.diagnose(model, "ce", (x, y), batch_sizes=[7])
    assert "b <= n = 6" in one_line(e)


@pytest.mark.parametrize(
    "old, new",
    [
        ({"exact": True}, 'estimator="exact" or "sketch"'),
        ({"probes": 8}, "estimator=Estimator(probes=...)"),
        ({"top": False}, "eigen=False"),
        ({"eig_init": None}, "eigen=Eigen(init=...)"),
        ({"eig_tol": 1e-6}, "eigen=Eigen(tol=...)"),
        ({"chunk_size": 4}, "compute=Compute(chunk_size=...)"),
        ({"hvp_mode": "fd"}, "compute=Compute(hvp_mode=...)"),
        ({"store_mb": 0}, "compute=Compute(store_mb=...)"),
        ({"generator": torch.Generator()}, "seed="),
    ],
)
def test_an_earlier_keyword_is_one_line_naming_its_new_place(old, new):
    x, y = data("mlp", 6)
    with pytest.raises(LssrError) as e:
        lssr.diagnose(mlp(), "ce", (x, y), **old)
    key = next(iter(old))
    assert one_line(e).startswith(f"diagnose: {key}= moved: {new}")


def test_the_option_objects_and_their_shorthands_give_the_same_numbers():
    """estimator="sketch" is Estimator("sketch"), eigen=True is Eigen(), compute=None is Compute(): the same
    numbers; Estimator("auto") is exact at n <= probes and the sketch above; bad values are one-line errors
    naming the option."""
    x, y = data("mlp", 10)
    a = lssr.diagnose(mlp(), "ce", (x, y), batch_sizes=[2], estimator="sketch", eigen=True)
    b = lssr.diagnose(
        mlp(), "ce", (x, y), batch_sizes=[2], estimator=Estimator("sketch"), eigen=Eigen(), compute=Compute()
    )
    assert (a.tr_HS_1, a.tr_HS_1_se, a.top_eig) == (b.tr_HS_1, b.tr_HS_1_se, b.top_eig)
    assert a.estimator == "sketch" and a.tr_HS_1_se > 0
    assert lssr.diagnose(mlp(), "ce", (x, y), estimator=Estimator(probes=10), eigen=False).estimator == "exact"
    assert lssr.diagnose(mlp(), "ce", (x, y), estimator=Estimator(probes=9), eigen=False).estimator == "sketch"
    for bad, named in ((lambda: Estimator("fast"), "kind='fast'"), (lambda: Eigen(tol=0), "tol"),
                       (lambda: Compute(hvp_mode="jvp"), "hvp_mode='jvp'"), (lambda: Estimator(probes=2), "probes"),
                       (lambda: lssr.diagnose(mlp(), "ce", (x, y), eigen="yes"), "eigen must be")):  # fmt: skip
        with pytest.raises(LssrError) as e:
            bad()
        assert named in one_line(e)


FACTORY = """
import torch
from torch import nn


def make(width=8, num_classes=10, in_features=64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, num_classes))
"""


def test_command_line_gives_the_python_numbers(tmp_path, monkeypatch, capsys):
    import json

    import pandas as pd

    from lssr.cli import main
    from lssr.data import SubsetSpec, build_subset, load_subset

    (tmp_path / "userfactory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import userfactory

    subset = build_subset(SubsetSpec("digits", 64, seed=0), tmp_path / "subset")
    trained = userfactory.make(width=6)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.5)
    ckpt = tmp_path / "model.pt"
    torch.save({"model": {f"module.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    out = tmp_path / "out"
    argv = ["diagnose", "--model", "userfactory:make", "--model-arg", "width=6", "--checkpoint", str(ckpt)]
    argv += ["--data", str(subset), "--batch-sizes", "4", "16", "--n", "40", "--seed", "2", "--device", "cpu"]
    argv += ["--out", str(out)]  # the Python call below runs on the CPU: the same device gives the same numbers
    assert main(argv) == 0
    printed = capsys.readouterr().out
    sub = load_subset(subset)
    ref = lssr.diagnose(trained, "ce", (sub.x_train, sub.y_train), batch_sizes=[4, 16], n=40, seed=2)
    frame = pd.read_csv(out / "diagnostics.csv")
    saved = json.loads((out / "diagnostics.json").read_text())
    assert list(frame["b"]) == [4, 16] and "ias_b" in printed
    for b in (4, 16):
        row = frame[frame["b"] == b].iloc[0]
        assert rel(row["tr_HS_b"], ref.at(b).tr_HS_b) < 1e-12 and rel(row["ias_b"], ref.at(b).ias_b) < 1e-12
    assert rel(saved["scalars"]["top_eig"], ref.top_eig) < 1e-12 and saved["scalars"]["n"] == 40
    assert saved["call"]["model_args"] == {"width": 6}
    assert saved["call"]["device"] == "cpu"  # --device auto is tested in tests/test_cli_options.py

    bad = argv[:-1] + [str(tmp_path / "out2"), "--checkpoint", str(tmp_path / "missing.pt")]
    assert main(bad) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(argv[:-1] + [str(tmp_path / "out3"), "--device", "cuda"]) == 2
        assert "no CUDA device is available; use device: auto or cpu" in capsys.readouterr().err


def test_command_line_on_an_image_folder(tmp_path, monkeypatch):
    from PIL import Image
    from torchvision import datasets, transforms

    from lssr.cli import main

    (tmp_path / "userfactory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import userfactory

    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / "train" / c / f"{i}.png"
            )
    out = tmp_path / "out"
    argv = ["diagnose", "--model", "userfactory:make", "--model-arg", "in_features=48", "--model-arg", "num_classes=2"]
    argv += ["--data", str(tmp_path / "imgs"), "--batch-sizes", "2", "--dtype", "float64", "--device", "cpu"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    ds = datasets.ImageFolder(str(tmp_path / "imgs" / "train"), transform=transforms.ToTensor())
    ref = lssr.diagnose(userfactory.make(in_features=48, num_classes=2).double(), "ce", ds, batch_sizes=[2])
    import json

    saved = json.loads((out / "diagnostics.json").read_text())
    assert saved["scalars"]["n"] == 6 and rel(saved["scalars"]["tr_HS_1"], ref.tr_HS_1) < 1e-12


def test_the_guides_five_lines_run_as_written(capsys):
    """The first code block of docs/DIAGNOSTICS.md (also in the README) runs and prints the diagnostics."""
    root = Path(__file__).resolve().parents[1]
    guide, readme = (root / "docs" / "DIAGNOSTICS.md").read_text(), (root / "README.md").read_text()
    code = guide.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.strip()]) == 5 and code in readme
    torch.manual_seed(0)
    exec(compile(code, "DIAGNOSTICS.md", "exec"), {})
    out = capsys.readouterr().out
    assert "ias_b" in out and "instability_b" in out


class ClampHardsigmoid(nn.Module):
    """hardsigmoid(x) = clamp(x/6 + 1/2, 0, 1), written through clamp (which has a double backward)."""

    def forward(self, x):
        return torch.clamp(x / 6 + 0.5, 0, 1)


class ClampHardswish(nn.Module):
    """hardswish(x) = x · clamp(x/6 + 1/2, 0, 1)."""

    def forward(self, x):
        return x * torch.clamp(x / 6 + 0.5, 0, 1)


def with_clamp_activations(module):
    """``module`` with every nn.Hardsigmoid / nn.Hardswish replaced by its clamp form (the same function)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Hardsigmoid):
            setattr(module, name, ClampHardsigmoid())
        elif isinstance(child, nn.Hardswish):
            setattr(module, name, ClampHardswish())
        else:
            with_clamp_activations(child)
    return module


def test_mobilenet_v3_small_by_finite_differences_matches_the_clamp_model():
    """torchvision's mobilenet_v3_small: hardsigmoid has neither a forward-mode nor a double-backward derivative
    in PyTorch, so both exact HVP modes fail and the call falls back to the central difference. The reference is
    the same network with its hard activations written through clamp (the same function, with exact HVPs), from
    the same eigen-solver start. Loss and gradients are those of the same function in the same float32 arithmetic
    (1e-6); every number made of HVPs is within the central difference's reported bound on the relative error of
    one HVP (cost.fd_rel_error, which itself sits far above float32 rounding)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
    ref = with_clamp_activations(copy.deepcopy(model))
    assert not any(isinstance(m, (nn.Hardsigmoid, nn.Hardswish)) for m in ref.modules())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 0, 1, 2])  # unbalanced labels: ∇L ≠ 0 at initialisation
    start = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(1))
    kw = dict(batch_sizes=[2], estimator="exact", eigen=Eigen(max_hvps=6, init=start))
    d = lssr.diagnose(model, "ce", (x, y), **kw)
    r = lssr.diagnose(ref, "ce", (x, y), **kw)
    assert (d.cost.hvp_mode, r.cost.hvp_mode) == ("fd", "graph")
    err = d.cost.fd_rel_error
    assert 1e-6 < err < 1e-2
    for k in ("loss", "tr_S_1", "tr_S_n"):
        assert rel(getattr(d, k), getattr(r, k)) < 1e-6, k
    assert r.tr_S_n > 0.05 * r.tr_S_1
    for k in ("tr_HS_1", "tr_HS_n", "top_eig"):
        assert rel(getattr(d, k), getattr(r, k)) < err, (k, getattr(d, k), getattr(r, k), err)
    assert rel(d.at(2).ias_b, r.at(2).ias_b) < err


class ItemNet(nn.Module):
    """Calls .item() in its forward pass (vmap cannot batch it), otherwise the MLP below."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        scale = 1.0 if x.abs().max().item() < 1e6 else 0.5
        return self.inner(x) * scale


def test_a_model_vmap_cannot_batch_gets_per_sample_gradients_one_by_one():
    x, y = data("mlp", 7)
    model = mlp()
    kw = dict(batch_sizes=[3], estimator="exact", eigen=Eigen(tol=1e-8, max_hvps=200))
    ref = lssr.diagnose(model, "ce", (x, y), **kw)
    d = lssr.diagnose(ItemNet(model), "ce", (x, y), **kw)
    assert (ref.cost.per_sample_mode, d.cost.per_sample_mode) == ("vmap", "loop")
    for k in ("tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_n", "top_eig"):
        assert rel(getattr(d, k), getattr(ref, k)) < 1e-10
