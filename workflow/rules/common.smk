# Planning only: lssr.workflow.plan expands the validated config into subsets, runs and
# figure inputs. No science here.
import os
import re

from lssr.registry import FIGURES, claim_tables_of, figure_tables
from lssr.workflow import plan

# Defaults (resources, batch_runs, run keys) come from lssr.config through the plan.
PLAN = plan(config)
RUNS = PLAN.runs
# threads, mem_mb, runtime cap and gpu_model of each training job; as job resources: mem_mb,
# gpu (1 with device: cuda) and gpu_model when set (read by the slurm executor); each training
# rule adds its job's runtime (minutes, PLAN.runtime / PLAN.group_runtime, from lssr.cost)
RESOURCES = PLAN.resources
JOB_RESOURCES = PLAN.settings.job_resources()


# No conda directive per rule. The project is one Python package used by every rule, so the user's one environment
# (environment.yml + `pip install --no-deps -e .`, or requirements-lock.txt) is the unit. An env file with
# `pip: -e .` breaks once Snakemake copies it elsewhere (--sdm conda), and a named environment makes every
# job call `conda env export`, which fails where conda is absent. (`snakemake --lint` suggests conda per
# rule: tests/test_workflow.py accepts that one lint and no other.)


# Bookkeeping (milliseconds each): run on the submitting host, never as cluster jobs.
localrules:
    all,
    fig5_rho_join,
    runs_table,
    summary,
    verdicts,


# Runs trained by a batched group job (batch_runs: true) are excluded from the single-run rule.
GROUPED = PLAN.grouped_runs
SINGLE_RUN = (
    "(?!(?:" + "|".join(re.escape(r) for r in sorted(GROUPED)) + ")$)[^/]+"
    if GROUPED
    else r"[^/]+"
)


# A figure name outside the registry (figures/fig9.pdf) matches no rule: Snakemake's "No rule to produce". A
# registered figure, subset or run that this config does not plan is answered by the plan (lssr.workflow.Plan)
# with a one-line error naming what is planned.
wildcard_constraints:
    run=r"[^/]+",
    subset=r"[^/]+",
    fig="|".join(re.escape(f) for f in FIGURES),


def run_dirs(runs):
    return [f"results/runs/{r}" for r in runs]


def run_files(runs):
    return [f"results/runs/{r}/run.json" for r in runs]


def figure_targets():
    return [f"figures/{f}.pdf" for f in PLAN.figures]
