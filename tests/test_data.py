"""Tests of lssr.data against known answers.

Every loader is fed files written here in its real on-disk format (CIFAR python pickles, STL-10
binaries, the tiny-imagenet-200 tree, an image-folder tree); the loaded arrays are compared with what
was written. Nothing is downloaded: the download paths are exercised with the download function
monkeypatched.

torchvision md5-checks every CIFAR / STL-10 file. To make it accept the synthetic files we patch the
*class attributes* (``train_list`` / ``test_list`` / ``meta``) with the md5 of the files written here,
so torchvision's own ``check_integrity`` still runs for real (a missing or altered file still fails).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lssr import LssrError
from lssr import data as D
from lssr.data import DataError, SubsetSpec

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def rand_u8(rng, *shape) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# writers of the real on-disk formats
# ---------------------------------------------------------------------------------------------


def write_cifar10(root: Path, monkeypatch, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    """``cifar-10-batches-py/`` with data_batch_1..5, test_batch, batches.meta.

    The official files are python-2 pickles; unpickled with encoding="latin1" (as torchvision does)
    their keys are str ("data", "labels"), so that is what is written here. ``data`` is uint8 N x 3072,
    each row CHW-planar: 1024 red, 1024 green, 1024 blue bytes, each plane row-major.
    """
    from torchvision.datasets import CIFAR10

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for b in range(1, 6):
        x = rand_u8(rng, per_batch, 3072)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        rows.append(x)
        labels += y
        (folder / f"data_batch_{b}").write_bytes(
            pickle.dumps({"batch_label": f"training batch {b} of 5", "data": x, "labels": y, "filenames": []})
        )
    xt = rand_u8(rng, n_test, 3072)
    yt = [int(v) for v in rng.integers(0, 10, n_test)]
    (folder / "test_batch").write_bytes(pickle.dumps({"batch_label": "testing batch 1 of 1", "data": xt, "labels": yt}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    )
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{b}", md5(folder / f"data_batch_{b}")] for b in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(
        CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")}
    )
    return {
        "train_rows": np.concatenate(rows),
        "train_labels": np.array(labels),
        "test_rows": xt,
        "test_labels": np.array(yt),
    }


def write_cifar100(root: Path, monkeypatch, n_train: int = 200, n_test: int = 7, seed: int = 1) -> dict:
    """``cifar-100-python/`` with train, test, meta (labels under "fine_labels")."""
    from torchvision.datasets import CIFAR100

    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    x = rand_u8(rng, n_train, 3072)
    y = [i % 100 for i in range(n_train)]  # every class present
    xt = rand_u8(rng, n_test, 3072)
    yt = [int(v) for v in rng.integers(0, 100, n_test)]
    (folder / "train").write_bytes(pickle.dumps({"data": x, "fine_labels": y, "coarse_labels": [v // 5 for v in y]}))
    (folder / "test").write_bytes(pickle.dumps({"data": xt, "fine_labels": yt, "coarse_labels": [v // 5 for v in yt]}))
    (folder / "meta").write_bytes(
        pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []})
    )
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": md5(folder / "meta")})
    return {"train_rows": x, "train_labels": np.array(y), "test_rows": xt, "test_labels": np.array(yt)}


def write_stl10(root: Path, monkeypatch, n_train: int = 20, n_test: int = 4, seed: int = 2) -> dict:
    """``stl10_binary/`` binaries: images column-major (each 96x96 plane stored transposed), labels 1..10."""
    from torchvision.datasets import STL10

    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    x = rand_u8(rng, n_train, 3, 96, 96)
    x[0] = 0
    x[0, 0, 0, 5] = 255  # red, row 0, column 5: shows the orientation
    y = np.array([i % 10 for i in range(n_train)], np.uint8)
    xt = rand_u8(rng, n_test, 3, 96, 96)
    yt = np.array([9, 0, 3, 3][:n_test], np.uint8)
    (folder / "train_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
    (folder / "train_y.bin").write_bytes((y + 1).tobytes())
    (folder / "test_X.bin").write_bytes(np.ascontiguousarray(xt.transpose(0, 1, 3, 2)).tobytes())
    (folder / "test_y.bin").write_bytes((yt + 1).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(rand_u8(rng, 1, 3, 96, 96).tobytes())  # torchvision checks it exists
    (folder / "class_names.txt").write_text(
        "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n"
    )
    (folder / "fold_indices.txt").write_text("0 1 2\n" * 10)
    monkeypatch.setattr(
        STL10, "train_list", [[f, md5(folder / f)] for f in ("train_X.bin", "train_y.bin", "unlabeled_X.bin")]
    )
    monkeypatch.setattr(STL10, "test_list", [[f, md5(folder / f)] for f in ("test_X.bin", "test_y.bin")])
    return {"train": x, "train_labels": y.astype(np.int64), "test": xt, "test_labels": yt.astype(np.int64)}


def smooth_image(rng, h: int, w: int) -> np.ndarray:
    """A smooth HWC uint8 image (survives JPEG with small error), asymmetric so a transpose shows."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a, b, c = rng.uniform(0.5, 3.0, 3)
    img = np.stack([40 + 170 * xx / w, 40 + 170 * yy / h, 128 + 60 * np.sin(a * xx / w + b * yy / h + c)], -1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# the official wnids.txt is not sorted; neither is this one, so label order = wnids.txt order is tested
WNIDS = [f"n{1440764 + 7 * i:08d}" for i in np.random.default_rng(11).permutation(200)]
assert WNIDS != sorted(WNIDS)


def write_tiny(
    root: Path,
    per_class=lambda i: 1 + (i < 3),
    n_val: int = 5,
    seed: int = 3,
    wnids=WNIDS,
    extra_folder: str | None = None,
) -> dict:
    """The official ``tiny-imagenet-200/`` tree with real (lossy) JPEG files, 64x64.

    Class 1's first image is greyscale, as some official images are.
    """
    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(WNIDS)))
    train_files, train_labels, originals = [], [], {}
    for i, w in enumerate(WNIDS):
        img_dir = base / "train" / w / "images"
        img_dir.mkdir(parents=True)
        boxes = []
        for j in range(per_class(i)):
            f = img_dir / f"{w}_{j}.JPEG"
            arr = smooth_image(rng, 64, 64)
            if i == 1 and j == 0:
                Image.fromarray(arr[:, :, 0], "L").save(f, format="JPEG", quality=95)
                arr = np.repeat(arr[:, :, :1], 3, axis=2)
            else:
                Image.fromarray(arr).save(f, format="JPEG", quality=95)
            originals[f] = arr
            boxes.append(f"{f.name}\t0\t0\t63\t63\n")
            train_files.append(f)
            train_labels.append(i)
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))  # not an image: ignored
    if extra_folder:
        (base / "train" / extra_folder / "images").mkdir(parents=True)
    (base / "val" / "images").mkdir(parents=True)
    val_files, val_labels, lines = [], [], []
    for j in range(n_val):
        f = base / "val" / "images" / f"val_{j}.JPEG"
        arr = smooth_image(rng, 64, 64)
        Image.fromarray(arr).save(f, format="JPEG", quality=95)
        originals[f] = arr
        lab = int(rng.integers(0, 200))
        lines.append(f"{f.name}\t{WNIDS[lab]}\t1\t2\t50\t60\n")
        val_files.append(f)
        val_labels.append(lab)
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    (base / "test" / "images").mkdir(parents=True)  # the unlabelled official test split: unused
    return {
        "base": base,
        "train_files": train_files,
        "train_labels": np.array(train_labels),
        "val_files": val_files,
        "val_labels": np.array(val_labels),
        "originals": originals,
    }


