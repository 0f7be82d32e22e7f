"""The glue of ``lssr diagnose`` and ``lssr recommend`` (:mod:`lssr.cli`): :func:`lssr.diagnose` on a model built
by a factory, optionally loaded from a checkpoint, and a data set on disk (a subset folder from ``lssr subset`` or
an image-folder tree), with the option objects built from the command's flags (:func:`diagnose_options`); writes
``diagnostics.csv`` (one row per b) and ``diagnostics.json`` (every number, the cost and the call)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path

import torch
import yaml
from torch import nn

from .diagnostics.api import Diagnostics, diagnose
from .diagnostics.options import Compute, Eigen, Estimator
from .errors import LssrError
from .io import write_csv, write_json

PREFIXES = ("module.", "_orig_mod.")


def parse_model_args(items: list[str]) -> dict:
    """KEY=VALUE pairs, each value read as YAML (``num_classes=10`` is an int, ``name=cnn6`` a string)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LssrError(f"--model-arg {item!r}: expected KEY=VALUE, e.g. num_classes=10")
        out[key] = yaml.safe_load(value)
    return out


def build_from_factory(spec: str, kwargs: dict) -> nn.Module:
    """``package.module:function`` called with ``kwargs``; must return a torch.nn.Module."""
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise LssrError(f"--model {spec!r}: expected package.module:function, e.g. torchvision.models:resnet18")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise LssrError(
            f"--model {spec!r}: cannot import {mod_name} ({e}); fix: install it, or set PYTHONPATH"
        ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise LssrError(f"--model {spec!r}: {mod_name} has no function {fn_name!r}")
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise LssrError(f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Loads a state dict (or a dict holding one under ``model``, ``state_dict`` or ``model_state_dict``;
    ``module.`` / ``_orig_mod.`` prefixes of DDP / torch.compile stripped) into ``model``, strictly."""
    p = Path(path)
    if not p.is_file():
        raise LssrError(f"--checkpoint {path}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LssrError(f"--checkpoint {path}: cannot be read ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise LssrError(f"--checkpoint {path}: holds {type(obj).__name__}, not a state dict")
    state = {}
    for k, v in obj.items():
        for pre in PREFIXES:
            while k.startswith(pre):
                k = k[len(pre) :]
        state[k] = v
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise LssrError(f"--checkpoint {path} does not fit the model: {' '.join(first[:2])[:300]}") from None


def load_data(path: str, split: str = "train", resize: int | None = None):
    """(inputs, targets) of a subset folder (standardised as in training), or a ``Dataset`` of an image-folder
    tree (``<class>/<image>`` under ``path/<split>`` when that folder exists, else under ``path``; pixels in
    [0, 1], resized to ``resize`` when given)."""
    root = Path(path)
    if (root / "manifest.json").is_file():
        from .data import load_subset

        sub = load_subset(root)
        return (sub.x_train, sub.y_train) if split == "train" else (sub.x_test, sub.y_test)
    if root.is_dir():
        from torchvision import datasets, transforms

        folder = root / split if (root / split).is_dir() else root
        tf = [transforms.Resize((resize, resize))] if resize else []
        try:
            return datasets.ImageFolder(str(folder), transform=transforms.Compose([*tf, transforms.ToTensor()]))
        except (FileNotFoundError, RuntimeError) as e:
            raise LssrError(f"--data {path}: not a subset folder nor an image folder ({e})") from None
    raise LssrError(f"--data {path}: no such folder; give a subset folder (`lssr subset`) or an image folder")


def built_model(model: str, model_args: dict, checkpoint: str | None, dtype: str | None, device: str):
    """(net, torch dtype or None): the factory's model, the checkpoint loaded into it, cast to ``dtype``
    (float32 / float64; None keeps the model's) and moved to ``device``."""
    net = build_from_factory(model, model_args)
    if checkpoint:
        load_checkpoint(net, checkpoint)
    dt = None
    if dtype is not None:
        dt = {"float32": torch.float32, "float64": torch.float64}.get(dtype)
        if dt is None:
            raise LssrError(f"--dtype {dtype!r}: known: float32, float64")
        net = net.to(dt)
    return net.to(device), dt


#: The option objects' fields set by the flags of ``lssr diagnose`` (flag dest: (object, field)).
FLAG_FIELDS = {
    "probes": ("estimator", "probes"),
    "stage1": ("estimator", "stage1"),
    "rel_se": ("estimator", "rel_se"),
    "eig_tol": ("eigen", "tol"),
    "eig_max_hvps": ("eigen", "max_hvps"),
    "chunk_size": ("compute", "chunk_size"),
    "store_mb": ("compute", "store_mb"),
    "hvp_mode": ("compute", "hvp_mode"),
}
_CLASSES = {"estimator": Estimator, "eigen": Eigen, "compute": Compute}


def diagnose_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`lssr.diagnose` from the flags of ``lssr diagnose`` / ``lssr recommend``:
    n, seed, bn and dropout when given, and the option objects (:class:`Estimator` of ``--estimator``,
    ``--probes`` ...; :class:`Eigen`, or False for ``--no-eigen``; :class:`Compute`) with the flags given and
    their defaults otherwise. A bad value is an error naming its flag."""
    out = {k: getattr(args, k) for k in ("n", "seed", "bn", "dropout") if getattr(args, k) is not None}
    given: dict[str, dict] = {"estimator": {"kind": args.estimator}, "eigen": {}, "compute": {}}
    for dest, (obj, name) in FLAG_FIELDS.items():
        if getattr(args, dest) is not None:
            given[obj][name] = getattr(args, dest)
    for obj, kwargs in given.items():
        try:
            out[obj] = _CLASSES[obj](**kwargs)
        except LssrError as e:
            flag = _flag(obj, str(e))
            raise LssrError(f"{flag}: {e}" if flag else str(e)) from None
    if args.no_eigen:
        out["eigen"] = False
    return out


def _flag(obj: str, message: str) -> str | None:
    """The flag that set the field of option object ``obj`` named in an :class:`.options.OptionError` message."""
    for dest, (owner, name) in FLAG_FIELDS.items():
        if owner == obj and f": {name} " in message:
            return "--" + dest.replace("_", "-")
    return None


def recorded(options: dict) -> dict:
    """``options`` as plain values for diagnostics.json (the option objects as dicts, without vectors and
    dtypes, which the call records by name)."""
    out = {}
    for k, v in options.items():
        if dataclasses.is_dataclass(v):
            v = {f: x for f, x in dataclasses.asdict(v).items() if f not in ("init", "dtype")}
        out[k] = v
    return out


def run_diagnose(
    *,
    model: str,
    model_args: dict,
    checkpoint: str | None,
    data: str,
    loss: str,
    batch_sizes: list[int],
    out: str,
    split: str = "train",
    resize: int | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    **options,
) -> Diagnostics:
    """Builds the model, loads the checkpoint and the data, calls :func:`lssr.diagnose` with ``options`` (its
    keyword arguments; ``compute`` gets the dtype) and writes ``out/diagnostics.csv`` and
    ``out/diagnostics.json``."""
    net, dt = built_model(model, model_args, checkpoint, dtype, device)
    compute = dataclasses.replace(Compute.of(options.pop("compute", None)), dtype=dt)
    samples = load_data(data, split, resize)
    result = diagnose(net, loss, samples, batch_sizes=batch_sizes, compute=compute, **options)
    options["compute"] = compute
    frame = result.frame()
    write_csv(Path(out) / "diagnostics.csv", frame)
    call = {"model": model, "model_args": model_args, "checkpoint": checkpoint, "data": data, "split": split}
    call.update(loss=loss, batch_sizes=list(batch_sizes), device=device, dtype=dtype, resize=resize)
    call.update(recorded(options))
    write_json(
        Path(out) / "diagnostics.json",
        {"scalars": result.scalars(), "per_b": frame.to_dict(orient="records"), "call": call},
    )
    return result


def read_point(path: str):
    """(NoiseScale, Diagnostics-like namespace) of a diagnostics.json written by ``lssr diagnose`` (B_simple
    without its se) or by ``lssr recommend`` (with the se, under ``noise``)."""
    import json
    from types import SimpleNamespace

    from .recommend import NoiseScale, noise_scale_from_diagnostics

    p = Path(path)
    if not p.is_file():
        raise LssrError(f"--diagnostics {path}: no such file (it is written by `lssr diagnose` or `lssr recommend`)")
    try:
        obj = json.loads(p.read_text())
        scalars = obj["scalars"]
    except (ValueError, KeyError, TypeError):
        raise LssrError(f"--diagnostics {path}: not a diagnostics.json (no 'scalars'); give one `lssr diagnose` wrote")
    missing = [k for k in ("n", "tr_S_1", "tr_S_n", "tr_HS_1", "tr_HS_n") if k not in scalars]
    if missing:
        raise LssrError(f"--diagnostics {path}: 'scalars' lacks {', '.join(missing)}")
    noise = NoiseScale(**obj["noise"]) if "noise" in obj else noise_scale_from_diagnostics(scalars, label=str(path))
    return noise, SimpleNamespace(**scalars)


def _measured_points(
    out, model, model_args, checkpoints, where, loss, device, dtype, b_ref, replacement, n_train, options
) -> tuple[list, list]:
    """(NoiseScale, Diagnostics) of each checkpoint (None: the factory's weights) on the data at ``where`` (path,
    split, resize), as ``lssr diagnose`` measures; writes ``out/diagnostics[-k].json`` with B_simple's se."""
    from .recommend import noise_scale

    points, diags = [], []
    samples = None  # read once, after the first model is built (its errors first, as in `lssr diagnose`)
    for k, ckpt in enumerate(checkpoints):
        net, dt = built_model(model, model_args, ckpt, dtype, device)
        if samples is None:
            samples = load_data(*where)
        kw = {**options, "compute": dataclasses.replace(Compute.of(options.get("compute")), dtype=dt)}
        diag = diagnose(net, loss, samples, batch_sizes=[b_ref], replacement=replacement, **kw)
        keep = {k: kw[k] for k in ("n", "seed", "bn", "dropout", "compute") if k in kw}
        noise = noise_scale(net, loss, samples, n_total=n_train, label=ckpt or "built model", **keep)
        points.append(noise)
        diags.append(diag)
        call = {"model": model, "model_args": model_args, "checkpoint": ckpt, "data": where[0], "split": where[1]}
        call.update(loss=loss, device=device, dtype=dtype, resize=where[2])
        call.update(recorded(kw))
        body = {"scalars": diag.scalars(), "per_b": diag.frame().to_dict(orient="records"), "noise": noise.to_dict()}
        write_json(Path(out) / ("diagnostics.json" if k == 0 else f"diagnostics-{k}.json"), {**body, "call": call})
    return points, diags


def run_recommend(
    *,
    b_ref: int,
    lr_ref: float,
    batch_sizes: list[int],
    out: str,
    diagnostics: list[str] | None = None,
    monitor_log: str | None = None,
    model: str | None = None,
    model_args: dict | None = None,
    checkpoints: list[str] | None = None,
    data: str | None = None,
    loss: str = "ce",
    split: str = "train",
    resize: int | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    replacement: bool = False,
    momentum: float = 0.0,
    optimizer: str = "sgd",
    level: float = 0.9,
    n_train: int | None = None,
    **options,
):
    """:func:`lssr.recommend.recommend` on existing diagnostics.json files (``diagnostics``), on the rows of a
    SharpnessMonitor CSV (``monitor_log``, the latest first), or measured first on
    a model and data as ``lssr diagnose`` (one point per checkpoint, or the built model); writes
    ``out/recommendation.csv``, ``.json`` and ``.png`` and, when it measured, ``out/diagnostics[-k].json`` (with
    B_simple's se, readable by ``--diagnostics``)."""
    from .recommend import check_optimizer, plot_recommendation, points_from_log, recommend

    check_optimizer(optimizer)
    points, diags = [], []
    if monitor_log:
        points = points_from_log(monitor_log)
        diags = [points[0] if "tr_HS_1" in points[0] else None]
    elif diagnostics:
        for path in diagnostics:
            noise, diag = read_point(path)
            points.append(noise)
            diags.append(diag)
    else:
        if not model or not data:
            raise LssrError(
                "recommend: give --diagnostics FILE, --monitor-log CSV, or --model and --data to measure first"
            )
        points, diags = _measured_points(
            out, model, model_args or {}, checkpoints or [None], (data, split, resize), loss, device, dtype,
            b_ref, replacement, n_train, options,
        )  # fmt: skip
    rec = recommend(
        points,
        b_ref,
        lr_ref,
        batch_sizes,
        n=n_train,
        replacement=replacement,
        momentum=momentum,
        optimizer=optimizer,
        level=level,
        diagnostics=diags[0],
    )
    write_csv(Path(out) / "recommendation.csv", rec.frame())
    write_json(Path(out) / "recommendation.json", rec.to_dict())
    plot_recommendation(rec, Path(out) / "recommendation.png")
    return rec
