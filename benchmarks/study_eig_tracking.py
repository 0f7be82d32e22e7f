"""Can a streaming row track ‖H‖ with one or two Hessian-vector products on one probe batch? (~5 minutes)

The kept workload of ``make bench-monitor`` and ``benchmarks/bench_stream_accuracy.py`` (shufflenet_v2_x0_5, batch
norm in train mode, N = 1024 CIFAR-10 images at 32 px, SGD with momentum 0.9, weight decay 5e-4, b = 128, η = 0.05,
each step an independent batch of b distinct samples). After ``--warmup`` steps, at ``--points`` steps
``--every`` apart, it measures what tracking ‖H‖ = λ_max(∇²L_b) from a row's probe batch depends on:

- **the reference**: the top eigenpair (λ, u) of H = ∇²L_b on all N samples (N/b batches, each normalised with its
  own statistics), by LOBPCG to a relative residual of ``--tol`` warm-started from the previous point's u;
- **drift**: |u_tᵀu_{t−1}| and the previous eigenvector's Rayleigh quotient u_{t−1}ᵀH_t u_{t−1} / λ_t, i.e. how
  much of ‖H‖ a perfectly tracked vector keeps after ``--every`` steps;
- **one batch's noise**: for ``--batches`` random batches B of b, the Rayleigh quotient of the reference u under the
  batch's Hessian H_B (E_B[uᵀH_Bu] = λ, its spread the noise of a one-batch estimate), and the top eigenpair
  (λ_B, u_B) of H_B by LOBPCG: λ_B / λ, the overlap |u_Bᵀu| and u_B's quotient under the full H (what a vector
  fitted to one batch is worth for ‖H‖);
- **the gradients**: the Rayleigh quotient gᵀHg/‖g‖² of the step's mini-batch gradient (the directions the
  streaming rows already have) against λ;
- with ``--ks``: for each K, the top eigenpair (λ_K, u_K) of the average Hessian of K random batches (in-sample,
  biased upward) and u_K's Rayleigh quotient on ``--heldout`` independent batches (unbiased for u_K's quotient
  under the Hessian of L_b, so a lower bound of its ‖H‖).

Writes ``results/bench/eig_tracking.json`` after every point (a killed run keeps those done).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_accuracy import add_workload_args, kept_run, load_workload, record_context  # noqa: E402

from lssr.curvature.eigen import lobpcg_top  # noqa: E402
from lssr.diagnostics.engine import prepare  # noqa: E402
from lssr.diagnostics.guards import restoring  # noqa: E402
from lssr.io import write_json  # noqa: E402


class BatchHessian:
    """H-vector products of L_b on ``x, y`` (chunks of b samples, each a batch normalised with its own statistics)
    at the model's current θ, running statistics untouched; use as a context manager."""

    def __init__(self, model, x, y, b):
        self.prep = prepare(model, "ce", [(x, y)], chunk_size=b)
        self.b = b

    def __enter__(self):
        self._ctx = restoring(self.prep.model, "batch", "eval")
        self._ctx.__enter__()
        self.op = self.prep.operator(chunk_size=self.b, batch_stats=True)
        return self

    def __exit__(self, *exc):
        self.op = None
        return self._ctx.__exit__(*exc)

    def hvp(self, v):
        return self.op.hvp(v.to(torch.float32)).double()

    def quotient(self, v):
        v = v.double() / v.double().norm()
        return float(v @ self.hvp(v))

    def top(self, x0, tol, max_hvps):
        r = lobpcg_top(lambda v: self.hvp(v), x0, tol=tol, max_matvecs=max_hvps)
        return r.value, r.vector.double() / r.vector.double().norm(), r.hvp_count, r.residual


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(ap)
    ap.add_argument("--warmup", type=int, default=600, help="training steps before the first point")
    ap.add_argument("--every", type=int, default=100, help="steps between points (the monitor's row cadence)")
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--batches", type=int, default=3, help="random batches whose own Hessian is measured per point")
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--max-hvps", type=int, default=40)
    ap.add_argument(
        "--ks", type=int, nargs="*", default=[], help="also: λ of the average over K random batches, for each K"
    )
    ap.add_argument("--heldout", type=int, default=8, help="independent batches scoring each K-batch eigenvector")
    ap.add_argument("--out", type=Path, default=Path("results/bench/eig_tracking.json"))
    args = ap.parse_args(argv)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    ds = load_workload(args, "study-eig-tracking")
    if ds is None:
        return 0
    X, Y = ds.tensors
    model, opt, loader = kept_run(args, ds, args.warmup + args.every * (args.points - 1) + 1)
    due = {args.warmup + k * args.every for k in range(args.points)}
    pick = torch.Generator().manual_seed(args.seed + 2)
    points: list[dict] = []
    u_prev = None
    for t, (x, y) in enumerate(loader):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if t in due:
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
            s = time.perf_counter()
            perm = torch.randperm(len(X), generator=pick)  # all N samples, in batches of b (L_b's partition)
            with BatchHessian(model, X[perm], Y[perm], args.batch) as full:
                lam, u, hvps, res = full.top(u_prev if u_prev is not None else grad, args.tol, args.max_hvps)
                one = {"step": t, "lambda": lam, "hvps": hvps, "residual": res, "grad_quotient": full.quotient(grad)}
                if u_prev is not None:
                    one["overlap_prev"] = abs(float(u @ u_prev))
                    one["prev_quotient_rel"] = full.quotient(u_prev) / lam
                sweep = []
                for K in args.ks:  # in-sample λ_K of K random batches, and its eigenvector on independent ones
                    idx = torch.cat([torch.randperm(len(X), generator=pick)[: args.batch] for _ in range(K)])
                    with BatchHessian(model, X[idx], Y[idx], args.batch) as hk:
                        lk, uk, k_hvps, k_res = hk.top(u, args.tol, args.max_hvps)
                    fresh = [torch.randperm(len(X), generator=pick)[: args.batch] for _ in range(args.heldout)]
                    held = torch.cat(fresh)
                    with BatchHessian(model, X[held], Y[held], args.batch) as hh:
                        q = hh.quotient(uk)
                    sweep.append({"K": K, "lambda_K": lk, "heldout_quotient": q, "hvps": k_hvps, "residual": k_res})
                one["k_sweep"] = sweep
                batches = []
                for _ in range(args.batches):
                    idx = torch.randperm(len(X), generator=pick)[: args.batch]
                    with BatchHessian(model, X[idx], Y[idx], args.batch) as hb:
                        lb, ub, hb_hvps, hb_res = hb.top(u, args.tol, args.max_hvps)
                        bt = {"u_quotient_rel": hb.quotient(u) / lam, "lambda_B_rel": lb / lam}
                    bt |= {"overlap": abs(float(ub @ u)), "hvps": hb_hvps, "residual": hb_res}
                    bt["u_B_quotient_full_rel"] = full.quotient(ub) / lam  # u_B's worth under the full H
                    batches.append(bt)
                one["batches"] = batches
            one["seconds"] = time.perf_counter() - s
            points.append(one)
            u_prev = u
            write_json(
                args.out,
                {"what": __doc__.splitlines()[0], "points": points} | record_context(args, t0, load_before),
            )
            summary = {k: v for k, v in one.items() if k != "batches"}
            print(f"step {t}: {summary}", flush=True)
            for bt in batches:
                print(f"   batch: {bt}", flush=True)
        opt.step()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
