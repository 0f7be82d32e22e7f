"""lssr.gpus: one GPU per local job, by exclusive file locks (tested without a GPU)."""

import subprocess
import sys

import pytest

from lssr.gpus import claim_gpu, release_all


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
