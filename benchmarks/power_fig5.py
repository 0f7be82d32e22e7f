"""Power of claim C5 on synthetic Figure-5 heatmaps of candidate designs, with the record's noise and shape.

What is measured from the kept record (``docs/replication``):

- the seed noise: the median over the goal-reaching cells (final training accuracy ≥ 99.9%, not diverged) of
  fig5.csv of the seed-to-seed standard deviation of the final test accuracy;
- the curvature of the accuracy top: per b, a parabola in log2 η through the goal-reaching cells within 1.5
  octaves of the best one (at least three), its leading coefficient; the median over b;
- B_simple = 1/ρ_1 − 1 from figC5.csv (Figure 4's SGD runs: no batch norm, 200 steps): the median at the last
  probed step and at the first, kept for comparison;
- B_simple of the pilot (``--pilot``, default ``results/bench/pilot_fig5_rho.csv``, `make pilot-fig5`: table
  fig5_rho of goal-trained Figure-5 models, batch norm, the replication's data and model): the median over its
  models is the B_simple of the synthetic truths and the sd of its ln the spread of the synthetic measurements;
- the cost of training: per b, the wall time of the Figure-5 runs in runs.csv per run and epoch (a batched
  group's wall time shared by its members), one core.

Each synthetic heatmap: per b, the accuracy A0 − curvature·(log2 η − log2 η*(b))² plus Gaussian seed noise, every
cell trained to the goal; one η grid for every b (as the config's ``lrs``) covers the ridge predicted from the
pilot's B_simple (LSSR through the middle b) with ``half`` octaves to spare on each side, at the design's spacing;
eight ``fig5_rho`` models measure B_simple with a lognormal spread (the pilot's sd of ln B_simple). Truths, all
through the same η at the middle b: LSSR (η* = c·ρ_b, eq. (12) at the pilot's B_simple), a pure power law c·b^0.4, a
constant η and a line (LSR, c·b). Each draw goes through :func:`lssr.claims.rules.claim_c5`; the rates of its
verdicts (the row "LSSR predicted from the measured ρ", and the fitted-ρ row) are counted over ``--draws`` draws per
truth and design. Only the ratio of seed noise to curvature enters C5 (differences of cell means over the curvature,
and the plateau's standard errors), so a curvature k times the record's acts about like k² times as many seeds.

    python benchmarks/power_fig5.py [--draws 50] [--pilot results/bench/pilot_fig5_rho.csv]
        [--out results/bench/power_fig5.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lssr import scaling
from lssr.claims import rules

RECORD = Path("docs/replication")
PILOT = Path("results/bench/pilot_fig5_rho.csv")
#: Models measured per data set (fig5_rho rows).
N_RHO = 8
A0 = 0.4
#: The designs: batch sizes, the margin (octaves) of the η grid beyond the predicted ridge (``below`` it, when given,
#: else ``half``) and its spacing, a finer spacing within ``fine_half`` octaves of the ridge, seeds per cell, and the
#: training set's size ``n`` when not the record's (the record's noise, curvature and the pilot's B_simple are used,
#: the cost per run and epoch scaled by n over the record's).
DESIGNS = {
    "record (b 16-512, octave η grid, 3 seeds)": dict(bs=[16, 32, 64, 128, 256, 512], half=5.0, step=1.0,
                                                      fine_half=0.0, fine=1.0, seeds=3),
    "b 8-1024, half-octave η grid ±3, 5 seeds": dict(bs=[8, 16, 32, 64, 128, 256, 512, 1024], half=3.0, step=0.5,
                                                     fine_half=0.0, fine=0.5, seeds=5),
    "b 8-1024, half-octave η grid -2/+3, 5 seeds": dict(bs=[8, 16, 32, 64, 128, 256, 512, 1024], half=3.0, below=2.0,
                                                        step=0.5, fine_half=0.0, fine=0.5, seeds=5),
    "b 8-1024, octave η grid ±3, 8 seeds": dict(bs=[8, 16, 32, 64, 128, 256, 512, 1024], half=3.0, step=1.0,
                                                fine_half=0.0, fine=1.0, seeds=8),
    "b 16-1024, octave η grid ±3, 10 seeds": dict(bs=[16, 32, 64, 128, 256, 512, 1024], half=3.0, step=1.0,
                                                  fine_half=0.0, fine=1.0, seeds=10),
    "b 4-1024, octave η grid ±4, 10 seeds": dict(bs=[4, 8, 16, 32, 64, 128, 256, 512, 1024], half=4.0, step=1.0,
                                                 fine_half=0.0, fine=1.0, seeds=10),
    "b 4-1024, quarter-octave ±1 in half-octave ±3, 8 seeds": dict(bs=[4, 8, 16, 32, 64, 128, 256, 512, 1024],
                                                                   half=3.0, step=0.5, fine_half=1.0, fine=0.25,
                                                                   seeds=8),
    "n 4096: b 16-4096, half-octave η grid -2/+3, 5 seeds": dict(bs=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
                                                                 half=3.0, below=2.0, step=0.5, fine_half=0.0,
                                                                 fine=0.5, seeds=5, n=4096),
}  # fmt: skip
#: The accuracy top's curvature as a multiple of the record's: 1 (measured) and sharper tops, to show what a
#: design would need.
CURVATURE_FACTORS = (1.0, 4.0)
TRUTHS = ("LSSR", "power law b^0.4", "constant", "line (LSR)")


def record_numbers() -> dict:
    """Seed noise, curvature, B_simple and cost per run-epoch, from the kept record."""
    t = pd.read_csv(RECORD / "fig5.csv")
    cells = t[(t["kind"] == "cell") & ~t["diverged"].astype(bool)]
    ok = cells[cells["train_acc"] >= 0.999]
    seeds = t[t["kind"] == "seed"]
    key = set(zip(ok["b"], ok["lr"]))
    sel = seeds[[k in key for k in zip(seeds["b"], seeds["lr"])]]
    sd = float(sel.groupby(["b", "lr"])["test_acc"].std().median())
    curv = []
    for _, g in ok.groupby("b"):
        g = g.sort_values("lr")
        x, y = np.log2(g["lr"].to_numpy(float)), g["test_acc"].to_numpy(float)
        near = np.abs(x - x[np.argmax(y)]) <= 1.5
        if near.sum() >= 3:
            curv.append(-np.polyfit(x[near], y[near], 2)[0])
    c5 = pd.read_csv(RECORD / "figC5.csv").drop_duplicates(["run", "step"]).sort_values(["run", "step"])
    B = 1.0 / c5["rho_1"] - 1.0
    runs = pd.read_csv(RECORD / "runs.csv")
    epochs = 200  # config/cifar10-replication.yaml's fig5 epochs when the record was trained
    f5 = runs[runs["batch_norm"].astype(bool)]
    # one batched group per b: its members share the group's wall time (diverged members stop early)
    rate = {int(b): float(g["wall_time_s"].max() / (len(g) * epochs)) for b, g in f5.groupby("b")}
    return {
        "seed_sd": sd,
        "curvature": float(np.median(curv)),
        "curvatures": [float(v) for v in curv],
        "b_simple_last": float(B.groupby(c5["run"]).last().median()),
        "b_simple_first": float(B.groupby(c5["run"]).first().median()),
        "n": int(t.loc[t["kind"] == "cell", "n"].iloc[0]),
        "replacement": bool(t.loc[t["kind"] == "cell", "replacement"].iloc[0]),
        "s_per_run_epoch": rate,
        "epochs": epochs,
    }


def pilot_numbers(path: str | Path) -> dict:
    """B_simple of the pilot's goal-trained models (table fig5_rho): the median, the sd of ln B_simple, per b."""
    t = pd.read_csv(path)
    v = t["b_simple"].to_numpy(float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) < 2:
        raise SystemExit(f"{path}: {len(v)} finite B_simple; the power analysis needs at least 2 (run make pilot-fig5)")
    per_b = {str(int(b)): {"models": int(len(g)), "median": float(g.median()), "min": float(g.min()),
                           "max": float(g.max())}
             for b, g in t.groupby("b")["b_simple"]}  # fmt: skip
    return {"path": str(path), "models": int(len(v)), "b_simple": float(np.median(v)),
            "sd_ln": float(np.std(np.log(v), ddof=1)), "per_b": per_b}  # fmt: skip


