"""Training engine: vanilla SGD / GD, θ ← θ − η g_b, constant η, no momentum, no weight decay.

- b from 1 to n (b = n is full-batch GD); batches are computed in memory chunks of ``chunk_size``
  samples (chunk losses summed, divided by b once), so memory stays bounded for any b.
- Sampling without replacement (a fresh permutation each epoch, n // b steps an epoch; default)
  or with replacement (b indices drawn uniformly each step).
- One seed drives the initialisation (global RNG at model build) and the batch sampler (its own
  ``torch.Generator``); the same config gives bit-identical metrics on the CPU.
- Probes (:class:`Probe`) observe θ_t, the batch indices of step t and the full training loss before
  and after the step, at the steps they ask for, without changing the trajectory (their RNG is their
  own; batch-norm buffers are restored after each probe call).
- Outputs in ``out_dir``: ``metrics.csv``, ``run.json`` (config, seeds, versions, device, wall time,
  status ``completed`` | ``diverged``) and ``model.pt`` (final weights), each written atomically.
"""

from __future__ import annotations

import math
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import pandas as pd
import torch
from torch import nn

from . import __version__
from .config import RunConfig
from .data import Subset, SubsetSpec, build_subset, load_subset
from .io import CsvLog, torch_save, write_json
from .losses import per_sample_loss
from .models import build_model

