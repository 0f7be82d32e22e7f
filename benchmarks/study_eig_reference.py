"""A held-out reference for ‖∇²L_b‖ with batch norm in train mode, and the streaming ‖H‖ against it (~30 minutes).

The kept workload of ``benchmarks/bench_stream_accuracy.py`` (shufflenet_v2_x0_5, batch norm in train mode,
N = 1024 CIFAR-10 images at 32 px, SGD with momentum 0.9, weight decay 5e-4, b = 128, η = 0.05, each step an
independent batch of b distinct samples; the same seeds, so the same run), with ``lssr.SharpnessMonitor`` in its
streaming mode at its defaults (a row every 100 steps, budget unlimited). The loss SGD descends is
L_b(θ) = E_B ℓ(θ; B) over random batches B of b, and H_B = ∇²ℓ(θ; B) are independent draws with mean
H = ∇²L_b. At each of ``--points`` row steps from ``--first`` on, at the row's θ:

- **fit**: the top eigenpair (λ_fit, u) of the mean Hessian of ``--fit`` random batches, by LOBPCG (Davidson
  variant, relative residual ``--tol``), warm-started from the previous point's u (the first from the step's
  gradient). λ_fit is in-sample: the top eigenvalue of an average of noisy matrices lies above ‖H‖ on average;
- **held out**: uᵀH_Bu on ``--heldout`` further random batches, drawn independently of the fitted ones: their mean
  is unbiased for uᵀHu ≤ ‖H‖ (a lower bound of ‖H‖), its standard error from their spread. So ‖H‖ is bracketed by
  [held-out mean − 2 se, λ_fit] (the upper end only on average, and only when LOBPCG found the top eigenpair);
- on the same held-out batches, the Rayleigh quotient of the monitor's tracked vector x (before the row moves it):
  what the streaming ‖H‖ can be worth, whatever its Ritz step adds on one batch; and of the previous point's u
  (|u_tᵀu_{t−1}| too): what a vector that was right 100 steps ago keeps;
- the monitor's row: its ``top_eig`` and ``top_eig_se``.

Writes ``--out`` (default ``results/bench/eig_reference.json``) after every point (a killed run keeps those done).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_accuracy import add_workload_args, kept_run, load_workload, record_context  # noqa: E402
from study_eig_tracking import BatchHessian  # noqa: E402

import lssr  # noqa: E402
from lssr.curvature.eigen import lobpcg_top  # noqa: E402
from lssr.io import write_json  # noqa: E402


def heldout(model, X, Y, b: int, batches: list[torch.Tensor], vectors: dict[str, torch.Tensor]) -> dict:
    """For each named unit vector v: the mean and standard error of vᵀH_Bv over the held-out ``batches`` (index
    tensors of b samples), and the per-batch values."""
    per = {k: [] for k in vectors}
    for idx in batches:
        with BatchHessian(model, X[idx], Y[idx], b) as hb:
            for k, v in vectors.items():
                per[k].append(hb.quotient(v))
    out = {}
    for k, q in per.items():
        out[k] = {"mean": statistics.fmean(q), "se": statistics.stdev(q) / math.sqrt(len(q)), "values": q}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(ap)
    ap.add_argument("--first", type=int, default=699, help="the first row step compared (the rows' steps end in 99)")
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--fit", type=int, default=32, help="random batches whose mean Hessian gives u")
    ap.add_argument("--heldout", type=int, default=32, help="independent batches scoring u")
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--max-hvps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("results/bench/eig_reference.json"))
    args = ap.parse_args(argv)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    ds = load_workload(args, "study-eig-reference")
    if ds is None:
        return 0
    X, Y = ds.tensors
    window = lssr.diagnostics.stream.WINDOW
    due = [args.first + k * window for k in range(args.points)]
    if (args.first + 1) % window:
        raise SystemExit(f"--first must be a row step (k·{window} − 1), got {args.first}")
    model, opt, loader = kept_run(args, ds, due[-1] + 1)
    rows: list[dict] = []
    mon = lssr.SharpnessMonitor(
        model, "ce", loader, opt, callback=rows.append, stream=True, budget=math.inf, batch_sizes=[args.batch]
    )
    pick = torch.Generator().manual_seed(args.seed + 3)
    points: list[dict] = []
    u_prev = None
    for t, (x, y) in enumerate(loader):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        one = None
        if t in due:
            s = time.perf_counter()
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
            fit = torch.cat([torch.randperm(len(X), generator=pick)[: args.batch] for _ in range(args.fit)])
            with BatchHessian(model, X[fit], Y[fit], args.batch) as hk:
                r = lobpcg_top(
                    lambda v: hk.hvp(v), u_prev if u_prev is not None else grad, tol=args.tol,
                    max_matvecs=args.max_hvps, keep=True,
                )  # fmt: skip
            u = r.vector.double() / r.vector.double().norm()
            vectors = {"u": u}
            x_track = mon.streamer.x
            if x_track is not None:
                vectors["tracked"] = x_track.double() / x_track.double().norm()
            if u_prev is not None:
                vectors["u_prev"] = u_prev
            held = [torch.randperm(len(X), generator=pick)[: args.batch] for _ in range(args.heldout)]
            q = heldout(model, X, Y, args.batch, held, vectors)
            one = {
                "step": t,
                "lambda_fit": r.value,
                "fit_residual": r.residual,
                "fit_hvps": r.hvp_count,
                "heldout": q,
                "overlap_prev": abs(float(u @ u_prev)) if u_prev is not None else None,
                "overlap_tracked": abs(float(u @ vectors["tracked"])) if "tracked" in vectors else None,
                "seconds": time.perf_counter() - s,
            }
            u_prev = u
        row = mon.step()
        if one is not None:
            one["stream"] = {k: row[k] for k in ("top_eig", "top_eig_se", "top_eig_residual")} if row else None
            points.append(one)
            write_json(
                args.out,
                {"what": __doc__.splitlines()[0], "settings_fit": {"fit": args.fit, "heldout": args.heldout}}
                | {"points": points}
                | record_context(args, t0, load_before),
            )
            h = one["heldout"]
            print(
                f"step {t}: λ_fit {one['lambda_fit']:.3f} (res {one['fit_residual']:.3g}, {one['fit_hvps']} products), "
                + ", ".join(f"{k} held out {v['mean']:.3f} ± {v['se']:.3f}" for k, v in h.items())
                + f", stream {one['stream']}, {one['seconds']:.0f} s",
                flush=True,
            )
        opt.step()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
