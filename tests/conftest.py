import sys
from pathlib import Path

import pytest

# let tests import helper modules that live next to them (bad_inputs, killable_run)
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The longest tests (end-to-end workflow, interrupted runs) first, so that with `pytest -n 2 --dist worksteal`
# (make test) they start at once on different workers and the quick tests fill in around them.
_LONG = (
    "test_cluster.py::test_slurm",
    "test_workflow.py::test_end_to_end",
    "test_workflow.py::test_snakemake_interrupted",
    "test_cluster.py::",
    "test_reliability.py::",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for i, key in enumerate(_LONG):
            if key in item.nodeid:
                return i
        return len(_LONG)

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for the module's tests: tiny models on a shared 2-core machine run many times
    slower with OpenMP's two threads under load (cnn6 HVPs ~10x). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
