"""Benchmark of the diagnostics engine (``make bench-diagnostics``).

On cnn6 (0.51M parameters) and n CIFAR-10 images (``/work/shared/data/cifar10-jpeg``, an image-folder
tree ``train/<class>/*.jpg``; random data with a note when absent) it prints, in one run:

A. the cost of a gradient, one HVP (forward-over-reverse and double backward), a batch of HVPs,
   all per-sample gradient norms, per-sample directional derivatives and a loss pass, as ratios to
   one full-batch gradient (medians of interleaved repetitions);
B. ‖H‖ along a short GD trajectory at the edge of stability (η chosen so that ‖H‖ ≈ 2/η): LOBPCG warm
   and cold at tol = 1e-3 against a tightly converged reference, and PyHessian ``eigenvalues(top_n=1)``
   and scipy ``eigsh`` when importable;
C. the whole per-step probe bundle (‖H‖, tr S_1, tr S_n, tr(H S_n), tr(H S_1) at ≤ 5% relative se,
   every b at once) in gradient-equivalents;
D. the paper's way — Monte-Carlo over sampled batches, g_Bᵀ H g_B for each b separately — sized from a
   pilot to the same 5% se, in gradient-equivalents.

Timings on a shared CPU are noisy; the op counts are exact. Run ``python benchmarks/bench_diagnostics.py
--help`` for the knobs; the defaults take about 9 minutes on an idle 2-core machine (12 under load).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from lssr.curvature import LossOperator, top_eigenvalue_op
from lssr.diagnostics import gradient_moments, per_b
from lssr.losses import get_loss
from lssr.models import CNN6, count_parameters

CIFAR = Path("/work/shared/data/cifar10-jpeg")


def load_images(n: int, root: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    train = root / "train"
    if not train.is_dir():
        print(f"NOTE: {train} not found: using random N(0,1) images instead of CIFAR-10", flush=True)
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10, "random 3x32x32"
    from PIL import Image

    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    per = math.ceil(n / len(classes))
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted((train / name).glob("*.jpg"))[:per]:
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(c)
    x = torch.tensor(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0
    y = torch.tensor(ys)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = x[perm], y[perm]
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    return x, y, f"CIFAR-10 ({root}), {n} images, {len(classes)} classes"


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def md_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128, help="training images (default 128)")
    ap.add_argument("--loss", default="mse", choices=["mse", "ce"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 avoids oversubscription on a shared CPU)")
    ap.add_argument("--chunk", type=int, default=128, help="memory chunk for full-data passes")
    ap.add_argument("--ps-chunk", type=int, default=32, help="chunk for per-sample gradients")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of the cost measurements")
    ap.add_argument("--warmup", type=int, default=10, help="GD steps before the measured trajectory")
    ap.add_argument("--traj", type=int, default=4, help="measured GD steps")
    ap.add_argument("--cold-every", type=int, default=0, help="also time a cold start every k-th measured step (0: at the first only)")
    ap.add_argument("--stage1", type=int, nargs="+", default=[8, 4], help="bundle variants: range-finder directions")
    ap.add_argument("--exact-check", action="store_true", help="also compute tr(H S_1) exactly at the bundle's θ (n HVPs)")
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--rel-se", type=float, default=0.05)
    ap.add_argument("--mc-b", type=int, nargs="*", default=[8, 32], help="batch sizes for the Monte-Carlo comparison")
    ap.add_argument("--mc-pilot", type=int, default=6, help="pilot batches per b for the Monte-Carlo comparison")
    ap.add_argument("--eigsh-warm", action="store_true", help="also run scipy eigsh warm-started with v0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=CIFAR)
    return ap.parse_args(argv)


def section_a_costs(bench: SimpleNamespace) -> dict:
    """A. The cost of each primitive as a ratio to one full-batch gradient: {operation: ratio}, plus t_grad."""
    args = bench.args
    op = bench.make_op()
    gen = torch.Generator().manual_seed(args.seed + 1)
    v = torch.randn(op.space.dim, generator=gen)
    V4 = torch.randn(4, op.space.dim, generator=gen)
    ops = {
        "gradient ∇L": lambda: op.gradient(),
        "HVP, forward-over-reverse (jvp of grad)": lambda: op.hvp(v),
        "HVP, double backward": lambda: op.hvp_double_backward(v),
        "4 HVPs in one vmap, per HVP": lambda: op.hvp_many(V4, batch=4),
        "all per-sample gradient norms (vmap of grad)": lambda: [g.norm() for _, g in op.per_sample_grads()],
        "per-sample directional derivatives g_iᵀu, per direction (4 in one vmap)": lambda: op.per_sample_jvp(V4),
        "loss pass L(θ)": lambda: op.loss(),
    }
    per_call = {"4 HVPs in one vmap, per HVP": 4, "per-sample directional derivatives g_iᵀu, per direction (4 in one vmap)": 4}
    for f in ops.values():  # warm-up (first-call overheads)
        f()
    times: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(args.reps):
        for k, f in ops.items():
            times[k].append(timed(f)[0] / per_call.get(k, 1))
    t_grad = statistics.median(times["gradient ∇L"])
    ratio = {k: statistics.median(t) / t_grad for k, t in times.items()}
    print("## A. Cost of the primitives (median of interleaved repetitions)\n")
    print(md_table(["operation", "seconds", "gradients"], [[k, statistics.median(t), ratio[k]] for k, t in times.items()]))
    hvp_ratio = ratio["HVP, forward-over-reverse (jvp of grad)"]
    hvp_many_ratio = ratio["4 HVPs in one vmap, per HVP"]
    ps_ratio = ratio["all per-sample gradient norms (vmap of grad)"]
    print(flush=True)
    return {"ratio": ratio, "t_grad": t_grad, "hvp": hvp_ratio, "hvp_many": hvp_many_ratio, "ps": ps_ratio}


def section_b_trajectory(bench: SimpleNamespace, cost: dict) -> SimpleNamespace:
    """B. ‖H‖ along a GD trajectory at the edge of stability: LOBPCG warm and cold against a tight reference."""
    args, model, make_op, t_grad = bench.args, bench.model, bench.make_op, cost["t_grad"]
    op = make_op()
    e0 = top_eigenvalue_op(op, tol=1e-3, generator=torch.Generator().manual_seed(args.seed + 2))
    eta = 2.2 / e0.value  # slightly above the stability threshold of the initial sharpness
    print(f"## B. Top eigenvalue along GD at the edge of stability\n\nInitial ‖H‖ = {e0.value:.4g} "
          f"({e0.hvp_count} HVPs, cold); η = 2.2/‖H‖_0 = {eta:.4g} (2/η = {2 / eta:.4g}); "
          f"{args.warmup} warm-up steps, then {args.traj} measured steps.\n", flush=True)
    vec = e0.vector

    def gd_step(g):
        with torch.no_grad():
            for p, gg in zip(model.parameters(), op.space.unflatten(g).values()):
                p.sub_(eta * gg)

    for _ in range(args.warmup):
        op = make_op()
        gd_step(op.gradient())
    rows, warm_h, cold_h, warm_err, cold_err, warm_t, cold_t = [], [], [], [], [], [], []
    ref = None
    for t in range(args.traj):
        op = make_op()
        tw, warm = timed(lambda op=op, vec=vec: top_eigenvalue_op(op, tol=1e-3, init=vec))
        ref = top_eigenvalue_op(op, tol=5e-5, init=warm.vector, max_hvps=14)  # tight reference, continued from warm
        lam = ref.value
        werr = abs(warm.value - lam) / lam
        cold = None
        if (t == 0) if args.cold_every <= 0 else (t % args.cold_every == 0):
            g_cold = torch.Generator().manual_seed(100 + t)
            tc, cold = timed(lambda op=op, g=g_cold: top_eigenvalue_op(op, tol=1e-3, generator=g))
            cold_h.append(cold.hvp_count)
            cold_err.append(abs(cold.value - lam) / lam)
            cold_t.append(tc / t_grad)
        warm_h.append(warm.hvp_count)
        warm_err.append(werr)
        warm_t.append(tw / t_grad)
        loss = op.loss()
        rows.append([args.warmup + t, loss, eta * lam / 2, warm.hvp_count, werr,
                     "" if cold is None else cold.hvp_count, "" if cold is None else abs(cold.value - lam) / lam,
                     ref.hvp_count, ref.residual])
        print(f"  step {args.warmup + t}: η‖H‖/2 = {eta * lam / 2:.3f}, warm {warm.hvp_count} HVPs, "
              f"cold {'-' if cold is None else cold.hvp_count}", flush=True)
        vec = warm.vector
        if t < args.traj - 1:
            gd_step(warm.grad)
    print()
    print(md_table(["step", "L", "η‖H‖/2", "warm HVPs", "warm rel.err", "cold HVPs", "cold rel.err", "ref extra HVPs", "ref residual"], rows))
    print(f"\nLOBPCG tol 1e-3 (‖Hx−λx‖ ≤ 1e-3·λ): warm median {statistics.median(warm_h)} HVPs "
          f"(mean {np.mean(warm_h):.2f}), {statistics.median(warm_t):.1f} gradients; cold median {statistics.median(cold_h)} HVPs, "
          f"{statistics.median(cold_t):.1f} gradients; max relative error of ‖H‖ vs reference: warm {max(warm_err):.1e}, "
          f"cold {max(cold_err):.1e}\n", flush=True)
    return SimpleNamespace(op=op, eta=eta, vec=vec, warm=warm, ref=ref, gd_step=gd_step, warm_h=warm_h,
                           warm_t=warm_t, warm_err=warm_err, cold_h=cold_h, cold_t=cold_t, cold_err=cold_err)


def section_b_other_solvers(bench: SimpleNamespace, cost: dict, traj: SimpleNamespace) -> None:
    """B (continued). scipy ``eigsh`` and PyHessian on the last trajectory step, against lssr's LOBPCG."""
    args, model, t_grad, op, vec = bench.args, bench.model, cost["t_grad"], traj.op, traj.vec
    warm_h, warm_t, warm_err = traj.warm_h, traj.warm_t, traj.warm_err
    cold_h, cold_t, cold_err = traj.cold_h, traj.cold_t, traj.cold_err
    lam_ref = traj.ref.value
    others = []
    # scipy eigsh on the same HVP
    try:
        from scipy.sparse.linalg import LinearOperator, eigsh

        for label, v0 in (("cold", None),) + ((("warm v0", vec),) if args.eigsh_warm else ()):
            count = [0]

            def mv(z):
                count[0] += 1
                return op.hvp(torch.as_tensor(np.asarray(z).reshape(-1), dtype=op.dtype)).double().numpy()

            L = LinearOperator((op.space.dim, op.space.dim), matvec=mv, dtype=np.float64)
            kw = {} if v0 is None else {"v0": v0.double().numpy()}
            if v0 is None:
                kw["v0"] = np.random.default_rng(args.seed).standard_normal(op.space.dim)
            te, (w, _) = timed(lambda L=L, kw=kw: eigsh(L, k=1, which="LA", tol=1e-3, **kw))
            others.append([f"scipy eigsh(k=1, which='LA', tol=1e-3), {label}", count[0], te / t_grad, abs(float(w[0]) - lam_ref) / lam_ref])
    except ImportError:
        print("scipy not importable: skipped eigsh")
    try:
        import importlib

        import pyhessian

        ph = importlib.import_module("pyhessian.hessian")

        calls = [0]
        orig = ph.hessian_vector_product

        def counting(*a, **k):
            calls[0] += 1
            return orig(*a, **k)

        ph.hessian_vector_product = counting
        m2 = copy.deepcopy(model)
        torch.manual_seed(args.seed)

        def run_ph():
            hc = ph.hessian(m2, bench.lf, data=(bench.x, bench.y), cuda=False)  # builds the full-batch graph once (1 gradient)
            return hc.eigenvalues(top_n=1, tol=1e-3, maxIter=100)

        tp, (ev, _) = timed(run_ph)
        ph.hessian_vector_product = orig
        others.append([f"PyHessian {getattr(pyhessian, '__version__', '0.1')} eigenvalues(top_n=1, tol=1e-3), cold", calls[0], tp / t_grad, abs(float(ev[0]) - lam_ref) / lam_ref])
    except ImportError:
        print("PyHessian not importable (pip install pyhessian, or the `bench` extra): skipped")
    others.append(["lssr LOBPCG tol 1e-3, warm (median over the trajectory)", statistics.median(warm_h), statistics.median(warm_t), statistics.median(warm_err)])
    others.append(["lssr LOBPCG tol 1e-3, cold (median)", statistics.median(cold_h), statistics.median(cold_t), statistics.median(cold_err)])
    print(md_table(["method (last trajectory step unless stated)", "HVPs", "wall time, gradients", "rel. error of ‖H‖"], others))
    print(flush=True)


