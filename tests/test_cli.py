"""The command line: explicit sub-commands, --version, python -m lssr, and no torch for --help or
write-config (the workflow runs one write-config per run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

import lssr

SRC = Path(lssr.__file__).resolve().parents[1]
COMMANDS = (
    "subset", "train", "train-batch", "write-config", "table", "figure", "claims", "runs-table", "verdicts", "diagnose",
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


def test_help_and_write_config_do_not_import_torch(tmp_path):
    for argv in (["--help"], ["write-config", "--json", json.dumps(RUN), "--out", str(tmp_path / "c.yaml")]):
        proc = py("-c", NO_TORCH, *argv)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "IMPORTED", (argv[0], proc.stdout[-300:])
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == RUN


def test_write_config_rejects_bad_json_in_one_line(tmp_path, capsys):
    from lssr.cli import main

    assert main(["write-config", "--json", "{not json", "--out", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lssr write-config: error: ") and err.count("\n") == 1 and "not valid JSON" in err
    assert not (tmp_path / "c.yaml").exists()


def test_no_module_imports_the_cli():
    """The CLI sits on top: no module of lssr imports lssr.cli (the old cycle batched -> cli is gone)."""
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
