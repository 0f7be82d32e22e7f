"""Bad inputs and failing writes: each case must end with a clear error and leave earlier outputs intact.

A case either raises the LssrError of the code it calls, or (the workflow cases) runs `snakemake` on a copy of
the workflow and returns the error line Snakemake printed.

Used by tests/test_bad_inputs.py, and run as a script to regenerate the table in docs/RELIABILITY.md:

    python tests/bad_inputs.py > docs/RELIABILITY-table.md    (the table is pasted into RELIABILITY.md)
"""

from __future__ import annotations

import copy
import errno
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np

from lssr import LssrError

ROOT = Path(__file__).resolve().parents[1]

RUN = {
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "digits", "n": 64},
    "model": {"name": "digits_cnn"},
    "loss": "mse",
    "optim": {"lr": 0.1, "batch_size": 16},
    "stop": {"steps": 3},
}


def _run(**changes):
    raw = copy.deepcopy(RUN)
    for path, value in changes.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return raw


def _png_tree(root: Path, classes=("a", "b"), splits=("train", "test"), per_class=3) -> Path:
    from PIL import Image

    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    return root


def _digits_subset(tmp: Path) -> Path:
    from lssr.data import SubsetSpec, build_subset

    return build_subset(SubsetSpec("digits", 64, seed=0), tmp / "subset")


# -- the cases: each returns the error it provoked -------------------------------------------------


def case_config_misspelled(tmp):
    from lssr.config import config_from_dict

    raw = _run()
    raw["optim"]["lrr"] = raw["optim"].pop("lr")
    config_from_dict(raw, where="run.yaml")


def case_config_negative_lr(tmp):
    from lssr.config import config_from_dict

    config_from_dict(_run(optim__lr=-0.1), where="run.yaml")


def case_config_b_gt_n(tmp):
    from lssr.config import config_from_dict

    config_from_dict(_run(optim__batch_size=128), where="run.yaml")


def case_config_unknown_dataset(tmp):
    from lssr.config import config_from_dict

    config_from_dict(_run(data__dataset="mnist"), where="run.yaml")


def case_config_unknown_model(tmp):
    from lssr.config import config_from_dict

    config_from_dict(_run(model__name="vgg16"), where="run.yaml")


def case_workflow_schema(tmp):
    import yaml

    from lssr.config import check_workflow_schema  # what the Snakefile calls first

    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    cfg["experiments"]["fig4"]["sgd"]["lr_typo"] = 0.1
    check_workflow_schema(cfg, "workflow/schemas/config.schema.yaml")


def case_workflow_b_gt_n(tmp):
    import yaml

    from lssr.workflow import plan

    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    cfg["experiments"]["fig5"]["batch_sizes"] = [16, 1024]
    plan(cfg)


def case_imagefolder_no_test(tmp):
    from lssr.data import SubsetSpec, build_subset

    root = _png_tree(tmp / "tree", splits=("train",))
    build_subset(SubsetSpec("imagefolder", 4, root=str(root)), tmp / "out")


def case_tinyimagenet_extra_class(tmp):
    from lssr.data import load_tinyimagenet

    base = tmp / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    (base / "train").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids + ["n99999999"]:
        (base / "train" / w / "images").mkdir(parents=True)
    load_tinyimagenet(tmp)


def case_cifar_missing(tmp):
    from lssr.data import load_cifar

    load_cifar(tmp / "cifar10", download=False)


def case_n_too_large(tmp):
    from lssr.data import SubsetSpec, build_subset

    build_subset(SubsetSpec("digits", 5000), tmp / "out")


def case_corrupt_jpeg(tmp):
    from lssr.data import SubsetSpec, build_subset

    root = _png_tree(tmp / "tree")
    (root / "test" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    build_subset(SubsetSpec("imagefolder", 4, root=str(root)), tmp / "out")


def case_truncated_subset(tmp):
    from lssr.data import load_subset

    folder = _digits_subset(tmp)
    data = folder / "data.pt"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    load_subset(folder)


def case_manifest_hash_mismatch(tmp):
    import torch

    from lssr.data import load_subset

    folder = _digits_subset(tmp)
    payload = torch.load(folder / "data.pt", weights_only=True)
    payload["train_labels"][0] = (payload["train_labels"][0] + 1) % 10
    torch.save(payload, folder / "data.pt")
    load_subset(folder)


def case_subset_other_config(tmp):
    from lssr.config import config_from_dict
    from lssr.training import run_from_config

    folder = _digits_subset(tmp)
    cfg = config_from_dict(_run(data__seed=3))
    run_from_config(cfg, tmp / "run", data_dir=folder, progress=False)


def case_read_only_output(tmp):
    from lssr.io import write_text

    target = tmp / "results" / "claims.csv"

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with mock.patch("tempfile.mkstemp", denied):  # what a read-only folder does to a new file
        write_text(target, "new")


def case_disk_full(tmp):
    import pandas as pd

    from lssr.io import write_csv

    target = tmp / "results" / "tables" / "runs.csv"
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with mock.patch("os.replace", full):
        write_csv(target, pd.DataFrame({"a": [1, 2]}))
    assert real_replace


def case_bad_set_override(tmp):
    from lssr.config import parse_overrides

    parse_overrides(["optim.lr:0.1"])


def case_config_not_utf8(tmp):
    from lssr.config import load_config

    path = tmp / "run.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))  # saved as Latin-1 by an old editor
    load_config(path)


def _cli(argv):
    """Run one lssr command in-process, letting its LssrError through (main() prints it as one line)."""
    from lssr.cli import build_parser

    args = build_parser().parse_args(argv)
    args.func(args)


def case_train_out_is_a_file(tmp):
    import yaml

    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump(_run()))
    (tmp / "some_file").write_text("not a folder\n")
    _cli(["train", str(cfg), "--out", str(tmp / "some_file"), "--no-progress"])


