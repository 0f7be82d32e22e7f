"""The monitor's probe set: a fixed, seeded draw of n samples from the training data (its diagnose rows), and
the map-style data set behind a loader (the streaming rows' fresh samples)."""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ..errors import LssrError
from .batches import collect
from .guards import preserved_rng


def _dataset_with_transform(ds: Dataset):
    """The object whose ``transform`` attribute the samples of ``ds`` go through (``Subset`` unwrapped)."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds if hasattr(ds, "transform") else None


def draw_probe_set(data: Any, n: int | None, seed: int, transform: Callable | None = None) -> Any:
    """The fixed probe set: n samples of ``data`` (all for n=None or a smaller data set) as one nest of CPU
    tensors.

    A ``DataLoader`` over a map-style data set is read through its data set (a seeded choice of n indices:
    its sampler, shuffling and batch size play no part); ``transform`` replaces the data set's own
    ``transform`` attribute during the draw (torchvision data sets, also inside a ``Subset``) so that the
    probe set can be drawn without random augmentation. Random transforms that remain are applied once, at
    the draw. The global random states are as before."""
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        data = data.dataset
    if n is not None and isinstance(data, Dataset) and hasattr(data, "__len__"):
        n = min(n, len(data))  # a data set smaller than n: all of it
    holder = None
    if transform is not None:
        holder = _dataset_with_transform(data) if isinstance(data, Dataset) else None
        if holder is None:
            raise LssrError(
                f"SharpnessMonitor: transform= needs a data set with a `transform` attribute (torchvision style), "
                f"got {type(data).__name__}; fix: pass the probe data without augmentation as `data` instead"
            )
    with preserved_rng():
        saved = holder.transform if holder is not None else None
        try:
            if holder is not None:
                holder.transform = transform
            batch, _ = collect(data, n=n, seed=seed)
        finally:
            if holder is not None:
                holder.transform = saved
    return batch


def map_style(data: Any) -> Dataset | None:
    """The map-style data set behind ``data`` (itself, or a DataLoader's), else None."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        return data
    return None
