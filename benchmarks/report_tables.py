"""The tables of benchmarks/README.md, docs/PERFORMANCE.md and docs/CLUSTER.md, generated from the kept records.

Every table in those pages that quotes a benchmark sits between ``<!-- begin: NAME -->`` and ``<!-- end: NAME -->``
and is written by this script from the JSON under ``results/bench/`` (``diagnostics*.json`` from
``make bench-diagnostics``, ``se_study.json`` from ``make bench-se``, ``bench_grid.json`` from ``make bench-grid``,
``monitor.json`` from ``make bench-monitor``)
and, for the memory table, from ``config/paper.yaml`` through ``lssr.memory`` (``memory_table.py``); the GPU-hour
estimate of config/paper.yaml (docs/PERFORMANCE.md, docs/CLUSTER.md) through ``lssr.cost`` (``gpu_hours.py``).

    python benchmarks/report_tables.py            # rewrite the marked sections in place
    python benchmarks/report_tables.py --check    # exit 1, naming the sections that differ

``tests/test_report_tables.py`` checks that regenerating the pages gives the same text.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from functools import cache
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_report import GOAL_COLUMNS, goal_row, md_table, method_rows, run_table  # noqa: E402

BENCH = ROOT / "results" / "bench"
PAGES = (HERE / "README.md", ROOT / "docs" / "PERFORMANCE.md", ROOT / "docs" / "CLUSTER.md")
SECTION = re.compile(r"(<!-- begin: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


@cache
def load(name: str) -> dict:
    return json.loads((BENCH / name).read_text())


def span(values, f: str = "{:.3g}", sep: str = "–") -> str:
    lo, hi = min(values), max(values)
    return f.format(lo) if f.format(lo) == f.format(hi) else f.format(lo) + sep + f.format(hi)


# -- make bench-se -------------------------------------------------------------------------------------------------
def se_study() -> str:
    rows = load("se_study.json")["rows"]
    out = []
    for s in sorted({r["probes"] for r in rows}):
        g = [r for r in rows if r["probes"] == s]
        col = lambda k: [r[k] for r in g]  # noqa: E731
        out.append(
            [
                s,
                len(g),
                g[0]["seeds"],
                span([100 * v for v in col("rel_spread")], "{:.2f}%"),
                span(col("bias_in_se_of_mean"), "{:+.2f}"),
                span(col("jackknife_rms_se_over_spread"), "{:.2f}"),
                span(col("jackknife_cover_2se"), "{:.3f}"),
                span(col("naive_rms_se_over_spread"), "{:.2f}"),
                span(col("naive_cover_2se"), "{:.3f}"),
            ]
        )
    return md_table(
        [
            "probes s",
            "problems",
            "sign seeds",
            "relative spread of the estimate",
            "bias (se of the mean)",
            "jackknife rms se / spread",
            "2 jackknife se cover",
            "naive rms se / spread",
            "2 naive se cover",
        ],
        out,
    )


# -- make bench-diagnostics ----------------------------------------------------------------------------------------
def diag() -> dict:
    return load("diagnostics.json")


def points() -> list[dict]:
    return [r for r in diag()["points"] if "missing" not in r]


def diagnostics_setting() -> str:
    d = diag()
    s = d["settings"]
    rows = []
    for loss in s["losses"]:
        run = d["runs"][loss]
        r = d["ratios"][loss]
        wall = load(f"diagnostics-{loss}.json")["wall_s"]
        rows.append(
            [
                loss,
                run["eta"],
                run["check_from"],
                run["inside"],
                r["hvp"],
                r["ps"],
                r["loss"],
                r["t_grad"],
                f"{wall:.0f}",
            ]
        )
    table = md_table(
        [
            "loss",
            "η",
            "‖H‖ checked from step",
            "`inside`: steps after the crossing",
            "HVP (gradients)",
            "per-sample pass (gradients)",
            "loss pass (gradients)",
            "one gradient (s)",
            "run wall time (s)",
        ],
        rows,
    )
    knobs = (
        f"n = {s['n']} images, seed {s['seed']}, {s['threads']} thread(s) per loss, {s['jobs']} losses side by side; "
        f"‖H‖ checked every {s['check_every']} steps; bundle: stage1 = {s['stage1']}, probes ≤ {s['probes']}, "
        f"rel_se = {s['rel_se']}; Monte-Carlo b = {', '.join(map(str, s['mc_b']))}."
    )
    return table + "\n\n" + knobs


def diagnostics_runs() -> str:
    return run_table(diag()["runs"], diag()["points"])


def diagnostics_side_by_side() -> str:
    body = [row for r in points() for row in method_rows(r)]
    return md_table(["point", "method", "HVPs", "gradients (op counts)", "gradients (wall)", "error vs exact"], body)


def diagnostics_goal() -> str:
    d = diag()
    first = d["ratios"][d["settings"]["losses"][0]]
    return md_table(
        GOAL_COLUMNS,
        [goal_row(r, first) for r in points()],
    )


def diagnostics_summary() -> str:
    d = diag()
    ps = points()
    q = [r for r in ps if "quiet" in r]
    met = sum(goal_row(r, d["ratios"][d["settings"]["losses"][0]])[8] == "yes" for r in ps)
    rows = [
        ["points measured (MSE and CE: before, crossing, inside)", len(ps)],
        ["bundle HVPs", span([r["bundle_hvps"] for r in ps], "{}")],
        ["bundle cost in the run, op counts (gradients)", span([r["bundle_grad_equiv_ops"] for r in ps], "{:.1f}")],
        ["bundle cost alone, wall time (gradients)", span([r["bundle_grad_equiv_wall"] for r in q], "{:.1f}")],
        [
            "wall time / op counts, alone",
            span([r["bundle_grad_equiv_wall"] / r["quiet"]["bundle_grad_equiv_ops"] for r in q], "{:.2f}"),
        ],
        [
            "wall time / op counts, side by side with the other loss",
            span([r["bundle_grad_equiv_wall_side_by_side"] / r["bundle_grad_equiv_ops"] for r in ps], "{:.2f}"),
        ],
        ["tr(H S_1) error vs exact", span([r["trHS1_rel_err"] for r in ps], "{:+.2%}")],
        ["tr(H S_1) error in jackknife se", span([r["trHS1_err_in_se"] for r in ps], "{:+.2f}")],
        ["tr(H S_1) relative se reached", span([r["trHS1_rel_se"] for r in ps], "{:.1%}")],
        ["‖H‖ relative error (largest)", f"{max(abs(r['top_rel_err']) for r in ps):.1e}"],
        ["exact tr(H S_1) per point (gradients, op counts)", span([r["exact_grad_equiv_ops"] for r in ps], "{:.0f}")],
        [
            "exact tr(H S_1) per point (wall time, s)",
            span([r["exact_grad_equiv_wall"] * r["t_grad_s"] for r in ps], "{:.0f}"),
        ],
        ["points meeting the goal (≤ 40 gradients both ways, within 2 se)", f"{met} of {len(ps)}"],
    ]
    return md_table(["quantity", "measured"], rows)


@cache
def paper_wf() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())


@cache
def paper_gpu_hours() -> dict:
    from lssr.cost import gpu_hours
    from lssr.workflow import plan

    return gpu_hours(plan(paper_wf()))


@cache
def figures_1_4() -> str:
    """GPU-hours of the training jobs besides Figure 5 under several probe schedules (``lssr.cost``, through
    gpu_hours.py)."""
    from gpu_hours import schedule_table

    return schedule_table(paper_wf())


@cache
def gpu_hours_estimate() -> str:
    """The GPU-hour estimate of config/paper.yaml (``lssr.cost``, through gpu_hours.py)."""
    from gpu_hours import estimate_table

    return estimate_table(paper_wf())


def paper_schedule() -> tuple[int, int]:
    """(every, dense_until) of the probes of Figure 1 in config/paper.yaml (Figures 1, 3 and 4 share it)."""
    import yaml

    probe = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["experiments"]["fig1"]["probe"]
    return probe["every"], probe.get("dense_until", 0)


def own_model_cost_row() -> list:
    """``lssr.diagnose`` on resnet18 (own_model.json), at initialisation and after training."""
    d = load("own_model.json")
    at = {p["point"]: p["lssr"] for p in d["points"]}
    return [
        "`lssr.diagnose` (‖H‖ and tr(H S_1) at 5% se) on torchvision's resnet18, 11.2M parameters",
        "; ".join(
            f"{k}: {L['counts']['hvp']} HVPs ({L['hvp_mode']}) + {L['counts']['per_sample_pass']} per-sample passes "
            f"= {L['ops']:.0f} "
            f"gradients by op counts, {L['wall_ge']:.0f} by wall time"
            for k, L in at.items()
        ),
        f"measured (CPU, n = {d['settings']['n']})",
        "`own_model.json`",
    ]


def cost_summary() -> str:
    """The few numbers docs/PERFORMANCE.md leads with, each from its record."""
    d, c = diag(), grid()["cost_model"]
    ps, q = points(), [r for r in points() if "quiet" in r]
    every, dense = paper_schedule()
    est = paper_gpu_hours()
    f14, f5 = est["Figures 1-4, C.5, S1"], est["Figure 5"]
    hvp = [r["hvp"] for r in d["ratios"].values()]
    rows = [
        [
            "cnn6 forward + backward per 32 px image (batches of 32), 1 CPU thread",
            f"{1e3 * c['cpu_per_sample_s']['cnn6@32']:.1f} ms",
            "measured (CPU)",
            "`bench_grid.json`",
        ],
        [
            "host overhead of one `train()` step (dispatch, Python)",
            f"{1e3 * c['host_overhead_single_s']:.1f} ms",
            "measured (CPU)",
            "`bench_grid.json`",
        ],
        [
            "one Hessian-vector product",
            f"{span(hvp, '{:.2f}')} gradients",
            "measured (CPU, cnn6)",
            "`diagnostics.json`",
        ],
        [
            "probes of one probed step: ‖H‖ and tr(H S_b) for every b (the bundle)",
            f"{span([r['bundle_hvps'] for r in ps], '{}')} HVPs = "
            f"{span([r['bundle_grad_equiv_ops'] for r in ps], '{:.1f}')} gradients by op counts, "
            f"{span([r['bundle_grad_equiv_wall'] for r in q], '{:.1f}')} by wall time",
            f"measured (CPU, cnn6, n = {d['settings']['n']})",
            "`diagnostics.json`",
        ],
        [
            "the same tr(H S_1) exactly (one HVP per sample)",
            f"{span([r['exact_grad_equiv_ops'] for r in ps], '{:.0f}')} gradients",
            f"measured (CPU, cnn6, n = {d['settings']['n']})",
            "`diagnostics.json`",
        ],
        own_model_cost_row(),
        [
            f"Figures 1–4, C.5 and S1 of config/paper.yaml ({f14['jobs']} probed runs; probes every step before "
            f"{dense}, then every {every})",
            f"{f14['hours']:.1f} GPU-h; longest job {f14['longest']['hours']:.1f} h",
            "ESTIMATE (`lssr.cost`, assumed 25 TFLOP/s)",
            "(computed from config/paper.yaml)",
        ],
        [
            f"Figure 5 of config/paper.yaml ({f5['jobs']} jobs, {f5['runs']} runs, cnn6 + BN, 800 epochs)",
            f"{f5['hours']:.0f} GPU-h; longest job {f5['longest']['hours']:.1f} h ({f5['longest']['name']})",
            "ESTIMATE (`lssr.cost`, assumed 25 TFLOP/s)",
            "(computed from config/paper.yaml)",
        ],
    ]
    return md_table(["what", "cost", "kind", "record (`results/bench/`)"], rows)


# -- make bench-grid -----------------------------------------------------------------------------------------------
def grid() -> dict:
    return load("bench_grid.json")


def grid_throughput() -> str:
    g = grid()["grid"]
    modes = [
        ("A", "A_processes_s", "one `python -m lssr.cli train` process per run, one after another"),
        ("B", "B_inprocess_sequential_s", "`train()` one after another in one process"),
        ("C", "C_inprocess_batched_s", "`train_batched()` in one process"),
        ("D", "D_batched_process_s", "one `python -m lssr.cli train-batch` process"),
    ]
    rows = [[f"{k}. {text}", f"{g[key]:.1f} s", f"{g['runs_per_hour'][k]:.0f}"] for k, key, text in modes]
    return (
        md_table(["mode", f"wall ({g['runs']} runs)", "runs per hour"], rows)
        + f"\n\nD/A = {g['ratio_D_over_A']:.2f}x, C/B = {g['ratio_C_over_B']:.2f}x; {g['steps']} steps, "
        f"{g['threads']} thread(s); load average {g['load_before']} before, {g['load_after']} after. Largest metric "
        f"difference batched vs one by one, per η = 2^-6 .. 2^1: "
        + ", ".join(f"{v:.2g}" for v in g["metric_diff_per_run"])
        + "."
    )


def per_sample() -> str:
    c = grid()["cost_model"]
    rows = []
    for key, f in c["flops_per_sample_fwd_bwd"].items():
        model, px = key.split("@")
        s = c["cpu_per_sample_s"][key]
        rows.append([model, px, f"{f / 1e9:.3f}", f"{1e3 * s:.1f}", f"{f / s / 1e9:.0f}"])
    return md_table(["model", "px", "GFLOP / sample (fwd+bwd)", "CPU ms / sample", "CPU GFLOP/s"], rows)


def host_overhead() -> str:
    c = grid()["cost_model"]
    return md_table(
        ["step", "host time per step (ms)"],
        [
            ["`train()`", f"{1e3 * c['host_overhead_single_s']:.1f}"],
            ["`train_batched()`, 1 member", f"{1e3 * c['host_overhead_batched_s']:.1f}"],
            ["`train_batched()`, 10 members", f"{1e3 * c['tiny_step_batched10_s']:.1f}"],
        ],
    )


def figure5_estimate() -> str:
    f5 = grid()["cost_model"]["figure5"]
    rows = []
    for model, e in f5["estimate"].items():
        per_ds: dict[str, float] = {}
        for j in f5["jobs"][model]:
            per_ds[j["dataset"]] = per_ds.get(j["dataset"], 0.0) + j["job_h"]
        lj = e["longest_job"]
        rows.append(
            [
                f"{model} + BN",
                f"{e['batched_gpu_h']:.0f} (" + ", ".join(f"{k} {v:.0f}" for k, v in per_ds.items()) + ")",
                f"{e['unbatched_gpu_h']:.0f}",
                f"{lj['dataset']} b = {lj['b']}: {lj['job_h']:.1f} h",
            ]
        )
    head = (
        f"{f5['source']}; {f5['grid']['members']} members per job, {f5['grid']['epochs']} epochs, evaluation every "
        f"{f5['grid']['eval_every']} steps; per-step host overhead "
        f"{1e3 * f5['per_step_overhead_single_s']:.1f} ms (one run), "
        f"{1e3 * f5['per_step_overhead_batched_s']:.1f} ms (batched)\n\n"
    )
    return head + md_table(
        ["model", "GPU-h, one job per (data set, b), batched over η", "GPU-h, one run per job", "longest job"], rows
    )


def checkpointing() -> str:
    rows = []
    for key, r in grid()["checkpointing"].items():
        model, px, b, m = key.split("_")
        rows.append(
            [model, px[:-2], b[1:], m[1:], f"{r['plain_s']:.3f}", f"{r['checkpointed_s']:.3f}", f"{r['ratio']:.2f}x"]
            + [f"{r['memory_ratio_est']:.2f}"]
        )
    return md_table(
        [
            "model",
            "px",
            "b",
            "members",
            "plain s/step",
            "checkpointed s/step",
            "ratio",
            "activation memory ckpt/plain (est.)",
        ],
        rows,
    )


# -- make bench-own-model -----------------------------------------------------------------------------------------
def own_model() -> str:
    d = load("own_model.json")
    rows = []
    for p in d["points"]:
        ex, L, cl, ph = p["exact"], p["lssr"], p["curvlinops"], p["pyhessian"]
        tag = p["point"]
        rows.append(
            [
                tag,
                f"lssr.diagnose ({L['estimator']}, {L['probes']} probes, HVPs: {L['hvp_mode']})",
                L["top"],
                f"{L['top_rel_err']:+.1e}",
                L["tr_HS_1"],
                f"{L['tr_HS_1_rel_err']:+.2%} ({L['tr_HS_1_err_in_se']:+.2f} se; se {100 * L['tr_HS_1_rel_se']:.2g}%)",
                L["counts"]["hvp"],
                f"{L['ops']:.0f}",
                f"{L['wall_ge']:.0f}",
            ]
        )
        if "skipped" in cl:
            rows.append([tag, "curvlinops", "-", cl["skipped"], "-", "-", "-", "-", "-"])
        else:
            rows.append(
                [
                    tag,
                    "curvlinops (eigsh + Hutch++ on GᵀHG/n)",
                    cl["top"],
                    f"{cl['top_rel_err']:+.1e}",
                    cl["tr_HS_1"],
                    f"{cl['tr_HS_1_rel_err']:+.2%}",
                    cl["hvps"] + cl["trace_hvps"],
                    f"{cl['total_ops']:.0f}",
                    f"{cl['total_wall_ge']:.0f}",
                ]
            )
        if "skipped" in ph:
            rows.append([tag, "PyHessian", "-", ph["skipped"], "-", "-", "-", "-", "-"])
        else:
            rows.append(
                [
                    tag,
                    "PyHessian (power iteration; trace() is tr H)",
                    ph["top"],
                    f"{ph['top_rel_err']:+.1e}",
                    f"n/a (tr H = {ph['trace']['tr_H']:.4g})",
                    "-",
                    ph["hvps"] + ph["trace"]["hvps"],
                    f"{ph['total_ops']:.0f}",
                    f"{ph['total_wall_ge']:.0f}",
                ]
            )
        rows.append(
            [
                tag,
                f"exact (LOBPCG residual {ex['top_residual']:.0e}; one HVP per sample)",
                ex["top"],
                "-",
                ex["tr_HS_1"],
                "-",
                ex["top_hvps"] + ex["trace_hvps"],
                f"{ex['trace_ops'] + ex['top_hvps'] * p['ratios']['hvp']:.0f}",
                f"{ex['trace_wall_ge'] + ex['top_wall_ge']:.0f}",
            ]
        )
    table = md_table(
        [
            "point",
            "method",
            "‖H‖",
            "‖H‖ error",
            "tr(H S_1)",
            "tr(H S_1) error",
            "HVPs",
            "gradients (op counts)",
            "gradients (wall)",
        ],
        rows,
    )
    ratios = "; ".join(
        f"{p['point']}: one gradient {p['t_grad_s']:.2f} s, HVP {p['ratios']['hvp']:.2f} (through a kept graph "
        f"{p['ratios'].get('hvp_graph', float('nan')):.2f}, building it {p['ratios'].get('graph', float('nan')):.2f}), "
        f"per-sample pass {p['ratios']['ps']:.1f} gradients"
        for p in d["points"]
    )
    t = d["training"]
    why = f" ({d['n_chosen_because']})" if "n_chosen_because" in d else ""
    return (
        table + f"\n\nn = {d['settings']['n']} images{why}; training: {t['steps']} SGD steps, "
        f"batch {d['settings']['batch']}, η = {d['settings']['lr']}, train loss {t['train_loss_eval_mode']:.3f}, "
        f"accuracy {t['train_accuracy_eval_mode']:.2f} (eval mode). {ratios}. Whole run {d['wall_s'] / 60:.0f} "
        f"minutes, load average {d['loadavg_before'][0]:.1f} before, {d['loadavg_after'][0]:.1f} after. Goal "
        f"≤ {d['goal_gradient_equivalents']:g} gradients after training: "
        + ("met" if d["points"][-1]["lssr"]["goal_met"] else "not met")
        + "."
    )


def memory() -> str:
    import yaml
    from memory_table import table

    return table(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()), 80.0)


# -- make bench-monitor --------------------------------------------------------------------------------------------
def monitor_diagnose_overhead() -> str:
    """The wall-time overhead of the monitor's diagnose rows at their default schedule, per loop pair
    (monitor_diagnose.json)."""
    r = load("monitor_diagnose.json")

    def row(label: str, plain: dict, mon: dict, overhead: float, same: bool) -> list:
        calib = mon.get("calibration_step")
        return [
            label,
            f"{plain['wall_s']:.1f}",
            f"{mon['wall_s']:.1f}",
            f"{overhead:+.1%}",
            f"{mon['measurements']}"
            + (f" (at {', '.join(map(str, mon['measured_steps']))})" if mon["measurements"] else ""),
            "none" if calib is None else f"step {calib}, {mon['calibration_grad_s']:.2f} s per gradient",
            f"{mon['measure_s']:.1f}",
            "—" if mon.get("next_measurement_fits_at_step") is None else str(mon["next_measurement_fits_at_step"]),
            "yes" if same else "no",
        ]

    steps = r["settings"]["steps"]
    rows = [
        row(f"{steps} steps, pair {i + 1}", p["plain"], p["monitor"], p["overhead"], p["losses_identical"])
        for i, p in enumerate(r["reps"])
    ]
    if "long" in r:
        lg = r["long"]
        rows.append(row(f"{lg['steps']} steps", lg["plain"], lg["monitor"], lg["overhead"], lg["losses_identical"]))
    table = md_table(
        [
            "loop",
            "without monitor s",
            "with monitor s",
            "overhead",
            "measurements",
            "calibration",
            "monitor s (calibration + measurements)",
            "next measurement fits at step",
            "losses identical",
        ],
        rows,
    )
    loops = [(p, steps) for p in r["reps"]] + ([(r["long"], r["long"]["steps"])] if "long" in r else [])
    costs = [
        (x["cost_seconds"], x["cost_seconds"] / (p["plain"]["wall_s"] / n))
        for p, n in loops
        for x in p["monitor"]["rows"]
    ]
    cost = (
        f"one measurement {span([c[0] for c in costs], '{:.1f}')} s, {span([c[1] for c in costs], '{:.0f}')} steps "
        f"of the loop without the monitor in the same pair"
        if costs
        else "no measurement taken"
    )
    load_avg = (
        ", ".join(f"{x:.2f}" for x in r["loadavg_before"])
        + " before; "
        + ", ".join(f"{x:.2f}" for x in r["loadavg_after"])
        + " after"
    )
    return (
        f"{table}\n\nMedian overhead of the {steps}-step pairs: {r['overhead_median']:+.1%} (goal ≤ "
        f"{r['goal_overhead']:.0%}); {cost}; {r['settings']['model']}, batch {r['settings']['batch']}, "
        f"{r['settings']['threads']} thread, torch {r['torch']}; load average (1, 5, 15 min) {load_avg} "
        f"on {r['cpu_count']} cores.\n"
    )


def monitor_accuracy(name: str = "monitor_accuracy.json") -> str:
    """The streaming rows against lssr.diagnose on all N training samples along each window (``name``), tr(H S_b)
    also from the other hvp_steps recorded on the same run; ‖H‖'s relative differences where it was measured."""
    r = load(name)
    names = {
        "tr_S_b": "tr S_b (window mean)",
        "tr_S_n": "tr S_n (row's θ)",
        "tr_S_n_window": "tr S_n, the window's U-statistic (window mean)",
        "tr_S_1": "tr S_1",
        "b_simple": "B_simple",
        "rho_b": "ρ_b",
        "tr_HS_b": f"tr(H S_b) (row's θ; last {r['hvp_steps']} steps)",
        "ias_b": "‖H‖_{S_b}",
    }

    def line(name: str, s: dict) -> list[str]:
        z = [abs(v) for v in s["z"]]
        cover = [f"{s[c]:.2f}" for c in ("coverage_1_se", "coverage_2_se")]
        return [name, f"{s['within_3_se']}/{s['rows']}", *cover, span(z, "{:.1f}")]

    rows = [line(names[k], r["summary"][k]) for k in names]
    for h, alt in r.get("alternatives", {}).items():
        what = f"last {h} steps; row's θ" if h != "0" else "the whole window; window mean"
        rows.append(line(f"tr(H S_b) ({what})", alt["summary"]["tr_HS_b"]))
    table = md_table(["quantity", "rows within 3 se", "coverage at 1 se", "coverage at 2 se", "z, absolute"], rows)
    eig = [v for v in r["summary"]["top_eig"]["rel_diff"] if v is not None and math.isfinite(v)]
    st = r["settings"]
    eig_text = f"‖H‖ (row's θ): streaming / reference − 1 = {span(eig, '{:+.2f}')}. " if eig else "‖H‖ not compared. "
    return (
        f"{table}\n\n{eig_text}"
        f"{r['model']}, m = {r['m']}, N = {st['n']} CIFAR-10 images at {st['px']} px, b = {st['batch']}, "
        f"η = {st['lr']}, β = 0.9, a row every {st['window']} steps; {len(r['pairs'])} rows compared after "
        f"{st['warmup']}, the references at {st['points']} steps of each window; {r['wall_s']:.0f} s{on_cpu(r)}, "
        f"load average "
        f"{r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after.\n"
    )


