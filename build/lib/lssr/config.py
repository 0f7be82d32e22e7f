"""Run configuration: one validated, frozen object per training run.

A run config is a YAML mapping with the sections below (every key optional except ``data``,
``model``, ``loss`` and ``optim.lr``). Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key, the value and the fix.

.. code-block:: yaml

    seed: 0                  # drives initialisation and batch sampling
    device: auto             # auto | cpu | cuda
    data: {dataset: digits, n: 1024, seed: 0, root: null, download: false, resize: null}
    model: {name: digits_cnn, batch_norm: false}
    loss: mse                # ce | mse
    optim: {lr: 0.1, batch_size: 32, replacement: false}   # batch_size: full (= n) for GD
    stop: {steps: 600, epochs: null, train_loss_goal: null, train_acc_goal: null, divergence_bound: 1.0e6}
    eval_every: 10
    chunk_size: 512          # memory chunk for full-batch passes, separate from batch_size
    bn_mode: train           # train | eval: batch-norm mode used by the Hessian probes
    probe: {every: 10, batch_sizes: [8, 32], ...}          # see ProbeConfig
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from . import LssrError


MODEL_NAMES = ("cnn6", "digits_cnn", "resnet9", "wrn28_2")
LOSS_NAMES = ("ce", "mse")


class ConfigError(LssrError):
    """A bad configuration value: the message names the key and the fix."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str
    n: int
    seed: int = 0
    root: str | None = None
    download: bool = False
    resize: int | None = None
    num_classes: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    batch_norm: bool = False


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    batch_size: int | str = "full"
    replacement: bool = False


@dataclass(frozen=True)
class StopConfig:
    steps: int | None = None
    epochs: float | None = None
    train_loss_goal: float | None = None
    train_acc_goal: float | None = None
    divergence_bound: float = 1.0e6


