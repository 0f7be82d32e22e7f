"""Helpers of ``bench_diagnostics.py``: the references and peers measured side by side with the lssr bundle.

Each function returns a dict with ``hvps`` (products of the full-batch Hessian), ``ops`` (gradient-equivalents
by op counts × the measured cost ratios), ``wall`` (seconds; the caller divides by the measured gradient time)
and its estimate. Peers: the exact values (one HVP per sample), the paper's Monte-Carlo per b, PyHessian
(``hessian(...).eigenvalues``) and curvlinops (``HessianLinearOperator`` with scipy ``eigsh``; Hutch++ on the
n × n matrix GᵀHG/n whose trace is tr(H S_1)).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import statistics
import time

import numpy as np
import torch

from lssr.curvature import LossOperator, lobpcg_top
from lssr.diagnostics import gradient_moments
from lssr.losses import get_loss
from lssr.models import CNN6


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def op_cost(counts: dict, ratio: dict, n: int, extra_grads: float = 0.0, hvp_mode: str = "forward") -> float:
    """Gradient-equivalents of an op-count dict ({'hvp', 'per_sample_pass', 'grad', 'loss', 'graph', 'jvp'}) ×
    measured ratios; HVPs of ``hvp_mode='graph'`` (through a kept graph of ∇L) at ``ratio['hvp_graph']``, each
    build of that graph at ``ratio['graph']``, each per-sample directional derivative at ``ratio['jvp']``."""
    hvp = ratio["hvp_graph"] if hvp_mode == "graph" else ratio["hvp"]
    return (
        counts.get("hvp", 0) * hvp
        + counts.get("graph", 0) * ratio.get("graph", 1.0)
        + counts.get("jvp", 0) * ratio.get("jvp", 1.0)
        + counts.get("per_sample_pass", 0) * ratio["ps"]
        + counts.get("grad", 0)
        + counts.get("loss", 0) * ratio["loss"]
        + extra_grads
    )


def counted(op: LossOperator, f):
    """(seconds, result, op-count differences) of f()."""
    c0 = dict(op.counts)
    t, out = timed(f)
    return t, out, {k: op.counts[k] - c0[k] for k in c0}


def gd_gradient(model, lf, x, y) -> tuple[torch.Tensor, float]:
    """∇L into the parameters' .grad; returns (L, train accuracy) at the current θ."""
    model.zero_grad()
    out = model(x)
    loss = lf(out, y)
    loss.backward()
    return loss.detach(), float((out.argmax(1) == y).float().mean())


def gd_descend(params, eta: float) -> None:
    """θ ← θ − η ∇L (the gradient left in .grad by ``gd_gradient``)."""
    with torch.no_grad():
        for p in params:
            p.sub_(eta * p.grad)


def seeded_model(seed: int, loss_name: str):
    """(cnn6 with the run's initialisation, its loss): the initial θ of every GD run of the benchmark."""
    torch.manual_seed(seed)
    return CNN6(3, 10), get_loss(loss_name)


def cost_ratios(op: LossOperator, reps: int = 2, graph: bool = False) -> dict:
    """Seconds of a gradient and the cost of one HVP, one per-sample pass (into one reused block, each chunk
    reduced before the next), one loss pass in gradients (medians
    of interleaved repetitions, after a warm-up); with ``graph`` also one build of the kept graph of ∇L
    (``graph``), one HVP through it (``hvp_graph``, ``hvp_mode='graph'``) and the directional derivatives of
    the per-sample losses along one vector (``jvp``, forward mode)."""
    v = torch.randn(op.space.dim, generator=torch.Generator().manual_seed(1))
    ops = {
        "grad": op.gradient,
        "hvp": lambda: op.hvp(v),
        "ps": lambda: [None for _ in op.per_sample_grads(reuse=True)],  # rows reduced as they come, as lssr does
        "loss": op.loss,
    }
    if graph:
        u = v.reshape(1, -1)
        ops["jvp"] = lambda: op.per_sample_jvp(u)
        kept = op.at(op.theta)
        build = lambda: kept.set_hvp_mode("graph", graph_budget=1 << 40)  # noqa: E731
        build()
        ops["graph"] = build
        ops["hvp_graph"] = lambda: kept.hvp(v)
    for f in ops.values():
        f()
    times = {k: [] for k in ops}
    for _ in range(reps):
        for k, f in ops.items():
            times[k].append(timed(f)[0])
    t = {k: statistics.median(v) for k, v in times.items()}
    return {"t_grad": t["grad"], **{k: t[k] / t["grad"] for k in t if k != "grad"}}