def on_cpu(r: dict) -> str:
    """ " on <CPU model> (with/without AVX-512)" for a record that names its CPU (a seeded run repeats exactly only
    on the same kernels), else ""."""
    c = r.get("cpu")
    if not c:
        return ""
    avx = "" if c.get("avx512") is None else (" with AVX-512" if c["avx512"] else " without AVX-512")
    return f" on {c['model']}{avx}"


def eig_reference(*names: str) -> str:
    """The held-out bracket of ‖∇²L_b‖ at the streaming rows' steps, with the rows' ‖H‖ (study_eig_reference.py; the
    points of several records of one setting, e.g. the same run's early and late steps, in one table)."""
    recs = [load(n) for n in names]
    r = dict(recs[0], points=[p for x in recs for p in x["points"]])
    fit = r["settings_fit"]

    def held(p: dict, key: str) -> str:
        h = p["heldout"].get(key)
        return f"{h['mean']:.3g} ± {h['se']:.2g}" if h else "–"

    rows, below = [], []  # below: the steps where the streaming ‖H‖ lies below the bracket's lower end
    for p in r["points"]:
        u = p["heldout"]["u"]
        low = max(u["mean"] - 2 * u["se"], 0.0)
        if p.get("stream") and p["stream"]["top_eig"] < low:
            below.append(p["step"])
        prev = held(p, "u_prev") + (f" ({p['overlap_prev']:.3f})" if p.get("overlap_prev") is not None else "")
        stream = f"{p['stream']['top_eig']:.3g}" if p.get("stream") else "–"
        rows.append([p["step"], f"{p['lambda_fit']:.3g}", held(p, "u"), f"[{low:.2g}, {p['lambda_fit']:.3g}]", stream,
                     held(p, "tracked"), prev])  # fmt: skip
    head = [
        "step",
        f"λ_fit ({fit['fit']} batches, in-sample)",
        f"u held out ({fit['heldout']} batches)",
        "‖∇²L_b‖ bracket",
        "streaming ‖H‖",
        "tracked x held out",
        "previous u held out (overlap with u)",
    ]
    runs = "; ".join(
        f"{x['wall_s']:.0f} s on {x['settings']['threads']} thread(s){on_cpu(x)}, load average "
        f"{x['loadavg_before'][0]:.2f} before, {x['loadavg_after'][0]:.2f} after"
        for x in recs
    )
    return (
        f"{md_table(head, rows)}\n\nThe streaming ‖H‖ lies below the bracket's lower end at {len(below)} of "
        f"{len(r['points'])} steps ({', '.join(map(str, below)) or 'none'}). {runs}.\n"
    )


