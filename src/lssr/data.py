"""Data layer: raw data sets -> stratified, seeded DATASET-n subsets on disk -> standardized tensors.

Notation (the paper's): ``DATASET-n`` is a subset of n training samples, k = 1024, so ``cifar10-8k``
has 8192 samples. A subset is written once per (dataset, n, seed) as ``data.pt`` (uint8 images NCHW,
int64 labels, for the training subset and the full official test split) plus ``manifest.json``
(source, chosen indices, per-class counts, per-channel mean/std of the subset, sha256 of each array).

Sources (a registry, :data:`SOURCES`): ``cifar10``, ``cifar100``, ``stl10`` (torchvision.datasets),
``tinyimagenet`` (the ``tiny-imagenet-200/`` tree), ``imagefolder`` (``train/<class>/*`` and
``test/<class>/*``, labels = sorted folder names) and ``digits`` (scikit-learn's 8x8 digits, shipped
inside the package; the first 1024 images form the training pool, the remaining 773 the test set).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import LssrError
from .io import torch_save, write_json

if TYPE_CHECKING:  # torch is imported lazily so that planning a workflow stays fast
    import torch

K = 1024
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"}


class DataError(LssrError):
    """Bad or missing data: the message names the path or value and the fix."""


@dataclass(frozen=True)
class RawSplits:
    """A whole data set in memory: training pool and test split, uint8 NCHW images, int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str
    # Optional lazy access for large image-folder pools: decode only the chosen indices.
    train_loader: Callable[[np.ndarray], np.ndarray] | None = None


# ---------------------------------------------------------------------------------------------
# Dataset specs: "cifar10-8k" -> ("cifar10", 8192)
# ---------------------------------------------------------------------------------------------


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
    if name not in SOURCES:
        raise DataError(f"unknown data set {name!r} in {spec!r}; known: {', '.join(sorted(SOURCES))}")
    return name, parse_size(size)


# ---------------------------------------------------------------------------------------------
# Loaders of raw data sets
# ---------------------------------------------------------------------------------------------


def _decode_image(path: Path, channels: int = 3) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(f"image file {path} is missing; restore it (or remove its entry from the data set's listing)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}. Replace or delete the corrupt file.") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1).copy()


def _stack_images(paths: list[Path], what: str) -> np.ndarray:
    from tqdm.auto import tqdm

    arrays = [_decode_image(p) for p in tqdm(paths, desc=f"decode {what}", unit="img", leave=False, disable=len(paths) < 2000)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"images under {what} have different shapes {sorted(shapes)}; set data.resize to make them equal")
    return np.stack(arrays) if arrays else np.zeros((0, 3, 1, 1), np.uint8)


def _torchvision_missing(root: Path, cls: type, exc: Exception, download: bool) -> DataError:
    folder = root / cls.base_folder
    if download:
        return DataError(
            f"{cls.__name__}: download into {root} failed or gave corrupt files ({type(exc).__name__}: {exc}). "
            f"Check the network connection and retry, or put the official files in {folder} by hand and set "
            f"`download: false`."
        )
    return DataError(
        f"{cls.__name__} not found or corrupt under {root}: expected the official files in {folder} ({exc}). "
        f"Put them there, or set `download: true` in the data config to let torchvision download them."
    )


def load_cifar(root: str | Path, download: bool = False, num_classes: int = 10) -> RawSplits:
    """CIFAR-10 / CIFAR-100 via torchvision (python pickle batches, md5-checked)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    root = Path(root)
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as exc:  # missing / md5 mismatch; OSError covers a failed download (URLError)
        raise _torchvision_missing(root, cls, exc, download) from exc
    return RawSplits(
        train_images=np.ascontiguousarray(tr.data.transpose(0, 3, 1, 2)),
        train_labels=np.asarray(tr.targets, dtype=np.int64),
        test_images=np.ascontiguousarray(te.data.transpose(0, 3, 1, 2)),
        test_labels=np.asarray(te.targets, dtype=np.int64),
        num_classes=num_classes,
        source=f"torchvision.datasets.{cls.__name__}({root})",
    )


def load_stl10(root: str | Path, download: bool = False) -> RawSplits:
    """STL-10 (labelled train 5000 / test 8000, 96x96) via torchvision's binary reader."""
    from torchvision import datasets

    root = Path(root)
    try:
        # torchvision's integrity check wants all of train_X/y, test_X/y and unlabeled_X.bin
        tr = datasets.STL10(str(root), split="train", download=download)
        te = datasets.STL10(str(root), split="test", download=download)
    except (RuntimeError, OSError) as exc:
        raise _torchvision_missing(root, datasets.STL10, exc, download) from exc
    return RawSplits(
        train_images=np.ascontiguousarray(tr.data),
        train_labels=np.asarray(tr.labels, dtype=np.int64),
        test_images=np.ascontiguousarray(te.data),
        test_labels=np.asarray(te.labels, dtype=np.int64),
        num_classes=10,
        source=f"torchvision.datasets.STL10({root})",
    )


