#!/usr/bin/env bash
# GPU benchmark of the training engine: step throughput of lssr.training.train (one run) against
# lssr.training.train_batched (8 learning rates as one stacked model) on cnn6 + batch norm with
# CIFAR-10-8k-sized random data (8192 x 3 x 32 x 32), per-sample forward+backward costs of cnn6 and
# resnet9 at 32 / 64 / 96 pixels (the inputs of the Figure-5 GPU-hour estimate in benchmarks/README.md),
# and the per-step cost of the diagnostics probe bundle (lssr.training.DiagnosticsProbe; skipped
# with a message when that module is not there or fails).
#
# Usage: benchmarks/gpu.sh [--cpu] [--out DIR] [--budget SECONDS]
#   --cpu      tiny version on the CPU (seconds; this is what the test suite runs)
#   --out DIR  where gpu_bench.json / gpu_bench.md / nvidia-smi.txt go (default: $OUT, else results/bench/gpu)
#   --budget   stop starting new measurements after this many seconds (default 420; the whole
#              script stays under 10 minutes on one H100)
# Environment: PYTHON (interpreter; default .venv/bin/python, else python3),
#              LSSR_GPU_BENCH_SKIP_DIAGNOSTICS=1 skips the probe-bundle part.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

cd "$(dirname "$0")/.."
MODE=gpu
OUT_DIR="${OUT:-results/bench/gpu}"
BUDGET=420
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) MODE=cpu-tiny ;;
    --out) OUT_DIR="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"

