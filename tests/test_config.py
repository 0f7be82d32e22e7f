"""Run-config validation: every mistake names the key and the fix; the workflow schema agrees with
lssr.config (types, defaults, value rules)."""

import dataclasses
import re
import types
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml

from lssr.config import (
    LOSS_NAMES,
    MODEL_NAMES,
    RUN_KEYS,
    STOP_KEYS,
    ConfigError,
    DataConfig,
    ProbeConfig,
    RunConfig,
    WorkflowSettings,
    config_from_dict,
    dataset_config,
    default_of,
    load_config,
    workflow_settings,
)

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
        ("probe", {"top_eigenvalue": False}, r"key 'probe.top_eigenvalue' is now 'probe.eigen'"),
        ("probe", {"eigen_tol": 0.1}, r"unknown key 'probe.eigen_tol'.*eig_tol"),
    ],
)
def test_bad_values_name_the_key(path, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(with_(path, value))


def test_the_probe_takes_the_defaults_of_lssr_diagnose_but_its_estimator():
    """The pipeline's probe: the sketch's and the eigen-solver's defaults are lssr.diagnose's (one definition);
    its estimator is exact (the paper's runs), lssr.diagnose's auto; probe.eigen: false turns ‖H‖ off."""
    from lssr.diagnostics import Eigen, Estimator
    from lssr.diagnostics.options import DIAGNOSE_ESTIMATOR, PIPELINE_ESTIMATOR

    p, e, g = ProbeConfig(), Estimator(), Eigen()
    assert (p.probes, p.stage1, p.rel_se, p.eig_tol) == (e.probes, e.stage1, e.rel_se, g.tol)
    assert (p.estimator, e.kind) == (PIPELINE_ESTIMATOR, DIAGNOSE_ESTIMATOR) == ("exact", "auto")
    assert config_from_dict(with_("probe", {"eigen": False})).probe.eigen is False


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


# -- the workflow schema agrees with lssr.config (types, defaults, value rules) ---------------------

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text())
JSON_TYPE = {int: "integer", float: "number", bool: "boolean", str: "string", type(None): "null"}
CANDIDATES = [
    -1,
    0,
    1,
    2,
    3,
    0.5,
    1.5,
    1e-3,
    None,
    True,
    False,
    "x",
    "auto",
    "cuda",
    "cuda:0",
    "cuda:x",
    "eval",
    "sketch",
    [],
    [8, 32],
    [0],
    [0.5],
    ["x"],
]


def _node(node: dict) -> dict:
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _schema_types(node: dict) -> set:
    node = _node(node)
    if "oneOf" in node:
        return set().union(*map(_schema_types, node["oneOf"]))
    return {node["type"]} if isinstance(node["type"], str) else set(node["type"])


def _python_types(tp) -> set:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return set().union(*map(_python_types, typing.get_args(tp)))
    if typing.get_origin(tp) is tuple:
        return {"array"}
    return {"object"} if dataclasses.is_dataclass(tp) else {JSON_TYPE[tp]}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _check_fields(cls, node: dict, path: str, checked: set, rename: dict | None = None, skip=()) -> None:
    """Every field of ``cls`` is a property of ``node`` with the same types and default, and vice versa."""
    props, hints, rename = _node(node)["properties"], typing.get_type_hints(cls), rename or {}
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    assert set(props) == {rename.get(n, n) for n in names}, (cls.__name__, path)
    for name in names:
        key = rename.get(name, name)
        expected = {"integer", "string"} if (cls, name) == (DataConfig, "n") else _python_types(hints[name])
        assert _schema_types(props[key]) == expected, f"{path}.{key}"
        f = cls.__dataclass_fields__[name]
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                _check_fields(hints[name], props[key], f"{path}.{key}", checked)
                continue
            assert props[key].get("default", "MISSING") == _jsonable(default_of(cls, name)), f"{path}.{key}"
            checked.add(f"{path}.{key}")


def _defaults_in(node, path: str = "") -> set:
    """Every place in the schema that states a default."""
    found = set()
    if isinstance(node, dict):
        if "default" in node:
            found.add(path)
        for k, v in node.items():
            found |= _defaults_in(v, f"{path}.{k}".lstrip(".").replace("properties.", "")) if k != "default" else set()
    return found


