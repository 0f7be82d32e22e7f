"""Grid throughput: batched η-groups (lssr.training.train_batched) against one run per process (`make bench-grid`).

Part 1, measured side by side on this machine (same thread count for every mode, default 1):

  A. one ``python -m lssr.cli train`` process per run, one after another (what Snakemake does with
     ``--cores 1``: interpreter start, imports and subset loading are paid per run);
  B. the same runs one after another inside this process (``lssr.training.train``);
  C. all runs as one batched group inside this process (``lssr.training.train_batched``);
  D. all runs as one ``python -m lssr.cli train-batch`` process (what a batched Snakemake rule runs).

on a small demo grid: digits (1024 train / 773 test), digits_cnn with batch norm, cross-entropy,
b = 32, η = 2^-6 .. 2^1 (2^1 diverges at b = 32 on digits, as in a real grid), a few hundred steps.
Runs per hour and the ratios D/A (process level) and C/B (in process) are printed as measured, together
with the largest metric difference between the batched and the one-by-one runs.

Part 2 (``--cost-model``, on by default): per-sample forward+backward costs on this CPU of cnn6 and
resnet9 at 32 / 64 / 96 pixels, FLOPs per sample (torch.utils.flop_counter), the host-side per-step
overhead of a cnn6 step (b = 1, tiny images: dispatch cost, what an eager GPU step pays on the host),
and from them an estimate of the GPU-hours of the full Figure-5 grid. GPU numbers are estimates from an
assumed effective throughput (``--gpu-tflops``) until ``--gpu-json`` points at the output of
``benchmarks/gpu.sh`` (then the measured per-sample costs and per-step times replace the assumptions).

Part 3 (``--no-checkpointing`` skips it): the step time of activation checkpointing (batch norm over the
whole batch, lssr.training.forward) against a plain step, interleaved repetitions side by side, with the
estimated activation-memory ratio (lssr.memory); the target is at most 1.4x.

Usage: python benchmarks/bench_grid.py [--steps 300] [--threads 1] [--out results/bench]
       [--no-cost-model] [--no-grid] [--no-checkpointing] [--ckpt-reps 6]
       [--gpu-json results/bench/gpu/gpu_bench.json] [--gpu-tflops 25]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from lssr.config import config_from_dict  # noqa: E402
from lssr.data import SubsetSpec, build_subset, load_subset  # noqa: E402
from lssr.training import train, train_batched  # noqa: E402

# The Figure-5 grid (paper, Section 5): n, image size, classes, test-set size; b = 2^3 .. n.
FIG5 = {
    "CIFAR-10-8k": dict(n=8192, px=32, n_test=10000),
    "CIFAR-100-8k": dict(n=8192, px=32, n_test=10000),
    "STL-10-4k": dict(n=4096, px=96, n_test=8000),
    "Tiny-ImageNet-32k": dict(n=32768, px=64, n_test=10000),
}
N_LR = 10  # members of the batched host-overhead measurement


def paper_fig5(path: Path = ROOT / "config" / "paper.yaml") -> dict:
    """Epochs, evaluation interval (steps) and members per job (η × seeds) of Figure 5 in config/paper.yaml."""
    f5 = yaml.safe_load(path.read_text())["experiments"]["fig5"]
    return {"epochs": f5["epochs"], "eval_every": f5["eval_every"], "members": len(f5["lrs"]) * len(f5["seeds"])}


def load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def demo_cfg(lr: float, steps: int) -> dict:
    return {
        "seed": 0,
        "device": "cpu",
        "data": {"dataset": "digits", "n": 1024, "seed": 0},
        "model": {"name": "digits_cnn", "batch_norm": True},
        "loss": "ce",
        "optim": {"lr": lr, "batch_size": 32},
        "stop": {"steps": steps},
        "eval_every": 50,
        "chunk_size": 512,
    }


def part1(args, work: Path) -> dict:
    data_dir = work / "digits-1k"
    build_subset(SubsetSpec("digits", 1024, seed=0), data_dir)
    lrs = [2.0**k for k in range(-6, 2)]
    raws = [demo_cfg(lr, args.steps) for lr in lrs]
    paths = []
    for i, raw in enumerate(raws):
        p = work / f"cfg{i}.yaml"
        p.write_text(yaml.safe_dump(raw))
        paths.append(p)
    cfgs = [config_from_dict(r) for r in raws]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    py = sys.executable
    out: dict = {"runs": len(cfgs), "lrs": lrs, "steps": args.steps, "threads": args.threads, "load_before": load_avg()}
    print(
        f"demo grid: digits-1k, digits_cnn+BN, b=32, {len(lrs)} learning rates 2^-6..2^1, {args.steps} steps, "
        f"{args.threads} thread(s); load average {out['load_before']}",
        flush=True,
    )

    # A. one process per run
    t = time.perf_counter()
    for i, p in enumerate(paths):
        subprocess.run(
            [
                py,
                "-m",
                "lssr.cli",
                "train",
                str(p),
                "--out",
                str(work / f"A{i}"),
                "--data",
                str(data_dir),
                "--no-progress",
            ],
            env=env,
            check=True,
            capture_output=True,
            cwd=work,
        )
    out["A_processes_s"] = time.perf_counter() - t
    print(f"A  one process per run     : {out['A_processes_s']:7.1f} s", flush=True)

    # B. in-process, one by one
    torch.set_num_threads(args.threads)
    data = load_subset(data_dir)
    t = time.perf_counter()
    alone = [train(c, data, None, progress=False) for c in cfgs]
    out["B_inprocess_sequential_s"] = time.perf_counter() - t
    print(f"B  in-process, one by one  : {out['B_inprocess_sequential_s']:7.1f} s", flush=True)

    # C. in-process, batched
    t = time.perf_counter()
    batched = train_batched(cfgs, data, None, progress=False)
    out["C_inprocess_batched_s"] = time.perf_counter() - t
    print(f"C  in-process, batched     : {out['C_inprocess_batched_s']:7.1f} s", flush=True)

    # D. one train-batch process
    cmd = [py, "-m", "lssr.cli", "train-batch"]
    for i, p in enumerate(paths):
        cmd += ["--config", str(p), "--out", str(work / f"D{i}")]
    t = time.perf_counter()
    subprocess.run(cmd + ["--data", str(data_dir), "--no-progress"], env=env, check=True, capture_output=True, cwd=work)
    out["D_batched_process_s"] = time.perf_counter() - t
    print(f"D  one train-batch process : {out['D_batched_process_s']:7.1f} s", flush=True)
    out["load_after"] = load_avg()

    diffs = []
    for a, b in zip(alone, batched):
        same = a.metrics.shape == b.metrics.shape and a.status == b.status and a.steps == b.steps
        if not same:
            diffs.append(math.inf)
        elif a.status == "completed":
            diffs.append(float(np.nanmax(np.abs(a.metrics.values.astype(float) - b.metrics.values.astype(float)))))
    out["statuses"] = [a.status for a in alone]
    out["metric_diff_per_run"] = diffs
    out["max_metric_diff_completed"] = max(diffs) if diffs else 0.0
    k = 3600.0 * len(cfgs)
    out["runs_per_hour"] = {
        m: k / out[key]
        for m, key in (
            ("A", "A_processes_s"),
            ("B", "B_inprocess_sequential_s"),
            ("C", "C_inprocess_batched_s"),
            ("D", "D_batched_process_s"),
        )
    }
    out["ratio_D_over_A"] = out["A_processes_s"] / out["D_batched_process_s"]
    out["ratio_C_over_B"] = out["B_inprocess_sequential_s"] / out["C_inprocess_batched_s"]
    out["ratio_C_over_A"] = out["A_processes_s"] / out["C_inprocess_batched_s"]
    rph = out["runs_per_hour"]
    print(f"runs per hour: A {rph['A']:.0f} | B {rph['B']:.0f} | C {rph['C']:.0f} | D {rph['D']:.0f}")
    print(f"ratio batched process / one process per run (D/A): {out['ratio_D_over_A']:.2f}x  (target >= 2x)")
    print(f"ratio batched / sequential, in process (C/B)      : {out['ratio_C_over_B']:.2f}x")
    print(
        f"statuses {out['statuses']}; largest metric difference batched vs one by one per completed run: "
        f"{', '.join(f'{d:.1e}' for d in diffs)} (float32 round-off, amplified at the large η); "
        f"load average after {out['load_after']}",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Part 2: per-sample costs and the Figure-5 estimate
# ---------------------------------------------------------------------------------------------


def flops_per_sample(model_name: str, px: int, classes: int = 10) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from lssr.models import build_model

    m = build_model(model_name, 3, classes, True)
    x = torch.randn(2, 3, px, px)
    with FlopCounterMode(display=False) as fc:
        m(x).sum().backward()
    return fc.get_total_flops() / 2


def cpu_per_sample_s(model_name: str, px: int, b: int, reps: int) -> float:
    """Seconds per sample of one forward+backward (train mode, BN) on this CPU, median of ``reps``."""
    from lssr.models import build_model

    torch.manual_seed(0)
    m = build_model(model_name, 3, 10, True)
    x, y = torch.randn(b, 3, px, px), torch.randint(10, (b,))
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:])) / b


def host_step_overhead(members: int, steps: int = 40) -> float:
    """Seconds per step of cnn6+BN at b = 2 on 2x2 images: with one member almost all of it is
    dispatch / Python overhead (what an eager GPU step pays on the host whatever the batch size)."""
    from lssr.data import Subset

    g = torch.Generator().manual_seed(0)
    x = lambda: torch.randn(8, 3, 2, 2, generator=g)  # noqa: E731
    y = lambda: torch.randint(10, (8,), generator=g)  # noqa: E731
    data = Subset(x(), y(), x(), y(), {"num_classes": 10, "image_shape": [3, 2, 2], "sha256": {}})

    def cfg(lr, s):
        return config_from_dict(
            {
                "seed": 0,
                "device": "cpu",
                "data": {"dataset": "cifar10", "n": 8},
                "model": {"name": "cnn6", "batch_norm": True},
                "loss": "ce",
                "optim": {"lr": lr, "batch_size": 2},
                "stop": {"steps": s},
                "eval_every": 10**9,
            }
        )

    def run(s):
        t = time.perf_counter()
        if members == 0:
            train(cfg(1e-3, s), data, None, progress=False)
        else:
            train_batched([cfg(1e-3 * (k + 1), s) for k in range(members)], data, None, progress=False)
        return time.perf_counter() - t

    run(2)
    return (run(steps + 5) - run(5)) / steps


def figure5_estimate(
    per_sample_single_s: dict,
    per_sample_batched_s: dict,
    overhead_single_s: float,
    overhead_batched_s: float,
    models=("cnn6", "resnet9"),
) -> dict:
    """GPU-seconds of the Figure-5 grid of config/paper.yaml: per (data set, b) one job batched over its M members
    (η × seeds).

    A step of a job costs max(host overhead of a batched step, M * b * per-sample cost); evaluation (train + test
    set, forward only = 1/3 of forward+backward) every ``eval_every`` steps and at the end. Upper
    bound: every run trains the full 800 epochs (diverged runs in fact stop early).
    """
    fig = paper_fig5()
    members = fig["members"]
    est = {}
    for model in models:
        total_b, total_u, jobs = 0.0, 0.0, []
        for ds, d in FIG5.items():
            n, px, n_test = d["n"], d["px"], d["n_test"]
            c, cb = per_sample_single_s[(model, px)], per_sample_batched_s[(model, px)]
            bs = [2**k for k in range(3, int(math.log2(n)) + 1)]
            for b in bs:
                steps = fig["epochs"] * n / b
                step_batched = max(overhead_batched_s, members * b * cb)
                step_single = max(overhead_single_s, b * c)
                evals = (steps // fig["eval_every"] + 1) * (n + n_test) * c / 3
                job = steps * step_batched + members * evals
                unbatched = members * (steps * step_single + evals)
                jobs.append(
                    {"dataset": ds, "b": b, "steps": steps, "job_h": job / 3600, "unbatched_h": unbatched / 3600}
                )
                total_b += job
                total_u += unbatched
        est[model] = {
            "batched_gpu_h": total_b / 3600,
            "unbatched_gpu_h": total_u / 3600,
            "jobs": jobs,
            "longest_job": max(jobs, key=lambda j: j["job_h"]),
        }
    return est


def part2(args) -> dict:
    torch.set_num_threads(args.threads)
    res: dict = {"flops_per_sample_fwd_bwd": {}, "cpu_per_sample_s": {}}
    sizes = [("cnn6", 32), ("resnet9", 32), ("cnn6", 64), ("resnet9", 64), ("cnn6", 96), ("resnet9", 96)]
    print("\nper-sample forward+backward (BN, train mode), this CPU, %d thread(s):" % args.threads)
    print("| model | px | GFLOP/sample | CPU ms/sample | CPU GFLOP/s |\n|---|---|---|---|---|")
    for model, px in sizes:
        f = flops_per_sample(model, px)
        b = 32 if px == 32 else 8
        s = cpu_per_sample_s(model, px, b, reps=3)
        res["flops_per_sample_fwd_bwd"][f"{model}@{px}"] = f
        res["cpu_per_sample_s"][f"{model}@{px}"] = s
        print(f"| {model} | {px} | {f / 1e9:.3f} | {1e3 * s:.2f} | {f / s / 1e9:.1f} |", flush=True)
    res["host_overhead_single_s"] = host_step_overhead(0)
    res["host_overhead_batched_s"] = host_step_overhead(1)
    res["tiny_step_batched10_s"] = host_step_overhead(N_LR)
    print(
        f"per-step host overhead (cnn6+BN, b=2, 2x2 px, CPU): train() {1e3 * res['host_overhead_single_s']:.1f} ms, "
        f"train_batched with 1 member {1e3 * res['host_overhead_batched_s']:.1f} ms "
        f"(with {N_LR} members {1e3 * res['tiny_step_batched10_s']:.1f} ms: on the CPU the members' weight-gradient "
        f"and update arithmetic is no longer negligible)",
        flush=True,
    )

    source = (
        f"ESTIMATE: FLOPs / {args.gpu_tflops:g} TFLOP/s effective (assumed), "
        "per-step host overhead measured on this CPU"
    )
    per_sample_gpu = {
        (m, px): res["flops_per_sample_fwd_bwd"][f"{m}@{px}"] / (args.gpu_tflops * 1e12) for m, px in sizes
    }
    per_sample_gpu_batched = dict(per_sample_gpu)
    ov_single, ov_batched = res["host_overhead_single_s"], res["host_overhead_batched_s"]
    if args.gpu_json and Path(args.gpu_json).exists():
        g = json.loads(Path(args.gpu_json).read_text())
        for r in g.get("per_sample", []):
            per_sample_gpu[(r["model"], r["px"])] = r["single_per_sample_ms"] / 1e3
            per_sample_gpu_batched[(r["model"], r["px"])] = r["batched_per_member_sample_ms"] / 1e3
        small = [r for r in g.get("throughput", []) if r["b"] == 8]
        if small:  # b = 8: both steps are launch / host bound on a GPU
            ov_single, ov_batched = small[0]["single_step_s"], small[0]["batched_step_s"]
        source = f"MEASURED by benchmarks/gpu.sh on {g.get('device')} ({args.gpu_json})"
    est = figure5_estimate(per_sample_gpu, per_sample_gpu_batched, ov_single, ov_batched)
    res["figure5"] = {
        "source": source,
        "gpu_tflops_assumed": args.gpu_tflops,
        "grid": (fig5 := paper_fig5()),
        "per_step_overhead_single_s": ov_single,
        "per_step_overhead_batched_s": ov_batched,
        "estimate": {m: {k: v for k, v in e.items() if k != "jobs"} for m, e in est.items()},
        "jobs": {m: e["jobs"] for m, e in est.items()},
    }
    print(
        f"\nFigure-5 grid of config/paper.yaml ({len(FIG5)} data sets, b = 2^3..n, {fig5['members']} members (η × "
        f"seeds) per job, {fig5['epochs']} epochs, evaluation every {fig5['eval_every']} steps), {source}:"
    )
    for m, e in est.items():
        lj = e["longest_job"]
        print(
            f"  {m}: batched (one job per (data set, b)) {e['batched_gpu_h']:.0f} GPU-h, one run per job "
            f"{e['unbatched_gpu_h']:.0f} GPU-h; longest job {lj['dataset']} b={lj['b']} {lj['job_h']:.1f} h"
        )
        per_ds = {}
        for j in e["jobs"]:
            per_ds[j["dataset"]] = per_ds.get(j["dataset"], 0.0) + j["job_h"]
        print("    per data set (batched): " + ", ".join(f"{k} {v:.0f} h" for k, v in per_ds.items()))
    return res


def checkpointing_cost(args) -> dict:
    """Part 3: step time with activation checkpointing against a plain step, side by side (interleaved
    repetitions, medians), batch norm in train mode over the whole batch: one model (lssr.training.single's
    step) and a stacked group of 4 members (lssr.training.forward's vmapped checkpointed forward)."""
    from lssr.losses import per_sample_loss
    from lssr.memory import checkpointed_bytes, plain_bytes, profile, segments_for
    from lssr.models import build_model
    from lssr.training.forward import backward_keeping_buffers, checkpointed_forward, stacked_checkpointed_forward
    from lssr.training.single import chunked_loss_and_grad
    from lssr.training.stack import Stack

    loss_ps = per_sample_loss("ce")
    out = {}
    print("\n## Activation checkpointing: step time against a plain step (side by side, medians)\n")
    print("| model | px | b | members | plain s/step | checkpointed s/step | ratio | act. memory ckpt/plain (est.) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, px, b, members in (("cnn6", 32, 128, 1), ("resnet9", 32, 64, 1), ("cnn6", 32, 32, 4)):
        torch.manual_seed(0)
        prof = profile(name, True, 3, px, 10, torch.float32)
        segs = segments_for(prof)
        x, y = torch.randn(b, 3, px, px), torch.randint(10, (b,))
        idx = torch.arange(b)
        if members == 1:
            model = build_model(name, 3, 10, True).train()
            ck = checkpointed_forward(model, segs)

            def step(checkpointed: bool) -> None:
                chunked_loss_and_grad(model, x, y, idx, loss_ps, b, ck if checkpointed else None)
                model.zero_grad(set_to_none=True)
        else:
            models = [build_model(name, 3, 10, True).train() for _ in range(members)]
            stack = Stack(models[0], models)
            ck_stack = stacked_checkpointed_forward(stack, segs)

            def step(checkpointed: bool) -> None:
                out_ = ck_stack(x, False) if checkpointed else stack.forward(x, False)
                loss = loss_ps(out_.reshape(-1, out_.shape[-1]), y.repeat(members)).sum() / b
                backward_keeping_buffers(loss, list(stack.buffers.values()) if checkpointed else None)
                for p in stack.params.values():
                    p.grad = None

        times = {False: [], True: []}
        for rep in range(args.ckpt_reps + 1):
            for mode in (False, True) if rep % 2 == 0 else (True, False):
                t = time.perf_counter()
                step(mode)
                if rep:  # the first round warms up
                    times[mode].append(time.perf_counter() - t)
        plain, ckpt = float(np.median(times[False])), float(np.median(times[True]))
        mem = checkpointed_bytes(prof, segs) / plain_bytes(prof)
        key = f"{name}_{px}px_b{b}_m{members}"
        out[key] = {"plain_s": plain, "checkpointed_s": ckpt, "ratio": ckpt / plain, "memory_ratio_est": mem}
        print(f"| {name} | {px} | {b} | {members} | {plain:.3f} | {ckpt:.3f} | {ckpt / plain:.2f}x | {mem:.2f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads for every mode")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))  # bench_grid.json is kept there
    ap.add_argument("--no-cost-model", action="store_true")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-checkpointing", action="store_true", help="skip part 3 (activation checkpointing cost)")
    ap.add_argument("--ckpt-reps", type=int, default=6, help="interleaved repetitions per mode in part 3")
    ap.add_argument("--gpu-json", default=str(ROOT / "results" / "bench" / "gpu" / "gpu_bench.json"))
    ap.add_argument(
        "--gpu-tflops", type=float, default=25.0, help="assumed effective GPU throughput when no gpu.sh output exists"
    )
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(prefix="lssr-bench-grid-") as work:
        if not args.no_grid:
            result["grid"] = part1(args, Path(work))
    if not args.no_cost_model:
        result["cost_model"] = part2(args)
    if not args.no_checkpointing:
        result["checkpointing"] = checkpointing_cost(args)
    (out_dir / "bench_grid.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out_dir / 'bench_grid.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
