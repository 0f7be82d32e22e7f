"""The streaming monitor's rows against ``lssr.diagnose`` on the whole training set at the same θ (~5 minutes).

An SGD run (momentum 0.9, b = 128, batches drawn with replacement, as the streaming estimators assume) of the
project's ``digits_cnn`` (no batch norm, 3 input channels) on N = 1024 real CIFAR-10 training images at 16 px
(/work/shared/data/cifar10-jpeg/train, a seeded subset, no augmentation) with ``lssr.SharpnessMonitor`` in its
streaming mode (rows every ``--window`` steps whatever they cost, its defaults otherwise). After ``--warmup``
rows (the fast start of training from θ_0, where the gradients change several-fold within a window), in the
middle of each window (the step window_start + window/2, θ before that step's update) ``lssr.diagnose``
measures the reference on all N samples (exact tr S_1 and tr S_n, tr(H S_1) by its sketch with a standard
error, ‖H‖ by LOBPCG, batch size b with replacement). For each quantity and row: z = (streaming −
reference)/√(se_stream² + se_ref²); the record holds every pair, how many rows are within 3 of those standard
errors and the coverage at 1 and 2 (a calibrated standard error covers about 68% and 95%; the jackknife over 8
groups about 65% and 91%). The reference is at one θ and some streaming quantities average their window, so
the drift of θ over a window adds to the differences. ‖H‖'s relative difference is recorded too.
Writes ``results/bench/monitor_accuracy.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from torchvision import transforms as T

import lssr
from lssr.io import write_json
from lssr.models import build_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
KEYS = ("tr_S_b", "tr_S_n", "tr_S_n_window", "tr_S_1", "b_simple", "rho_b", "tr_HS_b", "ias_b")


def images(root: Path, n: int, px: int, seed: int) -> TensorDataset:
    tf = T.Compose([T.Resize(px), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = torchvision.datasets.ImageFolder(str(root / "train"), transform=tf)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    xs, ys = zip(*(ds[i] for i in idx))
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def reference(model, ds: TensorDataset, b: int, seed: int) -> dict:
    d = lssr.diagnose(model, "ce", ds.tensors, batch_sizes=[b], replacement=True, seed=seed)
    a = d.at(b)
    return dict(
        tr_S_b=(a.tr_S_b, a.tr_S_b_se),
        tr_S_n=(d.tr_S_n, 0.0),
        tr_S_n_window=(d.tr_S_n, 0.0),
        tr_S_1=(d.tr_S_1, 0.0),
        b_simple=(d.b_simple, 0.0),
        rho_b=(a.rho_b, a.rho_b_se),
        tr_HS_b=(a.tr_HS_b, a.tr_HS_b_se),
        ias_b=(a.ias_b, a.ias_b_se),
        top_eig=(d.top_eig, 0.0),
        seconds=d.cost.seconds,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/cifar10-jpeg"))
    ap.add_argument("--n", type=int, default=1024, help="training images (all of them are the reference's)")
    ap.add_argument("--px", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--window", type=int, default=40)
    ap.add_argument("--rows", type=int, default=8, help="rows compared with the reference")
    ap.add_argument("--warmup", type=int, default=6, help="rows before the compared ones (training from θ_0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/bench/monitor_accuracy.json"))
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        print(f"bench-stream-accuracy: skipped: no CIFAR-10 image folder at {args.data}/train")
        return 0
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    ds = images(args.data, args.n, args.px, args.seed)
    torch.manual_seed(args.seed)
    model = build_model("digits_cnn", 3, 10)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    total = args.window * (args.warmup + args.rows)
    sampler = RandomSampler(ds, replacement=True, num_samples=total * args.batch)
    loader = DataLoader(ds, batch_size=args.batch, sampler=sampler)
    rows: list[dict] = []
    mon = lssr.SharpnessMonitor(
        model, "ce", loader, opt, window=args.window, callback=rows.append, stream=True, budget=math.inf
    )
    refs: dict[int, dict] = {}
    for t, (x, y) in enumerate(loader):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if t >= args.window * args.warmup and t % args.window == args.window // 2:
            refs[t - args.window // 2] = reference(model, ds, args.batch, args.seed + t) | {"step": t}
        mon.step()
        opt.step()
    pairs = []
    for r in rows:
        ref = refs.get(r["window_start"])
        if ref is None:
            continue
        one = {"row_step": r["step"], "ref_step": ref["step"], "window_start": r["window_start"]}
        for k in KEYS:
            v, se = r[k], r[f"{k}_se"]
            rv, rse = ref[k]
            s = math.sqrt(se**2 + rse**2)
            one[k] = {"stream": v, "stream_se": se, "ref": rv, "ref_se": rse, "z": (v - rv) / s if s > 0 else math.nan}
        one["top_eig"] = {
            "stream": r["top_eig"],
            "ref": ref["top_eig"][0],
            "rel_diff": r["top_eig"] / ref["top_eig"][0] - 1,
            "residual": r["top_eig_residual"],
        }
        one["ref_seconds"] = ref["seconds"]
        pairs.append(one)
    summary = {}
    for k in KEYS:
        z = [p[k]["z"] for p in pairs if math.isfinite(p[k]["z"])]
        summary[k] = {
            "rows": len(z),
            "within_3_se": sum(abs(v) <= 3 for v in z),
            "coverage_1_se": sum(abs(v) <= 1 for v in z) / len(z) if z else math.nan,
            "coverage_2_se": sum(abs(v) <= 2 for v in z) / len(z) if z else math.nan,
            "z": z,
        }
    rel = [p["top_eig"]["rel_diff"] for p in pairs]
    summary["top_eig"] = {"rows": len(rel), "rel_diff": rel, "max_abs_rel_diff": max(map(abs, rel), default=math.nan)}
    result = {
        "what": "streaming SharpnessMonitor rows against lssr.diagnose on all N training samples at the windows' "
        "middles",
        "summary": summary,
        "pairs": pairs,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": "digits_cnn (no batch norm)",
        "m": sum(p.numel() for p in model.parameters()),
        "wall_s": time.perf_counter() - t_start,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    write_json(args.out, result)
    for k, s in summary.items():
        if k == "top_eig":
            print(f"top_eig: relative differences {[f'{v:+.3f}' for v in s['rel_diff']]}")
        else:
            print(
                f"{k}: {s['within_3_se']}/{s['rows']} within 3 se, coverage {s['coverage_1_se']:.2f} (1 se), "
                f"{s['coverage_2_se']:.2f} (2 se)"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