def case_subset_out_is_a_file(tmp):
    (tmp / "some_file").write_text("not a folder\n")
    _cli(["subset", "digits-64", "--out", str(tmp / "some_file" / "subset")])


def _tiny_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _tiny_data(n=16):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def case_diagnose_nan_inputs(tmp):
    import lssr

    x, y = _tiny_data()
    x[5, 2] = float("nan")
    lssr.diagnose(_tiny_net(), "ce", (x, y), batch_sizes=[4])


def case_diagnose_inf_weights(tmp):
    import torch

    import lssr

    model = _tiny_net()
    with torch.no_grad():
        model[2].weight[1, 3] = float("inf")
    lssr.diagnose(model, "ce", _tiny_data(), batch_sizes=[4])


def case_diagnose_infinite_loss(tmp):
    import torch

    import lssr

    model = _tiny_net()
    with torch.no_grad():
        model[2].weight.mul_(1e30)  # outputs near 1e30: their squares overflow float32
    lssr.diagnose(model, "mse", _tiny_data(), batch_sizes=[4])


def case_diagnose_lengths(tmp):
    import lssr

    x, y = _tiny_data()
    lssr.diagnose(_tiny_net(), "ce", (x, y[:10]), batch_sizes=[4])


def case_diagnose_loss_shape(tmp):
    import lssr

    def per_class(outputs, targets):  # sums over the samples instead of the classes
        return (outputs - 1).pow(2).sum(0)

    lssr.diagnose(_tiny_net(), per_class, _tiny_data(), batch_sizes=[4])


def dropout_net():
    """A model factory for the command line: an MLP on 8x8 images with dropout (active, as built)."""
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 10))


def _cli_printed(argv) -> str:
    """Run `lssr ARGV` through its main(), which must fail; returns the one line it printed on stderr."""
    import io
    from contextlib import redirect_stderr

    from lssr.cli import main

    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(argv)
    assert rc == 2 and err.getvalue().count("\n") == 1, (rc, err.getvalue())
    return err.getvalue().strip()


def case_cli_diagnose_batch_norm(tmp):
    model = ["--model", "lssr.models:build_model", "--model-arg", "name=digits_cnn", "--model-arg", "in_channels=1"]
    model += ["--model-arg", "num_classes=10", "--model-arg", "batch_norm=true"]
    data = ["--data", str(_digits_subset(tmp)), "--n", "16", "--batch-sizes", "4", "--out", str(tmp / "diag")]
    return _cli_printed(["diagnose", *model, *data])


def case_cli_diagnose_dropout(tmp):
    data = ["--data", str(_digits_subset(tmp)), "--n", "16", "--batch-sizes", "4", "--out", str(tmp / "diag")]
    return _cli_printed(["diagnose", "--model", "bad_inputs:dropout_net", *data])


def _snakemake_error(tmp: Path, *args: str) -> str:
    """Run `snakemake ARGS` in a copy of the workflow at ``tmp`` (beside the planted earlier outputs); it must
    fail. Returns the error line it printed: ``<Name>Error: message`` or ``<Name>Exception: message``."""
    import re
    import shutil
    import subprocess

    for name in ("Snakefile", "environment.yml", "workflow", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp / name)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", *args],
        cwd=tmp,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0, f"snakemake {' '.join(args)} succeeded"
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()]
    for i, line in enumerate(lines):
        m = re.fullmatch(r"(\w+(?:Error|Exception)):\s*(.*)", line)
        if m:
            return f"{m[1]}: {m[2] or lines[i + 1]}"
    raise AssertionError(f"no error line in the output of snakemake {' '.join(args)}:\n{proc.stderr[-3000:]}")