def timed_bundle(op: LossOperator, vector: torch.Tensor, args) -> dict:
    """The lssr bundle at the current θ (``gradient_moments(top=True)`` warm-started from ``vector``), run
    ``args.bundle_reps`` times with the same seed (the same probes, the same ops), between two gradients timed
    before and two after: best-of times on both sides of the wall ratio, since a process beside this one slows
    single timings, not the best of several. Returns the moments, the op counts, the times and the generator
    (for what comes next)."""
    t_grads, walls, counts = [timed(op.gradient)[0] for _ in range(2)], [], []
    for _ in range(args.bundle_reps):
        gen = torch.Generator().manual_seed(args.seed + 3)
        tb, mom, cnt = counted(
            op,
            lambda gen=gen: gradient_moments(
                op,
                exact=False,
                probes=args.probes,
                stage1=args.stage1,
                generator=gen,
                top=True,
                eig_init=vector,
                eig_tol=1e-3,
                rel_se=args.rel_se,
            ),
        )
        walls.append(tb)
        counts.append(cnt)
    if any(c != counts[0] for c in counts):
        raise RuntimeError(f"bench_diagnostics: the repeated bundles did different work: {counts}")
    t_grads += [timed(op.gradient)[0] for _ in range(2)]
    return {
        "mom": mom,
        "counts": counts[0],
        "t_grad": min(t_grads),
        "wall": min(walls),
        "t_grads": t_grads,
        "walls": walls,
        "generator": gen,
    }


def exact_reference(op: LossOperator, eig_vec: torch.Tensor, ratio: dict) -> dict:
    """Exact tr(H S_1) (one HVP per sample) and ‖H‖ continued from ``eig_vec`` to a residual of 1e-5."""
    t, mom, cnt = counted(op, lambda: gradient_moments(op, exact=True, top=False))
    t2, ref, cnt2 = counted(op, lambda: lobpcg_top(op.hvp, eig_vec, tol=1e-5, max_matvecs=40))
    return {
        "tr_HS_1": mom.tr_HS_1,
        "tr_S_1": mom.tr_S_1,
        "tr_S_n": mom.tr_S_n,
        "tr_HS_n": mom.tr_HS_n,
        "hvps": cnt["hvp"],
        "ops": op_cost(cnt, ratio, op.n),
        "wall": t,
        "top": ref.value,
        "top_residual": ref.residual,
        "top_hvps": cnt2["hvp"],
        "top_wall": t2,
    }


def monte_carlo(
    op: LossOperator,
    model,
    lf,
    b_list,
    pilot: int,
    rel_se: float,
    ratio: dict,
    t_grad: float,
    exact: dict | None,
    gen: torch.Generator,
    trace_b,
) -> list[dict]:
    """The paper's way: g_Bᵀ H g_B over sampled batches (without replacement), one b at a time; the batches
    for ``rel_se`` are extrapolated from a ``pilot``-batch pilot (op counts: b/n gradient + 1 HVP each)."""
    rows = []
    for b in b_list:
        vals, tw = [], []
        for _ in range(pilot):
            idx = torch.randperm(op.n, generator=gen)[:b]
            sub = LossOperator(model, lf, op.x[idx], op.y[idx], chunk_size=op.chunk_size)
            t, v = timed(lambda sub=sub: (lambda g: float(g @ op.hvp(g)))(sub.gradient()))
            vals.append(v)
            tw.append(t)
        vals = np.asarray(vals)
        mean, sd = float(vals.mean()), float(vals.std(ddof=1))
        rel = sd / (rel_se * abs(mean)) if math.isfinite(sd / abs(mean)) and mean != 0 else math.nan
        need = max(math.ceil(rel**2), 2) if math.isfinite(rel) else 0
        per = b / op.n + ratio["hvp"]
        row = {
            "b": int(b),
            "pilot_mean": mean,
            "pilot_se": sd / math.sqrt(pilot),
            "rel_sd": sd / abs(mean),
            "batches": need,
            "hvps": need,
            "ops": need * per,
            "wall": need * float(np.median(tw)),
        }
        if exact is not None:
            ex = trace_b(exact["tr_HS_1"], exact["tr_HS_n"], op.n, b, False)
            row["exact"] = ex
            row["err_in_se"] = (mean - ex) / (sd / math.sqrt(pilot))
        rows.append(row)
    return rows


@contextlib.contextmanager
def pyhessian_counting():
    """Counts PyHessian's Hessian-vector products (calls of ``pyhessian.hessian.hessian_vector_product``, each
    a backward pass through its kept graph of the gradient) while the block runs; yields ``[count]``."""
    mod = importlib.import_module("pyhessian.hessian")  # the module (the package exports the class `hessian`)
    calls = [0]
    orig = mod.hessian_vector_product

    def counting(*a, **k):
        calls[0] += 1
        return orig(*a, **k)

    mod.hessian_vector_product = counting
    try:
        yield calls
    finally:
        mod.hessian_vector_product = orig


