"""The public names of ``lssr`` and ``lssr.diagnostics``: listed by ``__all__`` and ``dir()``, each resolving to
what the docs describe, loaded lazily (``import lssr`` imports neither torch nor any of lssr's packages)."""

import ast
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import lssr
import lssr.diagnostics

SRC = Path(__file__).resolve().parents[1] / "src" / "lssr"
NEEDS_LIGHTNING = {"SharpnessCallback", "LearningRateForBatchSize"}
HAVE_LIGHTNING = importlib.util.find_spec("lightning") is not None


def test_dir_lists_the_public_names():
    shown = dir(lssr)
    for name in ("diagnose", "Diagnostics", "AtB", "Cost", "SharpnessMonitor", "SharpnessCallback",
                 "LearningRateForBatchSize", "Estimator", "Eigen", "Compute", "LssrError", "recommend"):  # fmt: skip
        assert name in shown and name in lssr.__all__, name
    assert set(shown) == set(lssr.__all__) | {"__version__"}
    assert set(dir(lssr.diagnostics)) == set(lssr.diagnostics.__all__)
    # the diagnostics' public names are lssr's, minus the error type and the learning-rate side (recommend)
    assert set(lssr.diagnostics.__all__) == set(lssr.__all__) - {"LssrError", "recommend", "LearningRateForBatchSize"}
    # building blocks stay importable from lssr.diagnostics without being listed
    assert "gradient_moments" not in dir(lssr.diagnostics)
    assert callable(lssr.diagnostics.gradient_moments)


@pytest.mark.parametrize("name", lssr.__all__)
def test_each_public_name_resolves(name):
    if name in NEEDS_LIGHTNING and not HAVE_LIGHTNING:
        pytest.skip("lightning is an optional extra (pip install lightning)")
    value = getattr(lssr, name)
    if name == "recommend":
        assert inspect.ismodule(value) and value.__name__ == "lssr.recommend" and callable(value.recommend)
        return
    assert getattr(value, "__name__", None) == name
    if name == "LearningRateForBatchSize":  # the learning-rate side, next to lssr.recommend
        assert value.__module__ == "lssr.lightning_lr"
    elif name != "LssrError":
        assert value is getattr(lssr.diagnostics, name)
        assert value.__module__.startswith("lssr.diagnostics.")
    assert inspect.getdoc(value), name


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="has no attribute 'diagnoes'"):
        lssr.diagnoes  # noqa: B018
    with pytest.raises(AttributeError, match="lssr.diagnostics' has no attribute 'nope'"):
        lssr.diagnostics.nope  # noqa: B018


def test_import_lssr_is_light():
    """``import lssr`` (and ``import lssr.diagnostics``) loads no torch and none of lssr's own modules but
    lssr.errors; a public name then loads its module."""
    code = (
        "import sys, lssr, lssr.diagnostics\n"
        "print(sorted(m for m in sys.modules if m.startswith('lssr')), 'torch' in sys.modules)\n"
        "lssr.Estimator\n"
        "print('torch' in sys.modules)\n"
        "lssr.diagnose\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "['lssr', 'lssr.diagnostics', 'lssr.errors'] False", out
    assert out[1:4] == ["False", "True", ""], out  # the options need no torch; diagnose does


def _imports(path: Path) -> list[str]:
    """The modules a file imports (relative ones with their dots), at any depth of its code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
    return found


def test_the_package_inits_import_nothing_of_lssr_but_the_error_type():
    """The lazy loaders name their modules as strings, so no import arrow runs from a package's __init__ back
    down into (and up out of) the modules it lists."""
    assert _imports(SRC / "__init__.py") == ["importlib", ".errors"]
    assert _imports(SRC / "diagnostics" / "__init__.py") == ["importlib"]


def test_lssr_error_is_defined_once():
    from lssr.errors import LssrError

    assert lssr.LssrError is LssrError and LssrError.__module__ == "lssr.errors"