def test_schema_types_and_defaults_match_config():
    from lssr.config import (
        BN_MODES,
        ESTIMATORS,
        FIG5_GOAL_EVERY,
        FIG5_RHO_RUNS,
        FIG5_TRAIN_ACC_GOAL,
        MIN_BATCH_SIZE,
        ModelConfig,
        Resources,
        StopConfig,
    )
    from lssr.data import SOURCES
    from lssr.registry import FIGURES

    checked: set = set()
    top = SCHEMA["properties"]
    _check_fields(ProbeConfig, SCHEMA["definitions"]["probe"], "definitions.probe", checked)
    _check_fields(Resources, top["resources"], "resources", checked)
    _check_fields(
        DataConfig,
        top["datasets"]["additionalProperties"],
        "datasets.additionalProperties",
        checked,
        rename={"dataset": "source"},
    )
    run_hints = typing.get_type_hints(RunConfig)
    for key in RUN_KEYS:  # run keys at the top level: RunConfig's types and defaults
        assert _schema_types(top[key]) == _python_types(run_hints[key]) and top[key]["default"] == default_of(
            RunConfig, key
        ), key
        checked.add(key)
    settings_hints = typing.get_type_hints(WorkflowSettings)
    for f in dataclasses.fields(WorkflowSettings):
        assert _schema_types(top[f.name]) == _python_types(settings_hints[f.name]), f.name
        if f.name != "resources":
            assert top[f.name]["default"] == _jsonable(default_of(WorkflowSettings, f.name)), f.name
            checked.add(f.name)
    stop_hints = typing.get_type_hints(StopConfig)
    for name, exp in top["experiments"]["properties"].items():  # per experiment: types within RunConfig's
        for key, node in exp["properties"].items():
            if key in RUN_KEYS:
                assert _schema_types(node) <= _python_types(run_hints[key]), (name, key)
            if key in STOP_KEYS:
                assert _schema_types(node) <= _python_types(stop_hints[key]), (name, key)
            if key == "batch_norm":
                assert node["default"] == default_of(ModelConfig, "batch_norm")
                checked.add(f"experiments.{name}.batch_norm")
    fig5 = top["experiments"]["properties"]["fig5"]["properties"]
    fig5_defaults = {
        "min_batch_size": MIN_BATCH_SIZE,
        "train_acc_goal": FIG5_TRAIN_ACC_GOAL,
        "goal_every": FIG5_GOAL_EVERY,
        "rho_runs": FIG5_RHO_RUNS,
    }
    for key, value in fig5_defaults.items():
        assert fig5[key]["default"] == value, key
        checked.add(f"experiments.fig5.{key}")
    assert _defaults_in(SCHEMA) == checked  # and no default in the schema that lssr.config does not state
    d = SCHEMA["definitions"]
    assert set(d["model"]["enum"]) == set(MODEL_NAMES) and set(d["loss"]["enum"]) == set(LOSS_NAMES)
    assert d["probe"]["properties"]["estimator"]["enum"] == list(ESTIMATORS)
    assert top["bn_mode"]["enum"] == list(BN_MODES) and top["figures"]["items"]["enum"] == list(FIGURES)
    assert set(top["datasets"]["additionalProperties"]["properties"]["source"]["enum"]) == set(SOURCES)


def _schema_accepts(node: dict, value) -> bool:
    return jsonschema.Draft202012Validator({**node, "definitions": SCHEMA["definitions"]}).is_valid(value)


