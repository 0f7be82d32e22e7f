"""Streaming ‖H‖ trackers side by side on one training run: what one or a few products per row can follow.

Every tracker keeps a unit vector x across rows (a row every ``--window`` steps) and, at each row, sees the same
fresh probe data and the same v (the sign sketch Σ_t z_t g_t/√L of the last L = 8 mini-batch gradients, whose
product H_P v a streaming row computes anyway for tr(H S_b)); each reports a value and moves x:

- ``ritz``: the monitor's tracker (:func:`lssr.diagnostics.stream.row_products`): the top Ritz pair (θ, y) of H_P
  in span{x, v}, reported θ, then x ← y + ``EIG_STEP``·H_Py/‖H_Py‖ (one product besides H_P v);
- ``oja-a``: reports xᵀH_Px (x fixed before the probe data were drawn: unbiased for xᵀHx ≤ ‖H‖), then
  x ← x + a·H_Px/‖H_Px‖ (one product; ``power`` is a → ∞);
- ``ema``: reports xᵀH_Px, then m ← (1 − β)m + βH_Px, x ← m/‖m‖ (one product: H_P x averaged over rows);
- with more products per row (``-k4``: the product is the mean over 4 fresh probe sets, ``ritz-k4`` as ``ritz``
  on the mean Hessian of 4 probe sets; ``dav-k1-m3`` and ``dav-k4-m3``: three Davidson products warm-started
  from x on one probe set or the mean of 4, reported the top Ritz value, in-sample). ``products_per_row`` in the
  record counts the products on one probe set besides H_P v.

Workloads (``--workload``):

- ``eos``: plain SGD (η = 0.1, no momentum) of the project's ``digits_cnn`` (no batch norm) on 1,024 CIFAR-10
  images at 16 px, b = 128 with replacement, a row every 20 steps with 32 probe samples (the monitor's
  ``stream_n``): the run of the guide's figure, at the edge of stability from step ~150. Reference: ‖H‖ of the
  training loss on all N samples by LOBPCG (Davidson, relative residual 1e-3) at every row; per tracker, the ratio
  reported/‖H‖ and |xᵀu| over the rows from step 200.
- ``kept``: the kept workload of ``make bench-monitor`` (shufflenet_v2_x0_5, batch norm in train mode, N = 1024
  at 32 px, momentum 0.9, weight decay 5e-4, b = 128), a row every 100 steps, the probe data one batch of b
  (normalised with its own statistics). Reference: at the rows ``--score``, each tracker's x scored on 16
  independent batches (the mean of xᵀH_Bx, unbiased for xᵀ∇²L_b x); ``study_eig_reference.py`` brackets ‖∇²L_b‖
  at row steps of the same run (on the same CPU: the records name it). Beside the trackers, directions that
  need no tracking, scored on the same batches (``free`` in the record; ``reported`` their in-sample value on
  the row's 4 probe sets):
  ``grad-pc1``, the top principal direction of the window's own 100 training gradients (uncentred: the top
  eigenvector of their second moment, S_b's estimate); ``grad-ritz4``, the top Ritz vector of the 4 probe sets'
  mean Hessian in span{the top 3 of those directions, the top direction of consecutive differences g_t − g_{t−1}};
  ``last-layer``, the top eigenvector of the last linear layer's block of the 4 probe sets' mean Hessian (LOBPCG
  on that block, at most 20 products on each set).

Writes ``results/bench/eig_trackers_<workload>.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_accuracy import add_workload_args, images, kept_run, load_workload, record_context  # noqa: E402
from study_eig_tracking import BatchHessian  # noqa: E402

import lssr  # noqa: E402
from lssr.curvature.eigen import lobpcg_top  # noqa: E402
from lssr.diagnostics.engine import prepare  # noqa: E402
from lssr.diagnostics.stream import EIG_STEP, ritz2  # noqa: E402
from lssr.io import write_json  # noqa: E402
from lssr.models import build_model  # noqa: E402


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


class Tracker:
    """A tracked unit vector x; ``row(products, v, Hv)`` reports a value and moves x. ``products`` are the
    H-vector product functions of the row's fresh probe sets (the first gave Hv); a tracker uses the first k."""

    k = 1

    def __init__(self):
        self.x = None

    def mean_hvp(self, products, u):
        return sum(h(u) for h in products[: self.k]) / self.k

    def row(self, products, v, Hv) -> float:
        if self.x is None:
            self.x = unit(v)
        return self.update(products, v, Hv)


