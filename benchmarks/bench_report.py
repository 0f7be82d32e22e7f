"""Markdown tables of ``bench_diagnostics.py``: one row per (point, method), and the goal check per point."""

from __future__ import annotations


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def method_rows(r: dict) -> list[list]:
    """Rows (method, HVPs, grads by ops, grads by wall, error) of one point."""
    tag = f"{r['loss_fn']} {r['point']} (step {r['step']}, acc {r['train_acc']:.2f}, η‖H‖/2 {r['eta_sharp_half']:.2f})"
    err = r.get("trHS1_err_in_se")
    out = [
        [
            tag,
            "lssr bundle: ‖H‖ + tr(H S_1) (every b)",
            r["bundle_hvps"],
            r["bundle_grad_equiv_ops"],
            r.get("bundle_grad_equiv_wall_side_by_side", r["bundle_grad_equiv_wall"]),
            f"tr: {r.get('trHS1_rel_err', float('nan')):+.2%} ({err:+.2f} se, se {r['trHS1_rel_se']:.1%}); "
            f"‖H‖: {r.get('top_rel_err', float('nan')):+.1e}"
            if err is not None
            else f"se {r['trHS1_rel_se']:.1%}",
        ]
    ]
    if "exact_hvps" in r:
        out.append(
            [
                tag,
                "exact tr(H S_1) (one HVP per sample)",
                r["exact_hvps"],
                r["exact_grad_equiv_ops"],
                r["exact_grad_equiv_wall"],
                "0 (reference)",
            ]
        )
    for m in r["mc"]:
        e = m.get("err_in_se")
        out.append(
            [
                tag,
                f"paper's Monte-Carlo, b = {m['b']} only ({m['batches']} batches for the same se)",
                m["hvps"],
                m["ops"],
                m["grad_equiv_wall"],
                f"pilot {e:+.2f} pilot-se" if e is not None else "-",
            ]
        )
    if "pyhessian_hvps" in r:
        out.append(
            [
                tag,
                "PyHessian eigenvalues(top_n=1, tol=1e-3): ‖H‖ only",
                r["pyhessian_hvps"],
                r["pyhessian_grad_equiv_ops"],
                r["pyhessian_grad_equiv_wall"],
                f"‖H‖: {r['pyhessian_top_rel_err']:+.1e}",
            ]
        )
    if "curvlinops_hvps" in r:
        out.append(
            [
                tag,
                "curvlinops HessianLinearOperator + scipy eigsh(k=1, tol=1e-3): ‖H‖",
                r["curvlinops_hvps"],
                r["curvlinops_grad_equiv_ops"],
                r["curvlinops_grad_equiv_wall"],
                f"‖H‖: {r['curvlinops_top_rel_err']:+.1e}",
            ]
        )
    if "curvlinops_trace_hvps" in r:
        e = r.get("curvlinops_trHS1_rel_err")
        out.append(
            [
                tag,
                "curvlinops hutchpp_trace on GᵀHG/n (bundle's HVP budget): tr(H S_1)",
                r["curvlinops_trace_hvps"],
                r["curvlinops_trace_grad_equiv_ops"],
                r["curvlinops_trace_grad_equiv_wall"],
                f"tr: {e:+.2%} (no se)" if e is not None else "-",
            ]
        )
    return out


GOAL_COLUMNS = [
    "point",
    "step",
    "loss",
    "train acc",
    "bundle (ops)",
    "bundle (wall, side by side)",
    "alone: HVPs / ops / wall",
    "err (se)",
    "goal met",
    "what bounds it (HVPs × measured HVP cost + per-sample passes)",
]


def goal_row(r: dict, ratio: dict, goal: float = 40.0) -> list:
    """The goal per point: by op counts in the run, by wall time alone (``quiet``, bench_wall) where measured,
    else side by side."""
    q = r.get("quiet")
    ops, wall = r["bundle_grad_equiv_ops"], r["bundle_grad_equiv_wall"]
    side = r.get("bundle_grad_equiv_wall_side_by_side", wall)
    err = r.get("trHS1_err_in_se")
    ok_err = None if err is None else abs(err) <= 2
    met = ops <= goal and wall <= goal and ok_err is not False and (q is None or q["bundle_grad_equiv_ops"] <= goal)
    c = r["bundle_counts"]
    ratio = r.get("ratios", ratio)  # each loss's own ratios when the losses ran in separate processes
    bound = (
        f"{c['hvp']} HVPs × {ratio['hvp']:.2f} = {c['hvp'] * ratio['hvp']:.1f} + {c['per_sample_pass']} "
        f"per-sample pass(es) × {ratio['ps']:.2f}"
    )
    return [
        f"{r['loss_fn']} {r['point']}",
        r["step"],
        r["loss"],
        r["train_acc"],
        ops,
        side,
        f"{q['bundle_hvps']} / {fmt(q['bundle_grad_equiv_ops'])} / {fmt(wall)}" if q else "not measured",
        fmt(err) if err is not None else "not checked",
        "yes" if met else "NO",
        bound,
    ]


def run_table(runs: dict, rows: list[dict]) -> str:
    """The ‖H‖ checks along each GD run (step, loss, train accuracy, η‖H‖/2) with the measured points marked."""
    at = {(r["loss_fn"], r["step"]): r["point"] for r in rows if "missing" not in r}
    body = [
        [loss, run["eta"], c["step"], c["loss"], c["train_acc"], c["eta_sharp_half"], at.get((loss, c["step"]), "")]
        for loss, run in runs.items()
        for c in run["checks"]
    ]
    return md_table(["loss", "η", "step", "training loss", "train acc", "η‖H‖/2", "point"], body)


def report(rows: list[dict], ratio: dict, args, runs: dict | None = None) -> None:
    done = [r for r in rows if "missing" not in r]
    if runs:
        print("\n## The GD runs: ‖H‖ checks (warm LOBPCG, tol 1e-2) and the points measured\n")
        print(run_table(runs, rows))
    print("\n## Side by side at each point\n")
    body = [row for r in done for row in method_rows(r)]
    print(md_table(["point", "method", "HVPs", "gradients (op counts)", "gradients (wall)", "error vs exact"], body))
    print(
        f"\n## Goal: bundle ≤ 40 gradient-equivalents both ways (wall time measured alone where it was) and within "
        f"2 se of exact "
        f"(stage1 = {args.stage1}, rel_se = {args.rel_se}, probes ≤ {args.probes})\n"
    )
    print(
        md_table(
            GOAL_COLUMNS,
            [goal_row(r, ratio) for r in done],
        )
    )
    for r in rows:
        if "missing" in r:
            print(f"\n{r['loss_fn']} {r['point']}: {r['missing']}")
