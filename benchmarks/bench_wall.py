"""The bundle's wall time on a quiet machine: the last phase of ``make bench-diagnostics``.

The MSE and CE runs go side by side (one process per loss, one thread each), so a bundle's wall time there
depends on what the other process does meanwhile (its ratio to the op counts is higher side by side than alone:
benchmarks/README.md, the diagnostics summary). This phase runs after both, alone: one
point after another, with the runs' thread count, it measures the cost ratios at the point and then the bundle
(``timed_bundle``: best of ``bundle_reps`` runs between gradients timed before and after). θ and the warm start
of each point come from the per-loss process (``<out>-<loss>-points.pt``); without that file they are rebuilt by
replaying GD from the seed, one process per loss (deterministic at the same thread count: the replayed training
loss must equal the recorded one), with a cold ‖H‖ check at the point (tol 1e-2, as the run's check there, which
started from the check before) as the warm start.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from bench_peers import cost_ratios, gd_descend, gd_gradient, op_cost, seeded_model, timed_bundle
from tqdm import tqdm

from lssr.curvature import LossOperator, top_eigenvalue_op
from lssr.io import torch_save


def points_path(out: Path, loss: str) -> Path:
    """Where the run of ``loss`` keeps θ and the warm-start vector of its points: next to its JSON, the same
    path from the merged ``out`` (diagnostics.json) and from the per-loss one (diagnostics-mse.json)."""
    return out.with_name(f"{out.stem.removesuffix('-' + loss)}-{loss}-points.pt")


def save_points(path: Path, pts: dict) -> None:
    torch_save(
        path, {name: {"step": st["step"], "theta": st["theta"], "vector": st["vector"]} for name, st in pts.items()}
    )


def replay(args, x, y, loss_name: str, eta: float, rows: list[dict]) -> dict:
    """{point: {step, theta, vector}} rebuilt by GD from the seed to each point's step (the training loss
    checked against the recorded one) and a cold ‖H‖ check at it (tol 1e-2, the run's check there)."""
    torch.set_num_threads(args.threads)
    model, lf = seeded_model(args.seed, loss_name)
    params = list(model.parameters())
    want = {r["step"] for r in rows}
    snaps = {}
    for step in tqdm(range(max(want) + 1), desc=f"replay {loss_name}", mininterval=30):
        loss, _ = gd_gradient(model, lf, x, y)
        if step in want:
            snaps[step] = (torch.nn.utils.parameters_to_vector(params).detach().clone(), float(loss))
        if step < max(want):
            gd_descend(params, eta)
    out = {}
    for r in rows:
        theta, loss = snaps[r["step"]]
        if abs(loss - r["loss"]) > 1e-6 * abs(r["loss"]):
            raise RuntimeError(
                f"bench_wall: replaying {loss_name} GD gives L = {loss!r} at step {r['step']}, the run recorded "
                f"{r['loss']!r}: not the same θ (another --threads or torch build?). Rerun make bench-diagnostics, "
                "which keeps the points' θ."
            )
        torch.nn.utils.vector_to_parameters(theta, params)
        e = top_eigenvalue_op(
            LossOperator(model, lf, x, y, chunk_size=args.chunk),
            tol=1e-2,
            generator=torch.Generator().manual_seed(args.seed + 2),
        )
        out[r["point"]] = {"step": r["step"], "theta": theta, "vector": e.vector, "source": "replayed"}
    return out


def quiet_wall(args, rows: list[dict], x, y) -> None:
    """Adds ``quiet`` (cost ratios, HVPs, gradient-equivalents by op counts and by wall time, measured alone) to
    each measured row, and keeps the side-by-side wall ratio as ``bundle_grad_equiv_wall_side_by_side``."""
    done = [r for r in rows if "missing" not in r]
    by_loss = {loss: [r for r in done if r["loss_fn"] == loss] for loss in dict.fromkeys(r["loss_fn"] for r in done)}
    states, todo = {}, []
    for loss, lrows in by_loss.items():
        path = points_path(args.out, loss)
        if path.exists():
            saved = torch.load(path)
            if all(r["point"] in saved and saved[r["point"]]["step"] == r["step"] for r in lrows):
                states[loss] = {k: {**v, "source": str(path)} for k, v in saved.items()}
                continue
        todo.append(loss)
    if todo:
        print(f"\nrebuilding the points of {todo} by replaying GD (no saved θ)", flush=True)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(todo))), mp_context=ctx) as ex:
            futs = {loss: ex.submit(replay, args, x, y, loss, by_loss[loss][0]["eta"], by_loss[loss]) for loss in todo}
            states.update({loss: f.result() for loss, f in futs.items()})
    torch.set_num_threads(args.threads)
    print(f"\n## The bundle measured alone ({args.threads} thread(s), nothing beside it)\n", flush=True)
    for loss, lrows in by_loss.items():
        model, lf = seeded_model(args.seed, loss)
        for r in lrows:
            st = states[loss][r["point"]]
            torch.nn.utils.vector_to_parameters(st["theta"], list(model.parameters()))
            op = LossOperator(model, lf, x, y, chunk_size=args.chunk, per_sample_chunk=args.ps_chunk)
            ratio = cost_ratios(op)
            tb = timed_bundle(op, st["vector"], args)
            mom, cnt = tb["mom"], tb["counts"]
            wall = tb["wall"] / tb["t_grad"]
            # the goal's key holds the measurement alone; the side-by-side one stays for the side-by-side table
            r.setdefault("bundle_grad_equiv_wall_side_by_side", r["bundle_grad_equiv_wall"])
            r["bundle_grad_equiv_wall"] = wall
            r["quiet"] = {
                "source": st["source"],
                "ratios": ratio,
                "bundle_hvps": cnt["hvp"],
                "bundle_counts": cnt,
                "bundle_grad_equiv_ops": op_cost(cnt, ratio, op.n),
                "bundle_grad_equiv_wall": wall,
                "t_grad_s_all": tb["t_grads"],
                "bundle_wall_s_all": tb["walls"],
                "trHS1": mom.tr_HS_1,
                "trHS1_rel_se": mom.tr_HS_1_se / abs(mom.tr_HS_1),
            }
            q = r["quiet"]
            print(
                f"  {loss} {r['point']} (step {r['step']}): {cnt['hvp']} HVPs, {q['bundle_grad_equiv_ops']:.1f} / "
                f"{q['bundle_grad_equiv_wall']:.1f} gradients (ops / wall); HVP {ratio['hvp']:.2f}, per-sample "
                f"pass {ratio['ps']:.2f} gradients, one gradient {tb['t_grad']:.2f} s",
                flush=True,
            )
