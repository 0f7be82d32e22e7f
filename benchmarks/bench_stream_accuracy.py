"""The streaming monitor's rows against ``lssr.diagnose`` on the whole training set (~15 minutes with --no-eigen).

The kept workload of ``make bench-monitor``: an SGD run (momentum 0.9, weight decay 5e-4, b = 128, η = 0.05) of
torchvision's ``shufflenet_v2_x0_5`` (batch norm in train mode, 10 classes) on N = 1024 real CIFAR-10 training
images at 32 px (/work/shared/data/cifar10-jpeg/train, a seeded subset, no augmentation, so that the reference
sees the same samples), each step an independent uniform batch of b distinct samples (the batches of the loss
L_b(θ) = E_B ℓ(θ; B) that batch norm in train mode makes SGD descend), with ``lssr.SharpnessMonitor`` in its
streaming mode (a row every ``--window`` steps, the monitor's default, whatever it costs; its defaults
otherwise). After ``--warmup`` rows (the fast start of training from θ_0, where the gradients change several-fold
within a window), at ``--points`` evenly spaced steps of each of the next ``--rows`` windows, the last one the
row's own step (θ before that step's update), ``lssr.diagnose(..., bn="batch")`` measures L_b on all N samples
(K = 64 random batches, tr(H S_b) by 8 sketches over random partitions, ‖H‖ by LOBPCG to a relative tolerance of
1e-2 within 30 products, at the row's step only). A
model without batch norm (``--model digits_cnn --px 16``) draws batches with replacement and is referenced by
the per-sample ``lssr.diagnose`` (exact tr S_1 and tr S_n, γ = 1).

The reference is what each streaming quantity estimates: tr S_b and tr(H S_b), means over the window's steps,
against the mean of the points (its standard error from the points' spread, a stratified sample of the
window's steps, and the points' own); tr S_n and ‖H‖, at the row's θ, against the last point; the derived ρ_b =
tr S_n/tr S_b, tr S_1 = tr S_n + b(tr S_b − tr S_n), B_simple and ‖H‖_{S_b} = tr(H S_b)/tr S_b from those
references, their standard errors by the delta method; the window's U-statistic of tr S_n against the mean of
the points' tr S_n. For each quantity and row: z = (streaming − reference)/√(se_stream² + se_ref²); the record
holds every pair, how many rows are within 3 of those standard errors and the coverage at 1 and 2 (a
calibrated standard error covers about 68% and 95%; the jackknife over 8 groups about 65% and 91%). ‖H‖'s
relative difference is recorded too. Writes ``results/bench/monitor_accuracy.json``.
"""

from __future__ import annotations

import argparse
import gc
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
from lssr.diagnostics.guards import train_mode_bn
from lssr.diagnostics.stream import HVP_STEPS, WINDOW
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


def add_workload_args(ap: argparse.ArgumentParser) -> None:
    """The kept workload's options (data, size, batch, η, weight decay, seed, threads), shared with
    study_eig_tracking.py."""
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/cifar10-jpeg"))
    ap.add_argument("--n", type=int, default=1024, help="training images (all of them are the reference's)")
    ap.add_argument("--px", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)


def load_workload(args: argparse.Namespace, name: str) -> TensorDataset | None:
    """The workload's images (one thread, as ``--threads`` says), or None, saying so, without the image folder."""
    if not (args.data / "train").is_dir():
        print(f"{name}: skipped: no CIFAR-10 image folder at {args.data}/train")
        return None
    torch.set_num_threads(args.threads)
    return images(args.data, args.n, args.px, args.seed)


def kept_run(args: argparse.Namespace, ds: TensorDataset, steps: int):
    """The kept workload's run: (model, optimiser, loader) of ``steps`` steps — shufflenet_v2_x0_5 in train mode
    seeded with ``--seed``, SGD (``--lr``, momentum 0.9, ``--weight-decay``), each step an independent uniform batch
    of ``--batch`` distinct samples (generator seeded with ``--seed`` + 1). The same seeds give the same run."""
    torch.manual_seed(args.seed)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    g = torch.Generator().manual_seed(args.seed + 1)
    batches = [torch.randperm(len(ds), generator=g)[: args.batch].tolist() for _ in range(steps)]
    return model, opt, DataLoader(ds, batch_sampler=batches)