@dataclass(frozen=True)
class ProbeConfig:
    """Per-step diagnostics (issue 'diagnostics'): which quantities, how often, how precise."""

    every: int = 10
    batch_sizes: tuple[int, ...] = ()
    estimator: str = "exact"  # exact | sketch | auto
    probes: int = 64  # random-sign sketch probes for tr(H S_1) in sketch mode (the most; see rel_se)
    stage1: int = 8  # sketch mode: range-finder directions of the per-sample gradients (about the class count)
    rel_se: float | None = 0.05  # sketch mode: stop adding probes once se(tr H S_1) <= rel_se * estimate; null = all
    top_eigenvalue: bool = True
    eig_tol: float = 1e-3
    expected_change_batches: int = 0  # K sampled batches for E_B[L(θ − η g_B)] − L(θ); 0 = off
    resultant_batches: int = 0  # sampled batches for the mean resultant length R̄_b²; 0 = off
    valley: bool = False  # Figure-3 asymmetric-valley probes (GD)
    valley_alphas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25)
    valley_s: tuple[float, ...] = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)
    seed: int = 12345
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig
    loss: str
    optim: OptimConfig
    seed: int = 0
    device: str = "auto"
    stop: StopConfig = field(default_factory=StopConfig)
    eval_every: int = 10
    log_every: int = 1
    chunk_size: int = 512
    bn_mode: str = "train"
    probe: ProbeConfig | None = None
    checkpoint_every: int | None = None
    name: str | None = None

    # -- derived ---------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """b: the SGD batch size (b = n for full-batch GD)."""
        b = self.optim.batch_size
        return self.data.n if b == "full" else int(b)

    @property
    def is_gd(self) -> bool:
        return self.batch_size == self.data.n and not self.optim.replacement

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """sha256 of the canonical JSON of the config (first 16 hex digits)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# dict -> dataclass with type checks
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as exc:
                errors.append(exc)
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{where}: key '{key}' must be {names}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key '{key}' must be a list, got {value!r}")
        (inner, *_) = typing.get_args(tp)
        return tuple(_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: section '{key}' must be a mapping, got {value!r}")
        return _from_dict(tp, value, where, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: key '{key}': unsupported type {tp}")  # pragma: no cover


def _from_dict(cls: type, raw: dict, where: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}'; known keys in this section: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{prefix}{name}", where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key '{prefix}{name}' is missing")
    return cls(**kwargs)


def _check_values(cfg: RunConfig, where: str) -> None:
    from .data import SOURCES

    # Names only, so that planning a workflow does not import torch; tests check they equal the
    # registries lssr.models.MODELS and lssr.losses.PER_SAMPLE.
    MODELS, PER_SAMPLE = MODEL_NAMES, LOSS_NAMES

    def bad(key: str, value: Any, fix: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}' = {value!r} is invalid: {fix}")

    if cfg.data.dataset not in SOURCES:
        raise bad("data.dataset", cfg.data.dataset, f"known data sets: {', '.join(sorted(SOURCES))}")
    if cfg.data.n < 1:
        raise bad("data.n", cfg.data.n, "must be >= 1")
    if cfg.model.name not in MODELS:
        raise bad("model.name", cfg.model.name, f"known models: {', '.join(sorted(MODELS))}")
    if cfg.loss not in PER_SAMPLE:
        raise bad("loss", cfg.loss, f"known losses: {', '.join(sorted(PER_SAMPLE))}")
    if not cfg.optim.lr > 0:
        raise bad("optim.lr", cfg.optim.lr, "the learning rate η must be > 0")
    b = cfg.optim.batch_size
    if isinstance(b, str) and b != "full":
        raise bad("optim.batch_size", b, "use an integer 1..n or 'full' (b = n, full-batch GD)")
    if isinstance(b, int) and not 1 <= b <= cfg.data.n:
        raise bad("optim.batch_size", b, f"must satisfy 1 <= b <= n = {cfg.data.n}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise bad("device", cfg.device, "use auto, cpu, cuda or cuda:N")
    if cfg.bn_mode not in ("train", "eval"):
        raise bad("bn_mode", cfg.bn_mode, "use train or eval")
    for key in ("eval_every", "log_every", "chunk_size"):
        if getattr(cfg, key) < 1:
            raise bad(key, getattr(cfg, key), "must be >= 1")
    if cfg.checkpoint_every is not None and cfg.checkpoint_every < 1:
        raise bad("checkpoint_every", cfg.checkpoint_every, "must be >= 1 or null")
    s = cfg.stop
    if s.steps is None and s.epochs is None:
        raise ConfigError(f"{where}: set 'stop.steps' or 'stop.epochs' so the run ends")
    if s.steps is not None and s.steps < 0:
        raise bad("stop.steps", s.steps, "must be >= 0")
    if s.epochs is not None and s.epochs <= 0:
        raise bad("stop.epochs", s.epochs, "must be > 0")
    if not s.divergence_bound > 0:
        raise bad("stop.divergence_bound", s.divergence_bound, "must be > 0")
    if s.train_acc_goal is not None and not 0 < s.train_acc_goal <= 1:
        raise bad("stop.train_acc_goal", s.train_acc_goal, "a fraction in (0, 1]")
    p = cfg.probe
    if p is not None:
        if p.every < 1:
            raise bad("probe.every", p.every, "must be >= 1")
        for bb in p.batch_sizes:
            if not 1 <= bb <= cfg.data.n:
                raise bad("probe.batch_sizes", bb, f"each b must satisfy 1 <= b <= n = {cfg.data.n}")
        if p.estimator not in ("exact", "sketch", "auto"):
            raise bad("probe.estimator", p.estimator, "use exact, sketch or auto")
        if p.probes < 2:
            raise bad("probe.probes", p.probes, "at least 2 sketch probes are needed for a standard error")
        if not 0 < p.eig_tol < 1:
            raise bad("probe.eig_tol", p.eig_tol, "a relative tolerance in (0, 1)")


def config_from_dict(raw: dict, where: str = "config") -> RunConfig:
    """Validate a raw mapping and build the frozen :class:`RunConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a run config must be a YAML mapping, got {type(raw).__name__}")
    raw = dict(raw)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("n"), str):
        from .data import DataError, parse_size

        data = dict(data)
        try:
            data["n"] = parse_size(data["n"])
        except DataError as exc:
            raise ConfigError(f"{where}: key 'data.n': {exc}") from None
        raw["data"] = data
    cfg = _from_dict(RunConfig, raw, where)
    _check_values(cfg, where)
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read a YAML run config from ``path`` (with optional nested overrides) and validate it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if overrides:
        raw = deep_update(raw, overrides)
    return config_from_dict(raw, where=str(path))


def deep_update(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
