"""A kept record of one finished run of the workflow: its claims, verdicts, one-line-per-statement summary, run
table and the PNGs of the figures its config builds, copied into one folder (``docs/replication`` by default)
with a ``README.md`` that opens with one line per statement of the paper (its words, the claim id, the verdict
counts and the deciding statistic of :func:`lssr.report.statement_summary`), then the config used, the summed
run time, the best η per b of the Figure-5 heatmap and links to the figures. Every number on the page is read
from the copied files and the config."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .claims.common import VERDICTS
from .errors import LssrError
from .io import atomic_dir, write_json
from .registry import TABLES, claim_tables_of
from .report import statement_summary
from .tables.runs import dataset_label

#: file in the results folder -> the command that writes it (named in the error when it is missing)
RECORD_FILES = {
    "claims.csv": "lssr claims",
    "verdicts.csv": "lssr verdicts",
    "summary.csv": "lssr summary",
    "tables/runs.csv": "lssr runs-table",
}
_MD_SPECIAL = re.compile(r"([\\`*_|<>\[\]])")


def md_text(value) -> str:
    """``value`` as the text of a Markdown table cell: ``\\ ` * _ | < > [ ]`` escaped, NaN as an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return _MD_SPECIAL.sub(r"\\\1", str(value))


def _require(path: Path, made_by: str, config: Path) -> Path:
    if not path.is_file():
        raise LssrError(
            f"{path}: no such file (it is written by `{made_by}`; run `snakemake --cores all --configfile {config}` "
            "first)"
        )
    return path


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LssrError(f"{path}: not a readable CSV table ({exc}); rebuild it with snakemake") from exc


def _statement_lines(claims: pd.DataFrame) -> list[str]:
    summary = statement_summary(claims)
    counts = lambda r: ", ".join(f"{r[v]} {v}" for v in VERDICTS)  # noqa: E731
    lines = [
        f"| statement of the paper | source | claim | verdict | rows: {' / '.join(VERDICTS)} | deciding statistic |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        what = md_text(r["description"]) + (" *(self-check of the pipeline)*" if r["kind"] != "claim" else "")
        lines.append(
            f"| {what} | {md_text(r['source'])} | {md_text(r['claim'])} | **{md_text(r['verdict'])}** | "
            f"{counts(r)} | {md_text(r['deciding_statistic'])} |"
        )
    return lines


def read_config(config: Path) -> dict:
    """The workflow config the run used, as a mapping (one-line error when it is missing or not YAML)."""
    if not config.is_file():
        raise LssrError(f"{config}: no such config file (give --config the file the run used)")
    try:
        raw = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LssrError(f"{config}: cannot read the config ({exc}); give the config file the run used") from exc
    if not isinstance(raw, dict):
        raise LssrError(f"{config}: not a workflow config (expected a mapping with name, datasets, experiments)")
    return raw


def planned_figures(raw: dict) -> list[str]:
    """The figures the config builds (its ``figures``, default all), in the registry's order: only their PNGs
    are copied, so that figures left in the folder by another config are not recorded."""
    from .registry import FIGURES
    from .workflow import plan

    built = plan(raw).figures
    return [f for f in FIGURES if f in built]


def _config_lines(config: Path, raw: dict, planned: list[str]) -> list[str]:
    """Name, file, device, data sets and the scale of each experiment the planned figures use, from the config."""
    from .registry import FIGURES

    used = {FIGURES[f].experiment for f in planned}
    lines = [
        f"- name: {md_text(raw.get('name', config.stem))}",
        f"- file: `{config.as_posix()}`",
        f"- figures: {', '.join(planned)}",
    ]
    if "device" in raw:
        lines.append(f"- device: {md_text(raw['device'])}")
    for key, d in (raw.get("datasets") or {}).items():
        d = d if isinstance(d, dict) else {}
        scale = ", ".join(f"{k}: {md_text(d[k])}" for k in ("source", "n", "resize", "root") if k in d)
        label = dataset_label(str(d.get("source", key)), d.get("root"))
        lines.append(f"- data set `{key}`: {scale} (in the tables, figures and claims: `{label}`, with its n)")
    for name, e in (raw.get("experiments") or {}).items():
        if name not in used:
            continue
        e = e if isinstance(e, dict) else {}
        keys = ("model", "batch_norm", "steps", "epochs", "batch_sizes", "lrs", "seeds")
        lines.append(f"- {name}: " + ", ".join(f"{md_text(k)}: {md_text(e[k])}" for k in keys if k in e))
    return lines


def _job_seconds(results: Path, raw: dict) -> tuple[float, int]:
    """The summed wall time of the config's training jobs (Snakemake's ``benchmark:`` file of each single run and
    each Figure-5 group it plans, under ``results/benchmarks/``; other configs' jobs are not counted) and how many
    of them have one."""
    from .workflow import plan

    p = plan(raw)
    groups = list(p.groups) if p.settings.batch_runs else []
    files = [f"train_group/{g}.tsv" for g in groups] + [f"train/{r}.tsv" for r in p.runs if r not in p.grouped_runs]
    total, jobs = 0.0, 0
    for f in (results / "benchmarks" / name for name in files):
        if not f.exists():
            continue
        t = pd.read_csv(f, sep="\t")
        if "s" in t.columns and len(t):
            total += float(t["s"].iloc[-1])
            jobs += 1
    return total, jobs


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return ""


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def timed_invocation(command: list[str], *, log: Path, summary: Path, done: Path, cores: str) -> int:
    """Runs ``command`` (the workflow) and times it for the record: one JSON line per invocation appended to ``log``
    (start, end, seconds, the load average before and after, return code, the signal that stopped it), also when it
    is stopped by SIGINT, SIGTERM or SIGHUP (forwarded to the command, whose jobs resume from their checkpoints
    when it is rerun). When the command succeeds and ``done`` (the workflow's last output) is newer than its start,
    writes ``summary``: the wall-clock seconds summed over every invocation in ``log``, so that a run stopped and
    resumed counts each of its parts. A ``log`` lives in the results folder it times: deleting the results starts a
    new record. Returns the command's exit status (128 + the signal's number when one stopped it)."""
    log, summary, done = Path(log), Path(summary), Path(done)
    log.parent.mkdir(parents=True, exist_ok=True)
    start, load = time.time(), _loadavg()
    stopped: list[int] = []
    child = subprocess.Popen(command)

    def forward(signum, _frame):
        stopped.append(signum)
        child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = child.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    end = time.time()
    line = {
        "start_utc": _utc(start),
        "end_utc": _utc(end),
        "seconds": round(end - start),
        "loadavg_before": load,
        "loadavg_after": _loadavg(),
        "returncode": rc,
        "signal": signal.Signals(stopped[0]).name if stopped else None,
    }
    with open(log, "a") as f:  # one short line per invocation, appended: earlier lines are never rewritten
        f.write(json.dumps(line) + "\n")
    if rc == 0 and not stopped and done.exists() and done.stat().st_mtime >= start:
        parts = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        write_json(
            summary,
            {
                "seconds": sum(int(p["seconds"]) for p in parts),
                "invocations": len(parts),
                "invocation_seconds": [int(p["seconds"]) for p in parts],
                "cores": cores,
                "nproc": os.cpu_count(),
                "loadavg_before": parts[0]["loadavg_before"],
                "loadavg_after": line["loadavg_after"],
                "started_utc": parts[0]["start_utc"],
                "finished_utc": line["end_utc"],
            },
        )
    return 128 + stopped[0] if stopped and rc != 0 else rc


def _runtime_lines(results: Path, raw: dict) -> list[str]:
    lines = []
    timing = results / "replication-time.json"
    if timing.exists():
        try:
            t = json.loads(timing.read_text())
        except json.JSONDecodeError as exc:
            raise LssrError(f"{timing} is not valid JSON ({exc}); delete it and rerun `make replication`") from exc
        parts = t.get("invocation_seconds") or [t["seconds"]]
        by = (
            md_text(t["written_by"])
            if t.get("written_by")
            else "`lssr timed`, which the Makefile runs the workflow under"
        )
        how = (
            "in one invocation"
            if len(parts) == 1
            else f"summed over {len(parts)} invocations, stopped and resumed ({', '.join(f'{p} s' for p in parts)})"
        )
        lines.append(
            f"Wall-clock time of the workflow (`make replication`, `--cores {md_text(t.get('cores'))}` on a machine "
            f"with {md_text(t.get('nproc'))} cores, finished {md_text(t.get('finished_utc'))}): {t['seconds']} s = "
            f"{t['seconds'] / 60:.1f} min, {how}. Load average (1, 5, 15 min) before it started: "
            f"{md_text(t.get('loadavg_before'))}; when it ended: {md_text(t.get('loadavg_after'))} (written to "
            f"`replication-time.json` by {by})."
        )
    total, jobs = _job_seconds(results, raw)
    if jobs:
        lines.append(
            f"Training jobs: {jobs}, their wall times summed {total:.0f} s = {total / 60:.1f} min (Snakemake's "
            "benchmark files; jobs run side by side, so this exceeds the wall-clock time on more than one core)."
        )
    return lines or ["No timing was recorded (no `replication-time.json`, no Snakemake benchmark files)."]


def _train_acc(cell: pd.Series, seeds: pd.DataFrame, runs: pd.DataFrame) -> tuple[float, int]:
    """Mean final training accuracy of a heatmap cell's seeds, and how many runs were found: the runs of
    ``runs.csv`` with the cell's n, b, η and a seed of the cell whose final test accuracy is that seed's."""
    s = seeds[(seeds["dataset"] == cell["dataset"]) & (seeds["b"] == cell["b"]) & np.isclose(seeds["lr"], cell["lr"])]
    r = runs[(runs["n"] == cell["n"]) & (runs["b_num"] == cell["b"]) & np.isclose(runs["lr"], cell["lr"])]
    found = []
    for _, seed in s.iterrows():
        m = r[(r["seed"] == seed["seed"]) & np.isclose(r["final_test_acc"], seed["test_acc"], rtol=1e-9, atol=0)]
        if len(m) == 1:
            found.append(float(m["final_train_acc"].iloc[0]))
    return (float(np.nanmean(found)) if found and not np.isnan(found).all() else math.nan), len(found)


def best_cells(fig5: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The best η of each (data set, b) of the Figure-5 heatmap (the cells marked ``is_best``): b, η, the mean
    final test accuracy over seeds (the table's ``test_acc``) and the mean final training accuracy over the same
    seeds (the table's ``train_acc`` where it has one, else from the matching runs of ``runs.csv``)."""
    cells = fig5[(fig5["kind"] == "cell") & fig5["is_best"].astype(str).str.lower().eq("true")]
    seeds = fig5[fig5["kind"] == "seed"]
    runs = runs.assign(b_num=pd.to_numeric(runs["b"], errors="coerce"))
    out = []
    for _, c in cells.sort_values(["dataset", "b"]).iterrows():
        if "train_acc" in fig5.columns and not pd.isna(c["train_acc"]):
            train, n_found = float(c["train_acc"]), int(c["n_seeds"])
        else:
            train, n_found = _train_acc(c, seeds, runs)
        out.append(
            {"dataset": c["dataset"], "b": int(c["b"]), "lr": float(c["lr"]), "train_acc": train,
             "test_acc": float(c["test_acc"]), "n_seeds": int(c["n_seeds"]), "train_seeds": n_found,
             "censored": c.get("censored", ""), "lr_star": float(c.get("lr_star", math.nan)),
             "lr_star_lo": float(c.get("lr_star_lo", math.nan)), "lr_star_hi": float(c.get("lr_star_hi", math.nan))}
        )  # fmt: skip
    return pd.DataFrame(out)


def cells_without_best(fig5: pd.DataFrame) -> pd.DataFrame:
    """The (data set, b) of the Figure-5 heatmap with cells but no best cell (none reached the training-accuracy
    goal without diverging): the cell of highest mean final training accuracy among the non-diverged ones, its η
    and the goal."""
    cells = fig5[fig5["kind"] == "cell"].reindex(
        columns=sorted(set(fig5.columns) | {"diverged", "train_acc", "train_acc_goal", "is_best"})
    )
    best = cells["is_best"].astype(str).str.lower().eq("true")
    has_best = set(zip(cells.loc[best, "dataset"], cells.loc[best, "b"]))
    out = []
    for (ds, b), g in cells.groupby(["dataset", "b"]):
        if (ds, b) in has_best:
            continue
        ok = g[~g["diverged"].astype(str).str.lower().eq("true") & g["train_acc"].notna()]
        top = ok.loc[ok["train_acc"].idxmax()] if len(ok) else None
        out.append(
            {"dataset": ds, "b": int(b), "train_acc": float(top["train_acc"]) if top is not None else math.nan,
             "lr": float(top["lr"]) if top is not None else math.nan, "goal": float(g["train_acc_goal"].max())}
        )  # fmt: skip
    return pd.DataFrame(out, columns=["dataset", "b", "train_acc", "lr", "goal"])


def _fig5_lines(fig5_csv: Path | None, runs: pd.DataFrame) -> list[str]:
    if fig5_csv is None:
        return ["This config does not build Figure 5."]
    fig5 = _read_csv(fig5_csv)
    best = best_cells(fig5, runs)
    if best.empty:
        return ["The Figure-5 table has no best cell (every cell diverged or none was trained)."]
    pct = lambda v: "" if math.isnan(v) else f"{100 * v:.1f} %"  # noqa: E731
    lines = [
        f"From `{fig5_csv.name}`: the η of highest mean final test accuracy per b "
        "(seeds averaged; the training accuracy is the table's `train_acc` where it has one, else the mean final "
        "training accuracy of the same seeds' runs in `runs.csv`). *edge* marks a best η at the end of the probed "
        "η range (it only bounds the best η). The last column is the best η between grid points (the vertex of a "
        "parabola in log2 η through the best cell and its neighbours) and its interval (seeds resampled, the "
        "plateau of cells within seed noise, the grid's resolution), the ones C5 uses.",
        "",
        "| data set | b | η | train accuracy | test accuracy | seeds | best η on the grid's edge | best η between grid "
        "points [interval] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in best.iterrows():
        seeds = str(r["n_seeds"])
        if r["train_seeds"] != r["n_seeds"]:
            seeds += f" ({r['train_seeds']} in runs.csv)"
        edge = "" if pd.isna(r["censored"]) or not str(r["censored"]) else f"edge ({md_text(r['censored'])})"
        star = (
            "" if math.isnan(r["lr_star"]) else f"{r['lr_star']:.3g} \\[{r['lr_star_lo']:.3g}, {r['lr_star_hi']:.3g}\\]"
        )
        lines.append(
            f"| {md_text(r['dataset'])} | {r['b']} | {r['lr']:g} | {pct(r['train_acc'])} | {pct(r['test_acc'])} | "
            f"{seeds} | {edge} | {star} |"
        )
    missing = cells_without_best(fig5)
    if len(missing):
        lines += ["", "No best η (no cell reached the training-accuracy goal without diverging: the paper's red area):"]
        lines += [
            f"- {md_text(m['dataset'])}, b = {m['b']}: the highest mean final training accuracy {pct(m['train_acc'])} "
            f"(at η = {m['lr']:g}), short of the goal {pct(m['goal'])}"
            for _, m in missing.iterrows()
        ]
    return lines


def _provenance(runs: pd.DataFrame, now: datetime) -> str:
    commits = runs["git_commit"].dropna().astype(str).value_counts() if "git_commit" in runs.columns else None
    if commits is None or commits.empty:
        which = "an unknown git commit"
    else:
        which = ", ".join(f"`{c}` ({k} runs)" for c, k in commits.items())
    return f"Recorded on {now:%Y-%m-%d %H:%M} UTC from runs trained at git commit {which}."


def replication_page(
    results: Path,
    config: Path,
    raw: dict,
    planned: list[str],
    pngs: list[Path],
    fig5_csv: Path | None,
    now: datetime,
) -> str:
    """The README.md of a record: every number read from the files in ``results`` and the config ``raw``."""
    claims = _read_csv(results / "claims.csv")
    runs = _read_csv(results / "tables" / "runs.csv")
    lines = [
        f"# Replication record: {md_text(raw.get('name', config.stem))}",
        "",
        _provenance(runs, now),
        "Written by `lssr replication-record` from the run's files, which are copied next to this page: "
        "`claims.csv` (every claim row with its statistic, threshold and verdict), `summary.csv` and "
        "`verdicts.csv` (the two tables that open report.html, text escaped for reStructuredText), `runs.csv` "
        "(one row per training run), every figure table a claim reads (`fig1.csv`, `fig4.csv`, `fig5.csv`, ...: "
        "`lssr claims --table fig1=fig1.csv ...` recomputes claims.csv from them) and the figures.",
        "",
        "## One line per statement of the paper",
        "",
        "Overall verdict: `fail` when any row fails, else `inconclusive` when any row is, else `pass` when any row "
        "passes, else `not-enough-data`. The deciding statistic is taken over the rows that were decided.",
        "",
        *_statement_lines(claims),
        "",
        "## Config",
        "",
        *_config_lines(config, raw, planned),
        "",
        "## Run time",
        "",
        *_runtime_lines(results, raw),
        "",
        "## Figure 5: the best η per b",
        "",
        *_fig5_lines(fig5_csv, runs),
        "",
        "## Figures",
        "",
        *[f"- [{p.stem}](figures/{p.name})" for p in pngs],
        "",
    ]
    return "\n".join(lines)


def write_replication_record(
    results: str | Path,
    figures: str | Path,
    config: str | Path,
    out: str | Path = "docs/replication",
    *,
    now: datetime | None = None,
) -> Path:
    """Copy ``claims.csv``, ``verdicts.csv``, ``summary.csv``, ``tables/runs.csv`` and every table a claim reads of
    the figures ``config`` builds (``tables/fig1.csv``, ``fig4.csv``, ..., :func:`lssr.registry.claim_tables`, so
    that each claim row can be recomputed from the record alone: ``lssr claims --table fig1=fig1.csv ...``) of
    ``results`` and the PNGs of those figures from ``figures`` into ``out`` (replaced as a whole, atomically) and
    write ``out/README.md``; returns its path."""
    results, figures, config, out = Path(results), Path(figures), Path(config), Path(out)
    raw = read_config(config)
    sources = {name: _require(results / name, cmd, config) for name, cmd in RECORD_FILES.items()}
    planned = planned_figures(raw)
    pngs = [_require(figures / f"{f}.png", f"lssr figure {f}", config) for f in planned]
    claim_csvs = [_require(results / "tables" / f"{f}.csv", TABLES[f].command if f in TABLES else f"lssr table {f}",
                           config) for f in claim_tables_of(planned)]  # fmt: skip
    fig5_csv = results / "tables" / "fig5.csv" if "fig5" in planned else None
    page = replication_page(results, config, raw, planned, pngs, fig5_csv, now or datetime.now(timezone.utc))
    with atomic_dir(out) as tmp:
        timing = [results / "replication-time.json"] if (results / "replication-time.json").exists() else []
        for src in [*sources.values(), *claim_csvs, *timing]:
            shutil.copyfile(src, tmp / src.name)
        (tmp / "figures").mkdir()
        for p in pngs:
            shutil.copyfile(p, tmp / "figures" / p.name)
        (tmp / "README.md").write_text(page)
    return out / "README.md"
