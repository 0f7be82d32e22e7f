"""The wall-time overhead of ``lssr.SharpnessMonitor`` at its default schedule (``make bench-monitor``, ~13 minutes).

A 200-step SGD loop (momentum 0.9, weight decay 5e-4, batch 128) of torchvision's ``shufflenet_v2_x0_5``
(batch norm, 10 classes) on real CIFAR-10 images (/work/shared/data/cifar10-jpeg/train, a seeded subset,
random crop and flip, decoded by an ``ImageFolder`` in the loop), timed with and without the monitor in
interleaved repetitions from the same seed, then one pair of 2000-step loops (``--long-steps``), long
enough for the budget to allow a second measurement. The monitor is built inside the timed region (drawing its
probe set without the augmentation) with its defaults (n = 256, a 10% budget, the first call measuring θ_0).
The overhead is the ratio of the two walls minus 1 (per pair, then the median). Also checks that the two
loss curves are identical. Writes ``results/bench/monitor.json`` (every wall, the monitor's measurements and
their cost, the load average, the versions); skips with a message when the CIFAR-10 folder is absent.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T

import lssr
from lssr.diagnostics.monitor import BUDGET, N_PROBE
from lssr.io import write_json

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def loader(root: Path, n: int, batch: int, seed: int) -> DataLoader:
    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=aug)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return DataLoader(Subset(ds, idx), batch_size=batch, shuffle=True, drop_last=True)


def run(args, data: DataLoader, monitored: bool, steps: int) -> dict:
    """One timed loop of ``steps`` SGD steps from args.seed; the monitor (if any) built inside the timing."""
    torch.manual_seed(args.seed)
    model = getattr(torchvision.models, args.model)(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    losses, rows = [], []
    t0 = time.perf_counter()
    mon = None
    if monitored:
        clean = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
        mon = lssr.SharpnessMonitor(model, "ce", data, opt, transform=clean, callback=rows.append)
    t_built = time.perf_counter()
    step = 0
    while step < steps:
        for x, y in data:
            if step == steps:
                break
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if mon is not None:
                mon.step()
            opt.step()
            losses.append(loss.detach())
            step += 1
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "losses": torch.stack(losses)}
    if mon is not None:
        out.update(
            build_s=t_built - t0,
            measurements=mon.measurements,
            measured_steps=[r["step"] for r in rows],
            measure_s=mon.spent_seconds,
            train_s_seen_by_monitor=mon.train_seconds,
            rows=[
                {
                    k: r[k]
                    for k in (
                        "step",
                        "top_eig",
                        "top_eig_reg",
                        "threshold",
                        "ias_b_128",
                        "rho_b_128",
                        "b_simple",
                        "cost_hvps",
                        "cost_seconds",
                        "cost_gradient_equivalents",
                        "cost_hvp_mode",
                    )
                }
                for r in rows
            ],
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/cifar10-jpeg"))
    ap.add_argument("--model", default="shufflenet_v2_x0_5")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--train-n", type=int, default=10000, help="training images (a seeded subset of the 50,000)")
    ap.add_argument("--long-steps", type=int, default=2000, help="one more pair this long (0: none)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/bench/monitor.json"))
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        print(
            f"bench-monitor: skipped: no CIFAR-10 image folder at {args.data}/train (see /work/shared/data/README.md)"
        )
        return 0
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    data = loader(args.data, args.train_n, args.batch, args.seed)
    pairs = []
    for rep in range(args.reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        res = {m: run(args, data, m, args.steps) for m in order}
        plain, mon = res[False], res[True]
        same = torch.equal(plain.pop("losses"), mon.pop("losses"))
        pairs.append(
            {
                "order": ["monitor" if m else "plain" for m in order],
                "plain": plain,
                "monitor": mon,
                "ratio": mon["wall_s"] / plain["wall_s"],
                "losses_identical": same,
            }
        )
        print(
            f"rep {rep}: plain {plain['wall_s']:.1f} s, monitor {mon['wall_s']:.1f} s "
            f"({mon['measurements']} measurements at {mon['measured_steps']}), ratio {pairs[-1]['ratio']:.3f}, "
            f"losses identical: {same}",
            flush=True,
        )
    ratios = [p["ratio"] for p in pairs]
    plain_step = statistics.median(p["plain"]["wall_s"] for p in pairs) / args.steps
    per_meas = [r["cost_seconds"] for p in pairs for r in p["monitor"]["rows"]]
    result = {
        "what": "wall-time overhead of lssr.SharpnessMonitor at its default schedule in a training loop",
        "overhead_median": statistics.median(ratios) - 1.0,
        "overhead_per_rep": [r - 1.0 for r in ratios],
        "goal_overhead": 0.10,
        "losses_identical_all_reps": all(p["losses_identical"] for p in pairs),
        "plain_step_s_median": plain_step,
        "measurement_s_median": statistics.median(per_meas) if per_meas else None,
        "measurement_in_plain_steps": statistics.median(per_meas) / plain_step if per_meas else None,
        "monitor_defaults": {"n": N_PROBE, "budget": BUDGET},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "reps": pairs,
    }
    if args.long_steps:
        plain, mon = run(args, data, False, args.long_steps), run(args, data, True, args.long_steps)
        same = torch.equal(plain.pop("losses"), mon.pop("losses"))
        result["long"] = {
            "steps": args.long_steps,
            "overhead": mon["wall_s"] / plain["wall_s"] - 1.0,
            "losses_identical": same,
            "plain": plain,
            "monitor": mon,
        }
        result["loadavg_after"] = list(os.getloadavg())
        print(
            f"{args.long_steps} steps: plain {plain['wall_s']:.1f} s, monitor {mon['wall_s']:.1f} s "
            f"({mon['measurements']} measurements at {mon['measured_steps']}), overhead "
            f"{result['long']['overhead']:.3f}, losses identical: {same}",
            flush=True,
        )
    write_json(args.out, result)
    print(
        f"overhead (median of {args.reps} interleaved pairs): {result['overhead_median']:.3f}; "
        f"one measurement = {result['measurement_in_plain_steps']:.1f} plain steps; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
