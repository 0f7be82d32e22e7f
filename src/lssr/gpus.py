"""One GPU per local job: a training process asked for ``device: cuda`` (or ``auto``) on a machine with several
visible GPUs claims the first free one, so that Snakemake's local ``gpu`` resource (as many jobs at once as
the machine has GPUs, profiles/default) puts one job on each GPU instead of all of them on cuda:0.

A claim is an exclusive, non-blocking ``flock`` on ``<lock_dir>/lssr-gpu-<i>.lock``, held until the process
exits (the kernel releases it even after SIGKILL). On a cluster node that shows the job one GPU, nothing is
claimed. Pure standard library: the caller passes the visible-GPU count.

:func:`local_gpu_cap` is the local ``gpu`` resource of profiles/default: how many GPU jobs this machine runs at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

_HELD: list = []  # open lock files of this process's claims (closing one would release it)


def lock_dir() -> Path:
    """Where the GPU locks live: ``$LSSR_GPU_LOCK_DIR`` or the system's temporary folder."""
    return Path(os.environ.get("LSSR_GPU_LOCK_DIR") or tempfile.gettempdir())


def claim_gpu(count: int, folder: str | os.PathLike | None = None) -> int:
    """Index of the first of ``count`` GPUs no other lssr process holds, now held by this one.

    With one GPU (or none) returns 0 without locking. When every GPU is held (more jobs than GPUs, e.g.
    ``--resources gpu=`` set above the count) it warns and returns 0: the job still runs, sharing cuda:0.
    """
    if count <= 1:
        return 0
    folder = Path(folder) if folder is not None else lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        fh = open(folder / f"lssr-gpu-{i}.lock", "a")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _HELD.append(fh)
        return i
    warnings.warn(
        f"all {count} GPUs are claimed by other lssr processes (locks in {folder}); using cuda:0. "
        "Run at most one training job per GPU (profiles/default sets the local gpu resource to the GPU count).",
        stacklevel=2,
    )
    return 0


_CLAIMED: dict[str, int] = {}


def process_gpu(count: int) -> int:
    """This process's GPU: claimed once (:func:`claim_gpu`), the same index on every later call."""
    if "index" not in _CLAIMED:
        _CLAIMED["index"] = claim_gpu(count)
    return _CLAIMED["index"]


def release_all() -> None:
    """Drop this process's claims (tests; a process's claims also end when it exits)."""
    while _HELD:
        _HELD.pop().close()
    _CLAIMED.clear()


# A machine without GPUs caps nothing: a cap also clamps what one job asks for (Snakemake lowers a job's gpu=2 to
# the cap), and a submit host without GPUs must not turn a data-parallel job's gpu=2 into 1. A local CUDA run
# there fails anyway, in the training job, saying that CUDA is missing.
NO_GPU_CAP = 1024


def visible_gpus(environ: dict | None = None) -> int:
    """How many GPUs a process started here sees: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (empty:
    none), else the ``GPU ...`` lines of ``nvidia-smi -L`` (0 when nvidia-smi is missing or fails)."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return len([d for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    exe = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def local_gpu_cap(environ: dict | None = None) -> int:
    """The ``gpu`` resource of a local Snakemake run (profiles/default): one training job per visible GPU, or
    :data:`NO_GPU_CAP` on a machine without GPUs."""
    n = visible_gpus(environ)
    return n if n > 0 else NO_GPU_CAP
