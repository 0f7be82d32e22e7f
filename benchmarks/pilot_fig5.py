"""The record of Figure 5's pilot (`make pilot-fig5`): B_simple of goal-trained models, per b, and the goal's epochs.

Reads the pilot's runs (those the workflow config plans for table fig5_rho, ``results/runs/<run>/run.json``) and its
table ``results/tables/fig5_rho.csv`` (B_simple = (tr S_1 − tr S_n)/tr S_n on each goal-reaching run's final model),
writes ``results/bench/pilot_fig5.json`` (``--out``) with the table beside it (``pilot_fig5_rho.csv``): the config,
the git commit, the workflow's wall time (``--wall-seconds``, measured by the Makefile), the training groups' wall
and CPU seconds (Snakemake's benchmark files, one process of one thread per b) and fig5_rho's seconds (its log), per
b the median B_simple, its range and the sd of ln B_simple, per cell (b, η) the same over seeds, per run whether and
at which epoch it reached the training-accuracy goal, and the median over the goal-reaching cells of the
seed-to-seed sd of the final test accuracy.

    python benchmarks/pilot_fig5.py [--config config/cifar10-fig5-pilot.yaml] [--results results]
        [--wall-seconds S] [--out results/bench/pilot_fig5.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lssr.tables.runs import load_runs
from lssr.workflow import plan


def _spread(v: pd.Series) -> dict:
    v = v.to_numpy(float)
    return {
        "models": int(len(v)),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "sd_ln": float(np.std(np.log(v), ddof=1)) if len(v) > 1 else float("nan"),
    }


def summary(config: str, results: Path, wall_seconds: float | None) -> dict:
    """The pilot's record (see the module docstring) from its config and results folder."""
    wf = yaml.safe_load(Path(config).read_text())
    ids = [rid for rids in plan(wf).fig5_rho.values() for rid in rids]
    runs = load_runs([results / "runs" / rid for rid in ids])
    rho = pd.read_csv(results / "tables" / "fig5_rho.csv")
    per_run = []
    for r in runs:
        steps_per_epoch = r.n / r.b  # without replacement, b divides n in the pilot's grid
        final = r.meta.get("final") or {}
        per_run.append({
            "run": r.name, "b": r.b, "lr": r.lr, "seed": int(r.config.get("seed", 0)),
            "reached_goal": bool(r.reached_goal),
            "goal_epoch": float(r.goal_step / steps_per_epoch) if r.reached_goal else None,
            "steps": int(r.meta["steps"]), "status": r.meta.get("status"),
            "train_acc": final.get("train_acc"), "test_acc": final.get("test_acc"),
            "wall_time_s": float(r.meta.get("wall_time_s", float("nan"))),
        })  # fmt: skip
    pr = pd.DataFrame(per_run)
    log = results / "logs" / "fig5_rho"
    rho_seconds = sum(
        float(s) for f in log.glob("*.log") for s in re.findall(r"\(([0-9.]+) s\)", f.read_text())
    )  # fmt: skip
    bench = [pd.read_csv(f, sep="\t") for f in sorted((results / "benchmarks" / "train_group").glob("*.tsv"))]
    bench = pd.concat(bench) if bench else pd.DataFrame({"s": [], "cpu_time": []})
    per_b = {}
    for b, g in pr.groupby("b"):
        m = rho[rho["b"] == b]
        reached = g[g["reached_goal"]]
        per_b[str(int(b))] = {
            "runs": int(len(g)),
            "reached_goal": int(len(reached)),
            "goal_epochs": sorted(float(e) for e in reached["goal_epoch"]),
            "not_reached": [
                {"lr": float(x.lr), "seed": int(x.seed), "status": x.status, "train_acc": x.train_acc}
                for x in g[~g["reached_goal"]].itertuples()
            ],  # fmt: skip
            "b_simple": _spread(m["b_simple"]) if len(m) else None,
        }
    per_cell = [
        {"b": int(b), "lr": float(lr), **_spread(g["b_simple"]), "tr_S_n_median": float(g["tr_S_n"].median()),
         "tr_S_1_median": float(g["tr_S_1"].median())}
        for (b, lr), g in rho.groupby(["b", "lr"])
    ]  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    return {
        "config": config,
        "name": wf.get("name"),
        "git_commit": commit,
        "wall_seconds": wall_seconds,
        "train_group_wall_seconds": float(bench["s"].sum()),
        "train_group_cpu_seconds": float(bench["cpu_time"].sum()),
        "fig5_rho_seconds": rho_seconds,
        "grid": {k: wf["experiments"]["fig5"][k] for k in ("batch_sizes", "lrs", "seeds", "epochs", "train_acc_goal")},
        "runs": int(len(pr)),
        "reached_goal": int(pr["reached_goal"].sum()),
        "b_simple_all": _spread(rho["b_simple"]) if len(rho) else None,
        # the seed-to-seed sd of the final test accuracy, median over the cells whose seeds all reached the goal
        "seed_sd_test_acc": float(
            pr.groupby(["b", "lr"])
            .filter(lambda g: g["reached_goal"].all())
            .groupby(["b", "lr"])["test_acc"]
            .std()
            .median()
        ),
        "per_b": per_b,
        "per_cell": per_cell,
        "per_run": per_run,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config/cifar10-fig5-pilot.yaml")
    ap.add_argument("--results", default="results")
    ap.add_argument("--wall-seconds", type=float, default=None)
    ap.add_argument("--out", default="results/bench/pilot_fig5.json")
    args = ap.parse_args(argv)
    out = summary(args.config, Path(args.results), args.wall_seconds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out_csv = Path(args.out).with_name(Path(args.out).stem + "_rho.csv")
    shutil.copyfile(Path(args.results) / "tables" / "fig5_rho.csv", out_csv)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    for b, v in out["per_b"].items():
        s = v["b_simple"] or {}
        lo, mid, hi = (s.get(k, float("nan")) for k in ("min", "median", "max"))
        print(f"b {b:>5}: goal {v['reached_goal']}/{v['runs']} at epochs {v['goal_epochs']}; B_simple median {mid:.4g} "
              f"[{lo:.4g}, {hi:.4g}]")  # fmt: skip
    print(f"wrote {args.out} and {out_csv}")
    return out


if __name__ == "__main__":
    main()
