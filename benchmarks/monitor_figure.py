"""The guide's figure of a monitored run: ‖H‖ and ‖H‖_{S_b} against the SGD threshold and ρ_b × the threshold.

Reads the CSV of ``lssr.SharpnessMonitor`` (default: the long loop of ``make bench-monitor``,
docs/figures/monitor_rows.csv) and draws, against the training step, each streaming row's ‖H‖ (``top_eig``) and
‖H‖_{S_b} (``ias_b``) with ± 1 standard error, the stability threshold of the optimiser (``threshold``: 2/η, or
(2 + 2β)/η with heavy-ball momentum β) and ρ_b times it (``rho_threshold``: 2ρ_b/η without momentum) with ± 1
standard error; each point sits at the last step of its window. Calibration rows (``kind == "diagnose"``), if
any, are drawn as crosses. Writes a PNG (``--out``, default docs/figures/monitor_stream.png).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def figure(rows: pd.DataFrame, title: str = ""):
    stream = rows[rows["kind"] == "stream"]
    calib = rows[rows["kind"] == "diagnose"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = stream["step"]
    for col, label, color in (("top_eig", "‖H‖", "C0"), ("ias_b", "‖H‖_{S_b}", "C1")):
        y, se = stream[col], stream[f"{col}_se"].fillna(0.0)
        ax.plot(x, y, "o-", color=color, ms=3, lw=1, label=label)
        ax.fill_between(x, y - se, y + se, color=color, alpha=0.2, lw=0)
        if len(calib):
            ax.plot(calib["step"], calib[col], "x", color=color, ms=7, label=f"{label} (lssr.diagnose)")
    ax.plot(x, stream["threshold"], "k--", lw=1, label="threshold (2 + 2β)/η")
    rt = stream["rho_threshold"]
    rt_se = (stream["rho_b_se"] * stream["threshold"]).fillna(0.0)
    ax.plot(x, rt, ":", color="C2", lw=1.5, label="ρ_b × threshold")
    ax.fill_between(x, rt - rt_se, rt + rt_se, color="C2", alpha=0.15, lw=0)
    ax.set_xlabel("training step (last step of each row's window)")
    ax.set_ylabel("curvature")
    ax.set_yscale("symlog", linthresh=1.0)
    vals = pd.concat([stream["top_eig"], stream["ias_b"], rt, stream["threshold"]]).dropna()
    if len(vals):  # the values set the range; a band wider than it is cut (early rows' spread is large)
        ax.set_ylim(min(-1.0, 1.5 * float(vals.min())), 3.0 * float(vals.max()))
    ax.legend(fontsize=8, ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=Path("docs/figures/monitor_rows.csv"))
    ap.add_argument("--out", type=Path, default=Path("docs/figures/monitor_stream.png"))
    ap.add_argument("--title", default="shufflenet_v2_x0_5, CIFAR-10, b = 128, η = 0.05, β = 0.9 (make bench-monitor)")
    args = ap.parse_args(argv)
    if not args.csv.exists():
        print(
            f"monitor_figure: no CSV at {args.csv}; fix: run benchmarks/bench_monitor.py (it writes it) or pass --csv"
        )
        return 1
    rows = pd.read_csv(args.csv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(rows, args.title).savefig(args.out, dpi=120)
    print(f"wrote {args.out} from {len(rows)} rows of {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