def _config_accepts(build) -> bool:
    try:
        build()
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("section", ["probe", "run", "dataset", "resources"])
def test_schema_value_rules_match_config(section):
    """For a spread of values, the schema accepts exactly what lssr.config accepts."""
    top = SCHEMA["properties"]
    if section == "probe":
        props = SCHEMA["definitions"]["probe"]["properties"]
        build = lambda k, v: config_from_dict(with_(f"probe.{k}", v))  # noqa: E731
    elif section == "run":
        props = {k: top[k] for k in RUN_KEYS}
        build = lambda k, v: config_from_dict(with_(k, v))  # noqa: E731
    elif section == "dataset":
        props = dict(top["datasets"]["additionalProperties"]["properties"])
        del props["source"], props["n"]
        build = lambda k, v: dataset_config("d", {"source": "digits", "n": 64, k: v})  # noqa: E731
    else:
        props = top["resources"]["properties"]
        build = lambda k, v: workflow_settings({"resources": {k: v}})  # noqa: E731
    disagree = [
        (k, v)
        for k, node in props.items()
        for v in CANDIDATES
        if _schema_accepts(node, v) != _config_accepts(lambda: build(k, v))
    ]
    assert not disagree


# -- experiments.fig5.data_parallel: {data set: {b: GPUs}} ------------------------------------------


def test_fig5_data_parallel_schema_and_config_agree():
    """GPUs: the schema and lssr.config accept the same values; data set and b against the grid: lssr.config
    (the schema cannot see the grid), each refusal naming the key."""
    from lssr.config import data_parallel_config

    node = SCHEMA["properties"]["experiments"]["properties"]["fig5"]["properties"]["data_parallel"]
    grids = {"tinyimagenet-32k": [8, 16, 32768], "cifar10-8k": [8, 8192]}
    for v in CANDIDATES:
        raw = {"tinyimagenet-32k": {32768: v}}
        assert _schema_accepts(node, raw) == _config_accepts(lambda: data_parallel_config(raw, grids, True)), v
    assert data_parallel_config({"tinyimagenet-32k": {32768: 2, "16": 4}}, grids, True) == {
        ("tinyimagenet-32k", 32768): 2, ("tinyimagenet-32k", 16): 4}  # fmt: skip
    assert data_parallel_config(None, grids, False) == {} and data_parallel_config({}, grids, False) == {}
    bad = [
        ({"stl10-4k": {4096: 2}}, True, "data_parallel.stl10-4k' = {4096: 2} is invalid: b must be a Figure-5 cell"),
        ({"tinyimagenet-32k": {1000: 2}}, True, "data_parallel.tinyimagenet-32k' = {1000: 2} is invalid"),
        ({"tinyimagenet-32k": {32768: 1}}, True, "data_parallel.tinyimagenet-32k' = {32768: 1} is invalid"),
        ({"tinyimagenet-32k": [2]}, True, "map data sets to {b: GPUs}"),
        ({"tinyimagenet-32k": {32768: 2}}, False, "needs batch_runs: true"),
    ]
    for raw, batch_runs, needle in bad:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            data_parallel_config(raw, grids, batch_runs)


def test_fig5_data_parallel_planned_per_group():
    """The planner records the GPUs per Figure-5 group; the group job asks for them and launches torchrun."""
    from lssr.workflow import plan

    wf = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "test.yaml").read_text())
    e = wf["experiments"]["fig5"]
    ds, b = e["datasets"][0], 64
    e.update(batch_sizes=[16, b], data_parallel={ds: {b: 2}})
    wf.update(batch_runs=True, device="cuda")
    p = plan(wf)
    assert p.data_parallel == {f"{ds}_b{b}": 2}
    assert p.group_resources(f"{ds}_b{b}")["gpu"] == 2 and p.group_resources(f"{ds}_b16")["gpu"] == 1
    assert (
        p.group_command(f"{ds}_b{b}")
        == "torchrun --standalone --nproc-per-node 2 -m lssr train-batch --data-parallel 2"
    )
    assert p.group_command(f"{ds}_b16") == "lssr train-batch"
    e["data_parallel"] = {ds: {32: 2}}
    with pytest.raises(ConfigError, match="b must be a Figure-5 cell"):
        plan(wf)


