"""Experiment planning for the Snakemake workflow: workflow config -> subsets, runs, figure inputs.

The workflow config (``config/*.yaml``, schema ``workflow/schemas/config.schema.yaml``, defaults and
value rules in :mod:`lssr.config`) describes experiments per figure; :func:`plan` expands it into

- ``subsets``: subset name -> ``lssr subset`` arguments,
- ``runs``: run id -> a complete, validated run config (dict form of :class:`lssr.config.RunConfig`),
- ``figures``: figure name -> the run ids its table needs,
- ``settings``: the top-level settings (:class:`lssr.config.WorkflowSettings`: resources, batch_runs, ...).

The .smk rules read the plan through the methods of :class:`Plan` (the shell arguments of a subset, a run or a
Figure-5 group), which answer a path the config does not plan with a one-line :class:`NotPlannedError` naming
what is planned. Each training job receives its run config as JSON and writes it to ``<run>/config.yaml``
itself (:func:`lssr.config.from_json.run_config_from_json`): no separate job per run config.

A run id is readable and stable, built from (data set, model, loss, b, η, seed, sampling), e.g.
``digits-1k_digits_cnn_ce_b32_lr0.1_s0_wor``. A run requested by two figures is planned once; the
probe settings the figures ask for are merged (probe every min, union of batch sizes, max of sample
counts, valley probes if any asks) so it is trained once. Planning does no science: it only lays
out which runs exist.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from .config import (
    MIN_BATCH_SIZE,
    RUN_KEYS,
    STOP_KEYS,
    ConfigError,
    ModelConfig,
    Resources,
    RunConfig,
    WorkflowSettings,
    config_from_dict,
    data_parallel_config,
    dataset_config,
    default_of,
    fig5_rho_runs,
    fig5_seeds,
    fig5_stop,
    workflow_settings,
)
from .data import K, SubsetSpec
from .errors import LssrError
from .registry import FIGURES


class NotPlannedError(LssrError):
    """A path names a subset, run or figure that the workflow config does not plan."""


def _not_planned(what: str, name: str, planned: list[str], fix: str) -> NotPlannedError:
    """One line: what is not planned, then the planned names (all of a few, the closest of many) and the fix."""
    if len(planned) <= 12:
        listed = f"planned: {', '.join(planned) or 'none'}"
    else:
        close = difflib.get_close_matches(name, planned, n=3, cutoff=0) or planned[:3]
        listed = f"{len(planned)} are planned, the closest: {', '.join(close)}"
    return NotPlannedError(f"{what} '{name}' is not planned by this workflow config; {listed}. {fix}")


@dataclass
class Plan:
    settings: WorkflowSettings = field(default_factory=WorkflowSettings)
    subsets: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    run_subset: dict[str, str] = field(default_factory=dict)
    figures: dict[str, list[str]] = field(default_factory=dict)
    # Figure 5 runs grouped by (data set, model, b): candidates for batched training over η
    groups: dict[str, list[str]] = field(default_factory=dict)
    # the ``runtime`` resource (minutes) of each training job: run id / group name -> lssr.cost estimate
    runtime: dict[str, int] = field(default_factory=dict)
    group_runtime: dict[str, int] = field(default_factory=dict)
    # Figure-5 groups trained data-parallel (experiments.fig5.data_parallel): group -> number of GPUs
    data_parallel: dict[str, int] = field(default_factory=dict)
    # Figure-5 groups trained in passes (resources.gpu_mem_mb): group -> members per pass (absent: one pass)
    members_per_pass: dict[str, int] = field(default_factory=dict)
    # table fig5_rho: data set -> its Figure-5 runs (those that reach the goal are measured), and the cap per b
    fig5_rho: dict[str, list[str]] = field(default_factory=dict)
    rho_runs: int | None = None

    @property
    def resources(self) -> Resources:
        return self.settings.resources

    def group_priority(self, group: str) -> int:
        """The scheduler ``priority`` of a Figure-5 group job: its batch size b, so that on a few cores the
        largest-b groups, the longest on the CPU (0.060, 0.102, 0.144 s per member-epoch at b = 8, 64, 512,
        results/bench/fig5_checks_105.json), start first and the shorter ones fill in behind them."""
        return int(config_from_dict(self.runs[self.groups[group][0]]).batch_size)

    def group_resources(self, group: str) -> dict:
        """The ``resources`` of a group job: a training job's with its own ``runtime`` (lssr.cost), and
        ``gpu`` = R for a data-parallel group."""
        out = self.settings.job_resources()
        if group in self.group_runtime:
            out["runtime"] = self.group_runtime[group]
        if group in self.data_parallel and out["gpu"]:
            out["gpu"] = self.data_parallel[group]
        return out

    def group_command(self, group: str) -> str:
        """``lssr train-batch`` (with ``--members-per-pass K`` where the group does not fit the GPU in one pass), or
        its torchrun launch over R processes for a data-parallel group."""
        r = self.data_parallel.get(group)
        if r is None:
            k = self.members_per_pass.get(group)
            return "lssr train-batch" if k is None else f"lssr train-batch --members-per-pass {k}"
        return f"torchrun --standalone --nproc-per-node {r} -m lssr train-batch --data-parallel {r}"

    @property
    def grouped_runs(self) -> set[str]:
        """Runs trained by a batched group job (``batch_runs: true``), not by the single-run rule."""
        return {r for g in self.groups.values() for r in g} if self.settings.batch_runs else set()

    # -- what the rules ask the plan (a clear error for a path the config does not plan) --------------------------

    def subset_args(self, name: str) -> str:
        """The arguments of ``lssr subset`` (before ``--out``) that build the planned subset ``name``."""
        if name not in self.subsets:
            raise _not_planned(
                "subset", name, sorted(self.subsets), "Subsets come from the data sets the experiments use."
            )
        s = self.subsets[name]
        args = [s["spec"], "--seed", str(s["seed"])]
        if s["root"]:
            args += ["--root", shlex.quote(str(s["root"]))]
        if s["download"]:
            args.append("--download")
        if s["resize"]:
            args += ["--resize", str(s["resize"])]
        if s["num_classes"]:
            args += ["--num-classes", str(s["num_classes"])]
        return " ".join(args)

    def subset_dir(self, rid: str) -> str:
        """The subset folder a planned run trains on: ``results/data/<subset>``."""
        if rid not in self.runs:
            raise _not_planned("run", rid, sorted(self.runs), "Run ids are listed by `snakemake -n`.")
        return f"results/data/{self.run_subset[rid]}"

    def config_arg(self, rid: str) -> str:
        """``--json '<config>' --out results/runs/<rid>``: a run's planned config, for ``lssr train`` /
        ``train-batch``, which write it to ``<rid>/config.yaml`` before training."""
        self.subset_dir(rid)  # raises for a run that is not planned
        text = json.dumps(self.runs[rid], sort_keys=True)
        return f"--json {shlex.quote(text)} --out results/runs/{rid}"

    def fig5_rho_args(self, dataset: str) -> str:
        """The arguments of ``lssr fig5-rho`` (before ``--out``) that measure data set ``dataset``'s Figure-5 runs."""
        runs = self.fig5_rho_runs(dataset)
        cap = "" if self.rho_runs is None else f" --rho-runs {self.rho_runs}"
        return f"--runs {' '.join(f'results/runs/{r}' for r in runs)} --data {self.subset_dir(runs[0])}{cap} " + (
            f"--device {self.settings.device}"
        )

    def fig5_rho_runs(self, dataset: str) -> list[str]:
        """The Figure-5 runs of data set ``dataset`` that table fig5_rho reads."""
        if dataset not in self.fig5_rho:
            raise _not_planned(
                "Figure-5 data set", dataset, sorted(self.fig5_rho), "They are experiments.fig5.datasets."
            )
        return self.fig5_rho[dataset]

    def figure_runs(self, fig: str) -> list[str]:
        """The run ids a planned figure's table reads."""
        if fig not in self.figures:
            raise _not_planned("figure", fig, list(self.figures), "Add it to 'figures:' in the workflow config.")
        return self.figures[fig]


