"""The data sets by name: the sources lssr reads, the paper's ``DATASET-n`` notation, and :class:`DataError`.

Below both :mod:`lssr.config` (which validates a run's ``data`` section and the workflow's ``datasets:``
entries by these names and sizes) and :mod:`lssr.data` (which loads the sources and builds the subsets).
Pure standard library: planning a workflow imports neither numpy nor torch through this module.

Notation (the paper's): ``DATASET-n`` is a subset of n training samples with k = 1024, so ``cifar10-8k``
has 8192 samples.
"""

from __future__ import annotations

import re

from .errors import LssrError

K = 1024

# The source names, in the order of lssr.data.SOURCES (the loaders; tests/test_data.py checks both name the same).
SOURCE_NAMES = ("cifar10", "cifar100", "stl10", "tinyimagenet", "imagefolder", "digits")


class DataError(LssrError):
    """Bad or missing data: the message names the path or value and the fix."""


def parse_size(text: str | int) -> int:
    """Parse a subset size: ``8k`` -> 8192 (k = 1024), ``1000`` -> 1000."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"(\d+)(k?)", str(text).strip().lower())
    if not m:
        raise DataError(f"subset size {text!r} is not understood: use an integer like 1000 or '8k' (k = 1024)")
    return int(m.group(1)) * (K if m.group(2) else 1)


def parse_spec(spec: str) -> tuple[str, int]:
    """Parse the paper's ``DATASET-n`` notation: ``cifar10-8k`` -> (``cifar10``, 8192)."""
    if "-" not in spec:
        raise DataError(f"data set spec {spec!r} must look like NAME-N, e.g. cifar10-8k or digits-1k")
    name, size = spec.rsplit("-", 1)
    if name not in SOURCE_NAMES:
        raise DataError(f"unknown data set {name!r} in {spec!r}; known: {', '.join(sorted(SOURCE_NAMES))}")
    return name, parse_size(size)
