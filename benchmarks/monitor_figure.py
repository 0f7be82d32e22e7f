"""The guide's figure of a monitored training run (docs/DIAGNOSTICS.md): ‖H‖ against 2/η and ‖H‖_{S_b} against
2ρ_b/η over the run, drawn from the CSV that ``lssr.SharpnessMonitor`` writes (~2 minutes on one core).

The run: plain SGD (no momentum, no weight decay, constant η = ``--lr``, batches of b = ``--b`` drawn with
replacement) of the project's ``digits_cnn`` (no batch norm, 3 input channels) on N = ``--n`` real CIFAR-10
training images at ``--px`` px (/work/shared/data/cifar10-jpeg/train or ``--root``, a seeded subset, no
augmentation), cross-entropy, ``--steps`` steps. The monitor measures its default rows (``lssr.diagnose`` on a
probe set of ``--probe-n`` samples, at θ_t before the update) every ``--every`` steps, whatever they cost (``every=``
without a budget), so that the curve has a point every ``--every`` steps. Writes the monitor's CSV to
``results/bench/monitor_run.csv``, the figure to ``docs/monitor/monitor_run.png`` and its record (the run's settings,
seeds, rows and wall time) to ``results/bench/monitor_run.json``.

    python benchmarks/monitor_figure.py [--steps 600] [--every 20] [--lr 0.1]

``--from-csv PATH`` draws the figure from an existing monitor CSV (any run's) without training.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plot(rows: pd.DataFrame, b: int, out: Path, title: str) -> Path:
    """Two panels over the steps of ``rows`` (a monitor CSV of default rows): ‖H‖ (``top_eig``) with the
    threshold (``threshold``: 2/η for plain SGD), and ‖H‖_{S_b} (``ias_b_<b>``) ± its se with 2ρ_b/η
    (``rho_b_<b>`` × ``threshold``)."""
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    ax[0].plot(rows["step"], rows["top_eig"], "o-", ms=3, label="‖H‖ (top eigenvalue)")
    ax[0].plot(rows["step"], rows["threshold"], "k--", label="2/η")
    ax[0].set_ylabel("‖H‖")
    ax[1].errorbar(rows["step"], rows[f"ias_b_{b}"], yerr=rows[f"ias_b_{b}_se"], fmt="o-", ms=3, capsize=2,
                   label=f"‖H‖_{{S_b}}, b = {b}")  # fmt: skip
    ax[1].plot(rows["step"], rows[f"rho_b_{b}"] * rows["threshold"], "k--", label="2ρ_b/η")
    ax[1].set_ylabel("‖H‖_{S_b}")
    for a in ax:
        a.set_xlabel("step")
        a.set_yscale("log")
        a.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def train(args) -> tuple[Path, dict]:
    """The monitored run; returns the monitor's CSV and the record."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_stream_accuracy import images

    import lssr
    from lssr.io import write_json
    from lssr.models import build_model

    ds = images(Path(args.root), args.n, args.px, args.data_seed)
    torch.manual_seed(args.seed)
    model = build_model("digits_cnn", in_channels=3, num_classes=10, batch_norm=False)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    sampler = RandomSampler(ds, replacement=True, num_samples=args.b * args.steps,
                            generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    loader = DataLoader(ds, batch_size=args.b, sampler=sampler)
    csv = ROOT / "results" / "bench" / "monitor_run.csv"
    t0 = time.perf_counter()
    with lssr.SharpnessMonitor(model, "ce", ds, opt, n=args.probe_n, every=args.every, batch_sizes=[args.b],
                               csv=csv, seed=args.seed, stream=False) as mon:  # fmt: skip
        for step, (x, y) in enumerate(loader):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            mon.step()
            opt.step()
            if step % 100 == 0:
                print(f"step {step}: loss {float(loss):.4f}", flush=True)
    record = dict(
        what="a monitored SGD run for the guide's figure (benchmarks/monitor_figure.py)",
        model="digits_cnn (no batch norm, 3 channels)", data=f"CIFAR-10 train, {args.n} images at {args.px} px",
        data_seed=args.data_seed, seed=args.seed, lr=args.lr, b=args.b, steps=args.steps, every=args.every,
        probe_n=args.probe_n, rows=int(len(pd.read_csv(csv))), seconds=round(time.perf_counter() - t0, 1),
        torch=torch.__version__, threads=torch.get_num_threads(),
    )  # fmt: skip
    write_json(ROOT / "results" / "bench" / "monitor_run.json", record)
    return csv, record


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--px", type=int, default=16)
    ap.add_argument("--b", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--probe-n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--from-csv", default=None, help="draw from this monitor CSV instead of training")
    ap.add_argument("--out", default=str(ROOT / "docs" / "monitor" / "monitor_run.png"))
    args = ap.parse_args(argv)
    if args.from_csv:
        csv, title = Path(args.from_csv), f"monitor rows of {args.from_csv}"
    else:
        if not (Path(args.root) / "train").is_dir():
            sys.exit(f"{args.root}/train: no CIFAR-10 image folder (give --root, or --from-csv a monitor CSV)")
        csv, r = train(args)
        title = (f"SGD, digits_cnn on {r['data']}, b = {r['b']}, η = {r['lr']:g}: monitor rows every {r['every']} "
                 f"steps on {r['probe_n']} probe samples")  # fmt: skip
    print(f"wrote {plot(pd.read_csv(csv), args.b, Path(args.out), title)}")


if __name__ == "__main__":
    main()
