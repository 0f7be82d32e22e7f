"""The table of estimated peak memory per Figure-5 cell (lssr.memory, no training; benchmarks/README.md).

For every (data set, b) group of the workflow config's Figure 5 (default config/paper.yaml): members
per job (η x seeds), the estimated peak of the whole group in one pass and of one member, each without
and with activation checkpointing, and the most members per pass that fit one 80 GiB GPU (the budget is
lssr.memory's: USABLE_FRACTION of 80 GiB less CUDA_RESERVE). Prints a markdown table.

    python benchmarks/memory_table.py [--config config/paper.yaml] [--gpu-gib 80]
"""

from __future__ import annotations

import argparse

import torch
import yaml

from lssr import memory
from lssr.config import config_from_dict
from lssr.workflow import plan

# image side, channels, classes, test-set size of each source (the subsets keep the full test split)
SHAPES = {"cifar10": (32, 3, 10, 10000), "cifar100": (32, 3, 100, 10000), "stl10": (96, 3, 10, 8000),
          "tinyimagenet": (64, 3, 200, 10000), "digits": (8, 1, 10, 797)}  # fmt: skip


def rows(wf: dict, gpu_gib: float) -> list[dict]:
    p = plan(wf)
    budget = memory.USABLE_FRACTION * (gpu_gib * memory.GIB - memory.CUDA_RESERVE)
    out = []
    for group, members in p.groups.items():
        cfg = config_from_dict(p.runs[members[0]])
        px, ch, classes, n_test = SHAPES[cfg.data.dataset]
        px = cfg.data.resize or px

        def est(k: int, ck: bool) -> memory.Estimate:
            return memory.estimate(cfg, (ch, px, px), classes, n_test, k, torch.float32, checkpointing=ck)

        fit = {ck: max([k for k in range(1, len(members) + 1) if est(k, ck).peak <= budget], default=0)
               for ck in (False, True)}  # fmt: skip
        out.append({
            "cell": group, "px": px, "b": cfg.batch_size, "members": len(members),
            "group_plain": est(len(members), False).peak / memory.GIB,
            "group_ckpt": est(len(members), True).peak / memory.GIB,
            "one_plain": est(1, False).peak / memory.GIB, "one_ckpt": est(1, True).peak / memory.GIB,
            "k_plain": fit[False], "k_ckpt": fit[True],
        })  # fmt: skip
    return out


def table(wf: dict, gpu_gib: float) -> str:
    """The markdown table of :func:`rows`."""
    lines = [
        "| cell (data set, b) | px | members | group, plain | group, ckpt | 1 member, plain | 1 member, ckpt "
        "| members per pass that fit: plain / ckpt | fits one GPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(wf, gpu_gib):
        fits = (
            "yes"
            if r["k_plain"] >= r["members"]
            else (
                f"yes, {r['k_plain']} per pass"
                if r["k_plain"]
                else (f"with checkpointing, {r['k_ckpt']} per pass" if r["k_ckpt"] else "**no**")
            )
        )
        lines.append(
            f"| {r['cell']} | {r['px']} | {r['members']} | {r['group_plain']:.1f} | {r['group_ckpt']:.1f} "
            f"| {r['one_plain']:.2f} | {r['one_ckpt']:.2f} | {r['k_plain']} / {r['k_ckpt']} | {fits} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/paper.yaml")
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    a = ap.parse_args()
    with open(a.config) as f:
        wf = yaml.safe_load(f)
    print(table(wf, a.gpu_gib))


if __name__ == "__main__":
    main()
