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
    goal_every: null         # N: also check the stop goals every N steps (training set only); null: at evaluations
    chunk_size: 512          # memory chunk for full-batch passes, separate from batch_size
    bn_mode: train           # train | eval: batch-norm mode used by the Hessian probes
    bn_ghost_batch: null     # N: batch-norm statistics over chunks of N samples (opt-in); null: the whole batch
    activation_checkpointing: auto   # auto (only when the pre-flight estimate needs it) | always | never
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

from ..datasets import SOURCE_NAMES, DataError, parse_size
from ..diagnostics.options import CHUNK, EIG_TOL, ESTIMATORS, PIPELINE_ESTIMATOR, PROBES, REL_SE, STAGE1
from ..errors import LssrError

MODEL_NAMES = ("cnn6", "digits_cnn", "resnet9", "wrn28_2")
LOSS_NAMES = ("ce", "mse")
BN_MODES = ("train", "eval")
ACTIVATION_CHECKPOINTING = ("auto", "always", "never")


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
    """Per-step diagnostics: which quantities, how often, how precise."""

    every: int = 10  # probe steps start, start + every, ... (after the dense window)
    dense_until: int = 0  # probe every step in [start, dense_until), then every `every` (the edge is reached early)
    batch_sizes: tuple[int, ...] = ()
    estimator: str = PIPELINE_ESTIMATOR  # exact | sketch | auto (lssr.diagnose's default is auto)
    probes: int = PROBES  # sketch mode: the most random-sign probes for tr(H S_1) (see rel_se)
    stage1: int = STAGE1  # sketch mode: the probes of the first block, before the se is first checked (>= 3)
    rel_se: float | None = REL_SE  # sketch mode: add probes until the jackknife se(tr H S_1) <= rel_se * estimate
    eigen: bool = True  # ‖H‖ by LOBPCG (false: not measured)
    eig_tol: float = EIG_TOL
    expected_change_batches: int = 0  # K sampled batches for E_B[L(θ − η g_B)] − L(θ); 0 = off
    resultant_batches: int = 0  # sampled batches for the mean resultant length R̄_b²; 0 = off
    valley: bool = False  # Figure-3 asymmetric-valley probes (GD)
    consecutive: bool = False  # also observe step t+1 after each probed step t: cos(g_t, g_{t+1}) (§5.2)
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
    # Goal checks between evaluations: every N steps the training set alone is evaluated and the stop rule
    # applied; the test set is evaluated there only when the run stops (Figure 5's goal, lssr.workflow).
    goal_every: int | None = None
    log_every: int = 1
    chunk_size: int = CHUNK
    bn_mode: str = "train"
    # Training: batch norm normalises with the statistics of the whole mini-batch of b samples. An explicit
    # N trains with "ghost batches" instead: statistics (and forward passes) over chunks of N samples.
    # A model without batch norm ignores it (its gradient does not depend on how the batch is chunked).
    bn_ghost_batch: int | None = None
    # Recompute activations in the backward pass (torch.utils.checkpoint) to fit a whole-batch forward:
    # auto = only when the pre-flight memory estimate says the plain step does not fit (lssr.memory).
    activation_checkpointing: str = "auto"
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
        """Full-batch GD: b = n without replacement, so every step sees the whole set (S_b = 0)."""
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
        if len(errors) == 1 and any(dataclasses.is_dataclass(a) for a in args):  # a section or null: its own error
            raise errors[0]
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


#: Keys of earlier versions and their names now.
RENAMED_KEYS = {"probe.top_eigenvalue": "probe.eigen"}