def _list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; hidden files (``._x.jpg`` from macOS) are skipped."""
    with os.scandir(folder) as entries:  # scandir: no extra stat per file on large trees
        names = [
            e.name for e in entries
            if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file()
        ]
    return [folder / name for name in sorted(names)]


def _list_class_dirs(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder``, hidden ones (``.ipynb_checkpoints``) skipped."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_tinyimagenet(root: str | Path, download: bool = False) -> RawSplits:
    """Tiny-ImageNet from the standard ``tiny-imagenet-200/`` tree (labelled val split = test).

    ``root`` is either the ``tiny-imagenet-200`` folder itself or its parent. With ``download``
    the official zip is downloaded and unpacked into ``root`` when the tree is missing.
    """
    root = Path(root)
    base = root if (root / "wnids.txt").exists() else root / "tiny-imagenet-200"
    if not (base / "wnids.txt").exists() and download:
        from torchvision.datasets import utils as tv_utils

        try:
            tv_utils.download_and_extract_archive(TINY_IMAGENET_URL, str(root), md5=TINY_IMAGENET_MD5)
        except (RuntimeError, OSError) as exc:
            raise DataError(
                f"Tiny-ImageNet download of {TINY_IMAGENET_URL} into {root} failed ({type(exc).__name__}: {exc}). "
                f"Check the network and retry, or unpack the official zip into {root} and set `download: false`."
            ) from exc
        base = root / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.exists():
        raise DataError(
            f"Tiny-ImageNet not found: expected {wnids_file} (the tiny-imagenet-200/ tree). Unpack the "
            f"official zip there, or set `download: true` in the data config."
        )
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    if len(wnids) != 200:
        raise DataError(
            f"{wnids_file} lists {len(wnids)} classes; Tiny-ImageNet has 200. Restore the official wnids.txt "
            f"(one wnid a line) or re-download the data set"
        )
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{wnids_file} lists some wnids twice; restore the official wnids.txt")
    index = {w: i for i, w in enumerate(wnids)}
    train_dir = base / "train"
    if not train_dir.is_dir():
        raise DataError(f"Tiny-ImageNet training folder {train_dir} is missing")
    folders = _list_class_dirs(train_dir)
    extra = sorted(set(folders) - set(index))
    missing = sorted(set(index) - set(folders))
    if extra or missing:
        raise DataError(
            f"{train_dir} has {len(folders)} class folders but wnids.txt lists 200: "
            f"extra {extra[:5]}, missing {missing[:5]}. Remove the extra folders or restore the missing ones."
        )
    train_paths, train_labels = [], []
    for w in wnids:
        imgs_dir = train_dir / w / "images"
        if not imgs_dir.is_dir():
            raise DataError(f"Tiny-ImageNet class folder {imgs_dir} is missing")
        files = _list_images(imgs_dir)
        train_paths += files
        train_labels += [index[w]] * len(files)
    ann = base / "val" / "val_annotations.txt"
    if not ann.exists():
        raise DataError(f"Tiny-ImageNet validation labels {ann} are missing")
    test_paths, test_labels = [], []
    for line_no, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"{ann}:{line_no}: expected '<file>\\t<wnid>...' with a wnid from wnids.txt, got {line!r}")
        test_paths.append(base / "val" / "images" / parts[0])
        test_labels.append(index[parts[1]])
    train_paths_arr = np.array(train_paths, dtype=object)
    return RawSplits(
        train_images=np.zeros((0, 3, 64, 64), np.uint8),  # decoded lazily by train_loader
        train_labels=np.asarray(train_labels, dtype=np.int64),
        test_images=_stack_images(test_paths, f"{base}/val"),
        test_labels=np.asarray(test_labels, dtype=np.int64),
        num_classes=200,
        source=f"tiny-imagenet-200 tree at {base}",
        train_loader=lambda idx: _stack_images(list(train_paths_arr[idx]), f"{train_dir}"),
    )


def load_imagefolder(root: str | Path, download: bool = False, num_classes: int | None = None) -> RawSplits:
    """Any ``train/<class>/*`` + ``test/<class>/*`` tree; labels are the sorted class-folder names."""
    root = Path(root)
    if download:
        raise DataError(f"imagefolder data at {root} cannot be downloaded; set `download: false` and point `root` at the tree")
    splits = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise DataError(f"image-folder tree {root} has no {split}/ folder; expected {root}/{split}/<class>/<image>")
        classes = _list_class_dirs(d)
        if not classes:
            raise DataError(f"{d} has no class folders; expected {d}/<class>/<image>")
        paths, labels = [], []
        for i, c in enumerate(classes):
            files = _list_images(d / c)
            if not files:
                raise DataError(f"class folder {d / c} holds no images")
            paths += files
            labels += [i] * len(files)
        splits[split] = (classes, paths, np.asarray(labels, dtype=np.int64))
    if splits["train"][0] != splits["test"][0]:
        raise DataError(
            f"{root}/train and {root}/test have different class folders: "
            f"{sorted(set(splits['train'][0]) ^ set(splits['test'][0]))}"
        )
    k = len(splits["train"][0])
    if num_classes is not None and k != num_classes:
        raise DataError(f"{root}/train has {k} class folders but the config says num_classes: {num_classes}")
    train_paths = np.array(splits["train"][1], dtype=object)
    return RawSplits(
        train_images=np.zeros((0, 3, 1, 1), np.uint8),
        train_labels=splits["train"][2],
        test_images=_stack_images(splits["test"][1], f"{root}/test"),
        test_labels=splits["test"][2],
        num_classes=k,
        source=f"image folder {root}",
        train_loader=lambda idx: _stack_images(list(train_paths[idx]), f"{root}/train"),
    )


def load_digits(root: str | Path | None = None, download: bool = False) -> RawSplits:
    """scikit-learn's digits (1797 8x8 grey images, 0..16 scaled to 0..255): first 1024 train, rest test."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    imgs = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = d.target.astype(np.int64)
    return RawSplits(imgs[:K], y[:K], imgs[K:], y[K:], 10, "sklearn.datasets.load_digits")


SOURCES: dict[str, Callable[..., RawSplits]] = {
    "cifar10": lambda root, download=False, **kw: load_cifar(root, download, 10),
    "cifar100": lambda root, download=False, **kw: load_cifar(root, download, 100),
    "stl10": lambda root, download=False, **kw: load_stl10(root, download),
    "tinyimagenet": lambda root, download=False, **kw: load_tinyimagenet(root, download),
    "imagefolder": lambda root, download=False, num_classes=None, **kw: load_imagefolder(root, download, num_classes),
    "digits": lambda root=None, download=False, **kw: load_digits(root, download),
}


def get_source(name: str) -> Callable[..., RawSplits]:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(sorted(SOURCES))}") from None


# ---------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------


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
        raise DataError(f"subset size n={n} is larger than the training pool ({len(labels)} samples); choose n <= {len(labels)}")
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


@dataclass(frozen=True)
class SubsetSpec:
    """What identifies a subset: source name, n, seed, where the raw data are, optional resize."""

    dataset: str
    n: int
    seed: int = 0
    root: str | None = None
    download: bool = False
    resize: int | None = None
    num_classes: int | None = None

    @property
    def name(self) -> str:
        size = f"{self.n // K}k" if self.n % K == 0 else str(self.n)
        suffix = f"-r{self.resize}" if self.resize else ""
        return f"{self.dataset}-{size}-seed{self.seed}{suffix}"


def build_subset(spec: SubsetSpec, out_dir: str | Path) -> Path:
    """Build DATASET-n (stratified, seeded) and write ``data.pt`` + ``manifest.json`` atomically."""
    import torch

    out_dir = Path(out_dir)
    loader = get_source(spec.dataset)
    if spec.dataset != "digits" and not spec.root:
        raise DataError(f"data set {spec.dataset!r} needs `root:` (the folder holding its files) in the data config")
    raw = loader(spec.root, download=spec.download, num_classes=spec.num_classes)
    if spec.num_classes is not None and raw.num_classes != spec.num_classes:
        raise DataError(f"{spec.dataset} at {spec.root} has {raw.num_classes} classes, config says num_classes: {spec.num_classes}")
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
        raise DataError(f"{raw.source}: train images {images.shape[1:]} and test images {test_images.shape[1:]} differ; set data.resize")
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    counts = np.bincount(labels, minlength=raw.num_classes)
    manifest = {
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
            self.x_train.to(device, dtype), self.y_train.to(device),
            self.x_test.to(device, dtype), self.y_test.to(device), self.manifest,
        )


def load_subset(path: str | Path, verify: bool = True) -> Subset:
    """Load ``data.pt`` + ``manifest.json`` from a subset folder; check hashes; standardize."""
    import torch

    path = Path(path)
    man_file, data_file = path / "manifest.json", path / "data.pt"
    if not man_file.exists() or not data_file.exists():
        raise DataError(f"subset folder {path} is incomplete: expected {man_file.name} and {data_file.name}; rebuild it with `lssr subset`")
    try:
        manifest = json.loads(man_file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{man_file} is not valid JSON ({exc}); delete the folder and rebuild it with `lssr subset`") from exc
    try:
        payload = torch.load(data_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / corrupt file
        raise DataError(f"{data_file} cannot be read ({type(exc).__name__}: {exc}); delete it and rebuild with `lssr subset`") from exc
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
    mean = torch.tensor(manifest["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(manifest["std"], dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-8)

    def standardize(a: np.ndarray) -> "torch.Tensor":
        return (torch.from_numpy(a).float() / 255.0 - mean) / std

    return Subset(
        standardize(arrays["train_images"]), torch.from_numpy(arrays["train_labels"]),
        standardize(arrays["test_images"]), torch.from_numpy(arrays["test_labels"]), manifest,
    )
