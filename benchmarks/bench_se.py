"""How honest is the standard error of the exchangeable sketch of tr(H S_1)? (``make bench-se``, ~2 minutes)

On explicit float64 problems (a dense symmetric H with a decaying spectrum and a few negative eigenvalues;
per-sample gradients with a few dominant directions, noise and a common mean: ``tests/test_exchangeable.py``'s
``problem``), for s probes and many sign seeds: the bias (in standard errors of the mean), the relative spread
of the estimate, and for two standard errors (the delete-one jackknife that lssr reports, and the naive
sd(T_k)/√s of the exchangeable samples) the ratio rms(se)/spread and how often 2 se cover the exact value.
Writes ``results/bench/se_study.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_exchangeable import estimate, exact_trace, problem  # noqa: E402

from lssr.io import write_json  # noqa: E402


def study(ps: int, s: int, seeds: int) -> dict:
    H, G = problem(ps)
    exact = exact_trace(H, G)
    runs = [estimate(H, G, s, seed) for seed in range(seeds)]
    v = np.array([r.value for r in runs])
    jk = np.array([r.se for r in runs])
    naive = np.array([r.samples.std(ddof=1) / np.sqrt(s) for r in runs])
    sd = v.std(ddof=1)
    return {
        "problem": ps,
        "probes": s,
        "seeds": seeds,
        "bias_in_se_of_mean": float((v.mean() - exact) / (sd / np.sqrt(seeds))),
        "rel_spread": float(sd / abs(exact)),
        "jackknife_rms_se_over_spread": float(np.sqrt((jk**2).mean()) / sd),
        "jackknife_cover_2se": float(np.mean(np.abs(v - exact) <= 2 * jk)),
        "naive_rms_se_over_spread": float(np.sqrt((naive**2).mean()) / sd),
        "naive_cover_2se": float(np.mean(np.abs(v - exact) <= 2 * naive)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--probes", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--problems", type=int, nargs="+", default=[0, 2, 5])
    ap.add_argument("--out", type=Path, default=Path("results/bench/se_study.json"))
    args = ap.parse_args(argv)
    rows = [study(ps, s, args.seeds) for s in args.probes for ps in args.problems]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    write_json(args.out, {"rows": rows})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
