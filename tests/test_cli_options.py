"""`lssr diagnose` against the Python call :func:`lssr.diagnose` with the same settings, one option at a time, on a
model with batch norm and dropout (built in train mode by its factory, as a user's would be). The comparisons pin
``--device cpu``: the command and the call then run the same float32 arithmetic on the same device, so every number
agrees to 1e-12. ``--device auto`` (the default) is tested on its own, with a tolerance that follows the device it
resolves to. The help of every option names its default."""

import inspect
import json
import math
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import lssr
from lssr.cli import build_parser, main
from lssr.diagnostics import Compute, Eigen, Estimator

FACTORY = """
import torch
from torch import nn


def make(width=6, num_classes=10, in_features=64):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.Tanh(),
                      nn.Dropout(0.25), nn.Linear(width, num_classes))
    with torch.no_grad():
        m[2].running_mean.normal_()
        m[2].running_var.uniform_(0.5, 2.0)
    return m
"""
MODULE = "lssr_test_bn_dropout_factory"  # a name of its own: other tests import other factories
N, SEED, BS = 32, 2, (4, 16)
SCALARS = ("n", "n_total", "loss", "top_eig", "tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_1_se", "tr_HS_n", "b_simple")
PER_B = ("tr_S_b", "tr_HS_b", "tr_HS_b_se", "ias_b", "rho_b", "instability_b")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A digits subset folder (64 training, 773 test images of 8 x 8), an image folder of six 4 x 4 RGB images in
    two classes, and the factory module on sys.path."""
    from PIL import Image

    from lssr.data import SubsetSpec, build_subset

    root = tmp_path_factory.mktemp("cli_options")
    (root / f"{MODULE}.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    subset = build_subset(SubsetSpec("digits", 64, seed=0), root / "subset")
    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(
                root / "imgs" / "train" / c / f"{i}.png"
            )
    yield {"root": root, "subset": subset, "imgs": root / "imgs"}
    sys.path.remove(str(root))
    sys.modules.pop(MODULE, None)


def factory():
    return __import__(MODULE).make


def command(inputs, out, *extra, data=None, model_args=(), bs=BS):
    argv = ["diagnose", "--model", f"{MODULE}:make", "--data", str(data or inputs["subset"]), "--out", str(out)]
    for a in model_args:
        argv += ["--model-arg", a]
    return argv + ["--batch-sizes", *map(str, bs), *extra]


def saved(out):
    return json.loads((out / "diagnostics.json").read_text()), pd.read_csv(out / "diagnostics.csv")


def close(a, b, rtol):
    """a equals b to relative error rtol (NaN equals NaN)."""
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return abs(a - b) <= rtol * max(abs(b), 1e-300)


def assert_same_numbers(out, ref, rtol=1e-12):
    js, frame = saved(out)
    for k in SCALARS:
        assert close(js["scalars"][k], getattr(ref, k), rtol), (k, js["scalars"][k], getattr(ref, k))
    assert js["scalars"]["estimator"] == ref.estimator and js["scalars"]["replacement"] == ref.replacement
    assert list(frame["b"]) == list(BS)
    for b in BS:
        row, at = frame[frame["b"] == b].iloc[0], ref.at(b)
        for k in PER_B:
            assert close(float(row[k]), getattr(at, k), rtol), (b, k, float(row[k]), getattr(at, k))
    return js


def subset_data(split="train"):
    def read(inputs):
        from lssr.data import load_subset

        s = load_subset(inputs["subset"])
        return (s.x_train, s.y_train) if split == "train" else (s.x_test, s.y_test)

    return read


def image_folder(resize):
    def read(inputs):
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.Resize((resize, resize)), transforms.ToTensor()])
        return datasets.ImageFolder(str(inputs["imgs"] / "train"), transform=tf)

    return read


# id: (command-line options, the same settings for lssr.diagnose, the data the call reads, factory arguments)
CASES = {
    "estimator auto (sketch at n > probes)": ([], {}, subset_data(), {}),
    "estimator exact": (["--estimator", "exact"], {"estimator": "exact"}, subset_data(), {}),
    "estimator sketch": (
        ["--estimator", "sketch", "--probes", "8", "--stage1", "4", "--rel-se", "0.5"],
        {"estimator": Estimator("sketch", probes=8, stage1=4, rel_se=0.5)},
        subset_data(),
        {},
    ),
    "replacement": (["--replacement"], {"replacement": True}, subset_data(), {}),
    "store-mb": (["--store-mb", "0"], {"compute": Compute(store_mb=0)}, subset_data(), {}),
    "hvp-mode": (["--hvp-mode", "reverse"], {"compute": Compute(hvp_mode="reverse")}, subset_data(), {}),
    "chunk-size": (["--chunk-size", "7"], {"compute": Compute(chunk_size=7)}, subset_data(), {}),
    "no-eigen": (["--no-eigen"], {"eigen": False}, subset_data(), {}),
    "eigen-solver": (
        ["--eig-tol", "1e-6", "--eig-max-hvps", "90"],
        {"eigen": Eigen(tol=1e-6, max_hvps=90)},
        subset_data(),
        {},
    ),
    "split test": (["--split", "test"], {}, subset_data("test"), {}),
    "loss mse": (["--loss", "mse"], {"loss": "mse"}, subset_data(), {}),
    "dtype float64": (["--dtype", "float64"], {"compute": Compute(dtype=torch.float64)}, subset_data(), {}),
    "resize (image folder)": (["--resize", "2"], {}, image_folder(2), {"in_features": 12, "num_classes": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_option_gives_the_python_numbers_with_its_setting(inputs, tmp_path, case):
    """The command with --bn eval --dropout off (the usage the docs give for a freshly built model with batch norm
    and dropout), --n, --seed and one further option equals lssr.diagnose(model, ..., bn="eval", dropout="off",
    n=..., seed=..., <the option's setting>) on the same data, to 1e-12 on the CPU."""
    cli, kw, read, margs = CASES[case]
    kw = dict(kw)
    loss = kw.pop("loss", "ce")
    images = case.startswith("resize")  # six images: all of them, b = 2
    n = [] if images else ["--n", str(N), "--seed", str(SEED)]
    bs = [2] if images else list(BS)
    out = tmp_path / "out"
    margv = [f"{k}={v}" for k, v in margs.items()]
    data = inputs["imgs"] if images else None
    argv = command(
        inputs, out, "--bn", "eval", "--dropout", "off", "--device", "cpu", *n, *cli, bs=bs, data=data, model_args=margv
    )
    assert main(argv) == 0
    model = factory()(**margs)
    if kw.get("compute") is not None and kw["compute"].dtype is not None:
        model = model.to(kw["compute"].dtype)
    sub = {} if images else {"n": N, "seed": SEED}
    ref = lssr.diagnose(model, loss, read(inputs), batch_sizes=bs, bn="eval", dropout="off", **sub, **kw)
    if images:
        js, frame = saved(out)
        assert js["call"]["resize"] == 2 and list(frame["b"]) == [2]
        for k in SCALARS:
            assert close(js["scalars"][k], getattr(ref, k), 1e-12), k
        assert close(float(frame["tr_HS_b"].iloc[0]), ref.at(2).tr_HS_b, 1e-12)
        return
    js = assert_same_numbers(out, ref)
    s = js["scalars"]
    if case == "estimator exact":
        assert s["estimator"] == "exact" and s["tr_HS_1_se"] == 0.0
    if case.startswith("estimator s") or case.startswith("estimator a"):
        assert s["estimator"] == "sketch" and s["tr_HS_1_se"] > 0
    if case == "store-mb":  # the per-sample gradients not kept: products by directional derivatives
        assert s["cost_jvps"] > 0 and ref.cost.jvps > 0
    if case == "hvp-mode":
        assert s["cost_hvp_mode"] == "reverse"
    if case == "no-eigen":
        assert math.isnan(s["top_eig"])
    if case == "split test":
        assert s["n_total"] == 773 and js["call"]["split"] == "test"


def test_a_model_with_batch_norm_needs_bn_eval_and_dropout_off(inputs, tmp_path, capsys):
    """A freshly built model is in train mode: without --bn eval the command refuses its batch norm, without
    --dropout off its dropout (exit status 2, one line naming the setting)."""
    base = command(inputs, tmp_path / "a", "--device", "cpu", "--n", str(N))
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "batch norm" in err and "eval" in err
    assert main(base + ["--bn", "eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dropout" in err and "off" in err
    assert main(base + ["--bn", "eval", "--dropout", "off"]) == 0


@pytest.mark.parametrize(
    "flags, named",
    [(["--probes", "2"], "--probes"), (["--eig-tol", "2"], "--eig-tol"), (["--chunk-size", "0"], "--chunk-size")],
)
def test_a_bad_option_value_is_one_line_naming_its_flag(inputs, tmp_path, capsys, flags, named):
    argv = command(inputs, tmp_path / "a", "--bn", "eval", "--dropout", "off", "--device", "cpu", *flags)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"lssr diagnose: error: {named}: "), err
    assert not (tmp_path / "a" / "diagnostics.csv").exists()


def test_the_estimators_differ_where_they_should(inputs, tmp_path):
    """--estimator exact and sketch give different tr(H S_1) at n = 32 > 16 probes (the sketch has an se; the exact
    value none), and auto is the sketch there: so a swap of the two cannot pass the comparisons above unnoticed."""
    outs = {}
    for est in ("exact", "sketch", "auto"):
        out = tmp_path / est
        argv = command(inputs, out, "--bn", "eval", "--dropout", "off", "--device", "cpu", "--n", str(N))
        assert main(argv + ["--estimator", est, "--no-eigen"]) == 0
        outs[est] = saved(out)[0]["scalars"]
    assert outs["exact"]["estimator"] == "exact" and outs["sketch"]["estimator"] == "sketch"
    assert outs["exact"]["tr_HS_1"] != outs["sketch"]["tr_HS_1"] and outs["sketch"]["tr_HS_1_se"] > 0
    assert outs["auto"]["tr_HS_1"] == outs["sketch"]["tr_HS_1"]


def test_device_auto_resolves_to_the_available_device_and_gives_its_numbers(inputs, tmp_path):
    """--device auto (the default) runs on cuda when one is available, else on the CPU, and records which. On the
    CPU the numbers are the Python call's to 1e-12. On a GPU they differ by float32 rounding only: this model's
    float32 numbers lie within 1.1e-6 of its float64 ones (tr(H S_n), a sum that cancels, the furthest; 2e-7 for
    the others), so two float32 devices agree well within 1e-4; ‖H‖ comes from LOBPCG stopped at relative
    residual eig_tol = 1e-3 on each device, and each Ritz value lies within its residual of an eigenvalue, so
    the two agree to 2·eig_tol."""
    out = tmp_path / "out"
    argv = command(inputs, out, "--bn", "eval", "--dropout", "off", "--n", str(N), "--estimator", "exact")
    assert main(argv) == 0
    js, frame = saved(out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert js["call"]["device"].split(":")[0] == device  # cuda:N with several GPUs
    ref = lssr.diagnose(factory()(), "ce", subset_data()(inputs), batch_sizes=list(BS), bn="eval", dropout="off",
                        n=N, seed=0, estimator="exact")  # fmt: skip
    rtol, rtol_eig = (1e-12, 1e-12) if device == "cpu" else (1e-4, 2e-3)
    for k in ("loss", "tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_n"):
        assert close(js["scalars"][k], getattr(ref, k), rtol), k
    assert close(js["scalars"]["top_eig"], ref.top_eig, rtol_eig)
    for b in BS:
        assert close(float(frame[frame["b"] == b].iloc[0]["ias_b"]), ref.at(b).ias_b, rtol)


def _diagnose_actions():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return [a for a in sub.choices["diagnose"]._actions if a.dest != "help"]


def _numbers(text: str) -> list[float]:
    return [float(t) for t in re.findall(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", text)]


def test_every_option_names_its_default():
    """Each optional setting's help says what happens when it is not given: the word "default" and the default
    itself, the argparse default of the command's own options (--split train, --loss ce, --device auto, ...)
    and, for options passed on to lssr.diagnose, its default when it is a number or a name: the function's own
    (n, seed, bn, dropout, estimator) or the option object's field the flag sets (Estimator, Eigen, Compute)."""
    from lssr.cli_diagnose import FLAG_FIELDS

    params = inspect.signature(lssr.diagnose).parameters
    objects = {"estimator": Estimator, "eigen": Eigen, "compute": Compute}
    actions = _diagnose_actions()
    assert len(actions) >= 20
    for a in actions:
        if a.required:
            continue
        name = a.option_strings[-1]
        assert a.help and "default" in a.help, f"{name}: its help does not name its default: {a.help!r}"
        if isinstance(a.default, str):
            assert a.default in a.help, f"{name}: default {a.default!r} not named in {a.help!r}"
        if (a.dest in params or a.dest in FLAG_FIELDS) and a.default is None:
            if a.dest in FLAG_FIELDS:
                obj, field = FLAG_FIELDS[a.dest]
                d = objects[obj].__dataclass_fields__[field].default
            else:
                d = params[a.dest].default
            if isinstance(d, str):
                assert d in a.help, f"{name}: lssr.diagnose's default {d!r} not named in {a.help!r}"
            elif isinstance(d, (int, float)) and not isinstance(d, bool):
                assert any(math.isclose(v, d) for v in _numbers(a.help)), f"{name}: default {d} not in {a.help!r}"
