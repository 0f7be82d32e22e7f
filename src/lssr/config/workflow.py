"""Workflow-level configuration (config/*.yaml): the top-level settings, their defaults and the data set
entries. The planner (lssr.workflow) and the .smk rules read these; the schema's defaults are checked against
them by tests/test_config.py."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..datasets import DataError, parse_size
from ..registry import FIGURES
from .run import ConfigError, DataConfig, RunConfig, _bad, _check_data, _from_dict, _valid_device

# Run-level keys a workflow config may set at the top level or per experiment (defaults: RunConfig's).
RUN_KEYS = (
    "seed",
    "device",
    "eval_every",
    "log_every",
    "chunk_size",
    "bn_mode",
    "bn_ghost_batch",
    "activation_checkpointing",
    "checkpoint_every",
)
# Stop keys an experiment may set (defaults: StopConfig's).
STOP_KEYS = ("steps", "epochs", "train_loss_goal", "train_acc_goal", "divergence_bound")
# Figure 5 with ``batch_sizes: powers_of_two``: b = 2^k from this value up to n (the paper: from 2^3).
MIN_BATCH_SIZE = 8
# Figure 5 trains each cell until its training accuracy reaches ``experiments.fig5.train_acc_goal`` (the paper's
# zero training error, §5.2; null: no goal) or its step cap (``epochs`` / ``steps``), ...
FIG5_TRAIN_ACC_GOAL = 1.0
# ... checked every ``experiments.fig5.goal_every`` epochs. A check evaluates the training set alone, forward only:
# n / 3n = 1/3 epoch of compute per member; the test set is evaluated only where a member stops (goal, divergence,
# cap; (test-set size) / 3n epochs once per member, 3.3 for 1,024 training and 10,000 test images) and at the
# experiment's ``eval_every`` evaluations. Checks every 10 epochs add at most 1/30 (3.3%) to a cell.
FIG5_GOAL_EVERY = 10.0
# Table fig5_rho: B_simple measured on at most ``experiments.fig5.rho_runs`` goal-reaching runs per (data set, b),
# those of the highest final test accuracy (null: every run that reached the goal).
FIG5_RHO_RUNS: int | None = None


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of the config dataclass ``cls``."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass(frozen=True)
class Resources:
    """Snakemake ``threads`` and ``resources`` of each training job (rules train and train_group_*)."""

    threads: int = 1
    mem_mb: int = 4000
    # at most this many minutes per training job; each job's own runtime is estimated from its config
    # (lssr.cost: steps x per-step cost, with margin); null = no cap
    runtime: int | None = None
    gpu_model: str | None = None  # passed on as the job resource gpu_model (read by the slurm executor)
    # memory of each job's GPU (MiB): the planner splits a Figure-5 group into passes of as many members as the
    # memory pre-flight lets fit (lssr.workflow.members_per_pass); null: every group in one pass
    gpu_mem_mb: int | None = None


@dataclass(frozen=True)
class WorkflowSettings:
    """The top level of a workflow config apart from ``datasets``, ``experiments`` and the run keys."""

    name: str | None = None
    figures: tuple[str, ...] = tuple(FIGURES)  # which figures to build (default: all)
    seed: int = default_of(RunConfig, "seed")
    device: str = default_of(RunConfig, "device")
    batch_runs: bool = False  # train the Figure-5 runs of one (data set, b) together, batched over η
    resources: Resources = field(default_factory=Resources)

    @property
    def gpu(self) -> int:
        """GPUs per training job: 1 when the runs ask for cuda."""
        return 1 if self.device.startswith("cuda") else 0

    def job_resources(self) -> dict:
        """The ``resources`` of a training job but its ``runtime`` (per job, from the plan): mem_mb, gpu and
        (when set) gpu_model."""
        r = self.resources
        out = {"mem_mb": r.mem_mb, "gpu": self.gpu}
        if r.gpu_model is not None:
            out["gpu_model"] = r.gpu_model
        return out


def workflow_settings(wf: dict, where: str = "workflow config") -> WorkflowSettings:
    """The validated top-level settings of a workflow config, defaults filled in from here."""
    names = {f.name for f in dataclasses.fields(WorkflowSettings)}
    settings = _from_dict(WorkflowSettings, {k: v for k, v in wf.items() if k in names}, where)
    for fig in settings.figures:
        if fig not in FIGURES:
            raise ConfigError(f"{where}: unknown figure '{fig}' in 'figures'; known: {', '.join(FIGURES)}")
    bad = _bad(where)
    if settings.seed < 0:
        raise bad("seed", settings.seed, "must be >= 0")
    if not _valid_device(settings.device):
        raise bad("device", settings.device, "use auto, cpu, cuda or cuda:N")
    for key in ("threads", "mem_mb", "runtime", "gpu_mem_mb"):
        if getattr(settings.resources, key) is not None and getattr(settings.resources, key) < 1:
            raise bad(f"resources.{key}", getattr(settings.resources, key), "must be >= 1")
    return settings


def data_parallel_config(raw, grids: dict[str, list[int]], batch_runs: bool, where: str = "workflow config") -> dict:
    """``experiments.fig5.data_parallel`` {data set: {b: GPUs}} (Figure-5 cells, GPUs >= 2) -> {(data set, b): GPUs}."""
    key, bad, raw = "experiments.fig5.data_parallel", _bad(where), {} if raw is None else raw
    if not isinstance(raw, dict) or not all(isinstance(c, dict) for c in raw.values()):
        raise bad(key, raw, "map data sets to {b: GPUs}, e.g. {tinyimagenet-32k: {32768: 2}}")
    for ds, b, gpus in [(ds, b, g) for ds, cells in raw.items() for b, g in cells.items()]:
        if ds not in grids or not str(b).isdigit() or int(b) not in grids[ds] or type(gpus) is not int or gpus < 2:
            raise bad(f"{key}.{ds}", {b: gpus}, f"b must be a Figure-5 cell {grids} and GPUs an integer >= 2")
        if not batch_runs:
            raise bad(key, raw, "it needs batch_runs: true (the group job launches torchrun)")
    return {(ds, int(b)): g for ds, cells in raw.items() for b, g in cells.items()}


def fig5_seeds(raw, default: int, where: str = "workflow config") -> list[int]:
    """``experiments.fig5.seeds``: distinct seeds >= 0 (each is one run per cell); ``default`` when absent."""
    if raw is None:
        return [default]
    bad = _bad(where)
    if not isinstance(raw, list) or not raw or not all(type(s) is int and s >= 0 for s in raw):
        raise bad("experiments.fig5.seeds", raw, "give a list of integer seeds >= 0, e.g. [0, 1, 2]")
    if len(set(raw)) != len(raw):
        raise bad("experiments.fig5.seeds", raw, "each seed once (a repeated seed trains the same run twice)")
    return list(raw)


def fig5_stop(e: dict, n: int, b: int, where: str = "workflow config") -> tuple[dict, dict]:
    """The ``stop`` section of a Figure-5 cell of b on n samples (the experiment's stop keys, the training-accuracy
    goal :data:`FIG5_TRAIN_ACC_GOAL` unless set) and the run keys of its evaluation cadence: ``goal_every``, the
    goal check (training set only) every ``experiments.fig5.goal_every`` epochs (:data:`FIG5_GOAL_EVERY`) of
    n // b steps, and, unless the experiment sets ``eval_every``, ``eval_every`` = the cap T (the test set is then
    evaluated only at step 0 and where the run stops); {} without a goal (the experiment's ``eval_every``)."""
    bad = _bad(where)
    stop = {k: e[k] for k in STOP_KEYS if k in e}
    stop.setdefault("train_acc_goal", FIG5_TRAIN_ACC_GOAL)
    every = e.get("goal_every", FIG5_GOAL_EVERY)
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
        raise bad("experiments.fig5.goal_every", every, "the epochs between goal checks, a number > 0 (e.g. 5)")
    if stop["train_acc_goal"] is None:
        return stop, {}
    spe = max(n // b, 1)
    caps = [stop["steps"]] if stop.get("steps") is not None else []
    if stop.get("epochs") is not None:
        caps.append(math.ceil(stop["epochs"] * spe))
    cadence = {"goal_every": max(round(every * spe), 1)}
    if "eval_every" not in e and caps:
        cadence["eval_every"] = max(min(caps), 1)
    return stop, cadence


def fig5_rho_runs(e: dict, where: str = "workflow config") -> int | None:
    """``experiments.fig5.rho_runs``: the most runs per (data set, b) measured for table fig5_rho (None: all)."""
    k = e.get("rho_runs", FIG5_RHO_RUNS)
    if k is not None and (type(k) is not int or k < 1):
        raise _bad(where)("experiments.fig5.rho_runs", k, "an integer >= 1, or null (every run that reached the goal)")
    return k


def dataset_config(name: str, entry: dict, where: str = "workflow config") -> DataConfig:
    """A ``datasets:`` entry ({source, n, seed, root, ...}) as the :class:`DataConfig` of its runs."""
    raw = dict(entry)
    if "source" not in raw or "n" not in raw:
        raise ConfigError(f"{where}: data set '{name}' needs 'source' and 'n'")
    raw["dataset"] = raw.pop("source")
    try:
        raw["n"] = parse_size(raw["n"])
    except DataError as exc:
        raise ConfigError(f"{where}: key 'datasets.{name}.n': {exc}") from None
    data = _from_dict(DataConfig, raw, where, prefix=f"datasets.{name}.")
    _check_data(data, where, prefix=f"datasets.{name}.")
    return data


def check_workflow_schema(cfg: Any, schema_file: str | Path) -> None:
    """The workflow config against its JSON schema (workflow/schemas/config.schema.yaml: types and allowed keys;
    the value rules are this package's). The most relevant violation, as a one-line :class:`ConfigError` naming
    the key."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_file).read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if error is None:
        return
    key = ".".join(str(p) for p in error.absolute_path)
    where = f"key '{key}'" if key else "top level"
    raise ConfigError(f"workflow config, {where}: {error.message} (the keys and types are in {schema_file})")
