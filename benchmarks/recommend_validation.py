"""Held-out validation of ``lssr recommend`` on the Figure-5 grids the pipeline trains.

For each grid (the demo's digits grid, and the kept CIFAR-10 record's, docs/replication/fig5.csv): the reference is
the smallest b of the grid and its best η (the cells marked ``is_best``); every other b's best η is predicted by
LSSR (η_ref·ρ_b/ρ_{b_ref}, B_simple measured on the grid's model and data), LSR and SRSR from the same reference,
and scored by |log2(predicted / best)|. B_simple is measured (lssr.recommend.noise_scale, all N training samples)

- at initialisation, for each seed of the grid (θ_0 as the pipeline builds it), and
- after training at (b_ref, η_ref) with the pipeline's own ``lssr train`` for a few epochs (seed 0),

so the table shows how far the recommendation moves along training. The stability ceiling η_max(b) =
2·tr S_N/tr(H S_b) (lssr.diagnose at initialisation, seed 0) is set beside two observed edges of the grid: the
largest η whose cell did not diverge (the pipeline's flag: a loss above 1e6 or not finite), and the largest η
whose cell's final training accuracy is above twice chance (0.2 for 10 classes), the edge where training breaks
down without a loss blow-up (batch norm keeps the cross-entropy bounded).

Batch norm: the grids train digits_cnn with batch norm in train mode; per-sample gradients need fixed statistics,
so each measurement first sets the running statistics to the whole training set's (one pass in train mode with a
cumulative average) and measures in eval mode. One more point at initialisation keeps batch norm's initial
running statistics (mean 0, variance 1: what ``--bn eval`` sees on a freshly built model), to show how much that
choice moves B_simple; the plots' interval leaves it out.

    PYTHONPATH=src python benchmarks/recommend_validation.py --cifar-root DIR   # measure; the JSON, the tables
    PYTHONPATH=src python benchmarks/recommend_validation.py --tables   # only regenerate docs/RECOMMEND.md's tables

The demo's grid is read from figures/data/fig5.csv (`make demo`; --demo-fig5 names another). Writes
docs/recommend/validation.json, docs/recommend/{demo,cifar10}-init.png (η against b from the first point, the
interval spanning every point) and the tables
between the ``<!-- begin: recommend-* -->`` markers of docs/RECOMMEND.md. About two minutes on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "recommend"
DOC = ROOT / "docs" / "RECOMMEND.md"
CHANCE_FACTOR = 2.0
#: The record's data root, as config/cifar10-replication.yaml names it (relative to the repository).
CIFAR_DEFAULT = (ROOT / "../shared/data/cifar10-jpeg").resolve()

GRIDS = {
    "demo (digits-1k)": {
        "fig5": str(ROOT / "figures" / "data" / "fig5.csv"),  # written by `make demo`
        "data": {"dataset": "digits", "n": 1024, "seed": 0},
        "subset": ["digits-1k", "--seed", "0"],
        "train_epochs": [1, 4],
    },
    "record (CIFAR-10-1k, 8 px)": {
        "fig5": str(ROOT / "docs" / "replication" / "fig5.csv"),
        "data": {
            "dataset": "imagefolder",
            "n": 1024,
            "seed": 0,
            "root": "CIFAR_ROOT",
            "num_classes": 10,
            "resize": 8,
        },  # fmt: skip
        "subset": [
            "imagefolder-1k",
            "--seed",
            "0",
            "--root",
            "CIFAR_ROOT",
            "--resize",
            "8",
            "--num-classes",
            "10",
        ],  # fmt: skip
        "train_epochs": [1, 10],
    },
}


def grid_table(fig5: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """Per b: the best η (and its bootstrap interval), the divergence edge and the 'trains' edge."""
    cells = fig5[fig5["kind"] == "cell"].copy()
    cells["is_best"] = cells["is_best"].astype(str).str.lower().eq("true")
    cells["diverged"] = cells["diverged"].astype(str).str.lower().eq("true")
    seeds = sorted(int(s) for s in fig5.loc[fig5["kind"] == "seed", "seed"].dropna().unique())
    rows = []
    for b, g in cells.groupby("b"):
        best = g[g["is_best"]].iloc[0]
        ok = g[~g["diverged"]]
        trains = g[g["train_acc"] > CHANCE_FACTOR * 0.1]
        rows.append(
            {
                "b": int(b),
                "best_lr": float(best["lr"]),
                "best_lr_lo": float(best["lr_lo"]),
                "best_lr_hi": float(best["lr_hi"]),
                "edge_not_diverged": float(ok["lr"].max()) if len(ok) else math.nan,
                "edge_censored": bool(len(ok) and ok["lr"].max() >= g["lr"].max()),
                "edge_trains": float(trains["lr"].max()) if len(trains) else math.nan,
                "lr_grid_max": float(g["lr"].max()),
            }
        )
    return pd.DataFrame(rows), seeds


def recalibrated(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The model in eval mode with every batch norm's running statistics set to those of all of ``x``."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass gives the statistics of the whole batch
    model.train()
    with torch.no_grad():
        model(x)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def measure(model, sub, with_hessian: bool, b_ref: int, batch_sizes: list[int], recalibrate: bool = True):
    from lssr.diagnostics.api import diagnose
    from lssr.recommend import noise_scale

    model = recalibrated(model, sub.x_train) if recalibrate else model.eval()
    data = (sub.x_train, sub.y_train)
    t0 = time.perf_counter()
    ns = noise_scale(model, "ce", data)
    out = {"noise": ns.to_dict(), "seconds_noise": time.perf_counter() - t0}
    if with_hessian:
        t0 = time.perf_counter()
        d = diagnose(model, "ce", data, batch_sizes=sorted(set([b_ref, *batch_sizes])), eigen=False, seed=0)
        out["diagnostics"] = d.scalars()
        out["seconds_diagnose"] = time.perf_counter() - t0
        out["_diag"] = d
    return out


def train_at_reference(name, spec, subset_dir: Path, b_ref: int, lr_ref: float, epochs: int, work: Path) -> Path:
    cfg = {
        "data": spec["data"],
        "model": {"name": "digits_cnn", "batch_norm": True},
        "loss": "ce",
        "optim": {"lr": lr_ref, "batch_size": b_ref, "replacement": False},
        "seed": 0,
        "device": "cpu",
        "stop": {"epochs": epochs},
        "eval_every": 100000,
        "chunk_size": 1024,
    }
    folder = work / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}-e{epochs}"
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "lssr", "train", str(work / "cfg.yaml"), "--out", str(folder), "--data",
           str(subset_dir), "--no-progress"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return folder / "model.pt"


def log2_errors(pred: np.ndarray, best: np.ndarray) -> np.ndarray:
    return np.log2(pred / best)


def inside(pred, lo, hi) -> int:
    """How many predictions lie in the best η's bootstrap interval over seeds (widened by half an octave each
    side: the grid's resolution is one octave)."""
    return int(np.sum((pred >= lo / np.sqrt(2)) & (pred <= hi * np.sqrt(2))))


