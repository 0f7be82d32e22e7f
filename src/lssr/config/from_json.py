"""A run config given as JSON, the form the workflow passes to each training job (``lssr train --json``,
``lssr train-batch --json``): parsed, overridden, validated and written as YAML to the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .run import ConfigError, RunConfig, config_from_dict, deep_update


def run_config_from_json(
    json_text: str, out: str | Path, overrides: dict | None = None, write: bool = True
) -> RunConfig:
    """The :class:`RunConfig` of ``json_text`` with optional nested ``overrides``, validated (errors name
    ``out``) and written as YAML to ``out`` (atomically) for provenance. ``write=False`` validates only (the
    ranks after the first of a data-parallel launch, which write nothing)."""
    from ..io import write_text

    try:
        raw = json.loads(json_text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{out}: --json is not valid JSON ({exc})") from None
    if overrides:
        raw = deep_update(raw, overrides)
    cfg = config_from_dict(raw, where=str(out))
    if write:
        write_text(out, yaml.safe_dump(raw, sort_keys=False))
    return cfg
