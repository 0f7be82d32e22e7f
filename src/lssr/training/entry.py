"""Entry points of ``lssr train`` and ``lssr train-batch``: load and check the subset, then train."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import RunConfig
from ..data import Subset, SubsetSpec, build_subset, load_subset
from .batched import check_batchable, train_batched
from .core import RunResult
from .single import Probe, train


def subset_for(cfg: RunConfig, cache_root: str | Path = "results/data") -> Subset:
    """Load (building once if needed) the subset that ``cfg.data`` names, under ``cache_root``."""
    spec = SubsetSpec.of(cfg.data)
    folder = Path(cache_root) / spec.name
    if not (folder / "manifest.json").exists():
        build_subset(spec, folder)
    return load_subset(folder)


def check_subset_matches(cfg: RunConfig, data: Subset, where: str) -> None:
    """The subset's manifest must be the one the config names (dataset, n, seed, resize)."""
    from ..errors import LssrError

    m = data.manifest
    d = cfg.data
    for key, want in (("dataset", d.dataset), ("n", d.n), ("seed", d.seed), ("resize", d.resize)):
        if m.get(key) != want:
            have = m.get(key)
            raise LssrError(f"{where}: subset manifest has {key}={have!r} but the config says data.{key}: {want!r}")


def run_from_config(
    cfg: RunConfig, out_dir: str | Path, data_dir: str | Path | None = None, progress: bool = True
) -> RunResult:
    """The ``lssr train`` entry point: load the subset, attach configured probes, train, write outputs."""
    if data_dir is not None:
        data = load_subset(data_dir)
        check_subset_matches(cfg, data, str(data_dir))
    else:
        data = subset_for(cfg)
    probes: list[Probe] = []
    if cfg.probe is not None:
        from .probe import DiagnosticsProbe

        probes.append(DiagnosticsProbe(cfg, Path(out_dir) / "diagnostics.csv"))
    return train(cfg, data, out_dir, probes=probes, progress=progress)


def run_batched_from_configs(
    cfgs: list[RunConfig],
    out_dirs: Sequence[str | Path],
    data_dir: str | Path | None = None,
    progress: bool = True,
    members_per_pass: int | None = None,
    where: Sequence[str] | None = None,
) -> list[RunResult]:
    """The ``lssr train-batch`` entry point: load the subset once, check it, train the group."""
    check_batchable(cfgs, where)
    if data_dir is not None:
        data = load_subset(data_dir)
        for cfg, w in zip(cfgs, where or [str(data_dir)] * len(cfgs)):
            check_subset_matches(cfg, data, f"{data_dir} (for {w})")
    else:
        data = subset_for(cfgs[0])
    return train_batched(cfgs, data, list(out_dirs), progress=progress, members_per_pass=members_per_pass)