def _from_dict(cls: type, raw: dict, where: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    for key in unknown:
        if f"{prefix}{key}" in RENAMED_KEYS:
            new = RENAMED_KEYS[f"{prefix}{key}"]
            raise ConfigError(f"{where}: key '{prefix}{key}' is now '{new}'; fix: rename it")
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


def _bad(where: str):
    def bad(key: str, value: Any, fix: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}' = {value!r} is invalid: {fix}")

    return bad


def _check_data(d: DataConfig, where: str, prefix: str = "data.") -> None:
    """The subset: a known source, n >= 1, and the bounds the workflow schema states."""
    bad = _bad(where)
    if d.dataset not in SOURCE_NAMES:
        key = "source" if prefix != "data." else "dataset"
        raise bad(prefix + key, d.dataset, f"known data sets: {', '.join(sorted(SOURCE_NAMES))}")
    if d.n < 1:
        raise bad(prefix + "n", d.n, "must be >= 1")
    if d.seed < 0:
        raise bad(prefix + "seed", d.seed, "must be >= 0")
    if d.resize is not None and d.resize < 1:
        raise bad(prefix + "resize", d.resize, "a side length in pixels >= 1, or null")
    if d.num_classes is not None and d.num_classes < 2:
        raise bad(prefix + "num_classes", d.num_classes, "at least 2 classes, or null")


def _check_run(cfg: RunConfig, where: str) -> None:
    """Model, loss, η, b and the run-level keys."""
    # Names only, so that planning a workflow does not import torch; tests check they equal the
    # registries lssr.models.MODELS and lssr.losses.PER_SAMPLE.
    bad = _bad(where)
    if cfg.model.name not in MODEL_NAMES:
        raise bad("model.name", cfg.model.name, f"known models: {', '.join(sorted(MODEL_NAMES))}")
    if cfg.loss not in LOSS_NAMES:
        raise bad("loss", cfg.loss, f"known losses: {', '.join(sorted(LOSS_NAMES))}")
    if not cfg.optim.lr > 0:
        raise bad("optim.lr", cfg.optim.lr, "the learning rate η must be > 0")
    b = cfg.optim.batch_size
    if isinstance(b, str) and b != "full":
        raise bad("optim.batch_size", b, "use an integer 1..n or 'full' (b = n, full-batch GD)")
    if isinstance(b, int) and not 1 <= b <= cfg.data.n:
        raise bad("optim.batch_size", b, f"must satisfy 1 <= b <= n = {cfg.data.n}")
    if cfg.seed < 0:
        raise bad("seed", cfg.seed, "must be >= 0")
    if not _valid_device(cfg.device):
        raise bad("device", cfg.device, "use auto, cpu, cuda or cuda:N")
    if cfg.bn_mode not in BN_MODES:
        raise bad("bn_mode", cfg.bn_mode, "use train or eval")
    for key in ("eval_every", "log_every", "chunk_size"):
        if getattr(cfg, key) < 1:
            raise bad(key, getattr(cfg, key), "must be >= 1")
    if cfg.goal_every is not None and cfg.goal_every < 1:
        raise bad("goal_every", cfg.goal_every, "the steps between goal checks, >= 1, or null (only at evaluations)")
    if cfg.checkpoint_every is not None and cfg.checkpoint_every < 1:
        raise bad("checkpoint_every", cfg.checkpoint_every, "must be >= 1 or null")
    if cfg.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
        raise bad("activation_checkpointing", cfg.activation_checkpointing, "use auto, always or never")
    if cfg.bn_ghost_batch is not None and cfg.bn_ghost_batch < 1:
        raise bad("bn_ghost_batch", cfg.bn_ghost_batch, "a ghost-batch size >= 1, or null (the whole batch)")


def _check_stop(s: StopConfig, where: str) -> None:
    bad = _bad(where)
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


def _check_probe(p: ProbeConfig, n: int, where: str) -> None:
    """The probe: batch sizes within 1..n, estimator settings for tr(H S_1) and ‖H‖, sample counts >= 0."""
    bad = _bad(where)
    if p.every < 1:
        raise bad("probe.every", p.every, "must be >= 1")
    for bb in p.batch_sizes:
        if not 1 <= bb <= n:
            raise bad("probe.batch_sizes", bb, f"each b must satisfy 1 <= b <= n = {n}")
    if p.estimator not in ESTIMATORS:
        raise bad("probe.estimator", p.estimator, "use exact, sketch or auto")
    if p.probes < 3:
        raise bad("probe.probes", p.probes, "at least 3 sketch probes are needed (jackknife se, control variate)")
    if p.stage1 < 3:
        raise bad("probe.stage1", p.stage1, "use 3 or more probes in the first block (at most probe.probes are used)")
    if p.rel_se is not None and not p.rel_se > 0:
        raise bad("probe.rel_se", p.rel_se, "use a positive relative standard error (e.g. 0.05) or null")
    if not 0 < p.eig_tol < 1:
        raise bad("probe.eig_tol", p.eig_tol, "a relative tolerance in (0, 1)")
    for key in ("expected_change_batches", "resultant_batches", "start", "dense_until"):
        if getattr(p, key) < 0:
            raise bad(f"probe.{key}", getattr(p, key), "must be >= 0")


def _check_values(cfg: RunConfig, where: str) -> None:
    """Every value rule of a run config (the types were checked by :func:`_from_dict`)."""
    _check_data(cfg.data, where)
    _check_run(cfg, where)
    _check_stop(cfg.stop, where)
    if cfg.probe is not None:
        _check_probe(cfg.probe, cfg.data.n, where)


def _valid_device(device: str) -> bool:
    return device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())


def config_from_dict(raw: dict, where: str = "config") -> RunConfig:
    """Validate a raw mapping and build the frozen :class:`RunConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a run config must be a YAML mapping, got {type(raw).__name__}")
    raw = dict(raw)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("n"), str):
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
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give the run config YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); a run config is a YAML text file"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if overrides:
        raw = deep_update(raw, overrides)
    return config_from_dict(raw, where=str(path))


def parse_overrides(items: list[str] | None) -> dict:
    """``--set optim.lr=0.1`` -> {"optim": {"lr": 0.1}} (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def deep_update(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
