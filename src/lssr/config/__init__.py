"""Configuration: every default and validation rule of lssr, in one place.

- :mod:`.run`: the run config, one validated, frozen :class:`RunConfig` per training run (data, model,
  loss, optim, stop, probe), read from YAML with clear errors (:func:`load_config`, :func:`config_from_dict`);
- :mod:`.workflow`: the workflow config's top level (:class:`WorkflowSettings`, :class:`Resources`), the
  data set entries and the Figure-5 data-parallel cells, read by the planner (:mod:`lssr.workflow`) and the
  .smk rules; workflow/schemas/config.schema.yaml is checked against both by tests/test_config.py.
"""

from .run import (
    ACTIVATION_CHECKPOINTING,
    BN_MODES,
    ESTIMATORS,
    LOSS_NAMES,
    MODEL_NAMES,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ProbeConfig,
    RunConfig,
    StopConfig,
    config_from_dict,
    deep_update,
    load_config,
    parse_overrides,
)
from .workflow import (
    FIG5_GOAL_EVERY,
    FIG5_RHO_RUNS,
    FIG5_TRAIN_ACC_GOAL,
    MIN_BATCH_SIZE,
    RUN_KEYS,
    STOP_KEYS,
    Resources,
    WorkflowSettings,
    check_workflow_schema,
    data_parallel_config,
    dataset_config,
    default_of,
    fig5_rho_runs,
    fig5_seeds,
    fig5_stop,
    workflow_settings,
)

__all__ = [
    "ACTIVATION_CHECKPOINTING", "BN_MODES", "ESTIMATORS", "LOSS_NAMES", "MODEL_NAMES", "ConfigError", "DataConfig",
    "ModelConfig", "OptimConfig", "ProbeConfig", "RunConfig", "StopConfig", "config_from_dict", "deep_update",
    "load_config", "parse_overrides", "FIG5_GOAL_EVERY", "FIG5_RHO_RUNS", "FIG5_TRAIN_ACC_GOAL", "MIN_BATCH_SIZE",
    "RUN_KEYS", "STOP_KEYS", "Resources", "WorkflowSettings", "check_workflow_schema", "data_parallel_config",
    "dataset_config", "default_of", "fig5_rho_runs", "fig5_seeds", "fig5_stop", "workflow_settings",
]  # fmt: skip
