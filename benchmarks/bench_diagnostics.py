"""Benchmark of the per-step probe bundle at an edge of stability that is learning (``make bench-diagnostics``).

GD runs of cnn6 (0.51M parameters) on n real CIFAR-10 images (an ``imagefolder`` subset of
``/work/shared/data/cifar10-jpeg`` built with lssr's own subset code, 32 px, standardised), MSE and CE, at the
η of ``PER_LOSS`` (MSE 0.25, CE 0.1: far below the edge at initialisation; the run leaves its initial plateau,
crosses 2/η, is thrown back by a catapult, sharpens again and goes on learning at the edge: benchmarks/README.md).
``--eta 0`` takes η = ``eta_factor`` × 2/‖H‖_0 instead. ‖H‖ is checked every ``check_every`` steps from
``check_from`` (warm LOBPCG, tol 1e-2). Three points per run:

- ``before``: the last check before the crossing with η‖H‖/2 ≤ 0.9 (missing when there is none);
- ``crossing``: the first check with η‖H‖/2 ≥ 1 (the first crossing of 2/η, to within ``check_every`` steps);
- ``inside``: the first check at least ``inside`` steps after the crossing with η‖H‖/2 ≥ ``inside_level``:
  the run has been through the crossing's catapult and is back at 2/η (well inside the edge of stability).

The checks along each run (step, loss, train accuracy, η‖H‖/2) are printed and kept in the JSON (``runs``).

At each point, side by side (costs as gradient-equivalents: op counts × the cost ratios measured at the start
of the run, and wall time / the gradient time measured at that point; for the bundle both sides of that ratio
are best-of timings: ``bundle_reps`` runs with the same seed, and two gradients before and two after them):

- the lssr bundle: ``gradient_moments(top=True, rel_se, stage1, probes)``: ‖H‖ to 1e-3 and tr(H S_1) (hence
  every b) at ≤ ``rel_se`` relative standard error;
- the exact values: tr(H S_1) with one HVP per sample, ‖H‖ continued to a residual of 1e-5;
- the paper's way: Monte-Carlo g_Bᵀ H g_B per b, batches for the same se extrapolated from a pilot;
- PyHessian ``eigenvalues(top_n=1, tol=1e-3)`` and curvlinops (``HessianLinearOperator`` + scipy ``eigsh``;
  ``hutchpp_trace`` on GᵀHG/n at the bundle's HVP budget).

Last, with both runs done, the bundle is timed again at every point with nothing beside it (``bench_wall``,
skipped by ``--no-quiet-wall``; ``--quiet-wall-only`` runs just that on an earlier ``--out``):
``bundle_grad_equiv_wall`` is that measurement, ``bundle_grad_equiv_wall_side_by_side`` the one in the run.

Writes ``results/bench/diagnostics.json`` (one object per point) and prints markdown tables; θ and the warm
start of each point are kept in ``diagnostics-<loss>-points.pt`` (not tracked).
``python benchmarks/bench_diagnostics.py --help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_peers import (
    cost_ratios,
    curvlinops_peer,
    exact_reference,
    gd_descend,
    gd_gradient,
    monte_carlo,
    op_cost,
    pyhessian_top,
    seeded_model,
    timed_bundle,
)
from bench_wall import points_path, quiet_wall, save_points

from lssr.curvature import LossOperator, top_eigenvalue_op
from lssr.data.subset import SubsetSpec, build_subset, load_subset
from lssr.io import write_json
from lssr.models import count_parameters
from lssr.scaling import trace_b

CIFAR = Path("/work/shared/data/cifar10-jpeg")
# per-loss defaults (benchmarks/README.md): η where the run goes on learning at the edge after the first
# crossing's catapult, the first step worth checking ‖H‖ (before it the run is on its initial plateau, far
# below 2/η), and the steps after the crossing for `inside`
PER_LOSS = {"eta": {"mse": 0.25, "ce": 0.1}, "check_from": {"mse": 75, "ce": 180}, "inside": {"mse": 100, "ce": 175}}
BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
PER_LOSS_KNOBS = ("eta_factor", "eta", "check_from", "inside")  # given once or once per loss (per_loss)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--n", type=int, default=256, help="training images (the exact reference costs n HVPs per point)")
    a("--losses", nargs="+", default=["mse", "ce"], choices=["mse", "ce"])
    a("--eta-factor", type=float, nargs="+", default=[0.5], help="η = f·2/‖H‖_0 (with --eta 0), one f or one per loss")
    a("--eta", type=float, nargs="+", help=f"η, one or one per loss (default {PER_LOSS['eta']}); 0: from --eta-factor")
    a("--max-steps", type=int, default=450, help="GD steps to look for the points")
    a("--check-every", type=int, default=5, help="steps between ‖H‖ checks along the run")
    a(
        "--check-from",
        type=int,
        nargs="+",
        help=f"no ‖H‖ checks before this step (the plateau; checks are slow there), one or one per loss (default "
        f"{PER_LOSS['check_from']})",
    )
    a(
        "--inside",
        type=int,
        nargs="+",
        help=f"'inside': at least this many steps after the crossing, one or one per loss "
        f"(default {PER_LOSS['inside']}), ...",
    )
    a("--inside-level", type=float, default=0.9, help="... at the first check with η‖H‖/2 ≥ this (back at the edge)")
    a("--no-quiet-wall", action="store_true", help="skip the last phase: the bundle re-timed alone (bench_wall)")
    a("--quiet-wall-only", action="store_true", help="only that phase, on the points of an existing --out")
    a("--bundle-reps", type=int, default=2, help="bundle runs per point for its wall time (the best is kept)")
    a("--stage1", type=int, default=6, help="bundle: probes in the first block")
    a("--probes", type=int, default=16, help="bundle: the most probes")
    a("--rel-se", type=float, default=0.05, help="bundle / Monte-Carlo target relative se of tr(H S_1)")
    a("--mc-b", type=int, nargs="*", default=[8, 32], help="batch sizes for the Monte-Carlo comparison")
    a("--mc-pilot", type=int, default=4, help="pilot batches per b for the Monte-Carlo comparison")
    a("--no-exact", action="store_true", help="skip the exact values (n HVPs per point)")
    a("--peers", nargs="*", default=["pyhessian", "curvlinops"], choices=["pyhessian", "curvlinops"])
    a("--peer-points", nargs="*", default=["crossing"], help="points where the peers run")
    a("--points", nargs="+", default=["before", "crossing", "inside"], choices=["before", "crossing", "inside"])
    a("--threads", type=int, default=1, help="torch threads per process")
    a("--jobs", type=int, default=2, help="processes: with several losses, one per loss (each --threads)")
    a("--chunk", type=int, default=256, help="memory chunk for full-data passes")
    a("--ps-chunk", type=int, default=32, help="chunk for per-sample gradients")
    a("--seed", type=int, default=0)
    a("--data", type=Path, default=CIFAR)
    a("--cache", type=Path, default=Path("results/data"), help="where the image subset is built once")
    a("--out", type=Path, default=Path("results/bench/diagnostics.json"))
    return ap.parse_args(argv)


def load_data(args):
    if not (args.data / "train").is_dir():
        sys.exit(f"bench_diagnostics: {args.data}/train not found; give --data DIR (an image folder train/<class>/)")
    spec = SubsetSpec("imagefolder", args.n, args.seed, str(args.data))
    out = args.cache / f"bench-{spec.name}"
    if not (out / "manifest.json").exists():
        build_subset(spec, out)
    sub = load_subset(out)
    return sub.x_train, sub.y_train, f"CIFAR-10 image folder {args.data}, subset {spec.name} ({out})"


def trajectory(
    args, model, lf, x, y, factor: float, eta: float | None, check_from: int, inside: int
) -> tuple[float, dict, list]:
    """GD from the seeded initialisation; returns η, {point: state} with θ, step, loss, acc, η‖H‖/2, vector, and
    the checks along the run (step, loss, train acc, η‖H‖/2)."""
    op = LossOperator(model, lf, x, y, chunk_size=args.chunk)
    tol0 = 1e-3 if eta is None else 1e-2  # ‖H‖_0 sets η only with --eta-factor; otherwise it is the warm start
    e0 = top_eigenvalue_op(op, tol=tol0, generator=torch.Generator().manual_seed(args.seed + 2))
    eta = factor * 2 / e0.value if eta is None else eta
    print(
        f"‖H‖_0 = {e0.value:.4g}; η = {eta:.4g} (2/η = {2 / eta:.4g}; η‖H‖_0/2 = {eta * e0.value / 2:.3f})", flush=True
    )
    params = [p for p in model.parameters()]
    vec, pts, cross, l0, checks = e0.vector, {}, None, None, []
    t0 = time.time()
    for step in range(args.max_steps + 1):
        loss, acc = gd_gradient(model, lf, x, y)
        l0 = float(loss) if l0 is None else l0
        if not torch.isfinite(loss) or float(loss) > 100 * l0:
            print(f"  step {step}: L = {float(loss):.3g}: the run diverged; no later points", flush=True)
            break
        if step >= check_from and step % args.check_every == 0:
            e = top_eigenvalue_op(LossOperator(model, lf, x, y, chunk_size=args.chunk), tol=1e-2, init=vec)
            vec, r = e.vector, eta * e.value / 2
            st = {
                "name": None,
                "step": step,
                "loss": float(loss),
                "train_acc": acc,
                "eta_sharp_half": r,
                "vector": vec,
                "theta": torch.nn.utils.parameters_to_vector(params).detach().clone(),
            }
            checks.append({k: st[k] for k in ("step", "loss", "train_acc", "eta_sharp_half")})
            print(
                f"  step {step}: L = {float(loss):.4f}, train acc = {acc:.3f}, η‖H‖/2 = {r:.3f} "
                f"({time.time() - t0:.0f} s)",
                flush=True,
            )
            if cross is None and r <= 0.9:
                pts["before"] = st
            if cross is None and r >= 1.0:
                pts["crossing"], cross = st, step
            elif cross is not None and step >= cross + inside and r >= args.inside_level:
                pts["inside"] = st
                break
        gd_descend(params, eta)
    if "before" not in pts and "crossing" in pts:
        print("  (no check below 0.9·2/η before the crossing: 'before' is missing)", flush=True)
    return eta, pts, checks


def measure_point(args, model, lf, x, y, st: dict, ratio: dict, eta: float, loss_name: str) -> dict:
    """Everything at one point; returns the JSON object of the point."""
    torch.nn.utils.vector_to_parameters(st["theta"], list(model.parameters()))
    op = LossOperator(model, lf, x, y, chunk_size=args.chunk, per_sample_chunk=args.ps_chunk)
    tb = timed_bundle(op, st["vector"], args)
    mom, cnt, t_grad, gen = tb["mom"], tb["counts"], tb["t_grad"], tb["generator"]
    row = {
        "loss_fn": loss_name,
        "eta": eta,
        "step": st["step"],
        "loss": st["loss"],
        "train_acc": st["train_acc"],
        "eta_sharp_half": eta * mom.eig.value / 2,
        "t_grad_s": t_grad,
        "t_grad_s_all": tb["t_grads"],
        "bundle_wall_s_all": tb["walls"],
        "bundle_hvps": cnt["hvp"],
        "bundle_counts": cnt,
        "bundle_grad_equiv_ops": op_cost(cnt, ratio, op.n),
        "bundle_grad_equiv_wall": tb["wall"] / t_grad,
        "top": mom.eig.value,
        "top_residual": mom.eig.residual,
        "trHS1": mom.tr_HS_1,
        "trHS1_se": mom.tr_HS_1_se,
        "trHS1_rel_se": mom.tr_HS_1_se / abs(mom.tr_HS_1),
        "exact_share": mom.exact_part / mom.tr_HS_1,
        "probes_used": mom.probes,
        "subspace_dim": mom.subspace_dim,
        "tr_S_1": mom.tr_S_1,
        "tr_S_n": mom.tr_S_n,
        "tr_HS_n": mom.tr_HS_n,
    }
    print(
        f"  bundle: {cnt['hvp']} HVPs, {row['bundle_grad_equiv_ops']:.1f} / {row['bundle_grad_equiv_wall']:.1f} "
        f"gradients (ops / wall); tr(H S_1) = {mom.tr_HS_1:.5g} ± {row['trHS1_rel_se']:.1%}",
        flush=True,
    )
    exact = None
    if not args.no_exact:
        exact = exact_reference(op, mom.eig.vector, ratio)
        err = mom.tr_HS_1 - exact["tr_HS_1"]
        row.update(
            exact_trHS1=exact["tr_HS_1"],
            exact_top=exact["top"],
            exact_hvps=exact["hvps"],
            exact_grad_equiv_ops=exact["ops"],
            exact_grad_equiv_wall=exact["wall"] / t_grad,
            trHS1_rel_err=err / exact["tr_HS_1"],
            trHS1_err_in_se=err / mom.tr_HS_1_se,
            top_rel_err=(mom.eig.value - exact["top"]) / exact["top"],
        )
        print(
            f"  exact: tr(H S_1) = {exact['tr_HS_1']:.5g} ({err / mom.tr_HS_1_se:+.2f} se), {exact['hvps']} HVPs",
            flush=True,
        )
    row["mc"] = monte_carlo(op, model, lf, args.mc_b, args.mc_pilot, args.rel_se, ratio, t_grad, exact, gen, trace_b)
    for r in row["mc"]:
        r["grad_equiv_wall"] = r.pop("wall") / t_grad
    row["mc_hvps"] = sum(r["hvps"] for r in row["mc"])
    row["mc_grad_equiv_ops"] = sum(r["ops"] for r in row["mc"])
    row["mc_grad_equiv_wall"] = sum(r["grad_equiv_wall"] for r in row["mc"])
    ref_top = exact["top"] if exact else mom.eig.value
    peers = args.peers if row_point(st) in args.peer_points else []
    if "pyhessian" in peers:
        row.update(peer_row("pyhessian", pyhessian_top(model, lf, x, y, ratio, args.seed), t_grad, ref_top))
    if "curvlinops" in peers:
        G = torch.cat([g for _, g in op.per_sample_grads()])
        res = curvlinops_peer(model, loss_name, x, y, args.chunk, G, cnt["hvp"], ratio, args.seed)
        del G
        row.update(peer_row("curvlinops", res, t_grad, ref_top, exact))
    return row


def row_point(st: dict) -> str | None:
    return st.get("name")


def peer_row(name: str, res: dict, t_grad: float, ref_top: float, exact: dict | None = None) -> dict:
    if "skipped" in res:
        print(f"  {name}: skipped: {res['skipped']}", flush=True)
        return {f"{name}_skipped": res["skipped"]}
    out = {
        f"{name}_hvps": res["hvps"],
        f"{name}_grad_equiv_ops": res["ops"],
        f"{name}_grad_equiv_wall": res["wall"] / t_grad,
        f"{name}_top": res["top"],
        f"{name}_top_rel_err": (res["top"] - ref_top) / ref_top,
    }
    if "note" in res:
        out[f"{name}_note"] = res["note"]
    if "tr_HS_1" in res:
        out.update(
            {
                f"{name}_trace_hvps": res["trace_hvps"],
                f"{name}_trace_grad_equiv_ops": res["trace_ops"],
                f"{name}_trace_grad_equiv_wall": res["trace_wall"] / t_grad,
                f"{name}_trHS1": res["tr_HS_1"],
            }
        )
        if exact is not None:
            out[f"{name}_trHS1_rel_err"] = (res["tr_HS_1"] - exact["tr_HS_1"]) / exact["tr_HS_1"]
    print(
        f"  {name}: ‖H‖ {res['hvps']} HVPs, {res['wall'] / t_grad:.1f} gradients (wall), rel. err "
        f"{out[f'{name}_top_rel_err']:+.1e}",
        flush=True,
    )
    return out


def run_parallel(args, argv) -> int:
    """One subprocess per loss (``--jobs`` at a time), then one merged JSON and report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    procs, outs = [], []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for loss_name in args.losses:
        out = args.out.with_name(f"{args.out.stem}-{loss_name}.json")
        knobs = [f"--{k.replace('_', '-')}={per_loss(args, k)[loss_name]}" for k in PER_LOSS_KNOBS]
        cmd = [sys.executable, __file__, *argv, "--losses", loss_name, *knobs, "--jobs", "1", "--no-quiet-wall"]
        cmd += ["--out", str(out)]
        log = open(out.with_suffix(".log"), "w")
        print(f"started {loss_name}: log {out.with_suffix('.log')}", flush=True)
        # BLAS pools (scipy's eigsh in the curvlinops peer) at --threads too, so that one process does not take
        # the other's core
        env = {**os.environ, **dict.fromkeys(BLAS_THREADS, str(args.threads))}
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, loss_name))
        outs.append(out)
        while sum(p.poll() is None for p, _, _ in procs) >= args.jobs:
            time.sleep(5)
    rc = 0
    for p, log, loss_name in procs:
        rc |= p.wait()
        log.close()
        print(f"{loss_name}: exit {p.returncode}", flush=True)
    parts = [json.loads(o.read_text()) for o in outs if o.exists()]
    rows = [r for part in parts for r in part["points"]]
    ratio = parts[0]["ratios"] if parts else {}
    from bench_report import report

    if rows and not args.no_quiet_wall:
        quiet_wall(args, rows, *load_data(args)[:2])

    merged = {
        "settings": vars_json(args),
        "ratios": {p["settings"]["losses"][0]: p["ratios"] for p in parts},
        "runs": {k: v for p in parts for k, v in p.get("runs", {}).items()},
    }
    if rows:
        report(rows, ratio, args, merged["runs"])
    write_json(args.out, {**merged, "points": rows, "wall_s": max((p.get("wall_s", 0) for p in parts), default=0)})
    print(f"\nwrote {args.out}", flush=True)
    return rc


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quiet_wall_only:
        return quiet_wall_only(args)
    if args.jobs > 1 and len(args.losses) > 1:
        return run_parallel(args, argv)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    x, y, what = load_data(args)
    factors, etas, starts, insides = (per_loss(args, k) for k in PER_LOSS_KNOBS)
    print(
        f"# bench_diagnostics: cnn6, {what}, n = {len(y)}, torch {torch.__version__}, {args.threads} thread(s)\n",
        flush=True,
    )
    rows, ratio, runs = [], None, {}
    for loss_name in args.losses:
        model, lf = seeded_model(args.seed, loss_name)
        if ratio is None:
            ratio = cost_ratios(LossOperator(model, lf, x, y, chunk_size=args.chunk, per_sample_chunk=args.ps_chunk))
            print(
                f"cost ratios (gradients): HVP {ratio['hvp']:.2f}, per-sample pass {ratio['ps']:.2f}, loss pass "
                f"{ratio['loss']:.2f}; one gradient {ratio['t_grad']:.2f} s ({count_parameters(model)} parameters)\n",
                flush=True,
            )
        print(f"## {loss_name.upper()}: GD trajectory", flush=True)
        eta, pts, checks = trajectory(
            args, model, lf, x, y, factors[loss_name], etas[loss_name] or None, starts[loss_name], insides[loss_name]
        )
        runs[loss_name] = {"eta": eta, "check_from": starts[loss_name], "inside": insides[loss_name], "checks": checks}
        for name in args.points:
            if name not in pts:
                rows.append({"point": name, "loss_fn": loss_name, "eta": eta, "missing": "not reached in the run"})
                print(f"### {loss_name} / {name}: not reached", flush=True)
                continue
            print(
                f"### {loss_name} / {name}: step {pts[name]['step']}, train acc {pts[name]['train_acc']:.3f}",
                flush=True,
            )
            pts[name]["name"] = name
            row = {"point": name, **measure_point(args, model, lf, x, y, pts[name], ratio, eta, loss_name)}
            row["ratios"] = ratio
            rows.append(row)
            write_json(args.out, {"settings": vars_json(args), "ratios": ratio, "points": rows, "runs": runs})
        save_points(points_path(args.out, loss_name), pts)
    from bench_report import report

    if not args.no_quiet_wall:
        quiet_wall(args, rows, x, y)

    report(rows, ratio, args, runs)
    write_json(
        args.out,
        {"settings": vars_json(args), "ratios": ratio, "points": rows, "runs": runs, "wall_s": time.time() - t_start},
    )
    print(f"\nwrote {args.out}; total wall time {time.time() - t_start:.0f} s", flush=True)
    return 0


