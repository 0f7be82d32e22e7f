"""The GPU-hour estimate of a workflow config (default config/paper.yaml): ``lssr.cost``, the same estimate the
workflow requests as each training job's ``runtime``, summed over the planned training jobs (no training).

    python benchmarks/gpu_hours.py [--config config/paper.yaml] [--schedules]

prints, for Figure 5 and for the other figures' training jobs: jobs, runs, GPU-hours (per data set) and the
longest job; ``--schedules`` adds the hours of Figures 1-4, C.5 and S1 under other probe schedules.
docs/PERFORMANCE.md and docs/CLUSTER.md quote its tables (written by report_tables.py).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

from lssr.config import config_from_dict
from lssr.cost import FLOPS_PER_S, PROBE_GRADIENTS, gpu_hours, probed_steps, total_steps
from lssr.workflow import plan

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config" / "paper.yaml"
OTHERS = "Figures 1-4, C.5, S1"
#: (every, dense_until) of the schedules compared; config/paper.yaml's is among them
SCHEDULES = ((1, 0), (10, 0), (50, 200), (25, 200), (20, 300), (10, 200))


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]) + "\n"


def _set_name(subset: str) -> str:
    return subset.removesuffix("-seed0")


def estimate_table(wf: dict) -> str:
    """Jobs, runs, GPU-hours (per data set) and the longest job of each part of the plan of ``wf``."""
    est = gpu_hours(plan(wf))
    rows = []
    for label, e in est.items():
        per_set = ", ".join(f"{_set_name(k)} {v:.1f}" for k, v in e["by_dataset"].items())
        hours = f"{e['hours']:.0f} ({per_set})" if len(e["by_dataset"]) > 1 else f"{e['hours']:.1f}"
        rows.append([label, e["jobs"], e["runs"], hours, f"{e['longest']['name']}: {e['longest']['hours']:.1f} h"])
    rate = FLOPS_PER_S["cuda"] / 1e12
    return (
        f"ESTIMATE (`lssr.cost`: FLOPs / an assumed {rate:g} TFLOP/s, a host overhead per step, a probed step = "
        f"{PROBE_GRADIENTS} full-batch gradients; every run trains its whole budget)\n\n"
        + md_table(["training jobs", "jobs", "runs", "GPU-h (per data set)", "longest job"], rows)
    )


def schedule_table(wf: dict) -> str:
    """GPU-hours of the training jobs besides Figure 5 with every probed run's schedule set to each of
    :data:`SCHEDULES`, and their share of Figure 5's."""
    base = plan(wf)
    fig5 = gpu_hours(base)["Figure 5"]["hours"]
    rows = []
    for every, dense in SCHEDULES:
        p = copy.deepcopy(base)
        k = 0
        for rid, raw in p.runs.items():
            if raw.get("probe") and rid not in p.grouped_runs:
                raw["probe"].update(every=every, dense_until=dense)
                cfg = config_from_dict(raw)
                k += probed_steps(cfg.probe, total_steps(cfg))
        h = gpu_hours(p)[OTHERS]["hours"]
        label = f"every {every}" + (f", every step before {dense}" if dense else "")
        rows.append([label, k, f"{h:.1f}", f"{h / fig5:.1%}"])
    return md_table(["probe schedule", "probed steps", "GPU-h", f"of Figure 5 ({fig5:.0f} GPU-h)"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(PAPER), help="workflow config (default config/paper.yaml)")
    ap.add_argument("--schedules", action="store_true", help="also the hours under other probe schedules")
    args = ap.parse_args(argv)
    wf = yaml.safe_load(Path(args.config).read_text())
    print(estimate_table(wf))
    if args.schedules:
        print(schedule_table(wf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