def truth(name: str, bs: np.ndarray, B: float, n: int, repl: bool) -> np.ndarray:
    """log2 η*(b) of a truth, all through LSSR's value at the middle b (log2 c = −2)."""
    lssr = -2.0 + np.log2(scaling.rho_b(1.0 / (1.0 + B), n, bs, repl))
    mid = len(bs) // 2
    x = np.log2(bs) - np.log2(bs[mid])
    return {"LSSR": lssr, "power law b^0.4": lssr[mid] + 0.4 * x, "constant": lssr[mid] + 0 * x,
            "line (LSR)": lssr[mid] + x}[name]  # fmt: skip


def grid(design: dict, centre: np.ndarray) -> list[np.ndarray]:
    """The probed log2 η, one list for every b (the config's ``lrs``): the design's spacing from ``half`` octaves
    below the lowest predicted ridge point to ``half`` above the highest (rounded to the spacing), the finer
    spacing within ``fine_half`` octaves of the ridge's range."""
    lo, hi = np.round(np.min(centre) / design["step"]), np.round(np.max(centre) / design["step"])
    below = design.get("below", design["half"])
    g = np.arange(lo * design["step"] - below, hi * design["step"] + design["half"] + 1e-9, design["step"])
    if design["fine_half"] > 0:
        f0 = np.floor((np.min(centre) - design["fine_half"]) / design["fine"]) * design["fine"]
        g = np.union1d(g, np.arange(f0, np.max(centre) + design["fine_half"] + 1e-9, design["fine"]))
    return [np.round(g, 6)] * len(centre)


