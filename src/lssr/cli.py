"""Command-line interface (``lssr --help``): every sub-command is registered here, and each body is a
thin call of a typed entry point, imported inside the command so that ``lssr --help`` never imports torch.

One-way flow: ``subset`` (raw data -> subset) -> ``train`` / ``train-batch`` (subset -> run; given a run config
as ``--json``, as the workflow does, they first write it to the run folder's ``config.yaml``) ->
``table`` (runs -> table; ``fig5-rho``: B_simple of the Figure-5 models) -> ``figure`` (table -> figure) ->
``claims`` (tables -> claims) ->
``runs-table`` (runs -> the report's run table) -> ``verdicts`` / ``summary`` (claims -> the report's tables) ->
``replication-record`` (claims, tables, figures -> a kept record folder).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .cli_measure import add_diagnose_command, add_recommend_command
from .errors import LssrError
from .io import out_folder as _out_folder
from .registry import FIGURES

DATA_HELP = "subset folder from `lssr subset` (default: build/cache under results/data)"
JSON_HELP = "the run config as JSON (the workflow's form), written to OUT/config.yaml before training"


# -- command bodies -------------------------------------------------------------------------------


def cmd_subset(args: argparse.Namespace) -> None:
    from .data import SubsetSpec, build_subset, parse_spec

    name, n = parse_spec(args.spec)
    spec = SubsetSpec(name, n, args.seed, args.root, args.download, args.resize, args.num_classes)
    out = build_subset(spec, _out_folder(args.out))
    print(f"wrote subset {spec.name} to {out}")


def _run_configs(paths: list[str], jsons: list[str], outs: list[str], overrides: dict, write: bool = True) -> list:
    """Run configs from YAML files, or from JSON texts (the workflow's form), each then written to its
    ``<out>/config.yaml`` (the run's provenance) unless ``write`` is false."""
    from .config import load_config
    from .config.from_json import run_config_from_json

    if bool(paths) == bool(jsons):
        raise LssrError("give the run config(s) either as YAML files or as --json, one of the two")
    if jsons:
        return [run_config_from_json(j, Path(o) / "config.yaml", overrides, write) for j, o in zip(jsons, outs)]
    return [load_config(c, overrides=overrides) for c in paths]


def cmd_train(args: argparse.Namespace) -> None:
    from .config import parse_overrides

    _out_folder(args.out)
    paths, jsons = [args.config] if args.config else [], [args.json_text] if args.json_text else []
    cfg = _run_configs(paths, jsons, [args.out], parse_overrides(args.set))[0]
    from .training import run_from_config

    res = run_from_config(cfg, args.out, data_dir=args.data, progress=not args.no_progress)
    print(f"run {res.status} after {res.steps} steps in {res.wall_time:.1f}s -> {args.out}")


def cmd_train_batch(args: argparse.Namespace) -> None:
    from .config import parse_overrides
    from .training import BatchConfigError, run_batched_from_configs

    given = "--json" if args.json_text else "--config"
    if len(args.config or args.json_text) != len(args.out):
        raise BatchConfigError(
            f"got {len(args.config or args.json_text)} {given} but {len(args.out)} --out; give one --out per {given}, "
            "in the same order"
        )
    for out in args.out:
        _out_folder(out)
    first_rank = args.data_parallel is None or os.environ.get("RANK", "0") == "0"  # under torchrun rank 0 writes
    cfgs = _run_configs(args.config, args.json_text, args.out, parse_overrides(args.set), write=first_rank)
    where = args.config or [str(Path(o) / "config.yaml") for o in args.out]
    if args.data_parallel is not None:  # under torchrun: one process per GPU; results (printed) on rank 0 only
        if args.members_per_pass is not None:
            raise BatchConfigError("--members-per-pass does not apply with --data-parallel (one member at a time)")
        from .training.distributed import run_data_parallel_from_configs

        res = run_data_parallel_from_configs(
            cfgs, args.out, args.data_parallel, data_dir=args.data, progress=not args.no_progress, where=where
        )
    else:
        res = run_batched_from_configs(
            cfgs,
            args.out,
            data_dir=args.data,
            progress=not args.no_progress,
            members_per_pass=args.members_per_pass,
            where=where,
        )
    for c, r, out in zip(cfgs, res, args.out):
        print(f"run η={c.optim.lr:g} {r.status} after {r.steps} steps in {r.wall_time:.1f}s -> {out}")


def cmd_table(args: argparse.Namespace) -> None:
    from .tables import SMOOTH_WINDOW, expand_run_dirs, write_table

    dirs = expand_run_dirs(args.runs)
    window = SMOOTH_WINDOW if args.smooth_window is None else args.smooth_window
    table = write_table(args.fig, dirs, args.out, smooth_window=window)
    n_diag = sum((d / "diagnostics.csv").exists() for d in dirs)
    runs = f"{len(dirs)} runs ({n_diag} with diagnostics.csv)"
    print(f"wrote {args.fig} table ({len(table)} rows) from {runs} to {args.out}")


def cmd_fig5_rho(args: argparse.Namespace) -> None:
    from .tables import fig5_rho

    if bool(args.runs) == bool(args.join):
        raise LssrError("fig5-rho: give --runs (with --data) to measure, or --join to combine tables, one of the two")
    if args.join:
        table = fig5_rho.join(args.join, args.out)
    else:
        if args.data is None:
            raise LssrError("fig5-rho --runs: give --data, the runs' subset folder (results/data/<subset>)")
        from .training import resolve_device

        device = str(resolve_device(args.device))
        table = fig5_rho.write(args.runs, args.data, args.out, args.rho_runs, device, log=print)
    print(f"wrote fig5_rho table ({len(table)} rows) to {args.out}")


def cmd_figure(args: argparse.Namespace) -> None:
    from .figures import make_figure

    paths = make_figure(args.fig, args.table, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_claims(args: argparse.Namespace) -> None:
    from .claims import check_claims, read_tables
    from .io import write_csv

    pairs = []
    for item in args.table:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LssrError(f"--table {item!r}: expected NAME=CSV, e.g. fig4=results/tables/fig4.csv")
        pairs.append((name, path))
    result = check_claims(read_tables(pairs))
    write_csv(args.out, result)
    counts = result["verdict"].value_counts().to_dict()
    print(f"wrote {len(result)} claim rows to {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def cmd_runs_table(args: argparse.Namespace) -> None:
    from .io import write_csv
    from .report import runs_table

    write_csv(args.out, runs_table(args.runs))


def cmd_verdicts(args: argparse.Namespace) -> None:
    from .io import write_csv
    from .report import verdict_table

    table = _read_csv_arg(args.claims, "`lssr claims`")
    write_csv(args.out, verdict_table(table))
    print(f"wrote {len(table)} verdict rows to {args.out}")


def cmd_summary(args: argparse.Namespace) -> None:
    from .io import write_csv
    from .report import summary_table

    table = summary_table(_read_csv_arg(args.claims, "`lssr claims`"))
    write_csv(args.out, table)
    print(f"wrote {len(table)} statement rows to {args.out}")


def cmd_replication_record(args: argparse.Namespace) -> None:
    from .replication import write_replication_record

    page = write_replication_record(args.results, args.figures, args.config, _out_folder(args.out))
    print(f"wrote {page} and the files it links")


def cmd_timed(args: argparse.Namespace) -> None:
    from .replication import timed_invocation

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise LssrError("lssr timed: no command given; fix: lssr timed --log ... -- snakemake --cores 2 ...")
    raise SystemExit(timed_invocation(command, log=args.log, summary=args.summary, done=args.done, cores=args.cores))


def _read_csv_arg(path: str, made_by: str):
    import pandas as pd

    if not Path(path).is_file():
        raise LssrError(f"{path}: no such file (it is written by {made_by})")
    return pd.read_csv(path)


# -- the parser -----------------------------------------------------------------------------------


def _add_data_commands(sub) -> None:
    s = sub.add_parser("subset", help="build a stratified DATASET-n subset (data.pt + manifest.json)")
    s.add_argument("spec", help="DATASET-n, e.g. cifar10-8k, digits-1k, imagefolder-1000")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--root", default=None, help="folder holding the raw data set")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--download", action="store_true", help="let torchvision download the data set")
    s.add_argument("--resize", type=int, default=None, help="resize images to this many pixels")
    s.add_argument("--num-classes", type=int, default=None, help="expected class count (checked)")
    s.set_defaults(func=cmd_subset)


def _add_train_commands(sub) -> None:
    t = sub.add_parser("train", help="train one run from a YAML run config")
    t.add_argument("config", nargs="?", help="run config YAML (or give --json)")
    t.add_argument("--json", dest="json_text", help=JSON_HELP)
    t.add_argument("--out", required=True, help="output folder (metrics.csv, run.json, model.pt)")
    t.add_argument("--data", default=None, help=DATA_HELP)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    b = sub.add_parser(
        "train-batch",
        help="train several runs that differ only in η (or seed) as one stacked model",
        description="Train runs of one (data set, model, b) that differ only in optim.lr / seed / name / stop "
        "thresholds in one process (torch.func.vmap over stacked parameters). Each member writes the same "
        "outputs as `lssr train`.",
    )
    b.add_argument("--config", action="append", default=[], metavar="YAML", help="run config (repeat, one per member)")
    b.add_argument(
        "--json", action="append", default=[], dest="json_text", metavar="JSON", help=JSON_HELP + " (repeat)"
    )
    b.add_argument(
        "--out", action="append", required=True, metavar="DIR", help="output folder (repeat, same order as --config)"
    )
    b.add_argument("--data", default=None, help=DATA_HELP)
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every config")
    b.add_argument(
        "--members-per-pass", type=int, default=None, help="train at most this many members at once (memory bound)"
    )
    b.add_argument(
        "--data-parallel",
        type=int,
        default=None,
        metavar="R",
        help="train each member data-parallel over R processes started by torchrun (SyncBatchNorm; "
        "`torchrun --standalone --nproc-per-node R -m lssr train-batch --data-parallel R ...`)",
    )
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_train_batch)


def _add_result_commands(sub) -> None:
    figures = tuple(FIGURES)
    t = sub.add_parser("table", help="build a figure's table (CSV) from run folders")
    t.add_argument("fig", choices=figures)
    t.add_argument(
        "--runs",
        nargs="+",
        action="extend",
        required=True,
        metavar="DIR",
        help="run folders (or folders holding run folders); GD vs SGD is read from each config",
    )
    t.add_argument("--out", required=True, help="output CSV")
    t.add_argument("--smooth-window", type=int, default=None, help="Figure 4(d) rolling-median window (probed steps)")
    t.set_defaults(func=cmd_table)

    # fmt: off
    q = sub.add_parser("fig5-rho", help="table fig5_rho: B_simple of the trained Figure-5 models that reached the goal",
                       description="B_simple = (tr S_1 − tr S_n)/tr S_n of each Figure-5 run that reached its training "
                       "goal, on its final model.pt (batch norm in eval mode) over its training subset, exactly "
                       "(one pass of per-sample gradients, float64); or the per-data-set tables joined (--join).")
    q.add_argument("--runs", nargs="+", action="extend", default=[], metavar="DIR", help="Figure-5 run folders")
    q.add_argument("--data", default=None, help="the runs' subset folder from `lssr subset`")
    q.add_argument("--rho-runs", type=int, default=None,
                   help="measure at most this many runs per b, those of the highest test accuracy (default: all)")
    q.add_argument("--device", default="cpu", help="torch device: cpu (default), auto, cuda or cuda:N")
    q.add_argument("--join", nargs="+", default=[], metavar="CSV", help="fig5_rho tables to join into one")
    q.add_argument("--out", required=True, help="output CSV")
    q.set_defaults(func=cmd_fig5_rho)
    # fmt: on

    f = sub.add_parser("figure", help="plot a figure from its table CSV(s)")
    f.add_argument("fig", choices=figures)
    f.add_argument(
        "--table", nargs="+", action="extend", required=True, metavar="CSV", help="table CSV(s) from `lssr table`"
    )
    f.add_argument("--out", required=True, help="figures/FIG.pdf (also writes FIG.png and data/FIG.csv)")
    f.set_defaults(func=cmd_figure)

    c = sub.add_parser("claims", help="check the paper's claims against the figure tables")
    c.add_argument("--table", action="append", default=[], required=True, metavar="NAME=CSV",
                   help="a figure table to check (repeat); only the given tables' claims are checked")  # fmt: skip
    c.add_argument("--out", required=True, help="output CSV, e.g. results/claims.csv")
    c.set_defaults(func=cmd_claims)

    r = sub.add_parser("runs-table", help="summarise run folders (status, accuracies, wall time, provenance)")
    r.add_argument("--runs", nargs="+", required=True)
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_runs_table)

    v = sub.add_parser("verdicts", help="the verdict table that opens report.html, from results/claims.csv")
    v.add_argument("--claims", required=True, help="results/claims.csv from `lssr claims`")
    v.add_argument("--out", required=True, help="output CSV (reStructuredText-escaped), e.g. results/verdicts.csv")
    v.set_defaults(func=cmd_verdicts)

    s = sub.add_parser("summary", help="one line per claim (verdict counts, deciding statistic) opening report.html")
    s.add_argument("--claims", required=True, help="results/claims.csv from `lssr claims`")
    s.add_argument("--out", required=True, help="output CSV (reStructuredText-escaped), e.g. results/summary.csv")
    s.set_defaults(func=cmd_summary)

    rr = sub.add_parser(
        "replication-record",
        help="copy a finished run's claims, verdicts, summary, run table and figures into a kept folder with a "
        "README.md (one line per statement of the paper, the config, run time, Figure 5's best cells)",
    )
    rr.add_argument("--results", default="results", help="the results folder (claims.csv, verdicts.csv, ...)")
    rr.add_argument("--figures", default="figures", help="the figures folder (its *.png are copied)")
    rr.add_argument("--config", required=True, help="the config file the run used, e.g. config/demo.yaml")
    rr.add_argument("--out", default="docs/replication", help="output folder, replaced as a whole")
    rr.set_defaults(func=cmd_replication_record)

    t = sub.add_parser(
        "timed",
        help="run a command (the workflow) and log its wall-clock time per invocation; on success, the sum over "
        "every logged invocation (a run stopped and resumed counts each part) as the record's run time",
    )
    t.add_argument("--log", default="results/replication-invocations.jsonl", help="one JSON line per invocation")
    t.add_argument("--summary", default="results/replication-time.json", help="the summed time, read by the record")
    t.add_argument("--done", default="results/claims.csv", help="the workflow's last output (rebuilt: rewrite summary)")
    t.add_argument("--cores", default="", help="the --cores the command was given (stated in the record)")
    t.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command")
    t.set_defaults(func=cmd_timed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lssr", description="Interaction-aware sharpness / LSSR replication toolkit")
    p.add_argument("--version", action="version", version=f"lssr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_train_commands(sub)
    _add_result_commands(sub)
    add_diagnose_command(sub)
    add_recommend_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LssrError as exc:
        print(f"lssr {args.command}: error: {exc.for_command_line(vars(args))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