class Ritz(Tracker):
    def update(self, products, v, Hv):
        lam, y, Hy = ritz2(self.x, products[0](self.x), v, Hv)
        self.x = unit(y + EIG_STEP * Hy / Hy.norm())
        return lam


class RitzMean(Ritz):
    """``ritz`` on the mean Hessian of the first k probe sets (H v recomputed on all of them)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def update(self, products, v, Hv):
        lam, y, Hy = ritz2(self.x, self.mean_hvp(products, self.x), v, self.mean_hvp(products, v))
        self.x = unit(y + EIG_STEP * Hy / Hy.norm())
        return lam


class Oja(Tracker):
    def __init__(self, a: float, k: int = 1):
        super().__init__()
        self.a, self.k = a, k

    def update(self, products, v, Hv):
        Hx = self.mean_hvp(products, self.x)
        lam = float(self.x @ Hx)
        self.x = unit(self.x + self.a * Hx / Hx.norm())
        return lam


class Ema(Tracker):
    def __init__(self, beta: float, k: int = 1):
        super().__init__()
        self.beta, self.k, self.m = beta, k, None

    def update(self, products, v, Hv):
        Hx = self.mean_hvp(products, self.x)
        lam = float(self.x @ Hx)
        self.m = Hx if self.m is None else (1 - self.beta) * self.m + self.beta * Hx
        self.x = unit(self.m)
        return lam


class Davidson(Tracker):
    def __init__(self, k: int, m: int):
        super().__init__()
        self.k, self.m = k, m

    def update(self, products, v, Hv):
        r = lobpcg_top(lambda u: self.mean_hvp(products, u), self.x, tol=1e-6, max_matvecs=self.m, keep=True)
        self.x = unit(r.vector.to(self.x.dtype))
        return r.value


def top_directions(G: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The top k right singular vectors of G (rows: gradients), unit, from the Gram matrix GGᵀ."""
    w, V = torch.linalg.eigh(G @ G.T)
    return [unit(G.T @ V[:, i]) for i in torch.argsort(w, descending=True)[:k].tolist()]