if [[ "$MODE" == gpu ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
  fi
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: torch sees no CUDA device; run with --cpu for the tiny CPU version" >&2
    exit 3
  fi
fi

exec "$PY" - "$MODE" "$OUT_DIR" "$BUDGET" <<'PYEOF'
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from lssr.config import config_from_dict
from lssr.data import Subset
from lssr.training import train, train_batched

mode, out_dir, budget = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
gpu = mode == "gpu"
device = "cuda" if gpu else "cpu"
if not gpu:
    torch.set_num_threads(1)
T0 = time.time()
MEMBERS = 8 if gpu else 2
LRS = [1e-3 * 1.5**k for k in range(MEMBERS)]  # small: no member diverges (a diverged member leaves the stack)


def subset(n, px, n_test, seed=0):
    g = torch.Generator().manual_seed(seed)
    manifest = {"num_classes": 10, "image_shape": [3, px, px], "sha256": {}, "dataset": "random", "n": n}
    return Subset(torch.randn(n, 3, px, px, generator=g), torch.randint(10, (n,), generator=g),
                  torch.randn(n_test, 3, px, px, generator=g), torch.randint(10, (n_test,), generator=g), manifest)


def cfg(model, n, b, lr, steps, chunk, probe=None):
    raw = {"seed": 0, "device": device, "data": {"dataset": "cifar10", "n": n}, "model": {"name": model, "batch_norm": True},
           "loss": "ce", "optim": {"lr": lr, "batch_size": b}, "stop": {"steps": steps, "divergence_bound": 1e30},
           "eval_every": 10**9, "chunk_size": chunk}
    if probe is not None:
        raw["probe"] = probe
        raw["bn_mode"] = "eval"  # the probes need fixed normalisation statistics with batch norm
    return config_from_dict(raw)


def sync():
    if gpu:
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def per_step(run, s1, s2):
    """Seconds per step from two run lengths (set-up and the two evaluations cancel)."""
    return (timed(lambda: run(s2)) - timed(lambda: run(s1))) / (s2 - s1)


def over_budget():
    return time.time() - T0 > budget


result = {"mode": mode, "device": torch.cuda.get_device_name(0) if gpu else "cpu (1 thread)", "torch": torch.__version__,
          "members": MEMBERS, "lrs": LRS, "throughput": [], "per_sample": [], "diagnostics": None, "skipped": []}
if gpu:
    result["tf32"] = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32, "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}

# -- 1. train() vs train_batched() on cnn6 + BN, CIFAR-10-8k-sized random data --------------------
if gpu:
    n, px, n_test, chunk = 8192, 32, 2048, 512
    plan = [(8, 100, 400), (32, 100, 400), (128, 50, 250), (512, 20, 100), ("full", 3, 13)]
else:
    n, px, n_test, chunk = 256, 8, 64, 128
    plan = [(32, 2, 6)]
data = subset(n, px, n_test)
train(cfg("cnn6", n, 32, LRS[0], 2, chunk), data, None, progress=False)  # warm-up (cuDNN, allocator)
for b, s1, s2 in plan:
    if over_budget():
        result["skipped"].append(f"throughput b={b}")
        continue
    bb = n if b == "full" else b
    try:
        single = per_step(lambda s: train(cfg("cnn6", n, b, LRS[0], s, chunk), data, None, progress=False), s1, s2)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        batched = per_step(lambda s: train_batched([cfg("cnn6", n, b, lr, s, chunk) for lr in LRS], data, None, progress=False), s1, s2)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: record it and go on
        result["skipped"].append(f"throughput b={b}: {type(exc).__name__}: {str(exc)[:300]}")
        print(result["skipped"][-1], flush=True)
        continue
    row = {"model": "cnn6", "px": px, "n": n, "b": bb, "single_step_s": single, "single_steps_per_s": 1 / single,
           "batched_step_s": batched, "batched_member_steps_per_s": MEMBERS / batched, "speedup": MEMBERS * single / batched,
           "single_per_sample_ms": 1e3 * single / bb, "batched_per_member_sample_ms": 1e3 * batched / (MEMBERS * bb)}
    if gpu:
        row["batched_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["throughput"].append(row)
    print(json.dumps(row), flush=True)

# -- 2. per-sample forward+backward cost (single run, large b) of the Figure-5 models / image sizes ---
if gpu:
    sizes = [("cnn6", 32), ("resnet9", 32), ("cnn6", 64), ("resnet9", 64), ("cnn6", 96), ("resnet9", 96)]
    bps, s1, s2 = 256, 5, 25
else:
    sizes = [("cnn6", 8)]
    bps, s1, s2 = 32, 1, 3
for model, p in sizes:
    if over_budget():
        result["skipped"].append(f"per-sample {model}@{p}px")
        continue
    d = subset(2 * bps, p, 64, seed=1)
    ck = bps if p <= 32 else max(bps // 2, 1)  # resnet9 at 96 px: ~26 MB of activations per sample and member
    try:
        st = per_step(lambda s: train(cfg(model, 2 * bps, bps, LRS[0], s, ck), d, None, progress=False), s1, s2)
        bst = per_step(lambda s: train_batched([cfg(model, 2 * bps, bps, lr, s, ck) for lr in LRS], d, None, progress=False), s1, s2)
    except Exception as exc:  # noqa: BLE001
        result["skipped"].append(f"per-sample {model}@{p}px: {type(exc).__name__}: {str(exc)[:300]}")
        print(result["skipped"][-1], flush=True)
        if gpu:
            torch.cuda.empty_cache()
        continue
    row = {"model": model, "px": p, "b": bps, "single_per_sample_ms": 1e3 * st / bps, "batched_per_member_sample_ms": 1e3 * bst / (MEMBERS * bps)}
    result["per_sample"].append(row)
    print(json.dumps(row), flush=True)

# -- 3. the diagnostics probe bundle (another module; optional) --------------------------------------
HARD_LIMIT = 540.0  # seconds: the whole script must end well inside 10 minutes


class _Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


if os.environ.get("LSSR_GPU_BENCH_SKIP_DIAGNOSTICS"):
    result["diagnostics"] = {"skipped": "LSSR_GPU_BENCH_SKIP_DIAGNOSTICS is set"}
elif over_budget():
    result["diagnostics"] = {"skipped": "time budget spent"}
else:
    try:
        from lssr.training import DiagnosticsProbe
    except Exception as exc:  # noqa: BLE001 - report whatever stops the import
        result["diagnostics"] = {"skipped": f"lssr.training.DiagnosticsProbe unavailable: {type(exc).__name__}: {exc}"}
        print(f"diagnostics probe bundle skipped: {exc}", flush=True)
    else:
        import signal

        probe = {"every": 1, "batch_sizes": [8, 128] if gpu else [8, 16], "estimator": "auto"}
        pb, pn = (128, n) if gpu else (16, 64)
        pdata = data if gpu else subset(pn, px, 32, seed=2)
        s1, s2 = 1, 3
        tmp = Path(tempfile.mkdtemp(prefix="lssr-gpu-bench-"))

        def run_probe(s):
            c = cfg("cnn6", pn, pb, LRS[0], s, chunk, probe=probe)
            return train(c, pdata, tmp / f"run{s}", probes=[DiagnosticsProbe(c, tmp / f"run{s}" / "diagnostics.csv")], progress=False)

        signal.signal(signal.SIGALRM, _on_alarm)
        t_probe = time.time()
        signal.alarm(max(int(HARD_LIMIT - (time.time() - T0)), 10))
        try:
            plain = per_step(lambda s: train(cfg("cnn6", pn, pb, LRS[0], s, chunk), pdata, None, progress=False), 2, 12)
            probed = per_step(run_probe, s1, s2)
            result["diagnostics"] = {"n": pn, "b": pb, "probed_step_s": probed, "plain_step_s": plain,
                                     "probe_cost_in_steps": probed / plain, "probe": probe}
            print(json.dumps(result["diagnostics"]), flush=True)
        except _Alarm:
            result["diagnostics"] = {"skipped": f"probe bundle still running at the {HARD_LIMIT:.0f} s hard limit, "
                                                f"{time.time() - t_probe:.0f} s after it started ({s1 + s2} probed steps asked for)"}
            print(result["diagnostics"]["skipped"], flush=True)
        except Exception as exc:  # noqa: BLE001
            result["diagnostics"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
            print(f"diagnostics probe bundle failed: {exc}", flush=True)
        finally:
            signal.alarm(0)

result["wall_s"] = time.time() - T0
(out_dir / "gpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")
lines = [f"# gpu.sh ({mode}) on {result['device']}, torch {result['torch']}, {MEMBERS} members", "",
         "| model | b | train() steps/s | batched member-steps/s | speedup | ms/sample single | ms/sample batched |",
         "|---|---|---|---|---|---|---|"]
for r in result["throughput"]:
    lines.append(f"| {r['model']}@{r['px']}px | {r['b']} | {r['single_steps_per_s']:.1f} | {r['batched_member_steps_per_s']:.1f} | "
                 f"{r['speedup']:.2f}x | {r['single_per_sample_ms']:.4f} | {r['batched_per_member_sample_ms']:.4f} |")
lines += ["", f"| model | px | ms/sample fwd+bwd single (b={bps}) | batched per member |", "|---|---|---|---|"]
for r in result["per_sample"]:
    lines.append(f"| {r['model']} | {r['px']} | {r['single_per_sample_ms']:.4f} | {r['batched_per_member_sample_ms']:.4f} |")
lines += ["", f"diagnostics: {json.dumps(result['diagnostics'])}", f"skipped: {result['skipped']}", f"wall: {result['wall_s']:.0f} s"]
(out_dir / "gpu_bench.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
