"""Raw data sets in memory: the loaders behind :data:`SOURCES`, one per source name.

``cifar10``, ``cifar100``, ``stl10`` (torchvision.datasets, optional download), ``tinyimagenet`` (the
``tiny-imagenet-200/`` tree, optional download), ``imagefolder`` (``train/<class>/*`` and ``test/<class>/*``,
labels = sorted folder names) and ``digits`` (scikit-learn's 8x8 digits, shipped inside the package; the first
1024 images form the training pool, the remaining 773 the test set). Each loader returns a :class:`RawSplits`.
torch, torchvision, PIL and scikit-learn are imported inside the loaders, so planning a workflow stays fast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..datasets import DataError, K

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp"}


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


def _decode_image(path: Path, channels: int = 3) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(
            f"image file {path} is missing; restore it (or remove its entry from the data set's listing)"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}. Replace or delete the corrupt file.") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1).copy()


def _stack_images(paths: list[Path], what: str) -> np.ndarray:
    from tqdm.auto import tqdm

    bar = len(paths) >= 2000 and sys.stderr.isatty()  # a job's log (not a terminal) gets one plain line instead
    if len(paths) >= 2000 and not bar:
        print(f"decode {what}: {len(paths)} images", file=sys.stderr, flush=True)
    arrays = [
        _decode_image(p)
        for p in tqdm(paths, desc=f"decode {what}", unit="img", leave=False, disable=not bar, file=sys.stderr)
    ]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(
            f"images under {what} have different shapes {sorted(shapes)}; set data.resize to make them equal"
        )
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
            e.name
            for e in entries
            if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file()
        ]
    return [folder / name for name in sorted(names)]


def _list_class_dirs(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder``, hidden ones (``.ipynb_checkpoints``) skipped."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _tiny_base(root: Path, download: bool) -> Path:
    """The ``tiny-imagenet-200`` folder under ``root`` (or ``root`` itself), downloaded first if asked and missing."""
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
    return base


def _tiny_wnids(base: Path) -> list[str]:
    """The 200 class ids of ``wnids.txt``, in file order (label i = the i-th wnid)."""
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
    return wnids


def _tiny_train(train_dir: Path, wnids: list[str], index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Paths and labels of the training tree ``train/<wnid>/images/*``, class by class in wnid order."""
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
    return train_paths, train_labels


def _tiny_val(base: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Paths and labels of the labelled validation split (``val/val_annotations.txt``), used as the test set."""
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
    return test_paths, test_labels


def load_tinyimagenet(root: str | Path, download: bool = False) -> RawSplits:
    """Tiny-ImageNet from the standard ``tiny-imagenet-200/`` tree (labelled val split = test).

    ``root`` is either the ``tiny-imagenet-200`` folder itself or its parent. With ``download``
    the official zip is downloaded and unpacked into ``root`` when the tree is missing.
    """
    base = _tiny_base(Path(root), download)
    wnids = _tiny_wnids(base)
    index = {w: i for i, w in enumerate(wnids)}
    train_dir = base / "train"
    train_paths, train_labels = _tiny_train(train_dir, wnids, index)
    test_paths, test_labels = _tiny_val(base, index)
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
        raise DataError(
            f"imagefolder data at {root} cannot be downloaded; set `download: false` and point `root` at the tree"
        )
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
