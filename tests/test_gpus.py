"""lssr.gpus: one GPU per local job, by exclusive file locks, and the local GPU cap of profiles/default
(tested without a GPU: stand-in nvidia-smi programs)."""

import subprocess
import sys
from pathlib import Path

import pytest

from lssr.gpus import NO_GPU_CAP, claim_gpu, local_gpu_cap, release_all, visible_gpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _release():
    yield
    release_all()


def test_single_gpu_or_none_claims_nothing(tmp_path):
    assert claim_gpu(1, tmp_path) == 0 and claim_gpu(0, tmp_path) == 0
    assert not list(tmp_path.iterdir())


def test_claims_take_distinct_gpus_until_all_are_held(tmp_path):
    # flock locks belong to the open file, so two claims in one process exclude each other as two processes do
    assert [claim_gpu(3, tmp_path) for _ in range(3)] == [0, 1, 2]
    with pytest.warns(UserWarning, match="all 3 GPUs are claimed"):
        assert claim_gpu(3, tmp_path) == 0
    release_all()
    assert claim_gpu(3, tmp_path) == 0


def test_a_claim_ends_with_its_process(tmp_path):
    code = f"from lssr.gpus import claim_gpu; print(claim_gpu(2, {str(tmp_path)!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "0"
    assert claim_gpu(2, tmp_path) == 0, "the finished process's lock on GPU 0 must be gone"
    held = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert held.stdout.strip() == "1", "GPU 0 is held by this test process"


def test_resolve_device_claims_a_gpu_once_per_process(tmp_path, monkeypatch):
    import torch

    from lssr.training import resolve_device

    monkeypatch.setenv("LSSR_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    claim_gpu(2, tmp_path)  # another job holds GPU 0
    assert resolve_device("cuda") == torch.device("cuda:1")
    assert resolve_device("auto") == torch.device("cuda:1"), "one claim per process"
    assert resolve_device("cuda:0") == torch.device("cuda:0"), "an explicit index is taken as given"


def _fake_nvidia_smi(folder, lines, rc=0):
    """A stand-in `nvidia-smi` on PATH that prints ``lines`` for `-L` and exits with ``rc``."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    body = "".join(f"echo '{line}'\n" for line in lines)
    exe.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] || exit 2\n{body}exit {rc}\n')
    exe.chmod(0o755)
    return str(folder)


def test_visible_gpus_from_cuda_visible_devices_or_nvidia_smi(tmp_path):
    two = _fake_nvidia_smi(tmp_path / "two", ["GPU 0: NVIDIA H100 (UUID: GPU-a)", "GPU 1: NVIDIA H100 (UUID: GPU-b)"])
    broken = _fake_nvidia_smi(tmp_path / "broken", ["NVIDIA-SMI has failed"], rc=9)
    empty = str(tmp_path / "none")
    # CUDA_VISIBLE_DEVICES wins over nvidia-smi; empty entries do not count
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,3", "PATH": two}) == 3
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": " 2 , 5 ,", "PATH": two}) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "", "PATH": two}) == 0
    assert visible_gpus({"PATH": two}) == 2
    assert visible_gpus({"PATH": broken}) == 0
    assert visible_gpus({"PATH": empty}) == 0
    assert local_gpu_cap({"PATH": two}) == 2 and local_gpu_cap({"CUDA_VISIBLE_DEVICES": "7"}) == 1
    assert local_gpu_cap({"PATH": empty}) == local_gpu_cap({"CUDA_VISIBLE_DEVICES": ""}) == NO_GPU_CAP == 1024


@pytest.mark.parametrize("cuda,nvidia,want", [("0,1,2", None, 3), (None, 1, 1), (None, 0, 1024)])
def test_default_profile_caps_local_gpu_jobs_at_the_gpu_count(tmp_path, monkeypatch, cuda, nvidia, want):
    """profiles/default read as Snakemake reads a profile (yte): its `resources: gpu` is this machine's GPU count."""
    yte = pytest.importorskip("yte", reason="yte (installed with snakemake) is missing")
    if cuda is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda)
    if nvidia is not None:
        lines = [f"GPU {i}: NVIDIA A100 (UUID: GPU-{i})" for i in range(nvidia)]
        monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, lines))
    with open(ROOT / "profiles" / "default" / "config.yaml") as fh:
        profile = yte.process_yaml(fh, require_use_yte=True)
    assert profile["resources"] == {"gpu": want}
    assert profile["set-resource-scopes"] == {"gpu": "local"}
