import sys
from pathlib import Path

# let tests import helper modules that live next to them (bad_inputs, killable_run)
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The longest tests (end-to-end workflow, interrupted runs) first, so that with `pytest -n 2 --dist worksteal`
# (make test) they start at once on different workers and the quick tests fill in around them.
_LONG = ("test_workflow.py::test_end_to_end", "test_workflow.py::test_snakemake_interrupted", "test_reliability.py::")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for i, key in enumerate(_LONG):
            if key in item.nodeid:
                return i
        return len(_LONG)

    items.sort(key=rank)  # stable: the rest keep their order
