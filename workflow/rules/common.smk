# Planning only: lssr.workflow.plan expands the validated config into subsets, runs and
# figure inputs. No science here.
import json
import os
import re

from lssr.workflow import plan

PLAN = plan(config)
RUNS = PLAN.runs
RES = config.get("resources", {})
GPU = 1 if str(config.get("device", "auto")).startswith("cuda") else 0


# Runs trained by a batched group job (batch_runs: true) are excluded from the single-run rule.
GROUPED = (
    {r for g in PLAN.groups.values() for r in g}
    if config.get("batch_runs", False)
    else set()
)
SINGLE_RUN = (
    "(?!(?:" + "|".join(re.escape(r) for r in sorted(GROUPED)) + ")$)[^/]+"
    if GROUPED
    else r"[^/]+"
)


wildcard_constraints:
    run=r"[^/]+",
    subset=r"[^/]+",
    fig=r"fig[0-9A-Z]+",


def run_dirs(runs):
    return [f"results/runs/{r}" for r in runs]


def run_files(runs):
    return [f"results/runs/{r}/run.json" for r in runs]


def figure_targets():
    return [f"figures/{f}.pdf" for f in PLAN.figures]
