#!/usr/bin/env python3
"""Submit one Snakemake job script to PBS (qsub) or SLURM (sbatch); print the job id.

Resources come in as Snakemake renders them (runtime in minutes); the walltime is rendered as HH:MM:00 here,
and the log folder results/logs/cluster/ is created before the submission."""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

LOGS = Path("results/logs/cluster")


def walltime(minutes: int) -> str:
    """Minutes -> HH:MM:00 (hours may exceed 24: 1440 -> 24:00:00), as qsub's walltime and sbatch's -t accept."""
    return f"{int(minutes) // 60:02d}:{int(minutes) % 60:02d}:00"


def scheduler() -> str:
    chosen = os.environ.get("LSSR_SCHEDULER")
    if chosen:
        return chosen
    return "slurm" if shutil.which("sbatch") else "pbs"


def command(args, jobscript: str) -> list[str]:
    gpus = int(args.gpus or 0)
    queue = os.environ.get("LSSR_GPU_QUEUE" if gpus else "LSSR_CPU_QUEUE")
    wall = walltime(args.runtime)
    if scheduler() == "slurm":
        cmd = [
            "sbatch",
            "--parsable",
            "--job-name",
            args.name,
            "-t",
            wall,
            "--mem",
            str(args.mem_mb),
            "--cpus-per-task",
            str(args.threads),
            "--output",
            str(LOGS / f"{args.name}-%j.log"),
        ]
        cmd += [f"--gpus={gpus}"] if gpus else []
        cmd += ["-p", queue] if queue else []
        account = os.environ.get("LSSR_ACCOUNT")
        cmd += ["-A", account] if account else []
    else:
        select = f"select=1:ncpus={args.threads}:mem={args.mem_mb}mb" + (f":ngpus={gpus}" if gpus else "")
        cmd = ["qsub", "-N", args.name[:15], "-l", select, "-l", f"walltime={wall}", "-o", f"{LOGS}/", "-e", f"{LOGS}/"]
        cmd += ["-q", queue] if queue else []
    return cmd + [jobscript]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mem-mb", type=int, default=4000)
    p.add_argument("--gpus", default="0")
    p.add_argument("--runtime", type=int, default=60, help="minutes")
    p.add_argument("--name", default="lssr")
    p.add_argument("jobscript")
    args = p.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(command(args, args.jobscript), capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return out.returncode
    print(out.stdout.strip().split(";")[0].split()[-1])  # "123", "123;cluster" or "Submitted batch job 123"
    return 0


if __name__ == "__main__":
    sys.exit(main())
