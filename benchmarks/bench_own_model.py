"""``lssr.diagnose`` on a model it was not written for, against curvlinops and PyHessian (``make bench-own-model``).

torchvision's ``resnet18`` (10 classes, batch norm in eval mode: its running statistics) on n real CIFAR-10
training images at 32 px (a seeded subset of /work/shared/data/cifar10-jpeg/train, no augmentation), cross
entropy, CPU, one torch thread, measured at two points: at initialisation (a flat spectrum) and after a short
SGD training on the same n images (train mode, then eval mode for the measurement). At each point:

- lssr: ``lssr.diagnose(model, "ce", (x, y), bn="eval", estimator=Estimator(probes=48))``, its defaults
  otherwise: ‖H‖ (LOBPCG, tol 1e-3) and tr(H S_1) by the sketch to a 5% jackknife standard error (the default
  cap of 16 probes can stop short of 5% on a flat spectrum; ``--probes`` sets the cap);
- curvlinops: ``HessianLinearOperator`` with scipy ``eigsh(k=1, tol=1e-3)`` for ‖H‖, and ``hutchpp_trace`` on
  GᵀHG/n (G the n per-sample gradients, one per-sample pass) for tr(H S_1), with as many HVPs as lssr's sketch;
- PyHessian: ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(top_n=1)`` for ‖H‖, and its
  ``trace()`` with as many HVPs as lssr's sketch, which estimates tr H: PyHessian has no tr(H S_1);
- the exact reference: tr(H S_1) = (1/n) Σ_i g_iᵀ H g_i with one HVP per sample, and ‖H‖ by LOBPCG continued
  from lssr's eigenvector to a residual of 1e-6·‖H‖ (or ``--ref-max-hvps``; the residual reached is kept).

Cost of each in gradient-equivalents (one full-batch gradient on the n images = 1), both ways for every method:
op counts × the cost ratios measured at that point (``bench_peers.cost_ratios``: HVPs by forward-over-reverse, and
HVPs through a kept graph of ∇L with the cost of building it, which is how lssr's ``graph`` mode and PyHessian
compute them), and wall seconds / the time of one gradient (the best of gradients timed before and after the
methods; every method timed the same way, by ``time.perf_counter`` around its call). Writes
``results/bench/own_model.json``; skips with a message when the CIFAR-10 folder is absent. ``--n`` (default 128)
and 60 training steps: the exact reference is n HVPs, a per-sample pass and up to 100 HVPs of LOBPCG per point.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision import transforms as T

import lssr
from lssr.curvature import LossOperator, lobpcg_top
from lssr.diagnostics import Estimator
from lssr.io import write_json
from lssr.losses import get_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_monitor import MEAN, STD  # noqa: E402
from bench_peers import (  # noqa: E402
    cost_ratios,
    counted,
    curvlinops_peer,
    op_cost,
    pyhessian_counting,
    pyhessian_top,
    timed,
)

GOAL = 40.0


def images(root: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n seeded training images of the CIFAR-10 folder as tensors (normalised, no augmentation)."""
    ds = torchvision.datasets.ImageFolder(
        str(root / "train"), transform=T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    )
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs), torch.tensor(ys)


