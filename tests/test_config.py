"""Run-config validation: every mistake names the key and the fix."""

import pytest

from lssr.config import ConfigError, config_from_dict, load_config

BASE = {
    "data": {"dataset": "digits", "n": "1k"},
    "model": {"name": "digits_cnn"},
    "loss": "mse",
    "optim": {"lr": 0.1, "batch_size": 32},
    "stop": {"steps": 10},
}


def with_(path, value):
    import copy

    raw = copy.deepcopy(BASE)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return raw


def test_valid_config_and_derived_values():
    cfg = config_from_dict(BASE)
    assert cfg.data.n == 1024 and cfg.batch_size == 32 and not cfg.is_gd
    gd = config_from_dict(with_("optim.batch_size", "full"))
    assert gd.batch_size == 1024 and gd.is_gd
    assert len(cfg.hash()) == 16 and cfg.hash() != gd.hash()


@pytest.mark.parametrize(
    "path,value,pattern",
    [
        ("optim.lrr", 0.1, r"unknown key 'optim.lrr'.*known keys.*lr"),
        ("optim.lr", -0.1, r"'optim.lr' = -0.1.*> 0"),
        ("optim.lr", "fast", r"'optim.lr' must be a number"),
        ("optim.batch_size", 4096, r"'optim.batch_size' = 4096.*b <= n = 1024"),
        ("optim.batch_size", "half", r"'optim.batch_size'.*'full'"),
        ("data.dataset", "mnist", r"'data.dataset' = 'mnist'.*known data sets"),
        ("model.name", "vgg16", r"'model.name' = 'vgg16'.*known models"),
        ("loss", "hinge", r"'loss' = 'hinge'.*known losses"),
        ("device", "tpu", r"'device' = 'tpu'"),
        ("stop", {}, r"stop.steps.*stop.epochs"),
        ("probe", {"batch_sizes": [8, 2048]}, r"probe.batch_sizes.*2048"),
        ("bn_mode", "frozen", r"bn_mode"),
        ("data.n", "8m", r"subset size '8m'"),
    ],
)
def test_bad_values_name_the_key(path, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(with_(path, value))


def test_missing_required_key():
    raw = dict(BASE)
    del raw["loss"]
    with pytest.raises(ConfigError, match="required key 'loss'"):
        config_from_dict(raw)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)


def test_name_lists_match_registries():
    from lssr.config import LOSS_NAMES, MODEL_NAMES
    from lssr.losses import PER_SAMPLE
    from lssr.models import MODELS

    assert set(MODEL_NAMES) == set(MODELS) and set(LOSS_NAMES) == set(PER_SAMPLE)
