"""A training job's run config given as JSON (lssr.config.from_json): parsed, overridden, validated, written to the
run folder; ``lssr train --json`` reads it through lssr.config, without the workflow's planner."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lssr.config import ConfigError
from lssr.config.from_json import run_config_from_json

SRC = Path(__file__).resolve().parents[1] / "src"
RAW = {
    "data": {"dataset": "digits", "n": 64},
    "model": {"name": "digits_cnn"},
    "loss": "mse",
    "optim": {"lr": 0.1},
    "stop": {"steps": 3},
}


def test_the_config_is_validated_overridden_and_written(tmp_path):
    out = tmp_path / "run" / "config.yaml"
    out.parent.mkdir()
    cfg = run_config_from_json(json.dumps(RAW), out, {"optim": {"lr": 0.25}})
    assert (cfg.data.n, cfg.optim.lr, cfg.stop.steps, cfg.loss) == (64, 0.25, 3, "mse")
    assert yaml.safe_load(out.read_text()) == {**RAW, "optim": {"lr": 0.25}}  # what was given, key for key
    other = tmp_path / "rank1.yaml"
    assert run_config_from_json(json.dumps(RAW), other, write=False).data.n == 64 and not other.exists()


@pytest.mark.parametrize(
    "text,message",
    [("{not json", "run.yaml: --json is not valid JSON"), (json.dumps({**RAW, "loss": "hinge"}), "run.yaml")],
)
def test_bad_json_names_the_run_folder(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        run_config_from_json(text, tmp_path / "run.yaml")
    assert not (tmp_path / "run.yaml").exists()


def test_lssr_train_json_does_not_import_the_planner(tmp_path):
    code = (
        "import sys\nfrom lssr.cli import main\n"
        f"rc = main(['train', '--json', '{{not json', '--out', {str(tmp_path / 'run')!r}])\n"
        "print(rc, 'lssr.workflow' in sys.modules, 'lssr.config.from_json' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split()[-3:] == ["2", "False", "True"], proc.stdout + proc.stderr
