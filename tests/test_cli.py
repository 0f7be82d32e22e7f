"""The command line: explicit sub-commands, --version, python -m lssr, no torch for --help, and run configs
given as JSON (the workflow's form) written to the run folder by the training command itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lssr

SRC = Path(lssr.__file__).resolve().parents[1]
COMMANDS = (
    "subset", "train", "train-batch", "table", "fig5-rho", "figure", "claims", "runs-table", "verdicts", "summary",
    "replication-record", "timed", "diagnose", "recommend",
)  # fmt: skip
RUN = {
    "data": {"dataset": "digits", "n": 64},
    "model": {"name": "digits_cnn"},
    "loss": "mse",
    "optim": {"lr": 0.1},
    "stop": {"steps": 1},
}


def py(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)


def test_every_command_is_registered():
    from lssr.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert tuple(sub.choices) == COMMANDS


def test_version_and_python_m_lssr():
    for args in (("-m", "lssr", "--version"), ("-m", "lssr.cli", "--version")):
        proc = py(*args)
        assert proc.returncode == 0 and proc.stdout.strip() == f"lssr {lssr.__version__}", proc.stderr
    proc = py("-m", "lssr", "--help")
    assert proc.returncode == 0 and all(c in proc.stdout for c in COMMANDS)


NO_TORCH = """
import sys
from lssr.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
heavy = sorted(m for m in ("torch", "torchvision", "pandas", "matplotlib") if m in sys.modules)
print("IMPORTED", ",".join(heavy))
sys.exit(rc)
"""


def test_help_does_not_import_torch():
    proc = py("-c", NO_TORCH, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "IMPORTED", proc.stdout[-300:]


def test_train_json_writes_the_exact_config_to_the_run_folder(tmp_path):
    """`lssr train --json` (how the workflow starts a run): OUT/config.yaml holds the given config, key for key,
    and the run trained that config (run.json records it with lssr.config's defaults filled in)."""
    from lssr.cli import main

    out = tmp_path / "run"
    assert main(["train", "--json", json.dumps(RUN), "--out", str(out), "--no-progress"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text()) == RUN
    trained = json.loads((out / "run.json").read_text())["config"]
    assert trained["data"]["n"] == 64 and trained["optim"]["lr"] == 0.1 and trained["stop"]["steps"] == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--json", "{not json"], "config.yaml: --json is not valid JSON"),
        (["train", "cfg.yaml", "--json", json.dumps(RUN)], "either as YAML files or as --json"),
        (["train"], "either as YAML files or as --json"),
        (["train-batch", "--json", json.dumps(RUN), "--json", json.dumps(RUN)], "got 2 --json but 1 --out"),
    ],
    ids=["bad-json", "both", "neither", "json-without-out"],
)
def test_train_config_arguments_fail_in_one_line(tmp_path, capsys, argv, message):
    from lssr.cli import main

    cmd = argv[0]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lssr {cmd}: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_no_module_imports_the_cli():
    """The CLI sits on top: no module of lssr imports lssr.cli (so no import cycle runs through it)."""
    import ast

    for path in (SRC / "lssr").rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                assert not any(n == "cli" or n.endswith(".cli") for n in names), f"{path} imports the CLI"
            elif isinstance(node, ast.Import):
                assert not any(a.name.endswith("lssr.cli") for a in node.names), f"{path} imports the CLI"
