"""The wall-time overhead of ``lssr.SharpnessMonitor`` at its defaults (``make bench-monitor``, ~13 minutes).

A 200-step SGD loop (momentum 0.9, weight decay 5e-4, batch 128) of torchvision's ``shufflenet_v2_x0_5``
(batch norm in train mode, 10 classes) on real CIFAR-10 images (/work/shared/data/cifar10-jpeg/train, a seeded
subset, random crop and flip, decoded by an ``ImageFolder`` in the loop), run without and with the monitor side
by side: in one process the two loops take one step each in turn, each with its own global random state, so
that the load of the shared machine falls on both alike (the monitor's clock leaves out the other loop's
steps). Three such pairs, then one pair of 2000-step loops (``--long-steps``). The monitor is built inside its
loop's timing with its defaults and called after ``backward()``, so that it runs its streaming mode: a row every
80 steps from the training's own mini-batch gradients and two Hessian-vector products on a fresh batch of b
training samples (batch norm in train mode: the loss of batches of b), within its 10% budget. ``--mode
diagnose`` measures the ``lssr.diagnose`` rows instead (``stream=False``: a probe set of n = 256 drawn without
the augmentation, a one-time calibration of two gradients on it once the budget allows, then a measurement
whenever the spent seconds plus the next one's predicted cost fit within 10% of the loop's seconds so far; a
short loop may measure nothing, and the record says at which step the next one would fit). The overhead is the
ratio of the two loops' walls minus 1 (per pair, then the median). Also checks that the two loss curves are
identical. Writes ``results/bench/monitor.json`` (every wall, the rows and their cost, the first row's step and
the rows' count, the load average, the versions); skips with a message when the CIFAR-10 folder is absent.
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
from lssr.diagnostics.monitor import N_PROBE
from lssr.diagnostics.schedule import BUDGET, CALIBRATION_COST, FIRST_COST
from lssr.io import write_json

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def loader(root: Path, n: int, batch: int, seed: int) -> DataLoader:
    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=aug)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return DataLoader(Subset(ds, idx), batch_size=batch, shuffle=True, drop_last=True)


ROW_KEYS = (
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


#: The record's columns of a streaming row.
STREAM_KEYS = ("step", "kind", "window_start", "top_eig", "threshold", "tr_S_b", "tr_HS_b", "ias_b", "rho_b")
STREAM_KEYS += ("rho_threshold", "cost_seconds")


class Loop:
    """One SGD loop from args.seed (the monitor, if any, built inside its timing), advanced one step at a time
    with its own global random state (swapped in around each step, so that two loops taking turns draw what
    each would draw alone) and its own wall-time account."""

    def __init__(self, args, data: DataLoader, monitored: bool, clock=time.perf_counter):
        torch.manual_seed(args.seed)
        self.model = getattr(torchvision.models, args.model)(num_classes=10)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
        self.model.train()
        self.data, self.batches = data, None
        self.losses, self.rows, self.calibrated, self.step_index = [], [], [], 0
        self.rng = torch.get_rng_state()
        self.mon, self.build_s = None, 0.0
        t0 = time.perf_counter()
        if monitored:
            clean = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
            mode = {"auto": None, "stream": True, "diagnose": False}[args.mode]
            options = {} if args.window is None else dict(window=args.window)
            options |= {} if args.stream_n is None else dict(stream_n=args.stream_n)
            options |= {} if args.eigen_hvps is None else dict(eigen=lssr.Eigen(max_hvps=args.eigen_hvps))
            self.mon = lssr.SharpnessMonitor(
                self.model, "ce", data, self.opt, transform=clean, callback=self.rows.append, clock=clock,
                stream=mode, **options,
            )  # fmt: skip
            self.build_s = time.perf_counter() - t0
        self.wall = self.build_s

    def step(self) -> float:
        """One training step (the monitor's call included); returns its wall seconds."""
        torch.set_rng_state(self.rng)
        t0 = time.perf_counter()
        if self.batches is None:
            self.batches = iter(self.data)
        batch = next(self.batches, None)
        if batch is None:  # a new epoch
            self.batches = iter(self.data)
            batch = next(self.batches)
        x, y = batch
        self.opt.zero_grad()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        if self.mon is not None:
            calibrating = self.mon.grad_seconds is None
            self.mon.step()
            if calibrating and self.mon.grad_seconds is not None:
                self.calibrated.append(self.step_index)
        self.opt.step()
        self.losses.append(loss.detach())
        self.step_index += 1
        dt = time.perf_counter() - t0
        self.rng = torch.get_rng_state()
        self.wall += dt
        return dt

    def record(self) -> dict:
        out = {"wall_s": self.wall, "last_loss": float(self.losses[-1]) if self.losses else None}
        mon = self.mon
        if mon is not None:
            nxt = mon.steps_to_next()
            out.update(
                build_s=self.build_s,
                measurements=mon.measurements,
                stream=mon.stream,
                stream_rows=mon.streamer.rows,
                rows_count=len(self.rows),
                first_row_step=self.rows[0]["step"] if self.rows else None,
                measured_steps=[r["step"] for r in self.rows],
                measure_s=mon.spent_seconds,
                train_s_seen_by_monitor=mon.train_seconds,
                calibration_step=self.calibrated[0] if self.calibrated else None,
                calibration_grad_s=mon.grad_seconds,
                predicted_next_measurement_s=mon.predicted_seconds(),
                next_measurement_fits_at_step=self.step_index + nxt if nxt is not None else None,
                rows=[{k: r[k] for k in (STREAM_KEYS if "kind" in r else ROW_KEYS)} for r in self.rows],
            )
        return out


def pair(args, data: DataLoader, steps: int) -> dict:
    """The loop without and with the monitor side by side: one step of each in turn (which goes first
    alternating), so that the load of the shared machine falls on both alike. The monitor's clock leaves out
    the plain loop's steps: it sees its own loop's time, as in a run of its own."""
    plain_s = [0.0]
    plain = Loop(args, data, False)
    mon = Loop(args, data, True, clock=lambda: time.perf_counter() - plain_s[0])
    for t in range(steps):
        for loop in (plain, mon) if t % 2 == 0 else (mon, plain):
            dt = loop.step()
            if loop is plain:
                plain_s[0] += dt
    same = torch.equal(torch.stack(plain.losses), torch.stack(mon.losses))
    p, m = plain.record(), mon.record()
    return {"plain": p, "monitor": m, "overhead": m["wall_s"] / p["wall_s"] - 1.0, "losses_identical": same}


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
    ap.add_argument(
        "--mode",
        choices=("auto", "stream", "diagnose"),
        default="auto",
        help="the monitor's mode: its default (auto: streaming, called after backward), or forced",
    )
    ap.add_argument("--window", type=int, default=None, help="the streaming mode's window (default: the monitor's)")
    ap.add_argument("--stream-n", type=int, default=None, help="the streaming rows' probe samples (default: monitor's)")
    ap.add_argument(
        "--eigen-hvps", type=int, default=None, help="eigen=lssr.Eigen(max_hvps=...) (default: the monitor's tracker)"
    )
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
        pairs.append(pair(args, data, args.steps))
        mon = pairs[-1]["monitor"]
        print(
            f"rep {rep}: plain {pairs[-1]['plain']['wall_s']:.1f} s, monitor {mon['wall_s']:.1f} s "
            f"({mon['rows_count']} rows at {mon['measured_steps']}, calibration at step "
            f"{mon['calibration_step']}), overhead {pairs[-1]['overhead']:.3f}, "
            f"losses identical: {pairs[-1]['losses_identical']}",
            flush=True,
        )
    overheads = [p["overhead"] for p in pairs]
    plain_step = statistics.median(p["plain"]["wall_s"] for p in pairs) / args.steps
    result = {
        "what": "wall-time overhead of lssr.SharpnessMonitor at its default schedule in a training loop",
        "method": "the loops without and with the monitor take one step each in turn in one process",
        "overhead_median": statistics.median(overheads),
        "overhead_per_rep": overheads,
        "goal_overhead": 0.05,
        "goal_rows": 20,
        "goal_first_row_before_step": 100,
        "losses_identical_all_reps": all(p["losses_identical"] for p in pairs),
        "plain_step_s_median": plain_step,
        "monitor_defaults": {
            "n": N_PROBE,
            "budget": BUDGET,
            "first_cost_gradient_equivalents": FIRST_COST,
            "calibration_cost_steps_per_n_over_b": CALIBRATION_COST,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "loadavg_before": list(load_before),
        "loadavg_after_reps": list(os.getloadavg()),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "reps": pairs,
    }
    if args.long_steps:
        result["long"] = {"steps": args.long_steps, **pair(args, data, args.long_steps)}
        result["loadavg_after"] = list(os.getloadavg())
        lg = result["long"]
        print(
            f"{args.long_steps} steps: plain {lg['plain']['wall_s']:.1f} s, monitor {lg['monitor']['wall_s']:.1f} s "
            f"({lg['monitor']['rows_count']} rows at {lg['monitor']['measured_steps']}), overhead "
            f"{lg['overhead']:.3f}, losses identical: {lg['losses_identical']}",
            flush=True,
        )
    # one measurement's cost, from every loop that measured (the 200-step loops may measure nothing)
    # (in plain steps of the same pair: the load moves both alike)
    loops = [(p, args.steps) for p in pairs] + ([(result["long"], args.long_steps)] if "long" in result else [])
    per_meas = [r["cost_seconds"] for p, _ in loops for r in p["monitor"]["rows"]]
    in_steps = [r["cost_seconds"] / (p["plain"]["wall_s"] / n) for p, n in loops for r in p["monitor"]["rows"]]
    result["measurement_s_median"] = statistics.median(per_meas) if per_meas else None
    result["measurement_in_plain_steps"] = statistics.median(in_steps) if in_steps else None
    write_json(args.out, result)
    print(
        f"overhead (median of {args.reps} side-by-side pairs): {result['overhead_median']:.3f}; "
        f"one measurement = {result['measurement_in_plain_steps']} plain steps; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