def eig_trackers(name: str) -> str:
    """The streaming ‖H‖ trackers side by side (study_eig_trackers.py): against LOBPCG on all N (eos), or their
    vectors' held-out quotients (kept)."""
    r = load(name)
    products = r["products_per_row"]
    if r["workload"] == "eos":
        rows = [
            [
                k,
                products[k],
                f"{s['ratio_mean']:.2f} ± {s['ratio_sd']:.2f}",
                f"{s['overlap_mean']:.2f}" if "overlap_mean" in s else "–",
            ]  # fmt: skip
            for k, s in sorted(r["summary"].items(), key=lambda kv: (products[kv[0]], kv[0]))
        ]
        n = next(iter(r["summary"].values()))["rows"]
        ov = [o["reference_overlap_prev"] for o in r["rows"] if o.get("reference_overlap_prev") is not None]
        head = ["tracker", "products per row", f"reported / ‖H‖ (mean ± sd, {n} rows)", "overlap of x with u (mean)"]
        tail = (f"Consecutive reference eigenvectors ({r['window']} steps apart) overlap by "
                f"{span(ov, '{:.2f}')}, median {statistics.median(ov):.2f}.")  # fmt: skip
    else:
        scored = [o for o in r["rows"] if "heldout" in o]
        keys = sorted((k for k in products if not k.startswith("monitor")), key=lambda k: (products[k], k))
        keys += [k for k in scored[0].get("free", {})]  # directions found without tracking (no products a row)
        head = ["tracker", "products per row"] + [f"step {o['step']}" for o in scored] + ["reported at those steps"]
        rows = [
            [k, products.get(k, "–")]
            + [f"{o['heldout'][k]['mean']:.2g} ± {o['heldout'][k]['se']:.1g}" for o in scored]
            + [span([o["free" if k in o.get("free", {}) else "reported"][k] for o in scored], "{:.2g}")]
            for k in keys
        ]
        tail = (
            "Each step's cell: the tracked (or free) vector's Rayleigh quotient, mean ± se over 16 independent "
            "batches; the last column the trackers' own values at those rows (in-sample). Rows with – are the "
            "directions found without tracking (grad-pc1, grad-ritz4, last-layer: study_eig_trackers.py's docstring); "
            "their in-sample values took 1, 4 and up to 20 products on each of the row's 4 probe sets."
        )
    return (
        f"{md_table(head, rows)}\n\n{tail} {r['wall_s']:.0f} s on {r['settings']['threads']} thread(s){on_cpu(r)}, "
        f"load average {r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after.\n"
    )