def cpu() -> dict:
    """The CPU's model name and whether it has AVX-512 (from /proc/cpuinfo where there is one). A seeded run is
    repeated exactly only on the same kernels: on a CPU with other vector units the float rounding differs, and a
    training trajectory of hundreds of steps drifts apart."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "avx512": None}
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return {"model": model or platform.machine(), "avx512": " avx512f" in info}


def record_context(args: argparse.Namespace, t_start: float, load_before) -> dict:
    """What every record of the workload holds besides its results: the settings, the wall time since ``t_start``
    (``time.perf_counter``), the load averages before and now, the CPU (:func:`cpu`), its count and the versions."""
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": time.perf_counter() - t_start,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "cpu": cpu(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def point(model, ds: TensorDataset, b: int, seed: int, eigen: bool = True, init=None) -> dict:
    """``lssr.diagnose`` on all of ``ds`` at the current θ: the values and standard errors the references use.
    With batch norm in train mode, ``bn="batch"``: the loss L_b of batches of b distinct samples, each normalised
    with its own statistics (the loss the loop descends); else the per-sample diagnostics with replacement."""
    if train_mode_bn(model):
        d = lssr.diagnose(
            model, "ce", ds.tensors, batch_sizes=[b], bn="batch", seed=seed, estimator=lssr.Estimator(probes=8),
            eigen=lssr.Eigen(tol=1e-2, max_hvps=30, init=init) if eigen else False,
        )  # fmt: skip
        e = d.batch.estimates
        tn, tn_se = e["tr_S_n"], e["tr_S_n_se"]
    else:
        d = lssr.diagnose(model, "ce", ds.tensors, batch_sizes=[b], replacement=True, seed=seed, eigen=eigen)
        tn, tn_se = d.tr_S_n, 0.0
    a = d.at(b)
    return dict(
        tr_S_b=a.tr_S_b,
        tr_S_b_se=a.tr_S_b_se if math.isfinite(a.tr_S_b_se) else 0.0,
        tr_S_n=tn,
        tr_S_n_se=tn_se,
        tr_HS_b=a.tr_HS_b,
        tr_HS_b_se=a.tr_HS_b_se,
        top_eig=d.top_eig if eigen else math.nan,
        seconds=d.cost.seconds,
        eigenvector=d.eigenvector,
    )


def _mean_se(values: list[float], ses: list[float], steps: int) -> tuple[float, float]:
    """The mean of J points of a window of ``steps`` steps and its standard error: the points' spread as a sample
    of the window's steps (finite-population corrected) and their own standard errors."""
    J = len(values)
    m = sum(values) / J
    var = sum((v - m) ** 2 for v in values) / (J - 1) / J * (1 - J / steps) if J > 1 else 0.0
    return m, math.sqrt(var + sum(s**2 for s in ses) / J**2)