def pyhessian_top(model, lf, x, y, ratio: dict, seed: int) -> dict:
    """PyHessian 0.1 ``hessian(model, criterion, data=(x, y)).eigenvalues(top_n=1, tol=1e-3)`` (power
    iteration on double-backward HVPs; the full-batch graph with create_graph costs about one gradient)."""
    try:
        import pyhessian  # noqa: F401
        from pyhessian import hessian as ph
    except ImportError:
        return {"skipped": "pyhessian not importable (pip install pyhessian, or the `bench` extra)"}
    m2 = copy.deepcopy(model)
    torch.manual_seed(seed)
    with pyhessian_counting() as calls:
        t, (ev, _) = timed(lambda: ph(m2, lf, data=(x, y), cuda=False).eigenvalues(top_n=1, tol=1e-3, maxIter=100))
    return {
        "top": float(ev[0]),
        "hvps": calls[0],
        "ops": calls[0] * ratio.get("hvp_graph", ratio["hvp"]) + 1.0,
        "wall": t,
        "note": "tr(H S_1): n/a (PyHessian's trace() estimates tr H)",
    }


def _curvlinops_hessian(model, loss: str, x, y, chunk: int):
    """curvlinops' Hessian of our L: CE = CrossEntropyLoss(mean); MSE (½‖f − onehot‖² per sample, mean over n)
    = MSELoss(sum) / (2n)."""
    from curvlinops import HessianLinearOperator
    from torch import nn

    n = int(x.shape[0])
    data = [(x[s : s + chunk], y[s : s + chunk]) for s in range(0, n, chunk)]
    params = [p for p in model.parameters() if p.requires_grad]
    if loss == "ce":
        return HessianLinearOperator(
            model, nn.CrossEntropyLoss(reduction="mean"), params, data, check_deterministic=False, num_data=n
        ), 1.0
    onehot = [(a, torch.nn.functional.one_hot(b, 10).to(a.dtype)) for a, b in data]
    return HessianLinearOperator(
        model, nn.MSELoss(reduction="sum"), params, onehot, check_deterministic=False, num_data=n
    ), 1.0 / (2 * n)


def curvlinops_peer(
    model, loss: str, x, y, chunk: int, G: torch.Tensor | None, budget: int, ratio: dict, seed: int
) -> dict:
    """curvlinops 3: ‖H‖ by scipy ``eigsh(k=1, which='LA', tol=1e-3)`` on ``HessianLinearOperator.to_scipy()``;
    tr(H S_1) by ``hutchpp_trace`` on A = GᵀHG/n (n × n; G the stored per-sample gradients, one HVP per
    matvec) with ``budget`` matvecs (rounded to a multiple of 3)."""
    try:
        from curvlinops import hutchpp_trace
        from curvlinops._torch_base import PyTorchLinearOperator
        from scipy.sparse.linalg import LinearOperator, eigsh
    except ImportError:
        return {"skipped": "curvlinops not importable (pip install curvlinops-for-pytorch, or the `bench` extra)"}
    H, scale = _curvlinops_hessian(model, loss, x, y, chunk)
    Hs = H.to_scipy(dtype=np.float32)
    count = [0]

    def mv(v):
        count[0] += 1
        return scale * Hs.matvec(v)

    L = LinearOperator(Hs.shape, matvec=mv, dtype=np.float32)
    v0 = np.random.default_rng(seed).standard_normal(Hs.shape[0]).astype(np.float32)
    t, (w, _) = timed(lambda: eigsh(L, k=1, which="LA", tol=1e-3, v0=v0))
    out = {"top": float(w[0]), "hvps": count[0], "ops": count[0] * ratio["hvp"], "wall": t}
    if G is None:
        return out
    n = G.shape[0]

    class GramHessian(PyTorchLinearOperator):
        """A = GᵀHG/n on R^n: tr A = tr(H S_1)."""

        def __init__(self):
            super().__init__([(n,)], [(n,)])
            self.calls = 0

        def _matmat(self, X):
            self.calls += X[0].shape[-1]
            V = G.T @ X[0]  # (m, k)
            return [G @ (scale * (H @ V)) / n]

        def _adjoint(self):
            return self

        @property
        def device(self):
            return G.device

        @property
        def dtype(self):
            return G.dtype

    A = GramHessian()
    k = max(3, 3 * round(budget / 3))
    torch.manual_seed(seed)
    t2, tr = timed(lambda: float(hutchpp_trace(A, k)))
    out.update(tr_HS_1=tr, trace_hvps=A.calls, trace_ops=A.calls * ratio["hvp"], trace_wall=t2)
    return out
