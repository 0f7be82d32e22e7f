"""Seconds and bytes of one batched group's checkpoint after many steps (``checkpoint_every`` in a Figure-5 group).

A group of ``--members`` (105 as the replication's b = 8 group) tiny members (digits_cnn on 64 digits) gets
``--steps`` steps' worth of ``metrics.csv`` rows through the group's own row path (``replay_batch_losses`` with
made-up batch losses; no training), then writes its checkpoint ``--reps`` times, for each of ``--steps``;
printed (and with ``--out`` kept as JSON): the seconds of one save, the checkpoint's bytes, the rows the members
hold. Nothing is asserted; the seconds depend on the disk and the load.

    python benchmarks/bench_group_checkpoint.py --out results/bench/group_checkpoint.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lssr.config import config_from_dict
from lssr.data import SubsetSpec, build_subset, load_subset
from lssr.io import write_json
from lssr.training.batched import _Group


def member_cfg(lr: float, name: str):
    return config_from_dict(
        {
            "name": name,
            "seed": 5,
            "device": "cpu",
            "data": {"dataset": "digits", "n": 64, "seed": 1},
            "model": {"name": "digits_cnn"},
            "loss": "mse",
            "optim": {"lr": lr, "batch_size": 16},
            "stop": {"steps": 100_000},
            "eval_every": 100_000,
            "checkpoint_every": 10,
        }
    )


def measure(data, tmp: Path, members: int, steps: int, reps: int) -> dict:
    """One group of ``members`` with ``steps`` steps' rows: the seconds of ``reps`` checkpoint saves, the bytes."""
    cfgs = [member_cfg(0.01 * (1 + i / members), f"m{i}") for i in range(members)]
    group = _Group(cfgs, data, [tmp / f"m{i}" for i in range(members)])
    group.resume()  # a fresh start (no checkpoint): the members' row logs begin empty
    losses = 0.1 + 0.01 * torch.rand(steps, members, dtype=torch.float64)
    group.replay_batch_losses(0, losses)
    group.step = steps
    seconds = []
    for _ in range(reps):
        t0 = time.perf_counter()
        group.checkpoint()
        seconds.append(time.perf_counter() - t0)
    return {
        "members": members,
        "steps": steps,
        "rows": members * steps,
        "save_s": seconds,
        "median_save_s": statistics.median(seconds),
        "checkpoint_bytes": group.ckpt_path.stat().st_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=105)
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 5000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the record here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    records = []
    with tempfile.TemporaryDirectory(prefix="lssr-bench-ckpt-") as tmp:
        tmp = Path(tmp)
        build_subset(SubsetSpec("digits", 64, seed=1), tmp / "data")
        data = load_subset(tmp / "data")
        for steps in args.steps:
            r = measure(data, tmp / f"steps{steps}", args.members, steps, args.reps)
            records.append(r)
            print(
                f"members {r['members']}, steps {steps} ({r['rows']} rows): one checkpoint save "
                f"{r['median_save_s']:.3f} s (median of {args.reps}: {', '.join(f'{s:.3f}' for s in r['save_s'])}), "
                f"{r['checkpoint_bytes']} bytes"
            )
    if args.out is not None:
        write_json(args.out, {"load_average_1min": os.getloadavg()[0], "groups": records})


if __name__ == "__main__":
    main()
