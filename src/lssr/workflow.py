"""Experiment planning for the Snakemake workflow: workflow config -> subsets, runs, figure inputs.

The workflow config (``config/*.yaml``, schema ``workflow/schemas/config.schema.yaml``) describes
experiments per figure; :func:`plan` expands it into

- ``subsets``: subset name -> ``lssr subset`` arguments,
- ``runs``: run id -> a complete, validated run config (dict form of :class:`lssr.config.RunConfig`),
- ``figures``: figure name -> the run ids its table needs.

A run id is readable and stable, built from (data set, model, loss, b, η, seed, sampling), e.g.
``digits-1k_digits_cnn_ce_b32_lr0.1_s0_wor``. A run requested by two figures is planned once; the
probe settings the figures ask for are merged (probe every min, union of batch sizes, max of sample
counts, valley probes if any asks) so it is trained once. Planning does no science: it only lays
out which runs exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import LssrError
from .config import ConfigError, config_from_dict
from .data import K, SubsetSpec, parse_size

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "figC5")
RUN_KEYS = ("seed", "device", "eval_every", "log_every", "chunk_size", "bn_mode", "checkpoint_every")


@dataclass
class Plan:
    subsets: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    run_subset: dict[str, str] = field(default_factory=dict)
    figures: dict[str, list[str]] = field(default_factory=dict)
    # Figure 5 runs grouped by (data set, model, b): candidates for batched training over η
    groups: dict[str, list[str]] = field(default_factory=dict)


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
    return f"{d['dataset']}-{_size_name(d['n'])}{res}_{model}_{cfg['loss']}_b{b_txt}_lr{_fmt_lr(o['lr'])}_s{cfg['seed']}_{samp}"


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
        elif k in ("expected_change_batches", "resultant_batches", "probes"):
            out[k] = max(out[k], v)
        elif k == "valley" or k == "top_eigenvalue":
            out[k] = bool(out[k] or v)
        elif k == "eig_tol":
            out[k] = min(out[k], v)
        elif out[k] != v:
            raise LssrError(f"probe setting '{k}' differs between two figures that share a run: {out[k]!r} vs {v!r}")
    return out


class Planner:
    def __init__(self, wf: dict):
        self.wf = wf
        self.plan = Plan()

    def subset(self, name: str) -> tuple[str, dict]:
        datasets = self.wf.get("datasets", {})
        if name not in datasets:
            raise ConfigError(f"workflow config: data set '{name}' is used by an experiment but not defined under 'datasets:'; defined: {', '.join(sorted(datasets))}")
        d = dict(datasets[name])
        n = parse_size(d["n"])
        spec = SubsetSpec(d["source"], n, d.get("seed", 0), d.get("root"), d.get("download", False), d.get("resize"), d.get("num_classes"))
        prev = self.plan.subsets.get(spec.name)
        if prev is not None and (prev["root"], prev["num_classes"]) != (spec.root, spec.num_classes):
            raise ConfigError(
                f"workflow config: data sets '{prev['key']}' and '{name}' would share the subset folder results/data/{spec.name} "
                f"(same source '{spec.dataset}', n, seed and resize) but read different data (root {prev['root']!r} vs {spec.root!r}); "
                "give one of them another seed or n"
            )
        self.plan.subsets[spec.name] = {
            "key": prev["key"] if prev else name,
            "spec": f"{spec.dataset}-{n}",
            "seed": spec.seed,
            "root": spec.root,
            "download": spec.download,
            "resize": spec.resize,
            "num_classes": spec.num_classes,
        }
        data = {"dataset": spec.dataset, "n": n, "seed": spec.seed, "root": spec.root, "download": spec.download, "resize": spec.resize, "num_classes": spec.num_classes}
        return spec.name, data

    def add_run(self, figure: str, exp: dict, *, dataset: str, loss: str, lr: float, batch_size: Any, replacement: bool = False, batch_norm: bool | None = None, probe: dict | None = None, stop: dict | None = None, seed: int | None = None) -> str:
        subset_name, data = self.subset(dataset)
        raw: dict = {k: self.wf[k] for k in RUN_KEYS if k in self.wf}
        raw.update({k: exp[k] for k in RUN_KEYS if k in exp})
        if seed is not None:
            raw["seed"] = seed
        raw.setdefault("seed", 0)
        raw["data"] = data
        raw["model"] = {"name": exp["model"], "batch_norm": bool(exp.get("batch_norm", False) if batch_norm is None else batch_norm)}
        raw["loss"] = loss
        raw["optim"] = {"lr": float(lr), "batch_size": batch_size, "replacement": bool(replacement)}
        raw["stop"] = stop or {k: exp[k] for k in ("steps", "epochs", "train_loss_goal", "train_acc_goal", "divergence_bound") if k in exp}
        if probe is not None:
            raw["probe"] = dict(probe)
        rid = run_id(raw)
        if rid in self.plan.runs:
            prev = self.plan.runs[rid]
            merged_probe = _merge_probe(prev.get("probe"), raw.get("probe"))
            if merged_probe is not None:
                prev["probe"] = merged_probe
            for key in ("steps", "epochs"):
                if raw["stop"].get(key) is not None and prev["stop"].get(key) is not None:
                    prev["stop"][key] = max(prev["stop"][key], raw["stop"][key])
            raw = prev
        config_from_dict(raw, where=f"workflow config, experiment '{figure}', run {rid}")
        self.plan.runs[rid] = raw
        self.plan.run_subset[rid] = subset_name
        self.plan.figures.setdefault(figure, [])
        if rid not in self.plan.figures[figure]:
            self.plan.figures[figure].append(rid)
        return rid


def _probe(exp: dict, **extra) -> dict:
    p = dict(exp.get("probe", {}))
    p.update(extra)
    return p


def plan(wf: dict) -> Plan:
    """Expand a (schema-validated) workflow config into subsets, runs and figure inputs."""
    P = Planner(wf)
    exps = wf.get("experiments", {})
    wanted = wf.get("figures", list(FIGURES))
    for fig in wanted:
        if fig not in FIGURES:
            raise ConfigError(f"workflow config: unknown figure '{fig}' in 'figures'; known: {', '.join(FIGURES)}")
    # Figures 1 and 2: SGD (top) and GD (bottom), CE and MSE, one η.
    if "fig1" in wanted or "fig2" in wanted:
        e = exps["fig1"]
        for loss in e["losses"]:
            for b in (e["sgd_batch_size"], "full"):
                rid = P.add_run("fig1", e, dataset=e["dataset"], loss=loss, lr=e["lr"], batch_size=b, probe=_probe(e))
                P.plan.figures.setdefault("fig2", [])
                if rid not in P.plan.figures["fig2"]:
                    P.plan.figures["fig2"].append(rid)
    if "fig3" in wanted:
        e = exps["fig3"]
        P.add_run("fig3", e, dataset=e["dataset"], loss=e["loss"], lr=e["lr"], batch_size="full", probe=_probe(e, valley=True))
    if "fig4" in wanted or "figC5" in wanted:
        e = exps["fig4"]
        for g in e["gd"]:
            P.add_run("fig4", e, dataset=e["dataset"], loss=g["loss"], lr=g["lr"], batch_size="full", probe=_probe(e))
        s = e["sgd"]
        bs = sorted(s["batch_sizes"])
        for b in bs:
            rid = P.add_run("fig4", e, dataset=e["dataset"], loss=s["loss"], lr=s["lr"], batch_size=b, probe=_probe(e, batch_sizes=bs))
            P.plan.figures.setdefault("figC5", [])
            if rid not in P.plan.figures["figC5"]:
                P.plan.figures["figC5"].append(rid)
    if "fig5" in wanted:
        e = exps["fig5"]
        for ds in e["datasets"]:
            if ds not in wf.get("datasets", {}):
                P.subset(ds)  # raises the error naming the undefined data set
            n = parse_size(wf["datasets"][ds]["n"])
            sizes = e["batch_sizes"]
            if sizes == "powers_of_two":  # b = 2^k from min_batch_size up to n
                sizes, b = [], e.get("min_batch_size", 8)
                while b <= n:
                    sizes.append(b)
                    b *= 2
            for b in sizes:
                group = []
                if b > n:
                    raise ConfigError(f"workflow config: experiments.fig5.batch_sizes has b = {b} > n = {n} of data set '{ds}'; drop it or use 'full'")
                for lr in e["lrs"]:
                    for seed in e.get("seeds", [wf.get("seed", 0)]):
                        group.append(P.add_run("fig5", e, dataset=ds, loss=e["loss"], lr=lr, batch_size=b, seed=seed))
                P.plan.groups[f"{ds}_b{b}"] = group
    # keep only the figures asked for
    P.plan.figures = {f: r for f, r in P.plan.figures.items() if f in wanted}
    return P.plan


def write_run_config(json_text: str, out: str) -> None:
    """Validate a run config given as JSON and write it as YAML (atomically)."""
    import json

    import yaml

    from .io import write_text

    raw = json.loads(json_text)
    config_from_dict(raw, where=out)
    write_text(out, yaml.safe_dump(raw, sort_keys=False))


def register_cli(sub) -> None:
    p = sub.add_parser("write-config", help="validate a run config given as JSON and write it as YAML")
    p.add_argument("--json", required=True, dest="json_text")
    p.add_argument("--out", required=True)
    p.set_defaults(func=lambda a: write_run_config(a.json_text, a.out))
