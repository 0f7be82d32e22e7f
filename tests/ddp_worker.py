"""Run by torchrun from tests/test_distributed.py: data-parallel training of the cases in a JSON spec
({"subset": folder, "dtype": "float64" | "float32", "cases": [{"configs": [raw run config], "outs": [dir]}]}),
all in one process group (gloo on the CPU)."""

import json
import sys

import torch

from lssr.config import config_from_dict
from lssr.data import Subset, load_subset
from lssr.training.distributed import init_world, train_data_parallel


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(open(spec_path).read())
    d = load_subset(spec["subset"])
    dtype = getattr(torch, spec["dtype"])
    n_test = spec.get("n_test", len(d.y_test))
    data = Subset(d.x_train.to(dtype), d.y_train, d.x_test[:n_test].to(dtype), d.y_test[:n_test], d.manifest)
    cases = [[config_from_dict(raw) for raw in case["configs"]] for case in spec["cases"]]
    world = init_world(cases[0][0], 2)
    try:
        for cfgs, case in zip(cases, spec["cases"]):
            train_data_parallel(cfgs, data, case["outs"], 2, progress=False, world=world)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