def stream_overhead(name: str) -> str:
    """The streaming mode's overhead, rows (count, first step) and losses per loop pair (``name``)."""
    r = load(name)
    st = r["settings"]

    def row(label: str, pair: dict) -> list:
        mon, steps = pair["monitor"], pair["monitor"]["measured_steps"]
        first = f", first at {steps[0]}" if steps else ""
        return [
            label,
            f"{pair['plain']['wall_s']:.1f}",
            f"{mon['wall_s']:.1f}",
            f"{pair['overhead']:+.1%}",
            f"{mon['stream_rows']}{first}",
            "yes" if pair["losses_identical"] else "no",
            f"{mon['last_loss']:.3f}",
        ]

    rows = [row(f"{st['steps']} steps, pair {i + 1}", p) for i, p in enumerate(r["reps"])]
    if "long" in r:
        rows.append(row(f"{r['long']['steps']} steps", r["long"]))
    head = ["loop", "without monitor s", "with monitor s", "overhead", "streaming rows", "losses identical"]
    table = md_table(head + ["last loss"], rows)
    costs = [
        x["cost_seconds"] for p in r["reps"] + [r.get("long", {"monitor": {"rows": []}})] for x in p["monitor"]["rows"]
    ]
    loops = [(p, st["steps"]) for p in r["reps"]] + ([(r["long"], r["long"]["steps"])] if "long" in r else [])
    in_steps = [x["cost_seconds"] / (p["plain"]["wall_s"] / n) for p, n in loops for x in p["monitor"]["rows"]]
    steps_long = r.get("long", r["reps"][0])["monitor"]["measured_steps"]
    every = st.get("window") or (steps_long[1] - steps_long[0] if len(steps_long) > 1 else "?")
    goal = f" (goal ≤ {r['goal_overhead']:.0%})" if "goal_overhead" in r else ""
    options = [f"{k} = {st[k]}" for k in ("stream_n", "eigen_hvps") if st.get(k) is not None]
    if options:  # the goal is the defaults'
        goal = f"; the monitor with {', '.join(options)}"
    return (
        f"{table}\n\nMedian overhead of the {st['steps']}-step pairs: {r['overhead_median']:+.1%}"
        f"{goal}; one row "
        f"{span(costs, '{:.2f}')} s, {span(in_steps, '{:.1f}')} steps of the loop without the monitor in the same "
        f"pair; {st['model']}, batch {st['batch']}, η = {st['lr']}, a row every {every} steps (budget 10%), "
        f"{st['threads']} thread, torch {r['torch']}; load average (1 min) {r['loadavg_before'][0]:.2f} before, "
        f"{r['loadavg_after'][0]:.2f} after, on {r['cpu_count']} cores.\n"
    )