def validate(name: str, spec: dict, work: Path) -> dict:
    from lssr.data import load_subset
    from lssr.models import build_model
    from lssr.recommend import plot_recommendation, recommend

    OUT.mkdir(parents=True, exist_ok=True)
    fig5 = pd.read_csv(spec["fig5"])
    grid, seeds = grid_table(fig5)
    b_ref = int(grid["b"].min())
    lr_ref = float(grid.loc[grid["b"] == b_ref, "best_lr"].iloc[0])
    targets = [int(b) for b in grid["b"] if b != b_ref]
    subset_dir = work / re.sub(r"[^a-z0-9]+", "-", name.lower())
    cmd = [sys.executable, "-m", "lssr", "subset", *spec["subset"], "--out", str(subset_dir)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    sub = load_subset(subset_dir)
    C, K = sub.x_train.shape[1], sub.num_classes

    points = []
    diag0 = None
    for s in seeds:
        torch.manual_seed(s)
        m = build_model("digits_cnn", C, K, batch_norm=True)
        res = measure(m, sub, s == seeds[0], b_ref, list(grid["b"]))
        if s == seeds[0]:
            diag0 = res.pop("_diag")
        points.append({"where": f"init, seed {s}", "epochs": 0, "bn": "training set", **res})
    torch.manual_seed(seeds[0])
    m = build_model("digits_cnn", C, K, batch_norm=True)
    res = measure(m, sub, False, b_ref, [], recalibrate=False)
    where = f"init, seed {seeds[0]}, batch norm's initial statistics (mean 0, variance 1)"
    points.append({"where": where, "epochs": 0, "bn": "initial", **res})
    for e in spec["train_epochs"]:
        ckpt = train_at_reference(name, spec, subset_dir, b_ref, lr_ref, e, work)
        torch.manual_seed(0)
        m = build_model("digits_cnn", C, K, batch_norm=True)
        m.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        points.append({"where": f"after {e} epoch{'s' * (e > 1)} at b_ref (seed 0)", "epochs": e, "bn": "training set",
                       **measure(m, sub, False, b_ref, [])})  # fmt: skip

    from lssr.recommend import NoiseScale

    best = grid.set_index("b").loc[targets, "best_lr"].to_numpy()
    lo = grid.set_index("b").loc[targets, "best_lr_lo"].to_numpy()
    hi = grid.set_index("b").loc[targets, "best_lr_hi"].to_numpy()
    rules = {}
    first = recommend(NoiseScale(**points[0]["noise"]), b_ref, lr_ref, targets, diagnostics=diag0)
    f0 = first.frame()
    rules["LSR"] = (log2_errors(f0["lsr"].to_numpy(), best), inside(f0["lsr"].to_numpy(), lo, hi))
    rules["SRSR"] = (log2_errors(f0["srsr"].to_numpy(), best), inside(f0["srsr"].to_numpy(), lo, hi))
    per_point = []
    for p in points:
        rec = recommend(NoiseScale(**p["noise"]), b_ref, lr_ref, targets)
        err = log2_errors(rec.frame()["lr"].to_numpy(), best)
        lr = rec.frame()["lr"].to_numpy()
        per_point.append(
            {
                "where": p["where"],
                "b_simple": p["noise"]["b_simple"],
                "errors": err.tolist(),
                "inside": inside(lr, lo, hi),
                "median_abs_log2": float(np.median(np.abs(err))),
                "lr": lr.tolist(),
            }
        )
    ceiling = recommend(NoiseScale(**points[0]["noise"]), b_ref, lr_ref, list(grid["b"]), diagnostics=diag0)
    kept = [NoiseScale(**p["noise"]) for p in points if p["bn"] == "training set"]
    every = recommend(kept, b_ref, lr_ref, targets, diagnostics=diag0)
    plot = OUT / f"{'demo' if name.startswith('demo') else 'cifar10'}-init.png"
    fig = plot_recommendation(every, plot, observed=dict(zip(grid["b"].astype(int), grid["best_lr"])))
    del fig
    return {
        "grid": name,
        "fig5": spec["fig5"],
        "b_ref": b_ref,
        "lr_ref": lr_ref,
        "targets": targets,
        "n": int(sub.x_train.shape[0]),
        "seeds": seeds,
        "best": grid.to_dict(orient="records"),
        "rules": {
            k: {"errors": v.tolist(), "median_abs_log2": float(np.median(np.abs(v))), "inside": n_in}
            for k, (v, n_in) in rules.items()
        },
        "lssr": per_point,
        "points": [{k: v for k, v in p.items() if k != "_diag"} for p in points],
        "ceiling": ceiling.frame()[["b", "lr_max"]].to_dict(orient="records"),
        "init_recommendation": first.to_dict(),
        "every_point_recommendation": every.to_dict(),
    }


def coverage_study(draws: int = 300, n: int = 200, b_simple: float = 30.0, d: int = 20, level: float = 0.9) -> list:
    """How often the interval of η(256) from b_ref = 8 covers the truth (eq. (12) with the population's B_simple)
    over seeded draws of n per-sample gradients g_i = μ + e_i (‖μ‖² = 1): from a finite training set of N = 3000
    (drawn without replacement; its noise centred and scaled so that B_simple is exact) and from a Gaussian
    population (e_i ~ N(0, B_simple/d · I))."""
    from lssr.recommend import noise_scale_from_gradients, recommend

    rng = np.random.default_rng(3)
    mu = np.zeros(d)
    mu[0] = 1.0
    e = np.random.default_rng(4).standard_normal((3000, d))
    e -= e.mean(0)
    pop = mu + e * math.sqrt(b_simple / np.mean((e * e).sum(1)))
    out = []
    for kind, N in (("finite (N = 3000)", 3000), ("Gaussian", None)):
        gamma = (lambda b: 1.0) if N is None else (lambda b: (N - b) / (N - 1))
        truth = 0.1 * (1 + gamma(8) / 8 * b_simple) / (1 + gamma(256) / 256 * b_simple)
        hits = 0
        for _ in range(draws):
            G = (
                pop[rng.choice(N, n, replace=False)]
                if N
                else mu + math.sqrt(b_simple / d) * rng.standard_normal((n, d))
            )
            row = recommend(noise_scale_from_gradients(G, n_total=N), 8, 0.1, [256], level=level).frame().iloc[0]
            hits += bool(row["lr_lo"] <= truth <= row["lr_hi"])
        out.append({"population": kind, "draws": draws, "n": n, "b_simple": b_simple, "level": level,
                    "coverage": hits / draws})  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3g}"


