#!/usr/bin/env bash
# A fake cluster for the tests: "submits" a Snakemake job script by starting it in the background on
# this machine and prints a job id, as qsub/sbatch would. Completion is seen through Snakemake's
# own job-finished marker files (no status command).
jobscript="$1"
logdir="$(dirname "$jobscript")"  # Snakemake's own temporary job folder
mkdir -p "$logdir"
nohup bash "$jobscript" > "$logdir/$(basename "$jobscript").out" 2>&1 &
echo "fake-$!"