def draw(
    design: dict, peaks: np.ndarray, grids: list[np.ndarray], rec: dict, curv: float, B: float, spread: float, rng
) -> tuple:
    """One synthetic heatmap (seed rows) and its fig5_rho rows."""
    rows, n = [], design.get("n", rec["n"])
    for b, p, g in zip(design["bs"], peaks, grids):
        acc = A0 - curv * (g[None, :] - p) ** 2 + rec["seed_sd"] * rng.standard_normal((design["seeds"], len(g)))
        for s in range(design["seeds"]):
            rows.append(pd.DataFrame({"kind": "seed", "dataset": "d", "n": n, "replacement": rec["replacement"],
                                      "b": int(b), "lr": 2.0**g, "seed": s, "test_acc": acc[s], "train_acc": 1.0,
                                      "diverged": False, "reached_goal": True}))  # fmt: skip
    Bm = B * np.exp(spread * rng.standard_normal(N_RHO))
    rho = pd.DataFrame({"dataset": "d", "n": n, "replacement": rec["replacement"], "b": design["bs"][0],
                        "lr": 2.0 ** grids[0][len(grids[0]) // 2], "seed": np.arange(N_RHO), "step": 0,
                        "where": "final", "tr_S_1": 1.0 + Bm, "tr_S_n": 1.0, "b_simple": Bm})  # fmt: skip
    return pd.concat(rows, ignore_index=True), rho


def run_epoch_seconds(b: float, rec: dict) -> float:
    """Seconds per run and epoch at batch size b: the record's at the nearest b; below the record's smallest b
    scaled by (smallest b)/b (as many more steps per epoch: an upper bound)."""
    rate = rec["s_per_run_epoch"]
    known = np.array(sorted(rate))
    near = int(known[np.argmin(np.abs(np.log2(known) - np.log2(b)))])
    return rate[near] * (known[0] / b if b < known[0] else 1.0)


def cost(design: dict, grids: list[np.ndarray], rec: dict) -> dict:
    """Runs and training cost at the record's epochs (one core, and wall on two cores)."""
    runs = [len(g) * design["seeds"] for g in grids]
    scale = design.get("n", rec["n"]) / rec["n"]
    s = sum(r * rec["epochs"] * run_epoch_seconds(b, rec) * scale for r, b in zip(runs, design["bs"]))
    return {"runs": int(sum(runs)), "core_hours": float(s / 3600), "wall_hours_2_cores": float(s / 7200)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--out", default="results/bench/power_fig5.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pilot", default=str(PILOT), help="the pilot's fig5_rho table (make pilot-fig5)")
    args = ap.parse_args(argv)
    rec = record_numbers()
    pilot = pilot_numbers(args.pilot)
    B, spread = pilot["b_simple"], pilot["sd_ln"]
    t0 = time.time()
    results = []
    for dname, design in DESIGNS.items():
        bs = np.asarray(design["bs"], float)
        n = design.get("n", rec["n"])
        grids = grid(design, truth("LSSR", bs, B, n, rec["replacement"]))
        for factor in CURVATURE_FACTORS if dname != next(iter(DESIGNS)) else (1.0,):
            for tname in TRUTHS:
                rng = np.random.default_rng([args.seed, len(results)])
                peaks = truth(tname, bs, B, n, rec["replacement"])
                counts = {"predicted": {}, "fitted": {}}
                for _ in range(args.draws):
                    seeds, rho = draw(design, peaks, grids, rec, rec["curvature"] * factor, B, spread, rng)
                    pred, fit = rules.claim_c5(seeds, rho)[:2]
                    for k, r in (("predicted", pred), ("fitted", fit)):
                        counts[k][r["verdict"]] = counts[k].get(r["verdict"], 0) + 1
                rate = {k: {v: c / args.draws for v, c in sorted(cnt.items())} for k, cnt in counts.items()}
                results.append({"design": dname, "curvature_factor": factor, "truth": tname, "draws": args.draws,
                                "rates": rate, **cost(design, grids, rec)})  # fmt: skip
                pr = rate["predicted"]
                print(f"{dname[:48]:48s} curv×{factor:<4g} {tname:16s} pass {pr.get('pass', 0):.2f} fail "
                      f"{pr.get('fail', 0):.2f} inconcl. {pr.get('inconclusive', 0):.2f} n-e-d "
                      f"{pr.get('not-enough-data', 0):.2f}", flush=True)  # fmt: skip
    # a design decides when LSSR passes in ≥ 80% and every other truth fails or is inconclusive in ≥ 90%
    table = pd.DataFrame(results)
    decide = []
    for (d, f), g in table.groupby(["design", "curvature_factor"], sort=False):
        r = {row["truth"]: row["rates"]["predicted"] for _, row in g.iterrows()}
        lssr_pass = r["LSSR"].get("pass", 0.0)
        others = min(v.get("fail", 0.0) + v.get("inconclusive", 0.0) for t, v in r.items() if t != "LSSR")
        n_d = DESIGNS[d].get("n", rec["n"])
        g_d = grid(DESIGNS[d], truth("LSSR", np.asarray(DESIGNS[d]["bs"], float), B, n_d, rec["replacement"]))
        decide.append({"design": d, "curvature_factor": f, "lssr_pass": lssr_pass, "others_not_pass_min": others,
                       "decides": lssr_pass >= 0.8 and others >= 0.9, **cost(DESIGNS[d], g_d, rec),
                       "log2_lrs": [float(x) for x in g_d[0]]})  # fmt: skip
    out = {"record": rec, "pilot": pilot, "b_simple_used": B, "b_spread": spread, "n_rho": N_RHO, "designs": DESIGNS,
           "results": results, "decision": decide, "seconds": time.time() - t0}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(pd.DataFrame(decide).to_string(index=False))
    print(
        f"record: seed sd {rec['seed_sd']:.4g}, curvature {rec['curvature']:.4g} per octave²; pilot B_simple {B:.4g} "
        f"(sd of ln {spread:.3g}, {pilot['models']} models); figC5 B_simple {rec['b_simple_last']:.4g} (first step "
        f"{rec['b_simple_first']:.4g}); wrote {args.out} in {time.time() - t0:.0f} s"
    )
    return out


if __name__ == "__main__":
    main()
