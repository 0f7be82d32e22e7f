"""What a run leaves behind: ``metrics.csv``, ``model.pt``, ``run.json`` (provenance: config and hash,
seeds, subset hashes, device, library versions, git commit, wall time) and the resumable checkpoint."""

from __future__ import annotations

import functools
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from .. import __version__
from ..config import RunConfig
from ..data import Subset
from ..io import CsvLog, torch_save, write_json
from .core import METRIC_COLUMNS

CHECKPOINT = "checkpoint.pt"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the checked-out code (``git rev-parse HEAD``), read once per process: the training entry points
    call it when they start, so a run records the code it trained with even when the checkout moves on before the
    run ends ("unknown" outside a git checkout)."""
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
    out: Path,
    cfg: RunConfig,
    state: dict,
    metrics: pd.DataFrame,
    data: Subset,
    device: torch.device,
    wall: float,
    *,
    status: str,
    steps: int,
    stopped_by: str,
    resumed: bool = False,
    extra: dict | None = None,
) -> None:
    """Write ``model.pt`` (final weights) and ``run.json`` (status, what stopped the run and the step at which a
    loss or accuracy goal was met, config and hash, seeds, subset hashes, device, versions, git commit, wall time,
    final metrics) atomically, ``run.json`` last."""
    torch_save(out / "model.pt", {k: v.detach().cpu() for k, v in state.items()})
    final = metrics.dropna(subset=["train_loss"]).iloc[-1].to_dict() if metrics["train_loss"].notna().any() else {}
    record = {
        "status": status,
        "steps": steps,
        "stopped_by": stopped_by,  # goal | budget | divergence
        "goal_step": steps if stopped_by == "goal" else None,  # the evaluation step at which the goal was met
        "train_acc_goal": cfg.stop.train_acc_goal,
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
        # the last evaluation's; null where it measured no number (the test set at a goal check)
        "final": {k: _measured(final.get(k)) for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
    }
    record.update(extra or {})
    write_json(out / "run.json", record)


def _measured(value):
    """A metric of run.json's ``final``: None for one not measured (absent or NaN in metrics.csv)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


#: Written into every checkpoint; a file without it (or with another value) is not one of ours.
CHECKPOINT_FORMAT = "lssr-checkpoint-1"


def save_checkpoint(path: Path, identity: dict, state: dict) -> None:
    """Write ``state`` (tensors, dicts, lists, numbers, strings only: read back with ``weights_only=True``)
    atomically, with the format tag and ``identity`` (what :func:`load_checkpoint` checks it against)."""
    torch_save(path, {"format": CHECKPOINT_FORMAT, "identity": identity, **state})


def fresh_start_warning(path: Path, reason: str) -> None:
    """One line on stderr: the checkpoint at ``path`` is not used, the run starts from step 0."""
    print(f"lssr: warning: ignoring checkpoint {path}: {reason}; starting from step 0", file=sys.stderr, flush=True)


def load_checkpoint(path: Path, identity: dict, required: Sequence[str] = ()) -> dict | None:
    """The checkpoint at ``path`` when it is readable with ``torch.load(..., weights_only=True)``, carries
    :data:`CHECKPOINT_FORMAT`, the same ``identity`` (e.g. the config hash) and the keys ``required``.

    None when there is no file; None after a one-line warning (and the file removed) when it is truncated,
    foreign (random bytes, a zip of something else, a pickle of arbitrary objects) or another config's, so
    that the caller starts afresh instead of crashing."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, a foreign archive, a pickle of non-tensor objects
        reason = f"not a readable checkpoint (truncated or foreign file; torch.load raised {type(exc).__name__})"
    else:
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            reason = "not an lssr checkpoint (no format tag)"
        elif state.get("identity") != identity:
            reason = "written for another config (or another group of runs)"
        elif missing := [k for k in required if k not in state]:
            reason = f"incomplete (no {', '.join(missing)})"
        else:
            return state
    fresh_start_warning(path, reason)
    path.unlink(missing_ok=True)
    return None
