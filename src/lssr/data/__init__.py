"""Data layer: raw data sets -> stratified, seeded DATASET-n subsets on disk -> standardized tensors.

- :mod:`lssr.data.sources`: the raw loaders (torchvision CIFAR-10/100 and STL-10 with their download,
  the Tiny-ImageNet tree, image folders, scikit-learn's digits), registered in :data:`SOURCES`.
- :mod:`lssr.data.subset`: the paper's ``DATASET-n`` notation (k = 1024), the stratified seeded choice of
  n samples, ``data.pt`` + ``manifest.json`` on disk, and loading a subset standardized per channel.

The names of the sources, the ``DATASET-n`` notation (``K``, :func:`parse_size`, :func:`parse_spec`) and
:class:`DataError` live in :mod:`lssr.datasets` (below both this package and :mod:`lssr.config`) and are
re-exported here. Importing this package does not import torch (planning a workflow stays fast).
"""

from ..datasets import SOURCE_NAMES, DataError, K, parse_size, parse_spec
from .sources import (
    IMAGE_SUFFIXES,
    SOURCES,
    TINY_IMAGENET_MD5,
    TINY_IMAGENET_URL,
    RawSplits,
    get_source,
    load_cifar,
    load_digits,
    load_imagefolder,
    load_stl10,
    load_tinyimagenet,
)
from .subset import (
    Subset,
    SubsetSpec,
    build_subset,
    load_subset,
    sha256_array,
    stratified_indices,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "K",
    "SOURCES",
    "SOURCE_NAMES",
    "TINY_IMAGENET_MD5",
    "TINY_IMAGENET_URL",
    "DataError",
    "RawSplits",
    "Subset",
    "SubsetSpec",
    "build_subset",
    "get_source",
    "load_cifar",
    "load_digits",
    "load_imagefolder",
    "load_stl10",
    "load_subset",
    "load_tinyimagenet",
    "parse_size",
    "parse_spec",
    "sha256_array",
    "stratified_indices",
]