def section_c_bundle(bench: SimpleNamespace, cost: dict, traj: SimpleNamespace) -> SimpleNamespace:
    """C. The per-step probe bundle at the next GD step (warm-started from this step's eigenvector)."""
    args, n, t_grad, ratio, eta, vec = bench.args, bench.n, cost["t_grad"], cost["ratio"], traj.eta, traj.vec
    hvp_ratio, hvp_many_ratio, ps_ratio = cost["hvp"], cost["hvp_many"], cost["ps"]
    traj.gd_step(traj.warm.grad)  # the bundle runs at the next step, warm-started from this step's eigenvector
    op = bench.make_op()
    hvp_unit = hvp_many_ratio if op.default_hvp_batch > 1 else hvp_ratio  # what gradient_moments uses by default
    exact = None
    if args.exact_check:
        te, exact = timed(lambda: gradient_moments(op, exact=True, top=False))
        print(f"(exact tr(H S_1) = {exact.tr_HS_1:.6g}: {n} HVPs, {te / t_grad:.0f} gradients)\n", flush=True)
    print("## C. Per-step probe bundle (‖H‖, tr S_1, tr S_n, tr(H S_n), tr(H S_1), every b), at the next GD step\n")
    header = ["quantity"]
    cols: list[list] = []
    mom = None
    for k, s1 in enumerate(args.stage1):
        c0 = dict(op.counts)
        gen = torch.Generator().manual_seed(args.seed + 3 + k)
        tb, m_ = timed(lambda op=op, s1=s1, gen=gen: gradient_moments(
            op, exact=False, probes=args.probes, stage1=s1, generator=gen,
            top=True, eig_init=vec, eig_tol=1e-3, rel_se=args.rel_se,
        ))
        mom = mom or m_
        cnt = {kk: op.counts[kk] - c0[kk] for kk in c0}
        model_cost = cnt["hvp"] * hvp_unit + cnt["per_sample_pass"] * ps_ratio + cnt["grad"] + cnt["loss"] * ratio["loss pass L(θ)"]
        plain = m_.plain_values
        prsd = float(plain.std(ddof=1) / np.mean(plain)) if plain.size > 1 else math.nan
        header.append(f"stage1 = {s1}")
        col = [
            f"{m_.eig.value:.5g} ({eta * m_.eig.value / 2:.3f}), {m_.eig.residual:.1e}",
            f"{m_.tr_S_1:.4g}, {m_.tr_S_n:.3g}, {m_.tr_HS_n:.3g}",
            f"{m_.tr_HS_1:.5g} ± {m_.tr_HS_1_se:.2g} ({m_.tr_HS_1_se / m_.tr_HS_1:.1%})",
            f"{m_.exact_part / m_.tr_HS_1:.1%} ({m_.subspace_dim})",
            f"{m_.block_hvps} + {m_.eig.hvp_count - 1} + {m_.probes} = {cnt['hvp']}",
            f"{cnt['per_sample_pass']} / {cnt['grad']} / {cnt['loss']}",
            f"{model_cost:.1f}",
            f"{tb / t_grad:.1f}",
            f"{prsd:.2f}" if plain.size > 1 else "-",
            f"{(prsd / 0.05) ** 2:.0f} / {(prsd / 0.05) ** 2 * hvp_ratio + ps_ratio:.0f}" if plain.size > 1 else "-",
        ]
        if exact is not None:
            col.append(f"{(m_.tr_HS_1 - exact.tr_HS_1) / exact.tr_HS_1:+.2e} ({(m_.tr_HS_1 - exact.tr_HS_1) / m_.tr_HS_1_se:+.2f} se)")
        cols.append(col)
        if k == 0:
            bundle_model, bundle_wall = model_cost, tb / t_grad
    names = [
        "‖H‖ (η‖H‖/2), residual ‖Hx−λx‖/λ",
        "tr S_1, tr S_n, tr(H S_n)",
        "tr(H S_1) ± se (relative se)",
        "share of tr(H S_1) computed exactly (deflation subspace dim)",
        "HVPs: block H[x0, ∇L, Y] + eigen-solver continuation + residual probes",
        "per-sample gradient passes / gradients / loss passes",
        "**bundle cost, op counts × section-A ratios (gradients)**",
        "bundle cost, wall time (gradients)",
        "plain random-sign sketch (the stage-1 samples): relative sd per probe",
        "plain sketch alone: probes for 5% se / cost (gradients)",
    ] + (["estimate − exact (relative; in se)"] if exact is not None else [])
    print(md_table(header, [[nm] + [c[i] for c in cols] for i, nm in enumerate(names)]))
    print(flush=True)
    return SimpleNamespace(op=op, mom=mom, model_cost=bundle_model, wall=bundle_wall)


