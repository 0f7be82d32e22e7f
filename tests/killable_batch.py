"""Run one batched group (``train_batched``), optionally SIGKILLing itself at a chosen step (test_reliability).

usage: python killable_batch.py DATA_DIR KILL_STEP MEMBERS_PER_PASS CONFIG OUT [CONFIG OUT ...]
KILL_STEP: the process kills itself as the group is about to take its KILL_STEP-th SGD step (counted over
all passes, from 0 in this process); -1: no kill. MEMBERS_PER_PASS: 0 for one pass.
"""

import os
import signal
import sys

from lssr.config import load_config
from lssr.data import load_subset
from lssr.training import batched, train_batched


def main() -> None:
    data_dir, kill_step, per_pass = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pairs = sys.argv[4:]
    cfgs = [load_config(c) for c in pairs[0::2]]
    outs = pairs[1::2]
    if kill_step >= 0:
        step = batched._Group.sgd_step
        taken = [0]

        def killing_step(self, idx):
            if taken[0] == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            taken[0] += 1
            return step(self, idx)

        batched._Group.sgd_step = killing_step
    train_batched(cfgs, load_subset(data_dir), outs, progress=False, members_per_pass=per_pass or None)


if __name__ == "__main__":
    main()