def case_unknown_figure_target(tmp):
    return _snakemake_error(tmp, "figures/fig9.pdf")


def case_figure_not_planned(tmp):
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    cfg["figures"] = ["fig1", "fig2"]
    (tmp / "two.yaml").write_text(yaml.safe_dump(cfg))
    return _snakemake_error(tmp, "figures/fig4.pdf", "--configfile", "two.yaml")


def case_subset_not_planned(tmp):
    return _snakemake_error(tmp, "results/data/digits-2k-seed0/manifest.json")


def case_run_not_planned(tmp):
    return _snakemake_error(tmp, "results/runs/digits-1k_digits_cnn_ce_b32_lr0.3_s0_wor/metrics.csv")


CASES = [
    ("run config: misspelled key (optim.lrr)", case_config_misspelled),
    ("run config: negative learning rate", case_config_negative_lr),
    ("run config: b > n", case_config_b_gt_n),
    ("run config: unknown data set", case_config_unknown_dataset),
    ("run config: unknown model", case_config_unknown_model),
    ("workflow config: misspelled key (schema)", case_workflow_schema),
    ("workflow config: Figure-5 b > n", case_workflow_b_gt_n),
    ("`snakemake figures/fig9.pdf`: a figure that does not exist", case_unknown_figure_target),
    ("`snakemake figures/fig4.pdf` with a config whose `figures:` lacks fig4", case_figure_not_planned),
    ("`snakemake results/data/<subset>/manifest.json` for a subset the config does not plan", case_subset_not_planned),
    ("`snakemake results/runs/<run>/metrics.csv` for a run the config does not plan", case_run_not_planned),
    ("image folder without test/", case_imagefolder_no_test),
    ("Tiny-ImageNet tree with an extra class folder", case_tinyimagenet_extra_class),
    ("CIFAR-10 files missing, download off", case_cifar_missing),
    ("subset size larger than the pool", case_n_too_large),
    ("corrupt JPEG in an image folder", case_corrupt_jpeg),
    ("truncated subset file (data.pt)", case_truncated_subset),
    ("subset changed after its manifest (sha256 mismatch)", case_manifest_hash_mismatch),
    ("subset folder of another config passed to train", case_subset_other_config),
    ("read-only output folder (EACCES on create)", case_read_only_output),
    ("full disk (ENOSPC on rename)", case_disk_full),
    ("malformed --set override", case_bad_set_override),
    ("run config not UTF-8 text", case_config_not_utf8),
    ("lssr train --out naming an existing file", case_train_out_is_a_file),
    ("lssr subset --out inside an existing file", case_subset_out_is_a_file),
    ("lssr.diagnose: NaN in the inputs", case_diagnose_nan_inputs),
    ("lssr.diagnose: an infinite weight", case_diagnose_inf_weights),
    ("lssr.diagnose: finite weights and inputs, an infinite loss (overflow)", case_diagnose_infinite_loss),
    ("lssr.diagnose: 16 inputs, 10 targets", case_diagnose_lengths),
    ("lssr.diagnose: a loss callable returning one value per class, not per sample", case_diagnose_loss_shape),
    ("`lssr diagnose` on a model with batch norm in train mode (as built)", case_cli_diagnose_batch_norm),
    ("`lssr diagnose` on a model with active dropout (as built)", case_cli_diagnose_dropout),
]


@contextmanager
def earlier_outputs(tmp: Path):
    """Plant earlier outputs (including the files a failing write targets) and check they survive."""
    files = {
        tmp / "results" / "claims.csv": "claim,verdict\nC1,pass\n",
        tmp / "results" / "tables" / "runs.csv": "run,status\nr1,completed\n",
        tmp / "results" / "runs" / "old" / "metrics.csv": "step,train_loss\n0,1.0\n",
    }
    for f, text in files.items():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    yield
    for f, text in files.items():
        assert f.read_text() == text, f"earlier output {f} was changed"
    leftovers = [p for p in tmp.rglob("*.tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def provoke(fn) -> str:
    """Run one case in a fresh folder; return the message of the LssrError it must raise (or, for a workflow
    case, the error line Snakemake printed)."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with earlier_outputs(tmp):
            try:
                printed = fn(tmp)
            except LssrError as exc:
                return str(exc).replace(str(tmp), "<tmp>")
        if printed is None:
            raise AssertionError(f"{fn.__name__} raised no error")
        return printed.replace(str(tmp), "<tmp>")


def main() -> None:
    print("| # | bad input | message |")
    print("|---|---|---|")
    for i, (title, fn) in enumerate(CASES, 1):
        msg = provoke(fn).replace("|", "\\|").replace("\n", " ")
        print(f"| {i} | {title} | {msg} |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