def _fmt_lr(lr: float) -> str:
    return f"{lr:g}"


def _size_name(n: int) -> str:
    return f"{n // K}k" if n % K == 0 else str(n)


def run_id(cfg: dict) -> str:
    """Readable, stable identity of a run from its parameters."""
    d, m, o = cfg["data"], cfg["model"], cfg["optim"]
    b = o["batch_size"]
    b_txt = "full" if b == "full" else str(b)
    model = m["name"] + ("-bn" if m.get("batch_norm") else "")
    samp = "wr" if o.get("replacement") else "wor"
    res = f"-r{d['resize']}" if d.get("resize") else ""
    data = f"{d['dataset']}-{_size_name(d['n'])}{res}"
    return f"{data}_{model}_{cfg['loss']}_b{b_txt}_lr{_fmt_lr(o['lr'])}_s{cfg['seed']}_{samp}"


def _merge_probe(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return a or b
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif k == "every":
            out[k] = min(out[k], v)
        elif k == "batch_sizes":
            out[k] = sorted(set(out[k]) | set(v))
        elif k in ("expected_change_batches", "resultant_batches", "probes", "dense_until"):
            out[k] = max(out[k], v)
        elif k in ("valley", "eigen", "consecutive"):
            out[k] = bool(out[k] or v)
        elif k == "eig_tol":
            out[k] = min(out[k], v)
        elif out[k] != v:
            raise LssrError(f"probe setting '{k}' differs between two figures that share a run: {out[k]!r} vs {v!r}")
    return out


class Planner:
    def __init__(self, wf: dict):
        self.wf = wf
        self.plan = Plan(settings=workflow_settings(wf))

    def subset(self, name: str) -> tuple[str, dict]:
        datasets = self.wf.get("datasets", {})
        if name not in datasets:
            raise ConfigError(
                f"workflow config: data set '{name}' is used by an experiment but not defined under 'datasets:'; "
                f"defined: {', '.join(sorted(datasets))}"
            )
        d = dataset_config(name, datasets[name])
        spec = SubsetSpec.of(d)
        prev = self.plan.subsets.get(spec.name)
        if prev is not None and (prev["root"], prev["num_classes"]) != (spec.root, spec.num_classes):
            raise ConfigError(
                f"workflow config: data sets '{prev['key']}' and '{name}' would share the subset folder "
                f"results/data/{spec.name} (same source '{spec.dataset}', n, seed and resize) but read different "
                f"data (root {prev['root']!r} vs {spec.root!r}); give one of them another seed or n"
            )
        self.plan.subsets[spec.name] = {
            "key": prev["key"] if prev else name,
            "spec": f"{spec.dataset}-{spec.n}",
            "seed": spec.seed,
            "root": spec.root,
            "download": spec.download,
            "resize": spec.resize,
            "num_classes": spec.num_classes,
        }
        return spec.name, dataclasses.asdict(d)

    def add_run(
        self,
        figure: str,
        exp: dict,
        *,
        dataset: str,
        loss: str,
        lr: float,
        batch_size: Any,
        replacement: bool = False,
        batch_norm: bool | None = None,
        probe: dict | None = None,
        stop: dict | None = None,
        seed: int | None = None,
        run: dict | None = None,
    ) -> str:
        """Plan one run; ``run``: run-level keys (e.g. Figure 5's ``goal_every`` in steps) over the experiment's."""
        subset_name, data = self.subset(dataset)
        # the top-level seed and device always (as the schema's defaults did), other run keys when given
        raw: dict = {"seed": self.plan.settings.seed, "device": self.plan.settings.device}
        raw.update({k: self.wf[k] for k in RUN_KEYS if k in self.wf})
        raw.update({k: exp[k] for k in RUN_KEYS if k in exp})
        raw.update(run or {})
        if seed is not None:
            raw["seed"] = seed
        raw["data"] = data
        if batch_norm is None:
            batch_norm = exp.get("batch_norm", default_of(ModelConfig, "batch_norm"))
        raw["model"] = {"name": exp["model"], "batch_norm": bool(batch_norm)}
        raw["loss"] = loss
        raw["optim"] = {"lr": float(lr), "batch_size": batch_size, "replacement": bool(replacement)}
        raw["stop"] = stop or {k: exp[k] for k in STOP_KEYS if k in exp}
        if probe is not None:
            raw["probe"] = dict(probe)
        rid = run_id(raw)
        if rid in self.plan.runs:
            raw = self._merge(self.plan.runs[rid], raw)
        config_from_dict(raw, where=f"workflow config, experiment '{figure}', run {rid}")
        self.plan.runs[rid] = raw
        self.plan.run_subset[rid] = subset_name
        self.add_to_figure(figure, rid)
        return rid

    @staticmethod
    def _merge(prev: dict, raw: dict) -> dict:
        """A run asked for twice: merged probe settings, the longer of the two stop rules."""
        merged_probe = _merge_probe(prev.get("probe"), raw.get("probe"))
        if merged_probe is not None:
            prev["probe"] = merged_probe
        for key in ("steps", "epochs"):
            if raw["stop"].get(key) is not None and prev["stop"].get(key) is not None:
                prev["stop"][key] = max(prev["stop"][key], raw["stop"][key])
        return prev

    def add_to_figure(self, figure: str, rid: str) -> None:
        runs = self.plan.figures.setdefault(figure, [])
        if rid not in runs:
            runs.append(rid)


def _probe(exp: dict, **extra) -> dict:
    p = dict(exp.get("probe", {}))
    p.update(extra)
    return p


def _plan_fig1(P: Planner, e: dict) -> None:
    """Figures 1 and 2: SGD (top) and GD (bottom), CE and MSE, one η."""
    for loss in e["losses"]:
        for b in (e["sgd_batch_size"], "full"):
            rid = P.add_run("fig1", e, dataset=e["dataset"], loss=loss, lr=e["lr"], batch_size=b, probe=_probe(e))
            P.add_to_figure("fig2", rid)


def _plan_fig3(P: Planner, e: dict) -> None:
    """Figure 3: one GD run with the valley probes."""
    P.add_run(
        "fig3", e, dataset=e["dataset"], loss=e["loss"], lr=e["lr"], batch_size="full", probe=_probe(e, valley=True)
    )


def _plan_fig4(P: Planner, e: dict) -> None:
    """Figure 4 (a)-(c) GD runs, (d) SGD over b; the SGD runs also feed Figure C.5, all of them Figure S1."""
    for g in e["gd"]:
        rid = P.add_run("fig4", e, dataset=e["dataset"], loss=g["loss"], lr=g["lr"], batch_size="full", probe=_probe(e))
        P.add_to_figure("figS1", rid)
    s = e["sgd"]
    bs = sorted(s["batch_sizes"])
    for b in bs:
        rid = P.add_run(
            "fig4", e, dataset=e["dataset"], loss=s["loss"], lr=s["lr"], batch_size=b, probe=_probe(e, batch_sizes=bs)
        )
        P.add_to_figure("figC5", rid)
        P.add_to_figure("figS1", rid)


def _fig5_batch_sizes(e: dict, n: int) -> list[int]:
    sizes = e["batch_sizes"]
    if sizes == "powers_of_two":  # b = 2^k from min_batch_size up to n
        sizes, b = [], e.get("min_batch_size", MIN_BATCH_SIZE)
        while b <= n:
            sizes.append(b)
            b *= 2
    return sizes


def _plan_fig5(P: Planner, e: dict) -> None:
    """Figure 5: the (b, η) grid per data set; one group of runs per (data set, b), each run trained until its
    training accuracy reaches the goal (checked every ``goal_every`` epochs) or its cap; the groups of
    ``data_parallel`` cells are trained over several GPUs."""
    grids: dict[str, list[int]] = {}
    seeds = fig5_seeds(e.get("seeds"), P.plan.settings.seed)
    for ds in e["datasets"]:
        if ds not in P.wf.get("datasets", {}):
            P.subset(ds)  # raises the error naming the undefined data set
        n = dataset_config(ds, P.wf["datasets"][ds]).n
        grids[ds] = _fig5_batch_sizes(e, n)
        for b in grids[ds]:
            group = []
            if b > n:
                raise ConfigError(
                    f"workflow config: experiments.fig5.batch_sizes has b = {b} > n = {n} of data set '{ds}'; "
                    "drop it or use 'full'"
                )
            stop, cadence = fig5_stop(e, n, b)  # until the training-accuracy goal, checked every few epochs
            for lr in e["lrs"]:
                for seed in seeds:
                    rid = P.add_run(
                        "fig5", e, dataset=ds, loss=e["loss"], lr=lr, batch_size=b, seed=seed, stop=stop, run=cadence
                    )
                    group.append(rid)
            P.plan.groups[f"{ds}_b{b}"] = group
            P.plan.fig5_rho.setdefault(ds, []).extend(group)
    P.plan.rho_runs = fig5_rho_runs(e)
    dp = data_parallel_config(e.get("data_parallel"), grids, P.plan.settings.batch_runs)
    P.plan.data_parallel = {f"{ds}_b{b}": gpus for (ds, b), gpus in dp.items()}


# experiment name -> its planner, in the order the runs are planned
EXPERIMENTS = {"fig1": _plan_fig1, "fig3": _plan_fig3, "fig4": _plan_fig4, "fig5": _plan_fig5}


def plan(wf: dict) -> Plan:
    """Expand a (schema-validated) workflow config into subsets, runs and figure inputs."""
    P = Planner(wf)
    wanted = P.plan.settings.figures
    needed = {FIGURES[f].experiment for f in wanted}
    exps = wf.get("experiments", {})
    for name, plan_experiment in EXPERIMENTS.items():
        if name in needed:
            plan_experiment(P, exps[name])
    # keep only the figures asked for
    P.plan.figures = {f: r for f, r in P.plan.figures.items() if f in wanted}
    _plan_runtimes(P.plan)
    _plan_passes(P.plan)
    return P.plan


#: What the planner assumes of a data source it has not loaded: (channels, classes); images are
#: :data:`lssr.cost.NATIVE_PIXELS` wide (or ``resize``), the test set :data:`lssr.cost.TEST_SET_SIZE` images.
SOURCE_SHAPE = {
    "cifar10": (3, 10),
    "cifar100": (3, 100),
    "stl10": (3, 10),
    "tinyimagenet": (3, 200),
    "digits": (1, 10),
    "imagefolder": (3, 10),
}
#: GPU memory the pre-flight of a job does not see as free (mem_get_info): the CUDA context, about 0.5-1 GiB.
CUDA_CONTEXT_MB = 1024


def members_per_pass(cfg: RunConfig, members: int, gpu_mem_mb: int, where: str = "workflow config") -> int:
    """The members per pass of a batched group of ``members`` runs of ``cfg`` on a GPU of ``gpu_mem_mb`` MiB: the
    most that the memory pre-flight (:func:`lssr.memory.preflight`, with its activation-checkpointing decision)
    lets fit, spread evenly over the fewest passes. The pre-flight sees the GPU's memory less
    :data:`CUDA_CONTEXT_MB` as free (and keeps its own reserve for cuDNN). Raises :class:`ConfigError` when one
    member does not fit."""
    import torch

    from .cost import NATIVE_PIXELS, TEST_SET_SIZE
    from .memory import CUDA_RESERVE, DoesNotFitError, preflight

    d = cfg.data
    channels, classes = SOURCE_SHAPE[d.dataset]
    shape, classes = (channels, *(2 * [d.resize or NATIVE_PIXELS[d.dataset]])), d.num_classes or classes
    available = (gpu_mem_mb - CUDA_CONTEXT_MB) * (1 << 20) - CUDA_RESERVE  # as lssr.memory.device_memory sees it

    def fits(k: int) -> bool:
        try:
            preflight(
                cfg, shape, classes, TEST_SET_SIZE[d.dataset], k, torch.float32, torch.device("cuda"), "", available
            )
        except DoesNotFitError:
            return False
        return True

    if not fits(1):
        raise ConfigError(
            f"{where}: one run of {cfg.name or run_id(cfg.to_dict())} does not fit the {gpu_mem_mb} MiB of "
            f"resources.gpu_mem_mb by the memory pre-flight (lssr.memory); train its cell data-parallel "
            f"(experiments.fig5.data_parallel) or on a GPU with more memory"
        )
    lo, hi = 1, members  # the peak grows with the members: the largest k that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    passes = -(-members // lo)
    return -(-members // passes)


def _plan_passes(p: Plan) -> None:
    """Members per pass of every batched Figure-5 group that does not fit ``resources.gpu_mem_mb`` in one pass
    (data-parallel groups train one member at a time)."""
    mem = p.resources.gpu_mem_mb
    if mem is None or not p.settings.batch_runs or not p.settings.gpu:
        return
    for group, members in p.groups.items():
        if group in p.data_parallel:
            continue
        cfg = config_from_dict(p.runs[members[0]])
        k = members_per_pass(cfg, len(members), mem, where=f"workflow config, Figure-5 group {group}")
        if k < len(members):
            p.members_per_pass[group] = k


def _plan_runtimes(p: Plan) -> None:
    """Each training job's ``runtime`` (minutes) from its config (:mod:`lssr.cost`), capped by
    ``resources.runtime`` when set."""
    from .cost import job_seconds, runtime_minutes

    r = p.resources
    cfgs = {rid: config_from_dict(raw) for rid, raw in p.runs.items()}
    p.runtime = {rid: runtime_minutes(job_seconds([c], r.threads), r.runtime) for rid, c in cfgs.items()}
    p.group_runtime = {
        g: runtime_minutes(job_seconds([cfgs[rid] for rid in members], r.threads), r.runtime)
        for g, members in p.groups.items()
    }
