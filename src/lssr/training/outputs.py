"""What a run leaves behind: ``metrics.csv``, ``model.pt``, ``run.json`` (provenance: config and hash,
seeds, subset hashes, device, library versions, git commit, wall time) and the resumable checkpoint."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pandas as pd
import torch

from .. import __version__
from ..config import RunConfig
from ..data import Subset
from ..io import CsvLog, torch_save, write_json
from .core import METRIC_COLUMNS

CHECKPOINT = "checkpoint.pt"


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


def write_metrics(path: Path, rows: list[dict]) -> pd.DataFrame:
    """Write ``rows`` to ``metrics.csv`` through :class:`~lssr.io.CsvLog` (renamed into place); return them."""
    log = CsvLog(path, METRIC_COLUMNS)
    log.reset()
    for row in rows:
        log.append(row)
    return pd.read_csv(log.finalize())


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


def save_checkpoint(path: Path, state: dict) -> None:
    torch_save(path, state)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` (written by :func:`save_checkpoint`, so rarely unreadable)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a checkpoint is only ever renamed into place, so this is rare
        from .. import LssrError

        raise LssrError(f"checkpoint {path} cannot be read ({exc}); delete it to restart the run from step 0") from exc
