"""What Figure 5's goal checks cost in a batched group, against its training: seconds per member and epoch.

For each b, one group of the workflow config's Figure-5 runs (its data, model, chunk size, seeds: ``--lrs`` η x
``--seeds`` seeds, every member with its own batches as in the replication) is trained E (``--epochs``) epochs three
ways, alternating, ``--repeats`` times:

- ``train``: no goal, evaluations only at step 0 and the cap (the training alone, and two full evaluations);
- ``checks``: K = ``--checks`` goal checks, every E / (K + 1) epochs (``goal_every``), the training set only (as the
  planner sets Figure 5's runs up);
- ``checks_with_test``: K full evaluations (training and test sets, ``eval_every``) instead, what a goal check that
  also evaluates the test set costs.

The goal (1.0) is not reached in so few epochs at the η used (a member that stops early is reported), so every
variant trains the same steps of the same members. A check costs (t_variant − t_train) / K seconds (the fastest
of the repeats of each), reported per member and in epochs of the group's training.
Besides, one evaluation of the stacked members on the training set and on the test set is timed directly
(``evaluate_members``), ``--repeats`` times. The load average is recorded before and after each timing (the
machine may be busy: only ratios measured in the same run are comparable).

    python benchmarks/bench_fig5_checks.py [--config config/cifar10-replication.yaml] [--data DIR]
        [--bs 8 64 512] [--lrs 0.00195312 0.0078125 0.03125] [--seeds 0 1 2] [--epochs 10 40 60]
        [--checks 4] [--repeats 2]
        [--out results/bench/fig5_checks.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml

from lssr.config import config_from_dict
from lssr.data import load_subset
from lssr.losses import per_sample_loss
from lssr.training import train_batched
from lssr.training.core import evaluate_members, init_model
from lssr.training.sampler import steps_per_epoch
from lssr.training.stack import Stack
from lssr.workflow import plan


def group_configs(wf: dict, b: int, lrs: list[float], seeds: list[int], epochs: int, every: int, variant: str) -> list:
    """The Figure-5 group of b from the workflow plan, restricted to ``lrs`` x ``seeds``, for ``epochs`` epochs,
    with the evaluation cadence of ``variant`` (checks every ``every`` epochs)."""
    p = plan(wf)
    group = [p.runs[r] for r in p.groups[next(g for g in p.groups if g.endswith(f"_b{b}"))]]
    out = []
    for lr in lrs:
        for seed in seeds:
            raw = next(r for r in group if abs(r["optim"]["lr"] - lr) <= 1e-9 * lr)  # seeds beyond the config's too
            raw = {**raw, "seed": seed, "stop": {"epochs": epochs, "train_acc_goal": 1.0}, "eval_every": 10**9}
            raw.pop("goal_every", None)
            raw.pop("checkpoint_every", None)
            spe = steps_per_epoch(raw["data"]["n"], b)
            if variant == "train":
                raw["stop"]["train_acc_goal"] = None
            elif variant == "checks":
                raw["goal_every"] = every * spe
            else:
                raw["eval_every"] = every * spe
            out.append(config_from_dict(raw))
    return out


VARIANTS = ("train", "checks", "checks_with_test")
KEY = {"checks": "check", "checks_with_test": "check_with_test"}  # the record's names of a check's cost


def load() -> float:
    return os.getloadavg()[0]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config/cifar10-replication.yaml")
    ap.add_argument("--data", default="results/data/imagefolder-1k-seed0-r8", help="the config's Figure-5 subset")
    ap.add_argument("--bs", type=int, nargs="+", default=[8, 64, 512])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.00195312, 0.0078125, 0.03125])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--epochs", type=int, nargs="+", default=[10, 40, 60], help="epochs per b (one for all, or one each)"
    )
    ap.add_argument("--checks", type=int, default=4, help="goal checks between step 0 and the cap")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="train alone: the rate only"
    )
    ap.add_argument("--out", default="results/bench/fig5_checks.json")
    args = ap.parse_args(argv)
    epochs = args.epochs * len(args.bs) if len(args.epochs) == 1 else args.epochs
    if len(epochs) != len(args.bs) or any(e % (args.checks + 1) for e in epochs):
        raise SystemExit("--epochs: one value, or one per --bs, each a multiple of --checks + 1")
    wf = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    data = load_subset(args.data)
    n, n_test = len(data.y_train), len(data.y_test)
    variants = tuple(args.variants)
    rows = []
    for b, E in zip(args.bs, epochs):
        every = E // (args.checks + 1)
        times: dict[str, list[float]] = {v: [] for v in variants}
        loads, early = [], []
        for _ in range(args.repeats):
            for v in variants:
                cfgs = group_configs(wf, b, args.lrs, args.seeds, E, every, v)
                l0, t0 = load(), time.perf_counter()
                res = train_batched(cfgs, data, None, progress=False)
                times[v].append(time.perf_counter() - t0)
                loads.append((l0, load()))
                early += [(v, c.optim.lr, c.seed, r.steps) for c, r in zip(cfgs, res) if r.status != "completed"]
                T = max(r.steps for r in res)
        # one evaluation of the stacked members, timed directly
        cfgs = group_configs(wf, b, args.lrs, args.seeds, E, every, "train")
        models = [init_model(c, data) for c in cfgs]
        template = models[0]
        stack = Stack(template, models)
        forward = lambda x: stack.forward(x, x_batched=False)  # noqa: E731
        ev = {"train": [], "test": []}
        for _ in range(args.repeats):
            for split in ev:
                t0 = time.perf_counter()
                evaluate_members(template, forward, len(models), data, per_sample_loss(cfgs[0].loss),
                                 cfgs[0].chunk_size, train=split == "train", test=split == "test")  # fmt: skip
                ev[split].append(time.perf_counter() - t0)
        M, K = len(cfgs), args.checks
        best = {v: min(t) for v, t in times.items()}
        train_s = best["train"] - 2 * min(ev["train"]) - 2 * min(ev["test"])  # less its two full evaluations
        epoch_s = train_s / E  # one epoch of the group
        row = {
            "b": b, "members": M, "epochs": E, "checks": K, "check_every_epochs": every, "steps": T,
            "n": n, "n_test": n_test,
            "seconds": times, "load_avg_before_after": loads, "stopped_early": early,
            "eval_seconds": ev,
            "s_per_member_epoch": epoch_s / M,
            **{f"{KEY[v]}_s_per_member": (best[v] - best["train"]) / K / M for v in best if v != "train"},
            **{f"{KEY[v]}_epochs": (best[v] - best["train"]) / K / epoch_s for v in best if v != "train"},
            "direct_train_eval_epochs": min(ev["train"]) / epoch_s,
            "direct_test_eval_epochs": min(ev["test"]) / epoch_s,
        }  # fmt: skip
        rows.append(row)
        runs = ", ".join(f"{KEY[v].replace('_', ' ')} {row[f'{KEY[v]}_epochs']:.3g}" for v in best if v != "train")
        print(
            f"b={b}: {M} members, {epoch_s / M:.4g} s per member-epoch; in epochs, a check by whole runs: "
            f"{runs or '-'}; one evaluation of the training set {row['direct_train_eval_epochs']:.3g}, of the test "
            f"set {row['direct_test_eval_epochs']:.3g}; load {loads[0][0]:.2f}-{loads[-1][1]:.2f}",
            flush=True,
        )
    out = {"config": args.config, "data": args.data, "threads": torch.get_num_threads(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