def tables(record: dict) -> dict[str, str]:
    out = {}
    lines = [
        "| grid | b_ref, η_ref | where B_simple was measured: B_simple | median \\|log2 error\\| LSSR | LSR | SRSR |",
        "|---|---|---|---|---|---|",
    ]
    for g in record["grids"]:
        k = len(g["targets"])
        for i, p in enumerate(g["lssr"]):
            r = g["rules"]
            lsr = f"{r['LSR']['median_abs_log2']:.2f} ({r['LSR']['inside']}/{k})" if i == 0 else ""
            srsr = f"{r['SRSR']['median_abs_log2']:.2f} ({r['SRSR']['inside']}/{k})" if i == 0 else ""
            head = f"{g['grid']} | {g['b_ref']}, {g['lr_ref']:g}" if i == 0 else " | "
            lssr = f"{p['median_abs_log2']:.2f} ({p['inside']}/{k})"
            lines.append(f"| {head} | {p['where']}: {p['b_simple']:.3g} | {lssr} | {lsr} | {srsr} |")
    out["recommend-summary"] = "\n".join(lines)
    lines = ["| population | n per draw | B_simple | draws | nominal | covered |", "|---|---|---|---|---|---|"]
    for c in record["coverage"]:
        lines.append(f"| {c['population']} | {c['n']} | {c['b_simple']:g} | {c['draws']} | {c['level']:.0%} | "
                     f"{c['coverage']:.1%} |")  # fmt: skip
    out["recommend-coverage"] = "\n".join(lines)
    for g in record["grids"]:
        key = "recommend-demo" if g["grid"].startswith("demo") else "recommend-record"
        ps = g["lssr"]
        head = "| b | best η (bootstrap interval) | LSSR, init seed 0 (log2 error) | LSSR, last point | LSR | SRSR |"
        lines = [head, "|---|---|---|---|---|---|"]
        best = {r["b"]: r for r in g["best"]}
        for j, b in enumerate(g["targets"]):
            r = best[b]
            lsr = g["rules"]["LSR"]["errors"][j]
            srsr = g["rules"]["SRSR"]["errors"][j]
            first, last = (f"{_fmt(p['lr'][j])} ({p['errors'][j]:+.1f})" for p in (ps[0], ps[-1]))
            eta_lsr, eta_srsr = g["lr_ref"] * b / g["b_ref"], g["lr_ref"] * math.sqrt(b / g["b_ref"])
            lines.append(
                f"| {b} | {_fmt(r['best_lr'])} ({_fmt(r['best_lr_lo'])}–{_fmt(r['best_lr_hi'])}) | {first} | {last} | "
                f"{_fmt(eta_lsr)} ({lsr:+.1f}) | {_fmt(eta_srsr)} ({srsr:+.1f}) |"
            )
        lines.append("")
        lines.append(
            "| b | η_max(b) at init | largest η not diverged | largest η that trains (train acc > 0.2) | best η |"
        )
        lines.append("|---|---|---|---|---|")
        cap = {r["b"]: r["lr_max"] for r in g["ceiling"]}
        for b, r in best.items():
            nd = _fmt(r["edge_not_diverged"]) + (" (grid top: censored)" if r["edge_censored"] else "")
            lines.append(f"| {b} | {_fmt(cap[b])} | {nd} | {_fmt(r['edge_trains'])} | {_fmt(r['best_lr'])} |")
        out[key] = "\n".join(lines)
    return out