def section_d_monte_carlo(bench: SimpleNamespace, cost: dict, bundle: SimpleNamespace) -> None:
    """D. The paper's way: Monte-Carlo over sampled batches, g_Bᵀ H g_B for each b separately, at 5% se."""
    args, n, x, y, t_grad, hvp_ratio = bench.args, bench.n, bench.x, bench.y, cost["t_grad"], cost["hvp"]
    op, mom, bundle_model, bundle_wall = bundle.op, bundle.mom, bundle.model_cost, bundle.wall
    gen = torch.Generator().manual_seed(args.seed + 4)
    rows, total_mc = [], 0.0
    for b in args.mc_b:
        vals, tg = [], []
        for _ in range(args.mc_pilot):
            idx = torch.randperm(n, generator=gen)[:b]
            sub = LossOperator(bench.model, bench.lf, x[idx], y[idx], chunk_size=args.chunk)
            t1, gB = timed(sub.gradient)
            tg.append(t1 / t_grad)
            vals.append(float(gB @ op.hvp(gB)))
        vals = np.array(vals)
        rsd = float(vals.std(ddof=1) / vals.mean())
        need = max(math.ceil((rsd / 0.05) ** 2), 2)
        cost_each = statistics.median(tg) + hvp_ratio
        total_mc += need * cost_each
        ours = per_b(mom, b, False)
        rows.append([b, f"{vals.mean():.4g} ± {vals.std(ddof=1) / math.sqrt(vals.size):.2g}", f"{ours['tr_HS_b']:.4g} ± {ours['tr_HS_b_se']:.2g}",
                     f"{rsd:.2f}", need, f"{cost_each:.2f}", f"{need * cost_each:.0f}"])
    print("## D. The paper's way: Monte-Carlo over sampled batches, one b at a time (5% relative se)\n")
    print(md_table(["b", f"MC pilot mean ± se ({args.mc_pilot} batches)", "bundle tr(H S_b) ± se", "rel. sd per batch", "batches for 5% se",
                    "gradients per batch (g_B + HVP)", "gradients"], rows))
    print(f"\nMonte-Carlo for these {len(args.mc_b)} batch sizes: {total_mc:.0f} gradients (plus ‖H‖ separately), "
          f"vs the bundle: {bundle_model:.0f} gradients (op counts) / {bundle_wall:.0f} (wall) for ‖H‖ and every b at once.")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    x, y, what = load_images(args.n, args.data, args.seed)
    torch.manual_seed(args.seed)
    model = CNN6(3, 10)
    lf = get_loss(args.loss)
    n = len(y)
    print(f"# bench_diagnostics: cnn6 ({count_parameters(model)} parameters), {what}, loss {args.loss}, "
          f"torch {torch.__version__}, {args.threads} thread(s), chunk {args.chunk}\n", flush=True)

    def make_op():
        return LossOperator(model, lf, x, y, chunk_size=args.chunk, per_sample_chunk=args.ps_chunk)

    # the fixed inputs of every section (the model's parameters move along the GD trajectory of section B)
    bench = SimpleNamespace(args=args, model=model, lf=lf, x=x, y=y, n=n, make_op=make_op)
    cost = section_a_costs(bench)
    traj = section_b_trajectory(bench, cost)
    section_b_other_solvers(bench, cost, traj)
    bundle = section_c_bundle(bench, cost, traj)
    section_d_monte_carlo(bench, cost, bundle)
    print(f"\nTotal benchmark wall time: {time.time() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