def _ratio(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    r = a[0] / b[0]
    return r, abs(r) * math.hypot(a[1] / a[0] if a[0] else 0.0, b[1] / b[0] if b[0] else 0.0)


def reference(points: list[dict], b: int, steps: int) -> dict:
    """The references of one row (value, se) from the points of its window, the last at the row's θ."""
    tb = _mean_se([p["tr_S_b"] for p in points], [p["tr_S_b_se"] for p in points], steps)
    ths_w = _mean_se([p["tr_HS_b"] for p in points], [p["tr_HS_b_se"] for p in points], steps)
    ths = (points[-1]["tr_HS_b"], points[-1]["tr_HS_b_se"])
    tnw = _mean_se([p["tr_S_n"] for p in points], [p["tr_S_n_se"] for p in points], steps)
    tn = (points[-1]["tr_S_n"], points[-1]["tr_S_n_se"])
    s1 = tn[0] + b * (tb[0] - tn[0])
    return dict(
        tr_S_b=tb,
        tr_S_n=tn,
        tr_S_n_window=tnw,
        tr_S_1=(s1, math.hypot((b - 1) * tn[1], b * tb[1])),
        b_simple=(b * (tb[0] - tn[0]) / tn[0], b * abs(tb[0] / tn[0]) * math.hypot(tb[1] / tb[0], tn[1] / tn[0])),
        rho_b=_ratio(tn, tb),
        tr_HS_b=ths,
        ias_b=_ratio(ths, tb),
        window=dict(tr_HS_b=ths_w, ias_b=_ratio(ths_w, tb)),
        top_eig=(points[-1]["top_eig"], 0.0),
        seconds=sum(p["seconds"] for p in points),
    )


def compare(rows: list[dict], refs: dict[int, dict], window_hvp: bool = False) -> tuple[list[dict], dict]:
    """Each row against its window's references (``window_hvp``: tr(H S_b) from the whole window, against the
    window's mean) and the summary per quantity: rows within 3 se, coverage at 1 and 2 se, ‖H‖'s differences."""
    pairs = []
    for r in rows:
        ref = refs.get(r["window_start"])
        if ref is None:
            continue
        ref = ref | (ref["window"] if window_hvp else {})
        one = {"row_step": r["step"], "ref_steps": ref["steps"], "window_start": r["window_start"]}
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
    return pairs, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(ap)
    ap.add_argument("--model", default="shufflenet_v2_x0_5", help="a torchvision model name, or digits_cnn")
    ap.add_argument("--window", type=int, default=WINDOW)
    ap.add_argument("--rows", type=int, default=6, help="rows compared with the reference")
    ap.add_argument("--points", type=int, default=2, help="steps of each compared window measured by diagnose")
    ap.add_argument("--warmup", type=int, default=6, help="rows before the compared ones (training from θ_0)")
    ap.add_argument(
        "--compare-hvp-steps", type=int, nargs="*", default=[], help="other hvp_steps to record (0: the window)"
    )
    ap.add_argument(
        "--no-eigen", action="store_true", help="no ‖H‖ reference (LOBPCG on N samples is the dearest part)"
    )
    ap.add_argument("--out", type=Path, default=Path("results/bench/monitor_accuracy.json"))
    args = ap.parse_args(argv)
    load_before, t_start = os.getloadavg(), time.perf_counter()
    ds = load_workload(args, "bench-stream-accuracy")
    if ds is None:
        return 0
    torch.manual_seed(args.seed)
    if hasattr(torchvision.models, args.model):
        model = getattr(torchvision.models, args.model)(num_classes=10)
    else:
        model = build_model(args.model, 3, 10)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    total = args.window * (args.warmup + args.rows)
    batch_norm = bool(train_mode_bn(model))
    if batch_norm:  # each step an independent uniform batch of b distinct samples: the batches of L_b
        g = torch.Generator().manual_seed(args.seed + 1)
        batches = [torch.randperm(len(ds), generator=g)[: args.batch].tolist() for _ in range(total)]
        loader = DataLoader(ds, batch_sampler=batches)
    else:  # batches drawn with replacement, as the per-sample reference's γ = 1 assumes
        sampler = RandomSampler(ds, replacement=True, num_samples=total * args.batch)
        loader = DataLoader(ds, batch_size=args.batch, sampler=sampler)
    rows: list[dict] = []
    mon = lssr.SharpnessMonitor(
        model, "ce", loader, opt, window=args.window, callback=rows.append, stream=True, budget=math.inf,
        batch_sizes=[args.batch],
    )  # fmt: skip
    # the same run seen by monitors with other hvp_steps (the streaming mode leaves the training unchanged)
    alt_rows: dict[str, list[dict]] = {str(h): [] for h in args.compare_hvp_steps}
    alts = [
        lssr.SharpnessMonitor(
            model, "ce", loader, opt, window=args.window, callback=alt_rows[str(h)].append, stream=True,
            budget=math.inf, hvp_steps=None if h == 0 else h, seed=1, batch_sizes=[args.batch],
        )
        for h in args.compare_hvp_steps
    ]  # fmt: skip
    points: dict[int, list[dict]] = {}
    spacing = args.window // args.points  # the points at offsets window, window − spacing, ... (the last the row's)
    vec = None  # the last reference eigenvector: the next one's warm start

    def write() -> tuple[dict, dict]:
        """The record of the rows compared so far (rewritten after each, so that a killed run keeps them)."""
        refs = {s: reference(p, args.batch, args.window) | {"steps": [q["step"] for q in p]} for s, p in points.items()}
        pairs, summary = compare(rows, refs)
        alternatives = {}
        for h, got in alt_rows.items():
            a_pairs, a_summary = compare(got, refs, window_hvp=h == "0")
            alternatives[h] = {"summary": {k: a_summary[k] for k in ("tr_HS_b", "ias_b", "top_eig")}, "pairs": a_pairs}
        result = {
            "what": "streaming SharpnessMonitor rows against lssr.diagnose on all N training samples: window means "
            "against the mean of --points steps of the window, tr S_n and ‖H‖ against the row's step",
            "hvp_steps": HVP_STEPS,
            "summary": summary,
            "pairs": pairs,
            "alternatives": alternatives,
            "model": args.model + (" (batch norm in train mode: diagnose(bn='batch'))" if batch_norm else ""),
            "m": sum(p.numel() for p in model.parameters()),
        } | record_context(args, t_start, load_before)
        write_json(args.out, result)
        return summary, alternatives

    for t, (x, y) in enumerate(loader):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        start = t - t % args.window  # the windows close every args.window steps (budget=inf)
        offset = t - start + 1  # 1 .. window; the last points, spaced by `spacing`, end at the row's step
        back = args.window - offset  # steps before the row's
        due = start >= args.window * args.warmup and back % spacing == 0 and back < args.points * spacing
        last = due and offset == args.window  # ‖H‖ only at the row's step, where it is compared
        eigen = last and not args.no_eigen
        if due:
            p = point(model, ds, args.batch, args.seed + t, eigen, vec)
            vec = p.pop("eigenvector") if eigen else vec
            p.pop("eigenvector", None)
            points.setdefault(start, []).append(p | {"step": t})
            gc.collect()
            print(f"step {t}: reference point {len(points[start])} of window {start}", flush=True)
        mon.step()
        for alt in alts:
            alt.step()
        opt.step()
        if last:
            write()
    summary, alternatives = write()
    for k, s in summary.items():
        if k == "top_eig":
            print(f"top_eig: relative differences {[f'{v:+.3f}' for v in s['rel_diff']]}")
        else:
            print(
                f"{k}: {s['within_3_se']}/{s['rows']} within 3 se, coverage {s['coverage_1_se']:.2f} (1 se), "
                f"{s['coverage_2_se']:.2f} (2 se)"
            )
    for h, a in alternatives.items():
        s = a["summary"]["tr_HS_b"]
        print(
            f"hvp_steps={h if h != '0' else 'window'}: tr_HS_b {s['within_3_se']}/{s['rows']} within 3 se, "
            f"coverage {s['coverage_2_se']:.2f} (2 se)"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
