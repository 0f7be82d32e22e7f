"""DATASET-n subsets: the paper's notation, stratified seeded choice, ``data.pt`` + ``manifest.json``, loading.

Notation (the paper's): ``DATASET-n`` is a subset of n training samples, k = 1024, so ``cifar10-8k``
has 8192 samples. A subset is written once per (dataset, n, seed) as ``data.pt`` (uint8 images NCHW,
int64 labels, for the training subset and the full official test split) plus ``manifest.json``
(source, chosen indices, per-class counts, per-channel mean/std of the subset, sha256 of each array).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import DataConfig
from ..datasets import DataError, K
from ..io import torch_save, write_json
from .sources import RawSplits, get_source

if TYPE_CHECKING:  # torch is imported lazily so that planning a workflow stays fast
    import torch


def stratified_indices(labels: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Choose n indices whose per-class counts differ by at most one, with a seeded generator.

    With C = ``num_classes``, each class gets floor(n / C) samples and ``n mod C`` classes, chosen at
    random, one more. Classes too small for their share give their shortfall to the others (the
    remaining classes still differ by at most one). Returns sorted indices into ``labels``.
    """
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels range over {int(labels.min())}..{int(labels.max())} but num_classes is {num_classes}; "
            f"labels must be 0..{num_classes - 1}"
        )
    if n > len(labels):
        raise DataError(
            f"subset size n={n} is larger than the training pool ({len(labels)} samples); choose n <= {len(labels)}"
        )
    if n < 1:
        raise DataError(f"subset size n={n} must be at least 1")
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(labels == c) for c in range(num_classes)]
    avail = np.array([len(p) for p in pools])
    quota = np.zeros(num_classes, dtype=int)
    remaining = n
    # water-filling: equal shares, capped by availability, the remainder spread over random classes
    while remaining > 0:
        open_classes = np.flatnonzero(quota < avail)
        share, extra = divmod(remaining, len(open_classes))
        give = np.full(len(open_classes), share)
        give[rng.permutation(len(open_classes))[:extra]] += 1
        give = np.minimum(give, avail[open_classes] - quota[open_classes])
        quota[open_classes] += give
        remaining = n - int(quota.sum())
    chosen = [rng.choice(pools[c], size=quota[c], replace=False) for c in range(num_classes) if quota[c] > 0]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def sha256_array(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _resize(images: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or (images.shape[-1] == size and images.shape[-2] == size) or len(images) == 0:
        return images
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(images).float()
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


class SubsetSpec(DataConfig):
    """What identifies a subset: the fields of a run's ``data`` section (:class:`lssr.config.DataConfig`:
    source name, n, seed, where the raw data are, optional resize), plus the subset's folder ``name``."""

    @classmethod
    def of(cls, data: DataConfig) -> "SubsetSpec":
        """The subset a run's validated ``data`` section names."""
        return cls(**dataclasses.asdict(data))

    @property
    def name(self) -> str:
        size = f"{self.n // K}k" if self.n % K == 0 else str(self.n)
        suffix = f"-r{self.resize}" if self.resize else ""
        return f"{self.dataset}-{size}-seed{self.seed}{suffix}"


def _manifest(
    spec: SubsetSpec,
    raw: RawSplits,
    idx: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> dict:
    """``manifest.json`` of a subset: indices, per-class counts, per-channel mean/std of the subset in [0, 1]
    (float64), and the sha256 of each array written to ``data.pt``."""
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    counts = np.bincount(labels, minlength=raw.num_classes)
    return {
        "name": spec.name,
        "dataset": spec.dataset,
        "n": spec.n,
        "seed": spec.seed,
        "source": raw.source,
        "resize": spec.resize,
        "num_classes": raw.num_classes,
        "image_shape": list(images.shape[1:]),
        "indices": idx.tolist(),
        "class_counts": counts.tolist(),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "num_test": int(len(test_labels)),
        "sha256": {
            "train_images": sha256_array(images),
            "train_labels": sha256_array(labels),
            "test_images": sha256_array(test_images),
            "test_labels": sha256_array(test_labels),
        },
    }


def build_subset(spec: SubsetSpec, out_dir: str | Path) -> Path:
    """Build DATASET-n (stratified, seeded) and write ``data.pt`` + ``manifest.json`` atomically."""
    import torch

    out_dir = Path(out_dir)
    loader = get_source(spec.dataset)
    if spec.dataset != "digits" and not spec.root:
        raise DataError(f"data set {spec.dataset!r} needs `root:` (the folder holding its files) in the data config")
    raw = loader(spec.root, download=spec.download, num_classes=spec.num_classes)
    if spec.num_classes is not None and raw.num_classes != spec.num_classes:
        raise DataError(
            f"{spec.dataset} at {spec.root} has {raw.num_classes} classes, config says num_classes: {spec.num_classes}"
        )
    found = np.unique(raw.train_labels)
    if len(found) != raw.num_classes:
        raise DataError(f"{raw.source}: training labels cover {len(found)} classes, expected {raw.num_classes}")
    idx = stratified_indices(raw.train_labels, spec.n, raw.num_classes, spec.seed)
    if raw.train_loader is not None:
        images = raw.train_loader(idx)
    else:
        images = raw.train_images[idx]
    labels = raw.train_labels[idx]
    images = _resize(np.ascontiguousarray(images), spec.resize)
    test_images = _resize(np.ascontiguousarray(raw.test_images), spec.resize)
    test_labels = raw.test_labels
    if images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{raw.source}: train images {images.shape[1:]} and test images {test_images.shape[1:]} differ; "
            f"set data.resize"
        )
    manifest = _manifest(spec, raw, idx, images, labels, test_images, test_labels)
    payload = {
        "train_images": torch.from_numpy(np.ascontiguousarray(images)),
        "train_labels": torch.from_numpy(np.ascontiguousarray(labels)),
        "test_images": torch.from_numpy(np.ascontiguousarray(test_images)),
        "test_labels": torch.from_numpy(np.ascontiguousarray(test_labels)),
    }
    torch_save(out_dir / "data.pt", payload)
    write_json(out_dir / "manifest.json", manifest)  # written last: its presence marks a complete subset
    return out_dir


@dataclass
class Subset:
    """A loaded subset, standardized per channel with the subset's own statistics."""

    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"
    manifest: dict

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["image_shape"])

    def to(self, device, dtype=None) -> "Subset":
        import torch

        dtype = dtype or torch.float32
        return Subset(
            self.x_train.to(device, dtype),
            self.y_train.to(device),
            self.x_test.to(device, dtype),
            self.y_test.to(device),
            self.manifest,
        )


def _read_subset(path: Path, verify: bool) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and the four uint8/int64 arrays of a subset folder, sha256-checked when ``verify``."""
    import torch

    man_file, data_file = path / "manifest.json", path / "data.pt"
    if not man_file.exists() or not data_file.exists():
        raise DataError(
            f"subset folder {path} is incomplete: expected {man_file.name} and {data_file.name}; "
            f"rebuild it with `lssr subset`"
        )
    try:
        manifest = json.loads(man_file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{man_file} is not valid JSON ({exc}); delete the folder and rebuild it with `lssr subset`"
        ) from exc
    try:
        payload = torch.load(data_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / corrupt file
        raise DataError(
            f"{data_file} cannot be read ({type(exc).__name__}: {exc}); delete it and rebuild with `lssr subset`"
        ) from exc
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        raise DataError(f"{data_file} lacks some of {list(keys)}; delete {path} and rebuild it with `lssr subset`")
    arrays = {k: payload[k].numpy() for k in keys}
    missing = [k for k in ("sha256", "mean", "std", "num_classes", "image_shape") if k not in manifest]
    if missing:
        raise DataError(f"{man_file} lacks {missing}; delete {path} and rebuild it with `lssr subset`")
    if verify:
        for key, arr in arrays.items():
            if sha256_array(arr) != manifest["sha256"].get(key):
                raise DataError(
                    f"{data_file}: sha256 of {key} does not match {man_file}; the subset file was changed or is "
                    f"corrupt. Delete {path} and rebuild it with `lssr subset`."
                )
    return manifest, arrays


def load_subset(path: str | Path, verify: bool = True) -> Subset:
    """Load ``data.pt`` + ``manifest.json`` from a subset folder; check hashes; standardize.

    Images become (x / 255 - mean) / std per channel, with the subset's own mean and std (float32).
    """
    import torch

    manifest, arrays = _read_subset(Path(path), verify)
    mean = torch.tensor(manifest["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(manifest["std"], dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-8)

    def standardize(a: np.ndarray) -> "torch.Tensor":
        return (torch.from_numpy(a).float() / 255.0 - mean) / std

    return Subset(
        standardize(arrays["train_images"]),
        torch.from_numpy(arrays["train_labels"]),
        standardize(arrays["test_images"]),
        torch.from_numpy(arrays["test_labels"]),
        manifest,
    )