def quiet_wall_only(args) -> int:
    """The last phase alone, on the points of an existing ``--out`` (its θ saved or replayed): rewrites it."""
    from bench_report import report

    if not args.out.exists():
        sys.exit(f"bench_diagnostics: --quiet-wall-only needs an earlier run's {args.out}; run without it first")
    data = json.loads(args.out.read_text())
    for k in ("seed", "threads", "check_every", "chunk", "ps_chunk", "n", "data"):
        if k in data["settings"] and str(data["settings"][k]) != str(getattr(args, k)):
            sys.exit(
                f"bench_diagnostics: --{k.replace('_', '-')} {getattr(args, k)} differs from {args.out}'s "
                f"{data['settings'][k]}; give the run's value"
            )
    x, y, _ = load_data(args)
    quiet_wall(args, data["points"], x, y)
    ratio = next(r["ratios"] for r in data["points"] if "ratios" in r)  # the first loss's, as in run_parallel
    report(data["points"], ratio, args, data.get("runs"))
    write_json(args.out, {**data, "quiet_wall": vars_json(args)})
    print(f"\nwrote {args.out}", flush=True)
    return 0


def per_loss(args, knob: str) -> dict:
    """{loss: value} of a knob given once (for every loss), once per loss, or not at all (``PER_LOSS``)."""
    values = getattr(args, knob)
    if values is None:
        return {loss: PER_LOSS[knob][loss] for loss in args.losses}
    if len(values) not in (1, len(args.losses)):
        sys.exit(f"bench_diagnostics: --{knob.replace('_', '-')}: one value or one per loss, got {values}")
    return dict(zip(args.losses, values * len(args.losses) if len(values) == 1 else values))


def vars_json(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


if __name__ == "__main__":
    sys.exit(main())
