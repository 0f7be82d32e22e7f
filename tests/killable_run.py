"""Run one training job, optionally SIGKILLing itself at a chosen point (used by test_reliability).

usage: python killable_run.py CONFIG DATA_DIR OUT_DIR KILL_STEP KILL_WHERE
KILL_WHERE: 'before' (in the probe's before_step, i.e. after the checkpoint and eval of that step),
'after' (after the parameter update of that step, during probing), or 'none'.
"""

import os
import signal
import sys

from lssr.config import load_config
from lssr.data import load_subset
from lssr.training import train


class Killer:
    def __init__(self, step: int, where: str):
        self.step, self.where = step, where

    def wants(self, step):
        return step == self.step

    def before_step(self, ctx):
        if self.where == "before":
            os.kill(os.getpid(), signal.SIGKILL)

    def after_step(self, ctx):
        if self.where == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self):
        pass


def main() -> None:
    cfg_path, data_dir, out_dir, kill_step, where = sys.argv[1:6]
    cfg = load_config(cfg_path)
    probes = []
    if cfg.probe is not None:
        from lssr.training import DiagnosticsProbe

        probes.append(DiagnosticsProbe(cfg, os.path.join(out_dir, "diagnostics.csv")))
    if where != "none":
        probes.append(Killer(int(kill_step), where))
    train(cfg, load_subset(data_dir), out_dir, probes=probes, progress=False)


if __name__ == "__main__":
    main()