METRIC_COLUMNS = ["step", "epoch", "batch_loss", "train_loss", "train_acc", "test_loss", "test_acc"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from . import LssrError

        raise LssrError(f"device: {name} was asked for but no CUDA device is available; use device: auto or cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------


class BatchSampler:
    """Mini-batch indices for SGD: without replacement (epoch permutations) or with replacement."""

    def __init__(self, n: int, b: int, replacement: bool, seed: int):
        self.n, self.b, self.replacement = n, b, replacement
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_per_epoch = max(n // b, 1)
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self.replacement:
            return torch.randint(self.n, (self.b,), generator=self.generator)
        if self.b == self.n:
            return torch.arange(self.n)  # GD: the order of the full batch does not matter
        if self._perm is None or self._pos + self.b > self.n:
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.b]
        self._pos += self.b
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self._perm, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm, self._pos = state["perm"], state["pos"]


# ---------------------------------------------------------------------------------------------
# Loss / gradient helpers (chunked)
# ---------------------------------------------------------------------------------------------


def chunked_loss_and_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, loss_per_sample: Callable, chunk_size: int
) -> torch.Tensor:
    """Accumulate ∇ (1/b) Σ_{i∈B} ℓ_i into ``p.grad`` in chunks; return the batch loss (detached)."""
    total = torch.zeros((), device=x.device, dtype=x.dtype)
    b = len(idx)
    for s in range(0, b, chunk_size):
        j = idx[s : s + chunk_size]
        loss = loss_per_sample(model(x[j]), y[j]).sum() / b
        loss.backward()
        total += loss.detach()
    return total


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_per_sample: Callable, chunk_size: int) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on (x, y), in chunks."""
    loss_sum, correct = 0.0, 0
    for s in range(0, len(x), chunk_size):
        out = model(x[s : s + chunk_size])
        loss_sum += float(loss_per_sample(out, y[s : s + chunk_size]).sum())
        correct += int((out.argmax(-1) == y[s : s + chunk_size]).sum())
    n = max(len(x), 1)
    return loss_sum / n, correct / n


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------


@dataclass
class StepContext:
    """What a probe sees at step t. ``model`` holds θ_t in ``before_step`` and θ_{t+1} in ``after_step``."""

    step: int
    model: nn.Module
    batch_idx: torch.Tensor
    lr: float
    data: Subset
    config: RunConfig
    loss_per_sample: Callable
    batch_loss: float = math.nan
    train_loss_before: float = math.nan  # L(θ_t), full training set
    train_loss_after: float = math.nan  # L(θ_{t+1})
    extra: dict = field(default_factory=dict)


class Probe(Protocol):
    def wants(self, step: int) -> bool: ...

    def before_step(self, ctx: StepContext) -> None: ...

    def after_step(self, ctx: StepContext) -> None: ...

    def close(self) -> None: ...


def _buffers_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def _restore_buffers(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(snap[k])


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    status: str
    steps: int
    metrics: pd.DataFrame
    model: nn.Module
    wall_time: float


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict:
    import numpy
    import torchvision

    return {
        "lssr": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
    }


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    limits = []
    if cfg.stop.steps is not None:
        limits.append(cfg.stop.steps)
    if cfg.stop.epochs is not None:
        limits.append(math.ceil(cfg.stop.epochs * steps_per_epoch))
    return min(limits)


def write_run_outputs(
    out: Path, cfg: RunConfig, state: dict, metrics: pd.DataFrame, data: Subset, device: torch.device, wall: float,
    *, status: str, steps: int, stopped_by: str, resumed: bool = False, extra: dict | None = None,
) -> None:
    """Write ``model.pt`` (final weights) and ``run.json`` (status, config and hash, seeds, subset hashes,
    device, versions, git commit, wall time, final metrics) atomically, ``run.json`` last."""
    torch_save(out / "model.pt", {k: v.detach().cpu() for k, v in state.items()})
    final = metrics.dropna(subset=["train_loss"]).iloc[-1].to_dict() if metrics["train_loss"].notna().any() else {}
    record = {
        "status": status,
        "steps": steps,
        "stopped_by": stopped_by,
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "seed": cfg.seed,
        "subset_seed": cfg.data.seed,
        "subset_sha256": data.manifest.get("sha256", {}),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "wall_time_s": wall,
        "resumed": resumed,
        "final": {k: final.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
    }
    record.update(extra or {})
    write_json(out / "run.json", record)


CHECKPOINT = "checkpoint.pt"


def _save_checkpoint(path: Path, state: dict) -> None:
    torch_save(path, state)


def train(
    cfg: RunConfig,
    data: Subset,
    out_dir: str | Path | None = None,
    probes: list[Probe] | None = None,
    progress: bool = True,
) -> RunResult:
    """Train ``cfg.model`` on ``data`` with vanilla SGD / GD as configured; write outputs to ``out_dir``.

    With ``cfg.checkpoint_every`` and an ``out_dir``, a resumable ``checkpoint.pt`` (weights, sampler
    and RNG states, step counter, probe states, byte offset of the metrics log) is written every
    that many steps; a run restarted on the same folder and config resumes from it, and its final
    tables are byte-identical to an uninterrupted run's.
    """
    probes = list(probes or [])
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    start = time.time()
    n = len(data.y_train)
    if n != cfg.data.n:
        from . import LssrError

        raise LssrError(f"the subset holds {n} samples but the config says data.n: {cfg.data.n}")
    data = data.to(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, data.image_shape[0], data.num_classes, cfg.model.batch_norm).to(device)
    loss_ps = per_sample_loss(cfg.loss)
    b = cfg.batch_size
    sampler = BatchSampler(n, b, cfg.optim.replacement, cfg.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=0.0, weight_decay=0.0)
    T = total_steps(cfg, sampler.steps_per_epoch)
    status = "completed"
    chunk = cfg.chunk_size
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="lssr-run-"))
    log = CsvLog(out / "metrics.csv", METRIC_COLUMNS)
    ckpt_path = out / CHECKPOINT
    step, elapsed_before = 0, 0.0

    # -- resume --------------------------------------------------------------------------------
    if out_dir is not None and cfg.checkpoint_every and ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a checkpoint is only ever renamed into place, so this is rare
            from . import LssrError

            raise LssrError(f"checkpoint {ckpt_path} cannot be read ({exc}); delete it to restart the run from step 0") from exc
        if state.get("config_hash") == cfg.hash():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sampler.load_state_dict(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            for p, ps in zip(probes, state.get("probes", [])):
                if ps is not None and hasattr(p, "load_state_dict"):
                    p.load_state_dict(ps)
            log.truncate(state["metrics_offset"])
            step, elapsed_before = state["step"], state["elapsed"]
        else:
            ckpt_path.unlink()
            log.reset()
    else:
        log.reset()

    def eval_row(step: int) -> dict:
        model.eval()
        tl, ta = evaluate(model, data.x_train, data.y_train, loss_ps, chunk)
        vl, va = evaluate(model, data.x_test, data.y_test, loss_ps, chunk)
        model.train()
        return {"train_loss": tl, "train_acc": ta, "test_loss": vl, "test_acc": va}

    def full_train_loss() -> float:
        was = model.training
        model.train(cfg.bn_mode == "train")
        snap = _buffers_snapshot(model)
        with torch.no_grad():
            loss = sum(float(loss_ps(model(data.x_train[s : s + chunk]), data.y_train[s : s + chunk]).sum()) for s in range(0, n, chunk)) / n
        _restore_buffers(model, snap)
        model.train(was)
        return loss

    def checkpoint(step: int) -> None:
        state = {
            "config_hash": cfg.hash(),
            "step": step,
            "elapsed": elapsed_before + time.time() - start,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "probes": [p.state_dict() if hasattr(p, "state_dict") else None for p in probes],
            "metrics_offset": log.flush(),
        }
        _save_checkpoint(ckpt_path, state)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=T, initial=step, desc=f"train {cfg.name or cfg.model.name} b={b} η={cfg.optim.lr:g}", unit="step", mininterval=1.0)
    model.train()
    goal_reached = False
    resumed_at = step
    while True:
        if out_dir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step > resumed_at:
            checkpoint(step)
        row: dict = {"step": step, "epoch": step / sampler.steps_per_epoch}
        if step % cfg.eval_every == 0 or step == T:
            row.update(eval_row(step))
            if not math.isfinite(row["train_loss"]) or row["train_loss"] > cfg.stop.divergence_bound:
                status = "diverged"
            s = cfg.stop
            if (s.train_loss_goal is not None and row["train_loss"] <= s.train_loss_goal) or (
                s.train_acc_goal is not None and row["train_acc"] >= s.train_acc_goal
            ):
                goal_reached = True
        if step >= T or status == "diverged" or goal_reached:
            log.append(row)
            break
        idx = sampler.next().to(device)
        active = [p for p in probes if p.wants(step)]
        ctx = None
        if active:
            ctx = StepContext(step, model, idx, cfg.optim.lr, data, cfg, loss_ps)
            ctx.train_loss_before = full_train_loss()
            snap = _buffers_snapshot(model)
            for p in active:
                p.before_step(ctx)
            _restore_buffers(model, snap)
        optimizer.zero_grad(set_to_none=True)
        batch_loss = float(chunked_loss_and_grad(model, data.x_train, data.y_train, idx, loss_ps, chunk))
        if step % cfg.log_every == 0:
            row["batch_loss"] = batch_loss
        if not math.isfinite(batch_loss) or batch_loss > cfg.stop.divergence_bound:
            status = "diverged"
            row["batch_loss"] = batch_loss
            log.append(row)
            break
        optimizer.step()
        if ctx is not None:
            ctx.batch_loss = batch_loss
            ctx.train_loss_after = full_train_loss()
            snap = _buffers_snapshot(model)
            for p in active:
                p.after_step(ctx)
            _restore_buffers(model, snap)
        if len(row) > 2:
            log.append(row)
        step += 1
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{batch_loss:.4g}")
    if bar is not None:
        bar.close()
    for p in probes:
        p.close()
    wall = elapsed_before + time.time() - start
    metrics_file = log.finalize()
    metrics = pd.read_csv(metrics_file)
    if out_dir is None:
        shutil.rmtree(out, ignore_errors=True)
    else:
        write_run_outputs(
            out, cfg, model.state_dict(), metrics, data, device, wall,
            status=status, steps=step, stopped_by="divergence" if status == "diverged" else ("goal" if goal_reached else "budget"),
            resumed=resumed_at > 0,
        )
        if ckpt_path.exists():
            ckpt_path.unlink()
    return RunResult(status, step, metrics, model, wall)


def subset_for(cfg: RunConfig, cache_root: str | Path = "results/data") -> Subset:
    """Load (building once if needed) the subset that ``cfg.data`` names, under ``cache_root``."""
    spec = SubsetSpec(cfg.data.dataset, cfg.data.n, cfg.data.seed, cfg.data.root, cfg.data.download, cfg.data.resize, cfg.data.num_classes)
    folder = Path(cache_root) / spec.name
    if not (folder / "manifest.json").exists():
        build_subset(spec, folder)
    return load_subset(folder)


def check_subset_matches(cfg: RunConfig, data: Subset, where: str) -> None:
    """The subset's manifest must be the one the config names (dataset, n, seed, resize)."""
    from . import LssrError

    m = data.manifest
    for key, want in (("dataset", cfg.data.dataset), ("n", cfg.data.n), ("seed", cfg.data.seed), ("resize", cfg.data.resize)):
        if m.get(key) != want:
            raise LssrError(f"{where}: subset manifest has {key}={m.get(key)!r} but the config says data.{key}: {want!r}")


def run_from_config(cfg: RunConfig, out_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True) -> RunResult:
    """The ``lssr train`` entry point: load the subset, attach configured probes, train, write outputs."""
    if data_dir is not None:
        data = load_subset(data_dir)
        check_subset_matches(cfg, data, str(data_dir))
    else:
        data = subset_for(cfg)
    probes: list[Probe] = []
    if cfg.probe is not None:
        from .diagnostics import DiagnosticsProbe

        probes.append(DiagnosticsProbe(cfg, Path(out_dir) / "diagnostics.csv"))
    return train(cfg, data, out_dir, probes=probes, progress=progress)
