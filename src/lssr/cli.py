"""Command-line interface: a thin layer over typed functions (``lssr --help``)."""

from __future__ import annotations

import argparse
import sys

import yaml

from . import LssrError


def _parse_set(items: list[str]) -> dict:
    """``--set optim.lr=0.1`` -> {"optim": {"lr": 0.1}} (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise LssrError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def cmd_subset(args: argparse.Namespace) -> None:
    from .data import SubsetSpec, build_subset, parse_spec

    name, n = parse_spec(args.spec)
    spec = SubsetSpec(name, n, args.seed, args.root, args.download, args.resize, args.num_classes)
    out = build_subset(spec, args.out)
    print(f"wrote subset {spec.name} to {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .training import run_from_config

    cfg = load_config(args.config, overrides=_parse_set(args.set))
    res = run_from_config(cfg, args.out, data_dir=args.data, progress=not args.no_progress)
    print(f"run {res.status} after {res.steps} steps in {res.wall_time:.1f}s -> {args.out}")


PLUGIN_MODULES = ("lssr.workflow", "lssr.diagnostics", "lssr.tables", "lssr.figures", "lssr.claims", "lssr.batched", "lssr.report")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lssr", description="Interaction-aware sharpness / LSSR replication toolkit")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("subset", help="build a stratified DATASET-n subset (data.pt + manifest.json)")
    s.add_argument("spec", help="DATASET-n, e.g. cifar10-8k, digits-1k, imagefolder-1000")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--root", default=None, help="folder holding the raw data set")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--download", action="store_true", help="let torchvision download the data set")
    s.add_argument("--resize", type=int, default=None, help="resize images to this many pixels")
    s.add_argument("--num-classes", type=int, default=None, help="expected class count (checked)")
    s.set_defaults(func=cmd_subset)

    t = sub.add_parser("train", help="train one run from a YAML run config")
    t.add_argument("config", help="run config YAML")
    t.add_argument("--out", required=True, help="output folder (metrics.csv, run.json, model.pt)")
    t.add_argument("--data", default=None, help="subset folder from `lssr subset` (default: build/cache under results/data)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    # Further commands live next to the code they drive: each module below may define
    # ``register_cli(subparsers)`` adding its own thin sub-commands.
    import importlib

    for mod_name in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name != mod_name:
                raise
            continue
        if hasattr(mod, "register_cli"):
            mod.register_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LssrError as exc:
        print(f"lssr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