def pil_chw(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def write_imagefolder(
    root: Path, classes=("dog", "cat", "bird"), n_train=(3, 4, 5), n_test=(2, 1, 2), size=8, seed=4
) -> dict:
    """``train/<class>/*.png`` + ``test/<class>/*.png``, lossless, written in a non-sorted class order."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, counts in (("train", n_train), ("test", n_test)):
        items = []
        for c, k in zip(classes, counts):
            d = root / split / c
            d.mkdir(parents=True)
            for j in range(k):
                arr = rand_u8(rng, size, size, 3)
                f = d / f"img{j:02d}.png"
                Image.fromarray(arr).save(f)
                items.append((c, f.name, arr))
        out[split] = items
    return out


def expected_from_folder(items, classes):
    order = sorted(classes)
    items = sorted(items, key=lambda t: (order.index(t[0]), t[1]))
    return np.stack([a.transpose(2, 0, 1) for _, _, a in items]), np.array([order.index(c) for c, _, _ in items])


# ---------------------------------------------------------------------------------------------
# 1. loaders
# ---------------------------------------------------------------------------------------------


def test_cifar10_pickles_loaded_exactly(tmp_path, monkeypatch):
    w = write_cifar10(tmp_path, monkeypatch)
    raw = D.load_cifar(tmp_path, num_classes=10)
    assert raw.train_images.shape == (20, 3, 32, 32) and raw.train_images.dtype == np.uint8
    assert raw.test_images.shape == (6, 3, 32, 32)
    assert raw.train_images.flags.c_contiguous
    # planar layout: byte c*1024 + h*32 + w of row r is channel c, row h, column w of image r
    rows = w["train_rows"]
    assert raw.train_images[3, 2, 5, 7] == rows[3, 2 * 1024 + 5 * 32 + 7]
    assert raw.train_images[19, 0, 31, 0] == rows[19, 31 * 32]
    np.testing.assert_array_equal(raw.train_images, rows.reshape(20, 3, 32, 32))
    np.testing.assert_array_equal(raw.test_images, w["test_rows"].reshape(6, 3, 32, 32))
    np.testing.assert_array_equal(raw.train_labels, w["train_labels"])
    np.testing.assert_array_equal(raw.test_labels, w["test_labels"])
    assert raw.train_labels.dtype == np.int64 and raw.num_classes == 10 and raw.train_loader is None


def test_cifar100_pickles_loaded_exactly_and_subset(tmp_path, monkeypatch):
    w = write_cifar100(tmp_path / "raw", monkeypatch)
    raw = D.get_source("cifar100")(tmp_path / "raw")
    assert raw.num_classes == 100
    np.testing.assert_array_equal(raw.train_images, w["train_rows"].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(raw.test_images, w["test_rows"].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(raw.train_labels, w["train_labels"])
    np.testing.assert_array_equal(raw.test_labels, w["test_labels"])
    out = D.build_subset(SubsetSpec("cifar100", 100, seed=0, root=str(tmp_path / "raw")), tmp_path / "s")
    man = json.loads((out / "manifest.json").read_text())
    assert man["class_counts"] == [1] * 100 and man["image_shape"] == [3, 32, 32]


def test_stl10_binaries_loaded_exactly(tmp_path, monkeypatch):
    w = write_stl10(tmp_path, monkeypatch)
    raw = D.load_stl10(tmp_path)
    assert raw.train_images.shape == (20, 3, 96, 96) and raw.train_images.flags.c_contiguous
    np.testing.assert_array_equal(raw.train_images, w["train"])
    np.testing.assert_array_equal(raw.test_images, w["test"])
    assert raw.train_images[0, 0, 0, 5] == 255 and raw.train_images[0, 0, 5, 0] == 0  # not transposed
    np.testing.assert_array_equal(raw.train_labels, w["train_labels"])  # 1..10 on disk -> 0..9
    np.testing.assert_array_equal(raw.test_labels, [9, 0, 3, 3])
    assert raw.train_labels.dtype == np.int64 and raw.num_classes == 10
    out = D.build_subset(SubsetSpec("stl10", 10, seed=0, root=str(tmp_path)), tmp_path / "s")
    sub = torch.load(out / "data.pt", weights_only=True)
    idx = json.loads((out / "manifest.json").read_text())["indices"]
    np.testing.assert_array_equal(sub["train_images"].numpy(), w["train"][idx])
    assert sorted(sub["train_labels"].tolist()) == list(range(10))


@pytest.mark.parametrize("give_parent", [True, False])
def test_tinyimagenet_tree(tmp_path, give_parent):
    w = write_tiny(tmp_path)
    raw = D.load_tinyimagenet(tmp_path if give_parent else w["base"])
    assert raw.num_classes == 200
    np.testing.assert_array_equal(raw.train_labels, w["train_labels"])  # wnids.txt order
    assert len(raw.train_labels) == 203
    np.testing.assert_array_equal(raw.test_labels, w["val_labels"])
    assert raw.test_images.shape == (5, 3, 64, 64)
    for i, f in enumerate(w["val_files"]):
        np.testing.assert_array_equal(raw.test_images[i], pil_chw(f))
        # and close to the pixels before JPEG (catches a transposed or channel-swapped read)
        assert np.abs(raw.test_images[i].astype(int) - w["originals"][f].transpose(2, 0, 1)).max() <= 12
    train = raw.train_loader(np.arange(203))
    assert train.shape == (203, 3, 64, 64) and train.dtype == np.uint8
    for i, f in enumerate(w["train_files"]):
        np.testing.assert_array_equal(train[i], pil_chw(f))
        assert np.abs(train[i].astype(int) - w["originals"][f].transpose(2, 0, 1)).max() <= 12
    grey = train[2]  # class 0 has two images, so index 2 is class 1's greyscale image
    assert raw.train_labels[2] == 1 and (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()
    sub = D.load_subset(D.build_subset(SubsetSpec("tinyimagenet", 200, root=str(tmp_path)), tmp_path / "s"))
    assert sub.manifest["class_counts"] == [1] * 200 and sub.image_shape == (3, 64, 64)


def test_imagefolder_tree_exact(tmp_path):
    w = write_imagefolder(tmp_path)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / "._img00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS junk
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    raw = D.load_imagefolder(tmp_path)
    assert raw.num_classes == 3
    x_test, y_test = expected_from_folder(w["test"], ["dog", "cat", "bird"])
    np.testing.assert_array_equal(raw.test_images, x_test)
    np.testing.assert_array_equal(raw.test_labels, y_test)
    x_train, y_train = expected_from_folder(w["train"], ["dog", "cat", "bird"])
    np.testing.assert_array_equal(raw.train_labels, y_train)
    np.testing.assert_array_equal(raw.train_labels, [0] * 5 + [1] * 4 + [2] * 3)  # bird, cat, dog
    np.testing.assert_array_equal(raw.train_loader(np.arange(12)), x_train)
    np.testing.assert_array_equal(raw.train_loader(np.array([11, 0, 6])), x_train[[11, 0, 6]])


def test_imagefolder_grey_and_rgba_become_rgb(tmp_path):
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgba = np.dstack([g, 255 - g, g // 2, np.full_like(g, 7)])
    Image.fromarray(g, "L").save(tmp_path / "train" / "a" / "g.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "b" / "r.png")
    Image.fromarray(g, "L").save(tmp_path / "test" / "a" / "g.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "test" / "b" / "r.png")
    raw = D.load_imagefolder(tmp_path, num_classes=2)
    np.testing.assert_array_equal(raw.test_images[0], np.stack([g, g, g]))
    np.testing.assert_array_equal(raw.test_images[1], rgba[:, :, :3].transpose(2, 0, 1))


def test_digits_pool_and_test_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = D.load_digits()
    assert raw.train_images.shape == (1024, 1, 8, 8) and raw.test_images.shape == (773, 1, 8, 8)
    assert raw.train_images.dtype == np.uint8 and raw.num_classes == 10
    assert raw.train_images.max() == 255 and raw.train_images.min() == 0  # 16 -> 255
    np.testing.assert_array_equal(raw.train_images[0, 0], np.rint(d.images[0] * 255 / 16))
    np.testing.assert_array_equal(raw.test_images[-1, 0], np.rint(d.images[-1] * 255 / 16))
    np.testing.assert_array_equal(raw.train_labels, d.target[:1024])
    np.testing.assert_array_equal(raw.test_labels, d.target[1024:])
    assert np.bincount(raw.train_labels).tolist() == np.bincount(d.target[:1024]).tolist()


# ---------------------------------------------------------------------------------------------
# 2. subsets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 37, 100, 999, 1000])
def test_stratified_counts_differ_by_at_most_one(n):
    labels = np.repeat(np.arange(10), 100)
    np.random.default_rng(0).shuffle(labels)
    idx = D.stratified_indices(labels, n, 10, seed=5)
    assert len(idx) == n and len(np.unique(idx)) == n and (np.diff(idx) > 0).all() and idx.dtype == np.int64
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert sorted(counts.tolist()) == sorted([n // 10 + (i < n % 10) for i in range(10)])


def test_stratified_short_class_gives_its_shortfall_to_others():
    labels = np.concatenate([np.zeros(2, int), np.repeat(np.arange(1, 10), 50)])
    idx = D.stratified_indices(labels, 100, 10, seed=0)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts[0] == 2 and counts.sum() == 100 and counts[1:].max() - counts[1:].min() <= 1
    whole = D.stratified_indices(labels, len(labels), 10, seed=0)
    np.testing.assert_array_equal(whole, np.arange(len(labels)))


def test_stratified_seeded():
    labels = np.repeat(np.arange(10), 100)
    a = D.stratified_indices(labels, 123, 10, seed=7)
    np.testing.assert_array_equal(a, D.stratified_indices(labels, 123, 10, seed=7))
    assert not np.array_equal(a, D.stratified_indices(labels, 123, 10, seed=8))


def test_stratified_rejects_labels_out_of_range():
    with pytest.raises(DataError, match="num_classes is 3"):
        D.stratified_indices(np.array([0, 1, 2, 5]), 2, 3, seed=0)


def build_digits(tmp_path, n=205, seed=0, name="s"):
    return D.build_subset(SubsetSpec("digits", n, seed=seed), tmp_path / name)


def test_subset_manifest_known_answers(tmp_path):
    out = build_digits(tmp_path, n=205, seed=3)
    man = json.loads((out / "manifest.json").read_text())
    raw = D.load_digits()
    idx = D.stratified_indices(raw.train_labels, 205, 10, seed=3)
    assert man["indices"] == idx.tolist()
    assert man["name"] == "digits-205-seed3" and man["dataset"] == "digits" and man["n"] == 205 and man["seed"] == 3
    assert man["source"] == "sklearn.datasets.load_digits"
    assert man["num_classes"] == 10 and man["num_test"] == 773 and man["image_shape"] == [1, 8, 8]
    counts = np.bincount(raw.train_labels[idx], minlength=10)
    assert man["class_counts"] == counts.tolist() and sorted(counts.tolist()) == [20] * 5 + [21] * 5
    x = raw.train_images[idx].astype(np.float64) / 255
    np.testing.assert_allclose(man["mean"], x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(man["std"], x.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    payload = torch.load(out / "data.pt", weights_only=True)
    np.testing.assert_array_equal(payload["train_images"].numpy(), raw.train_images[idx])
    np.testing.assert_array_equal(payload["train_labels"].numpy(), raw.train_labels[idx])
    np.testing.assert_array_equal(payload["test_images"].numpy(), raw.test_images)
    for key, t in payload.items():
        assert man["sha256"][key] == hashlib.sha256(t.numpy().tobytes()).hexdigest()
    assert SubsetSpec("digits", 1024).name == "digits-1k-seed0"
    assert SubsetSpec("cifar10", 8192, seed=2, resize=16).name == "cifar10-8k-seed2-r16"


def test_subset_same_seed_same_hashes_different_seed_differs(tmp_path):
    a = json.loads((build_digits(tmp_path, seed=0, name="a") / "manifest.json").read_text())
    b = json.loads((build_digits(tmp_path, seed=0, name="b") / "manifest.json").read_text())
    c = json.loads((build_digits(tmp_path, seed=1, name="c") / "manifest.json").read_text())
    assert a == b
    assert a["indices"] != c["indices"] and a["sha256"]["train_images"] != c["sha256"]["train_images"]
    assert a["sha256"]["test_images"] == c["sha256"]["test_images"]
    assert not list((tmp_path / "a").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_load_subset_standardizes_per_channel(tmp_path):
    out = build_digits(tmp_path, n=500, seed=0)
    sub = D.load_subset(out)
    assert sub.x_train.dtype == torch.float32 and sub.x_train.shape == (500, 1, 8, 8)
    assert sub.num_classes == 10 and sub.image_shape == (1, 8, 8)
    m = sub.x_train.double().mean(dim=(0, 2, 3))
    s = sub.x_train.double().std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(m, torch.zeros(1, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(s, torch.ones(1, dtype=torch.float64), atol=1e-5, rtol=0)
    raw = D.load_digits()
    expect = (raw.test_images / 255.0 - sub.manifest["mean"][0]) / sub.manifest["std"][0]  # train statistics
    np.testing.assert_allclose(sub.x_test.numpy(), expect, atol=1e-5)
    np.testing.assert_array_equal(sub.y_test.numpy(), raw.test_labels)
    moved = sub.to("cpu", torch.float64)
    assert moved.x_train.dtype == torch.float64 and moved.y_train.dtype == torch.int64


def test_subset_resize(tmp_path):
    out = D.build_subset(SubsetSpec("digits", 100, resize=16), tmp_path / "r")
    sub = D.load_subset(out)
    assert sub.x_train.shape == (100, 1, 16, 16) and sub.x_test.shape == (773, 1, 16, 16)
    assert sub.manifest["name"] == "digits-100-seed0-r16"


# ---------------------------------------------------------------------------------------------
# 3. real CIFAR-10 (JPEG image-folder tree) from the shared data folder
# ---------------------------------------------------------------------------------------------


def test_cifar10_jpeg_8k_subset(tmp_path):
    if not (SHARED_CIFAR / "train").is_dir():
        pytest.skip(f"the shared CIFAR-10 folder {SHARED_CIFAR} is not present")
    spec = SubsetSpec("imagefolder", 8192, seed=0, root=str(SHARED_CIFAR), num_classes=10)
    m1 = json.loads((D.build_subset(spec, tmp_path / "a") / "manifest.json").read_text())
    m2 = json.loads((D.build_subset(spec, tmp_path / "b") / "manifest.json").read_text())
    assert m1["indices"] == m2["indices"] and m1["sha256"] == m2["sha256"]
    assert sorted(m1["class_counts"]) == [819] * 8 + [820] * 2 and len(m1["indices"]) == 8192
    assert m1["image_shape"] == [3, 32, 32] and m1["num_test"] == 10000 and m1["num_classes"] == 10
    # CIFAR-10's well-known per-channel statistics (JPEG re-encoding moves them a little)
    np.testing.assert_allclose(m1["mean"], [0.4914, 0.4822, 0.4465], atol=0.01)
    np.testing.assert_allclose(m1["std"], [0.2470, 0.2435, 0.2616], atol=0.01)
    payload = torch.load(tmp_path / "a" / "data.pt", weights_only=True)
    assert np.bincount(payload["test_labels"].numpy()).tolist() == [1000] * 10
    # index i of the pool is file i % 5000 of class i // 5000 (folders sorted: airplane .. truck)
    classes = sorted(p.name for p in (SHARED_CIFAR / "train").iterdir() if p.is_dir())
    assert classes[0] == "airplane" and classes[9] == "truck"
    for pos in (0, 4000, 8191):
        i = m1["indices"][pos]
        f = sorted((SHARED_CIFAR / "train" / classes[i // 5000]).iterdir())[i % 5000]
        np.testing.assert_array_equal(payload["train_images"][pos].numpy(), pil_chw(f))
        assert payload["train_labels"][pos] == i // 5000
    other = D.stratified_indices(np.repeat(np.arange(10), 5000), 8192, 10, seed=1)
    assert other.tolist() != m1["indices"]


# ---------------------------------------------------------------------------------------------
# 4. bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("stl10", "stl10_binary")]
)
def test_missing_torchvision_files(tmp_path, name, folder):
    with pytest.raises(DataError) as e:
        D.get_source(name)(tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / folder) in msg and "download: true" in msg
    assert isinstance(e.value, LssrError)


def test_cifar_altered_file_is_rejected(tmp_path, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="download: true"):
        D.load_cifar(tmp_path)


def test_imagefolder_without_test_folder(tmp_path):
    write_imagefolder(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "test")
    with pytest.raises(DataError) as e:
        D.load_imagefolder(tmp_path)
    assert str(tmp_path) in str(e.value) and "test/" in str(e.value)


def test_imagefolder_bad_trees(tmp_path):
    write_imagefolder(tmp_path)
    with pytest.raises(DataError, match="num_classes: 5"):
        D.load_imagefolder(tmp_path, num_classes=5)
    with pytest.raises(DataError, match="cannot be downloaded"):
        D.load_imagefolder(tmp_path, download=True)
    (tmp_path / "test" / "emu").mkdir()
    with pytest.raises(DataError) as e:
        D.load_imagefolder(tmp_path)
    assert "emu" in str(e.value)
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(DataError) as e:
        D.load_imagefolder(tmp_path)
    assert str(tmp_path / "train" / "emu") in str(e.value) and "no images" in str(e.value)


def test_imagefolder_corrupt_image_named(tmp_path):
    write_imagefolder(tmp_path)
    bad = tmp_path / "test" / "cat" / "zz_bad.jpg"
    bad.write_bytes(b"this is not a JPEG at all" * 10)
    with pytest.raises(DataError) as e:
        D.load_imagefolder(tmp_path)
    assert str(bad) in str(e.value) and "Replace or delete" in str(e.value)
    bad.unlink()
    bad_train = tmp_path / "train" / "bird" / "zz_trunc.jpg"
    buf = tmp_path / "ok.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf)
    bad_train.write_bytes(buf.read_bytes()[:40])  # truncated JPEG
    buf.unlink()
    with pytest.raises(DataError) as e:  # train images are decoded lazily: at build time, whole pool
        D.build_subset(SubsetSpec("imagefolder", 13, root=str(tmp_path)), tmp_path / "s")
    assert str(bad_train) in str(e.value)


def test_tinyimagenet_extra_class_folder(tmp_path):
    write_tiny(tmp_path, per_class=lambda i: 1, n_val=1, extra_folder="n99999999")
    with pytest.raises(DataError) as e:
        D.load_tinyimagenet(tmp_path)
    msg = str(e.value)
    assert "201 class folders" in msg and "n99999999" in msg and str(tmp_path / "tiny-imagenet-200" / "train") in msg


def test_tinyimagenet_wnids_not_200(tmp_path):
    write_tiny(tmp_path, per_class=lambda i: 1, n_val=1, wnids=WNIDS[:199])
    with pytest.raises(DataError) as e:
        D.load_tinyimagenet(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "tiny-imagenet-200" / "wnids.txt") in msg and "199" in msg and "200" in msg
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("\n".join(WNIDS[:199] + WNIDS[:1]))
    with pytest.raises(DataError, match="twice"):
        D.load_tinyimagenet(tmp_path)


def test_tinyimagenet_missing_val_image_and_bad_annotation(tmp_path):
    w = write_tiny(tmp_path, per_class=lambda i: 1, n_val=2)
    w["val_files"][1].unlink()
    with pytest.raises(DataError) as e:
        D.load_tinyimagenet(tmp_path)
    assert str(w["val_files"][1]) in str(e.value) and "is missing; restore it" in str(e.value)
    ann = w["base"] / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:1"):
        D.load_tinyimagenet(tmp_path)


def test_tinyimagenet_missing_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        D.load_tinyimagenet(tmp_path)
    assert str(tmp_path / "tiny-imagenet-200" / "wnids.txt") in str(e.value) and "download: true" in str(e.value)


def test_n_larger_than_pool(tmp_path):
    with pytest.raises(DataError) as e:
        build_digits(tmp_path, n=2048)
    assert "n=2048" in str(e.value) and "1024" in str(e.value)
    with pytest.raises(DataError, match="at least 1"):
        build_digits(tmp_path, n=0)
    assert not (tmp_path / "s").exists()


def test_build_needs_root(tmp_path):
    with pytest.raises(DataError, match="root"):
        D.build_subset(SubsetSpec("cifar10", 100), tmp_path / "s")


def test_load_subset_truncated_data(tmp_path):
    out = build_digits(tmp_path)
    f = out / "data.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        D.load_subset(out)
    assert str(f) in str(e.value) and "rebuild" in str(e.value)


def test_load_subset_hash_mismatch(tmp_path):
    out = build_digits(tmp_path)
    man = json.loads((out / "manifest.json").read_text())
    man["sha256"]["test_labels"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError) as e:
        D.load_subset(out)
    assert "test_labels" in str(e.value) and str(out) in str(e.value) and "rebuild" in str(e.value)
    D.load_subset(out, verify=False)  # explicit opt-out still loads


def test_load_subset_altered_images(tmp_path):
    out = build_digits(tmp_path)
    payload = torch.load(out / "data.pt", weights_only=True)
    payload["train_images"][0, 0, 0, 0] ^= 1
    torch.save(payload, out / "data.pt")
    with pytest.raises(DataError, match="train_images"):
        D.load_subset(out)


def test_load_subset_incomplete_folder(tmp_path):
    out = build_digits(tmp_path)
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="incomplete"):
        D.load_subset(out)
    out2 = build_digits(tmp_path, name="t")
    (out2 / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        D.load_subset(out2)
    out3 = build_digits(tmp_path, name="u")
    torch.save({"train_images": torch.zeros(1)}, out3 / "data.pt")
    with pytest.raises(DataError, match="lacks"):
        D.load_subset(out3)


def test_parse_spec_and_size():
    assert D.parse_spec("cifar10-8k") == ("cifar10", 8192)
    assert D.parse_spec("digits-1000") == ("digits", 1000)
    assert D.parse_spec("tinyimagenet-100K") == ("tinyimagenet", 102400)
    assert D.parse_size(" 2k ") == 2048 and D.parse_size(5) == 5
    with pytest.raises(DataError) as e:
        D.parse_spec("imagenet-8k")
    assert "'imagenet'" in str(e.value) and "cifar10" in str(e.value) and "tinyimagenet" in str(e.value)
    with pytest.raises(DataError, match="NAME-N"):
        D.parse_spec("cifar10")
    for bad in ("8m", "1.5k", "", "k", "-3"):
        with pytest.raises(DataError) as e:
            D.parse_size(bad)
        assert repr(bad) in str(e.value) and "k = 1024" in str(e.value)
    with pytest.raises(DataError, match="'8mb'"):
        D.parse_spec("cifar10-8mb")
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        D.get_source("nope")


def test_source_names_are_the_loaders():
    """lssr.config validates data sets by lssr.datasets.SOURCE_NAMES (no loader imported); lssr.data.SOURCES holds
    the loaders: both name the same sources, and the public lssr.data names are the lssr.datasets ones."""
    import lssr.datasets as names

    assert tuple(D.SOURCES) == names.SOURCE_NAMES
    assert (D.DataError, D.parse_size, D.parse_spec, D.K) == (
        names.DataError,
        names.parse_size,
        names.parse_spec,
        names.K,
    )


# ---------------------------------------------------------------------------------------------
# 5. download paths (monkeypatched; nothing leaves the machine)
# ---------------------------------------------------------------------------------------------


def test_tinyimagenet_download_called_when_tree_missing(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append({"url": url, "root": download_root, "md5": md5})
        write_tiny(Path(download_root), per_class=lambda i: 1, n_val=1)  # what unpacking the zip gives

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_download)
    root = tmp_path / "dl"
    raw = D.load_tinyimagenet(root, download=True)
    assert calls == [
        {
            "url": "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
            "root": str(root),
            "md5": "90528d7ca1a48142e341f4ef8d21d0de",
        }
    ]
    assert D.TINY_IMAGENET_MD5 == "90528d7ca1a48142e341f4ef8d21d0de"
    assert len(raw.train_labels) == 200
    D.load_tinyimagenet(root, download=True)  # tree present now: no second download
    assert len(calls) == 1


def test_tinyimagenet_download_failure_is_data_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def failing(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvu, "download_and_extract_archive", failing)
    with pytest.raises(DataError) as e:
        D.load_tinyimagenet(tmp_path, download=True)
    assert D.TINY_IMAGENET_URL in str(e.value) and str(tmp_path) in str(e.value)
    monkeypatch.setattr(tvu, "download_and_extract_archive", lambda *a, **k: None)  # "succeeds", gives nothing
    with pytest.raises(DataError, match="wnids.txt"):
        D.load_tinyimagenet(tmp_path, download=True)


def test_cifar_download_flag_reaches_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tvc
    from torchvision.datasets import CIFAR10

    write_cifar10(tmp_path / "ref", monkeypatch)  # fixes the md5 lists for the files below
    calls = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append((url, download_root, filename, md5))
        import shutil

        shutil.copytree(tmp_path / "ref" / "cifar-10-batches-py", Path(download_root) / "cifar-10-batches-py")

    monkeypatch.setattr(tvc, "download_and_extract_archive", fake_download)
    with pytest.raises(DataError):
        D.load_cifar(tmp_path / "dl", download=False)
    assert calls == []
    raw = D.load_cifar(tmp_path / "dl", download=True)
    assert calls == [(CIFAR10.url, str(tmp_path / "dl"), "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    assert raw.train_images.shape == (20, 3, 32, 32)
    D.get_source("cifar10")(tmp_path / "dl", download=True)  # files present: no second download
    assert len(calls) == 1


def test_cifar_download_failure_is_data_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tvc

    def failing(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvc, "download_and_extract_archive", failing)
    with pytest.raises(DataError) as e:
        D.load_cifar(tmp_path, download=True)
    assert "download" in str(e.value) and str(tmp_path) in str(e.value)


def test_subset_stats_are_per_channel_on_rgb(tmp_path):
    """Channels with very different statistics: mean/std and the standardization must be per channel."""
    rng = np.random.default_rng(9)
    for split, k in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for j in range(k):
                arr = np.stack([rng.integers(0, 60, (8, 8)), rng.integers(100, 256, (8, 8)), np.full((8, 8), 200)], -1)
                Image.fromarray(arr.astype(np.uint8)).save(tmp_path / split / c / f"{j}.png")
    out = D.build_subset(SubsetSpec("imagefolder", 9, seed=1, root=str(tmp_path)), tmp_path / "s")
    man = json.loads((out / "manifest.json").read_text())
    payload = torch.load(out / "data.pt", weights_only=True)
    x = payload["train_images"].numpy().astype(np.float64) / 255
    assert x.shape == (9, 3, 8, 8) and sorted(man["class_counts"]) == [4, 5]
    np.testing.assert_allclose(man["mean"], x.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(man["std"], x.std(axis=(0, 2, 3)), atol=1e-12)
    assert man["std"][2] == 0.0 and man["mean"][2] == pytest.approx(200 / 255)
    sub = D.load_subset(out)
    m = sub.x_train.double().mean(dim=(0, 2, 3))
    s = sub.x_train.double().std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(m, torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(s[:2], torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)
    assert torch.isfinite(sub.x_train).all() and torch.isfinite(sub.x_test).all()  # constant channel: no 0/0