def last_layer_mask(model: torch.nn.Module) -> torch.Tensor:
    """1 on the parameters of the model's last ``nn.Linear`` (weight and bias), 0 elsewhere, in parameter order."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    mine = {id(p) for p in last.parameters()}
    return torch.cat([torch.full((p.numel(),), float(id(p) in mine), dtype=torch.float64) for p in model.parameters()])


def free_directions(pool: torch.Tensor, products, mask: torch.Tensor) -> dict[str, tuple[torch.Tensor, float]]:
    """Directions that need no tracking (module docstring), each with its in-sample value on the probe sets;
    ``mask`` selects the last layer (:func:`last_layer_mask`)."""

    def mean_hvp(u):
        return sum(h(u) for h in products) / len(products)

    G = pool.double()
    pcs = top_directions(G, 3)
    B = torch.linalg.qr(torch.stack(pcs + top_directions(G[1:] - G[:-1], 1), 1))[0]
    M = B.T @ torch.stack([mean_hvp(B[:, j]) for j in range(B.shape[1])], 1)
    w, V = torch.linalg.eigh((M + M.T) / 2)
    # B's first column is ±pcs[0], so M[0, 0] is grad-pc1's in-sample quotient
    out = {"grad-pc1": (pcs[0], float(M[0, 0])), "grad-ritz4": (unit(B @ V[:, -1]), float(w[-1]))}
    r = lobpcg_top(lambda u: mask * mean_hvp(mask * u), mask * G[-1], tol=1e-3, max_matvecs=20)
    out["last-layer"] = (unit(mask * r.vector.double()), r.value)
    return out


def trackers() -> dict[str, Tracker]:
    return {
        "ritz": Ritz(),
        "oja-0.5": Oja(0.5),
        "oja-0.2": Oja(0.2),
        "power": Oja(1e6),
        "ema-0.3": Ema(0.3),
        "ritz-k4": RitzMean(4),
        "dav-k1-m3": Davidson(1, 3),
        "oja-0.5-k4": Oja(0.5, k=4),
        "ema-0.3-k4": Ema(0.3, k=4),
        "dav-k4-m3": Davidson(4, 3),
    }


#: The products per row on one probe set besides H_P v (which ``ritz-k4`` recomputes on the other three sets).
PRODUCTS = {"ritz": 1, "oja-0.5": 1, "oja-0.2": 1, "power": 1, "ema-0.3": 1, "ritz-k4": 7, "dav-k1-m3": 3}
PRODUCTS |= {"oja-0.5-k4": 4, "ema-0.3-k4": 4, "dav-k4-m3": 12}


#: eos: the monitors run beside the trackers (``lssr.SharpnessMonitor`` options), their rows' ‖H‖ against the reference.
MONITORS = {
    "default": {},
    "stream_n=128, Eigen(max_hvps=3)": {"stream_n": 128, "eigen": lssr.Eigen(max_hvps=3)},
}
#: Their products per row in products on 32 samples besides H_P v (the default's one; three on 128 samples).
PRODUCTS |= {"monitor default": 1, "monitor stream_n=128, Eigen(max_hvps=3)": 12}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(ap)
    ap.add_argument("--workload", choices=["eos", "kept"], default="kept")
    ap.add_argument("--rows", type=int, default=None, help="rows (default: 30 for eos, 14 for kept)")
    ap.add_argument("--score", type=int, nargs="*", default=[6, 8, 10, 12, 13], help="kept: rows scored")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    eos = args.workload == "eos"
    if eos:
        args.px, args.lr, args.weight_decay = 16, 0.1, 0.0
    out = args.out or Path(f"results/bench/eig_trackers_{args.workload}.json")
    load_before, t0 = os.getloadavg(), time.perf_counter()
    if eos:
        root = args.data
        if not (root / "train").is_dir():
            print(f"{root}/train: no CIFAR-10 image folder; nothing measured (give --data)")
            return 0
        ds = images(root, args.n, args.px, args.seed)
    else:
        ds = load_workload(args, "study-eig-trackers")
        if ds is None:
            return 0
    X, Y = ds.tensors
    torch.manual_seed(args.seed)
    window, stream_n = (20, 32) if eos else (100, args.batch)
    rows = args.rows or (30 if eos else 14)
    total = window * rows
    if eos:
        model = build_model("digits_cnn", in_channels=3, num_classes=10, batch_norm=False)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        sampler = RandomSampler(ds, replacement=True, num_samples=args.batch * total,
                                generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
        loader = DataLoader(ds, batch_size=args.batch, sampler=sampler)
    else:
        model, opt, loader = kept_run(args, ds, total)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(args.seed + 77)
    tr = trackers()

    def probe():
        return torch.randperm(len(X), generator=gen)[:stream_n]

    def operator(idx):
        """The probe set's H-vector product (a context to close) at the current θ."""
        if eos:
            op = prepare(model, "ce", [(X[idx], Y[idx])], chunk_size=len(idx)).operator(chunk_size=len(idx))
            return None, lambda u: op.hvp(u.float()).double()
        h = BatchHessian(model, X[idx], Y[idx], args.batch).__enter__()
        return h, h.hvp

    # eos: the monitor itself on the same run, at its defaults and with the Eigen option (the training unchanged)
    monitors = {}
    if eos:
        for name, kw in MONITORS.items():
            got: list[dict] = []
            mon = lssr.SharpnessMonitor(
                model, "ce", ds, opt, stream=True, window=window, budget=math.inf, batch_sizes=[args.batch],
                seed=args.seed, callback=got.append, **kw,
            )  # fmt: skip
            monitors[name] = (mon, got)
    ring: list[torch.Tensor] = []
    pool = None if eos else torch.zeros(window, sum(p.numel() for p in params))  # kept: the window's gradients
    results: list[dict] = []
    u = None
    for t, (x, y) in enumerate(loader):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ring = (ring + [torch.cat([p.grad.reshape(-1) for p in params]).double()])[-8:]
        if pool is not None:
            pool[t % window] = ring[-1]
        if (t + 1) % window == 0:
            r = (t + 1) // window - 1
            one: dict = {"step": t}
            if eos:  # the reference ‖H‖ on all N samples
                op = prepare(model, "ce", [(X, Y)], chunk_size=256).operator(chunk_size=256)
                ref = lobpcg_top(lambda w: op.hvp(w.float()).double(), u if u is not None else ring[-1], tol=1e-3,
                                 max_matvecs=80, keep=True)  # fmt: skip
                u_new = unit(ref.vector.double())
                one |= {"reference": ref.value, "reference_residual": ref.residual}
                one["reference_overlap_prev"] = abs(float(u_new @ u)) if u is not None else None
                u = u_new
            z = (torch.randint(0, 2, (len(ring),), generator=gen) * 2 - 1).double()
            v = sum(zi * gi for zi, gi in zip(z, ring)) / math.sqrt(len(ring))
            ops = [operator(probe()) for _ in range(4)]
            products = [h for _, h in ops]
            Hv = products[0](v)
            one["reported"] = {k: c.row(products, v, Hv) for k, c in tr.items()}
            free = free_directions(pool, products, last_layer_mask(model)) if not eos and r in args.score else {}
            for ctx, _ in ops:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
            if eos:
                one["overlap"] = {k: abs(float(c.x @ u)) for k, c in tr.items()}
            elif r in args.score:
                vectors = {k: c.x for k, c in tr.items()} | {k: x for k, (x, _) in free.items()}
                one["free"] = {k: val for k, (_, val) in free.items()}
                held: dict[str, list[float]] = {k: [] for k in vectors}
                for _ in range(16):
                    idx = probe()
                    with BatchHessian(model, X[idx], Y[idx], args.batch) as hb:
                        for k, x in vectors.items():
                            held[k].append(hb.quotient(x))
                one["heldout"] = {
                    k: {"mean": statistics.fmean(q), "se": statistics.stdev(q) / math.sqrt(len(q))}
                    for k, q in held.items()
                }
            for name, (mon, got) in monitors.items():
                mon.step()
                one.setdefault("monitors", {})[name] = got[-1]["top_eig"] if got and got[-1]["step"] == t else None
            results.append(one)
            print(f"step {t}: " + ", ".join(f"{k} {val:.3g}" for k, val in one["reported"].items())
                  + (f"; reference {one['reference']:.3g}" if eos else "")
                  + ("; held out " + ", ".join(f"{k} {h['mean']:.3g}" for k, h in one["heldout"].items())
                     if "heldout" in one else ""), flush=True)  # fmt: skip
            summary = {}
            if eos:
                late = [o for o in results if o["step"] >= 200]
                if len(late) >= 2:
                    for k in tr:
                        ratio = [o["reported"][k] / o["reference"] for o in late]
                        summary[k] = {
                            "ratio_mean": statistics.fmean(ratio),
                            "ratio_sd": statistics.stdev(ratio),
                            "overlap_mean": statistics.fmean(o["overlap"][k] for o in late),
                            "rows": len(late),
                        }
                    for name in monitors:
                        ratio = [o["monitors"][name] / o["reference"] for o in late]
                        summary["monitor " + name] = {
                            "ratio_mean": statistics.fmean(ratio),
                            "ratio_sd": statistics.stdev(ratio),
                            "rows": len(late),
                        }
            write_json(
                out,
                {"what": __doc__.splitlines()[0], "workload": args.workload, "window": window, "stream_n": stream_n}
                | {"products_per_row": PRODUCTS, "summary": summary, "rows": results}
                | record_context(args, t0, load_before),
            )
        elif monitors:
            for mon, _ in monitors.values():
                mon.step()
        opt.step()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
