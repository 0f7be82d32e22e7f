#!/usr/bin/env python3
"""Snakemake cluster-generic status command: print running, success or failed for one job id.

SLURM (sacct, else squeue) or PBS (qstat -x -f). A job the scheduler killed (TIMEOUT, NODE_FAIL, OUT_OF_MEMORY,
CANCELLED, PREEMPTED, a PBS exit status other than 0) is `failed`, so that Snakemake's `retries` resubmit it.
With --cancel ID...: cancel the jobs (scancel / qdel)."""

import re
import shutil
import subprocess
import sys

RUNNING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "STAGE_OUT"}


def slurm_state(jobid: str) -> str:
    if shutil.which("sacct"):
        out = subprocess.run(
            ["sacct", "-j", jobid, "-X", "-n", "-P", "--format=JobIdRaw,State"], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            if jid.strip() == jobid:
                return state.split()[0] if state.strip() else "UNKNOWN"
    out = subprocess.run(
        ["squeue", "-j", jobid, "-h", "-o", "%i|%T", "--states=all"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid.strip() == jobid:
            return state.strip()
    return "UNKNOWN"


def slurm_status(jobid: str) -> str:
    state = slurm_state(jobid)
    if state in RUNNING or state == "UNKNOWN":  # not yet in the accounting database: still running
        return "running"
    return "success" if state == "COMPLETED" else "failed"


def pbs_status(jobid: str) -> str:
    out = subprocess.run(["qstat", "-x", "-f", jobid], capture_output=True, text=True).stdout
    state = re.search(r"job_state = (\w)", out)
    if state is None or state.group(1) != "F":  # Q, R, H, E, ...: not finished
        return "running"
    code = re.search(r"Exit_status = (-?\d+)", out)
    return "success" if code and code.group(1) == "0" else "failed"


def main(argv) -> int:
    slurm = bool(shutil.which("sbatch"))
    if argv and argv[0] == "--cancel":
        subprocess.run(["scancel" if slurm else "qdel", *argv[1:]])
        return 0
    print((slurm_status if slurm else pbs_status)(argv[0].strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