SECTIONS: dict[str, Callable[[], str]] = {
    "se-study": se_study,
    "diagnostics-setting": diagnostics_setting,
    "diagnostics-runs": diagnostics_runs,
    "diagnostics-side-by-side": diagnostics_side_by_side,
    "diagnostics-goal": diagnostics_goal,
    "diagnostics-summary": diagnostics_summary,
    "figures-1-4-gpu-hours": figures_1_4,
    "gpu-hours": gpu_hours_estimate,
    "cost-summary": cost_summary,
    "grid-throughput": grid_throughput,
    "per-sample": per_sample,
    "host-overhead": host_overhead,
    "figure5-estimate": figure5_estimate,
    "checkpointing": checkpointing,
    "own-model": own_model,
    "memory": memory,
    "monitor-overhead": lambda: stream_overhead("monitor.json"),
    "monitor-diagnose-overhead": monitor_diagnose_overhead,
    "monitor-accuracy": monitor_accuracy,
    "monitor-accuracy-eigen": lambda: monitor_accuracy("monitor_accuracy_eigen.json"),
    "monitor-stream-overhead": lambda: stream_overhead("monitor_stream.json"),
    "monitor-stream-eigen-overhead": lambda: stream_overhead("monitor_stream_eigen.json"),
    "eig-reference": lambda: eig_reference("eig_reference.json"),
    "eig-reference-k128": lambda: eig_reference("eig_reference_k128.json", "eig_reference_k128_late.json"),
    "eig-trackers-eos": lambda: eig_trackers("eig_trackers_eos.json"),
    "eig-trackers-kept": lambda: eig_trackers("eig_trackers_kept.json"),
}


def render(text: str, where: str = "page") -> str:
    """``text`` with every marked section rewritten from the records."""

    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in SECTIONS:
            raise SystemExit(f"{where}: unknown generated section {name!r}; known: {', '.join(SECTIONS)}")
        return m.group(1) + SECTIONS[name]().rstrip("\n") + "\n" + m.group(4)

    return SECTION.sub(one, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    args = ap.parse_args(argv)
    stale = []
    for page in PAGES:
        old = page.read_text()
        new = render(old, str(page))
        if new != old:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print("out of date (run python benchmarks/report_tables.py): " + ", ".join(map(str, stale)))
        return 1
    print(("rewrote " + ", ".join(map(str, stale))) if stale else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