def train(model: nn.Module, x, y, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """``steps`` SGD steps (momentum 0.9) in train mode on minibatches of (x, y); returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    perm = torch.randperm(len(y), generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch > len(y):
            perm, pos = torch.randperm(len(y), generator=gen), 0
        idx = perm[pos : pos + batch]
        pos += batch
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    opt.zero_grad(set_to_none=True)
    model.eval()
    return losses


def pyhessian_trace(model, x, y, max_iter: int, ratio: dict, seed: int) -> dict:
    """PyHessian 0.1 ``hessian(...).trace(maxIter=max_iter)``: Hutchinson's estimate of tr H (not tr(H S_1))."""
    try:
        from pyhessian import hessian as ph
    except ImportError:
        return {"skipped": "pyhessian not importable (pip install pyhessian, or the `bench` extra)"}
    import copy

    torch.manual_seed(seed)
    m2 = copy.deepcopy(model)
    with pyhessian_counting() as calls:
        t, tr = timed(lambda: ph(m2, nn.CrossEntropyLoss(), data=(x, y), cuda=False).trace(maxIter=max_iter))
    return {"tr_H": float(np.mean(tr)), "hvps": calls[0], "ops": calls[0] * ratio["hvp_graph"] + 1.0, "wall": t}


def exact_tr_HS1(op: LossOperator, G: torch.Tensor) -> float:
    """The exact reference tr(H S_1) = (1/n) Σ_i g_iᵀ H g_i (G: the n per-sample gradients g_iᵀ as rows), one HVP
    per sample in a loop (not lssr's own exact path, which batches the HVPs)."""
    return sum(float(g @ op.hvp(g)) for g in G) / op.n


def rel(a: float, b: float) -> float:
    return (a - b) / abs(b) if b else math.nan


def measure(model: nn.Module, x, y, args, label: str) -> dict:
    """Every method at the current θ (model in eval mode), with the exact reference and both cost counts."""
    model.eval()
    op = LossOperator(model, get_loss("ce"), x, y, chunk_size=len(y))
    ratio = cost_ratios(op, reps=1, graph=True)
    t_grads = [timed(op.gradient)[0] for _ in range(2)]
    print(f"[{label}] ratios {ratio}", flush=True)

    # lssr, its defaults
    est = Estimator(probes=args.probes)
    t_lssr, d = timed(lambda: lssr.diagnose(model, "ce", (x, y), bn="eval", seed=args.seed, estimator=est))
    c = d.cost
    counts = {
        "hvp": c.hvps,
        "grad": c.gradients,
        "per_sample_pass": c.per_sample_passes,
        "loss": c.loss_passes,
        "graph": c.graph_builds,
        "jvp": c.jvps,
    }
    sketch_hvps = c.hvps - d.top_eig_hvps
    out = {
        "point": label,
        "ratios": ratio,
        "lssr": {
            "top": d.top_eig,
            "top_residual": d.top_eig_residual,
            "top_hvps": d.top_eig_hvps,
            "tr_HS_1": d.tr_HS_1,
            "tr_HS_1_se": d.tr_HS_1_se,
            "estimator": d.estimator,
            "probes": d.probes,
            "counts": counts,
            "hvp_mode": c.hvp_mode,
            "per_sample_mode": c.per_sample_mode,
            "ops": op_cost(counts, ratio, op.n, hvp_mode=c.hvp_mode),
            "wall": t_lssr,
            "self_reported_gradient_equivalents": c.gradient_equivalents,
            "self_reported_seconds": c.seconds,
        },
    }
    print(f"[{label}] lssr {t_lssr:.1f} s: {out['lssr']}", flush=True)

    # per-sample gradients G (one per-sample pass): the exact reference's and curvlinops' GᵀHG/n
    def per_sample_matrix():
        G = torch.empty(op.n, op.space.dim, dtype=op.dtype)
        for _ in op.per_sample_grads(out=G):
            pass
        return G

    t_g, G = timed(per_sample_matrix)

    t_ex, tr_exact, cnt = counted(op, lambda: exact_tr_HS1(op, G))
    x0 = d.eigenvector if d.eigenvector is not None and d.eigenvector.numel() == op.space.dim else None
    t_top, ref, cnt2 = counted(op, lambda: lobpcg_top(op.hvp, x0, tol=args.ref_tol, max_matvecs=args.ref_max_hvps))
    out["exact"] = {
        "tr_HS_1": tr_exact,
        "tr_S_1": float((G * G).sum() / op.n),
        "trace_hvps": cnt["hvp"],
        "trace_ops": op_cost({**cnt, "per_sample_pass": 1}, ratio, op.n),
        "trace_wall": t_ex + t_g,
        "top": ref.value,
        "top_residual": ref.residual,
        "top_tol": args.ref_tol,
        "top_warm_start": "lssr's eigenvector" if x0 is not None else "random",
        "top_hvps": cnt2["hvp"],
        "top_wall": t_top,
    }
    print(f"[{label}] exact: {out['exact']}", flush=True)

    # curvlinops: the per-sample gradients it needs for GᵀHG/n are one per-sample pass, counted on its side
    try:
        import curvlinops

        budget = min(sketch_hvps, 3 * ((op.n - 1) // 3))  # Hutch++ needs fewer matvecs than n
        cl = curvlinops_peer(model, "ce", x, y, len(y), G, budget, ratio, args.seed)
        cl["per_sample_wall"] = t_g
        cl["trace_ops"] += ratio["ps"]
        cl["trace_wall"] += t_g
        cl["version"] = getattr(curvlinops, "__version__", None)
    except ImportError as e:
        cl = {"skipped": f"curvlinops not importable ({e}): pip install curvlinops-for-pytorch, or the `bench` extra"}
    G = None  # free the n × m matrix before the PyHessian runs
    out["curvlinops"] = cl
    print(f"[{label}] curvlinops: {cl}", flush=True)

    # PyHessian
    ph = pyhessian_top(model, nn.CrossEntropyLoss(), x, y, ratio, args.seed)
    if "skipped" not in ph:
        ph["trace"] = pyhessian_trace(model, x, y, max(sketch_hvps, 1), ratio, args.seed)
        ph["tr_HS_1"] = None
        ph["tr_HS_1_note"] = "not available: PyHessian's trace() estimates tr H, not tr(H S_1)"
    out["pyhessian"] = ph
    print(f"[{label}] pyhessian: {ph}", flush=True)

    t_grads += [timed(op.gradient)[0] for _ in range(2)]
    tg = min(t_grads)
    out["t_grad_s"] = tg
    out["t_grads"] = t_grads
    ex = out["exact"]
    L = out["lssr"]
    L["wall_ge"] = L["wall"] / tg
    L["top_rel_err"] = rel(L["top"], ex["top"])
    L["tr_HS_1_rel_err"] = rel(L["tr_HS_1"], ex["tr_HS_1"])
    L["tr_HS_1_err_in_se"] = (L["tr_HS_1"] - ex["tr_HS_1"]) / L["tr_HS_1_se"] if L["tr_HS_1_se"] else math.nan
    L["tr_HS_1_rel_se"] = L["tr_HS_1_se"] / abs(L["tr_HS_1"])
    L["goal_met"] = max(L["ops"], L["wall_ge"]) <= GOAL
    ex["trace_wall_ge"] = ex["trace_wall"] / tg
    ex["top_wall_ge"] = ex["top_wall"] / tg
    if "skipped" not in cl:
        cl["top_rel_err"] = rel(cl["top"], ex["top"])
        cl["tr_HS_1_rel_err"] = rel(cl["tr_HS_1"], ex["tr_HS_1"])
        cl["total_ops"] = cl["ops"] + cl["trace_ops"]
        cl["total_wall_ge"] = (cl["wall"] + cl["trace_wall"]) / tg
    if "skipped" not in ph:
        ph["top_rel_err"] = rel(ph["top"], ex["top"])
        ph["wall_ge"] = ph["wall"] / tg
        tr = ph["trace"]
        ph["total_ops"] = ph["ops"] + tr["ops"]
        ph["total_wall_ge"] = (ph["wall"] + tr["wall"]) / tg
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/cifar10-jpeg"))
    ap.add_argument("--n", type=int, default=128, help="images (default 128)")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--probes", type=int, default=48, help="lssr's cap on sketch probes (stops at 5%% se)")
    ap.add_argument("--ref-tol", type=float, default=1e-6)
    ap.add_argument("--ref-max-hvps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/bench/own_model.json"))
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        print(
            f"bench-own-model: skipped: no CIFAR-10 image folder at {args.data}/train (see /work/shared/data/README.md)"
        )
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    x, y = images(args.data, args.n, args.seed)
    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=10)
    model.eval()
    points = [measure(model, x, y, args, "init")]
    t_train, losses = timed(lambda: train(model, x, y, args.train_steps, args.batch, args.lr, args.seed))
    with torch.no_grad():
        out = model(x)
    trained = {
        "steps": args.train_steps,
        "wall_s": t_train,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "train_loss_eval_mode": float(F.cross_entropy(out, y)),
        "train_accuracy_eval_mode": float((out.argmax(1) == y).float().mean()),
    }
    print(f"trained: {trained}", flush=True)
    points.append(measure(model, x, y, args, "trained"))
    peers = {}
    for name, mod in (("curvlinops", "curvlinops"), ("pyhessian", "pyhessian")):
        try:
            m = __import__(mod)
            peers[name] = getattr(m, "__version__", "installed")
        except ImportError as e:
            peers[name] = f"skipped: {e}"
    result = {
        "what": "lssr.diagnose on torchvision resnet18 (BN eval) against curvlinops, PyHessian and exact values",
        "goal_gradient_equivalents": GOAL,
        "n": args.n,
        "points": points,
        "training": trained,
        "peers": peers,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": time.perf_counter() - t0,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lssr": lssr.__version__ if hasattr(lssr, "__version__") else None,
        "python": platform.python_version(),
    }
    write_json(args.out, result)
    for p in points:
        L = p["lssr"]
        print(
            f"{p['point']}: lssr {L['ops']:.1f} gradients (op counts), {L['wall_ge']:.1f} (wall); ‖H‖ err "
            f"{L['top_rel_err']:+.1e}, tr(H S_1) err {L['tr_HS_1_rel_err']:+.2%} ({L['tr_HS_1_err_in_se']:+.2f} se)"
        )
    print(f"whole run {result['wall_s']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
