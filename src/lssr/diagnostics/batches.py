"""The training set of :func:`lssr.diagnose` as one nest of tensors in host memory, from whatever the user has:
a pair of tensors, a ``Dataset``, a ``DataLoader`` (a ragged last batch included) or any iterable of batches;
optionally a fixed, seeded subset of n samples. The curvature code then moves it to the device chunk by chunk."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ..errors import LssrError

Tensor = torch.Tensor


def _is_pair_of_tensors(data) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
        and data[0].dim() >= 1
        and data[1].dim() >= 1
        and data[0].shape[0] == data[1].shape[0]
    )


def subset_indices(total: int, n: int | None, seed: int) -> Tensor | None:
    """The sorted indices of a seeded subset of n of ``total`` samples (a permutation from its own generator,
    never the global RNG); None for all of them."""
    if n is None or n >= total:
        if n is not None and n > total:
            raise LssrError(f"diagnose: n = {n} but the data has only {total} samples; fix: n <= {total} or n=None")
        return None
    if n < 1:
        raise LssrError(f"diagnose: n must be >= 1, got {n}")
    return torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:n].sort().values


def _concat(batches: list, where: str):
    """One nest of tensors from batches of the same structure, concatenated along the sample dimension."""
    flat, spec = tree_flatten(batches[0])
    for k, leaf in enumerate(flat):
        if not isinstance(leaf, Tensor) or leaf.dim() == 0:
            raise LssrError(
                f"{where}: a batch holds {type(leaf).__name__} {str(leaf)[:40]!r}, not a tensor with a sample "
                f"dimension; fix: make every batch a tensor, a tuple or a dict of tensors (drop or encode the rest)"
            )
    columns: list[list[Tensor]] = [[] for _ in flat]
    for i, batch in enumerate(batches):
        leaves, s = tree_flatten(batch)
        if s != spec:
            raise LssrError(f"{where}: batch {i} has another structure than batch 0; fix: give uniform batches")
        for col, leaf in zip(columns, leaves):
            col.append(leaf.detach().cpu())
    return tree_unflatten([torch.cat(c) for c in columns], spec)


def collect(data: Any, *, n: int | None = None, seed: int = 0, chunk: int = 256) -> tuple[Any, int]:
    """(all samples as one nest of CPU tensors with a leading sample dimension, the number before the subset).

    ``data``: a pair (inputs, targets) of tensors; a map-style ``Dataset`` (only the chosen samples are
    read, ``chunk`` at a time); an ``IterableDataset`` (its samples, batched); a ``DataLoader`` or any iterable
    of batches (read once, in its order: a shuffling loader gives another order and another subset each
    time). ``n``: keep a seeded subset of n."""
    where = "diagnose"
    if _is_pair_of_tensors(data):
        total = int(data[0].shape[0])
        idx = subset_indices(total, n, seed)
        pair = tuple(t.detach() for t in data)
        return (pair if idx is None else tuple(t[idx.to(t.device)] for t in pair)), total
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        total = len(data)
        idx = subset_indices(total, n, seed)
        ds = data if idx is None else Subset(data, idx.tolist())
        batches = list(DataLoader(ds, batch_size=chunk, shuffle=False))
        if not batches:
            raise LssrError(f"{where}: the data set is empty")
        return _concat(batches, where), total
    if isinstance(data, IterableDataset):  # yields single samples: batch them
        data = DataLoader(data, batch_size=chunk)
    if isinstance(data, Tensor):
        raise LssrError(f"{where}: got one tensor; fix: pass (inputs, targets), a Dataset or a DataLoader")
    try:
        batches = list(iter(data))
    except TypeError:
        raise LssrError(
            f"{where}: cannot read data of type {type(data).__name__}; fix: pass (inputs, targets), a Dataset, "
            f"a DataLoader or an iterable of batches"
        ) from None
    if not batches:
        raise LssrError(f"{where}: the data yielded no batches")
    whole = _concat(batches, where)
    total = int(tree_flatten(whole)[0][0].shape[0])
    idx = subset_indices(total, n, seed)
    return (whole if idx is None else tree_map(lambda t: t[idx], whole)), total


def as_pair(batch) -> tuple[Tensor, Tensor] | None:
    """(inputs, targets) when a batch is a pair of tensors (the default ``forward``), else None."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch):
        return batch[0], batch[1]
    return None