def write_tables(record: dict, doc: Path = DOC) -> None:
    text = doc.read_text()
    for key, table in tables(record).items():
        pattern = re.compile(rf"(<!-- begin: {key} -->\n).*?(<!-- end: {key} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{doc}: no <!-- begin: {key} --> ... <!-- end: {key} --> markers")
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    doc.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", action="store_true", help="only regenerate the tables from the kept JSON")
    ap.add_argument("--demo-fig5", default=GRIDS["demo (digits-1k)"]["fig5"], help="the demo's figures/data/fig5.csv")
    ap.add_argument("--cifar-root", default=str(CIFAR_DEFAULT), help="the CIFAR-10 image-folder tree (train/<class>/)")
    args = ap.parse_args(argv)
    path = OUT / "validation.json"
    if not args.tables:
        torch.set_num_threads(1)
        GRIDS["demo (digits-1k)"]["fig5"] = args.demo_fig5
        record_grid = GRIDS["record (CIFAR-10-1k, 8 px)"]
        record_grid["data"]["root"] = args.cifar_root
        record_grid["subset"] = [args.cifar_root if a == "CIFAR_ROOT" else a for a in record_grid["subset"]]
        for what, given in (("--demo-fig5 (run `make demo`)", args.demo_fig5), ("--cifar-root", args.cifar_root)):
            if not Path(given).exists():
                raise SystemExit(f"{what}: {given} does not exist")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            grids = [validate(name, spec, Path(tmp)) for name, spec in GRIDS.items()]
        record = {"grids": grids, "coverage": coverage_study(), "seconds": time.perf_counter() - t0}
        record["torch"] = torch.__version__
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=float) + "\n")

    record = json.loads(path.read_text())
    write_tables(record)
    print(tables(record)["recommend-summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