def test_fig5_seeds_distinct_and_schema_agrees():
    """``experiments.fig5.seeds``: a repeated seed (the same run twice) is refused by lssr.config and the schema
    alike, with the key and the fix in the message; absent means the top-level seed."""
    from lssr.config import fig5_seeds

    node = SCHEMA["properties"]["experiments"]["properties"]["fig5"]["properties"]["seeds"]
    for raw in ([0, 1, 2], [0, 0], [], [1, -1], [0.5], "0", [3]):
        assert _schema_accepts(node, raw) == _config_accepts(lambda: fig5_seeds(raw, 0)), raw
    assert fig5_seeds(None, 7) == [7] and fig5_seeds([2, 0, 1], 7) == [2, 0, 1]
    with pytest.raises(ConfigError, match=re.escape("'experiments.fig5.seeds' = [0, 0] is invalid: each seed once")):
        fig5_seeds([0, 0], 0)


# -- experiments.fig5: the training-accuracy goal, its checks and table fig5_rho's cap ---------------


def test_fig5_goal_keys_schema_and_config_agree():
    """``train_acc_goal``, ``goal_every`` and ``rho_runs``: the schema accepts the values lssr.config accepts,
    each refusal naming the key."""
    from lssr.config import fig5_rho_runs, fig5_stop
    from lssr.workflow import plan

    node = SCHEMA["properties"]["experiments"]["properties"]["fig5"]["properties"]
    wf = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "test.yaml").read_text())
    checks = {
        "train_acc_goal": lambda v: plan(
            {**wf, "figures": ["fig5"], "experiments": {"fig5": {**wf["experiments"]["fig5"], "train_acc_goal": v}}}
        ),
        "goal_every": lambda v: fig5_stop({"goal_every": v}, 64, 16),
        "rho_runs": lambda v: fig5_rho_runs({"rho_runs": v}),
    }
    for key, build in checks.items():
        disagree = [v for v in CANDIDATES if _schema_accepts(node[key], v) != _config_accepts(lambda: build(v))]
        assert not disagree, (key, disagree)
    with pytest.raises(ConfigError, match="experiments.fig5.goal_every"):
        fig5_stop({"goal_every": 0}, 64, 16)
    with pytest.raises(ConfigError, match="experiments.fig5.rho_runs"):
        fig5_rho_runs({"rho_runs": 0})


def test_fig5_cells_train_to_the_goal_checked_every_few_epochs():
    """Each Figure-5 run stops at 100% training accuracy by default, checked (run key goal_every) every goal_every
    epochs of n // b steps; the experiment's eval_every as it is, and without one the cap T (the test set only at
    step 0 and where the run stops); train_acc_goal: null trains to the cap without goal checks."""
    from lssr.workflow import plan

    wf = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "test.yaml").read_text())
    e = wf["experiments"]["fig5"]
    for key in ("train_acc_goal", "goal_every"):
        e.pop(key, None)
    e.update(batch_sizes=[16, 64], epochs=30, eval_every=100000)
    n = 256  # digits-256
    p = plan(wf)
    for rid in p.figures["fig5"]:
        raw = p.runs[rid]
        b = raw["optim"]["batch_size"]
        assert raw["stop"] == {"epochs": 30, "train_acc_goal": 1.0}
        assert raw["goal_every"] == 10 * (n // b) and raw["eval_every"] == 100000  # the default: every 10 epochs
    e.update(goal_every=0.5, eval_every=3)
    runs = plan(wf).runs
    assert {runs[r]["goal_every"] for r in p.figures["fig5"]} == {8, 2}  # b = 16: 8 steps; b = 64: 2
    assert {runs[r]["eval_every"] for r in p.figures["fig5"]} == {3}
    del e["eval_every"]
    runs = plan(wf).runs
    assert {(runs[r]["optim"]["batch_size"], runs[r]["eval_every"]) for r in p.figures["fig5"]} == {
        (16, 480),
        (64, 120),
    }
    e.update(train_acc_goal=None, eval_every=7)
    assert all(plan(wf).runs[r]["stop"]["train_acc_goal"] is None and plan(wf).runs[r]["eval_every"] == 7
               and "goal_every" not in plan(wf).runs[r] for r in p.figures["fig5"][:1])  # fmt: skip


def test_the_config_and_the_planner_import_no_torch():
    """lssr.config takes the diagnostics' defaults from lssr.diagnostics.options, which (like the planner) comes
    without torch: Snakemake reads the workflow without it."""
    import subprocess
    import sys

    code = "import sys, lssr.config, lssr.workflow; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
