"""The workflow on a (stand-in) cluster: the real snakemake-executor-plugin-slurm through profiles/slurm, and the
cluster-generic executor through profiles/cluster-generic, against the stand-in SLURM commands of
tests/fake_cluster/slurm (jobs run on this machine; every sbatch call is logged with its argv)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fake_cluster" / "slurm"
BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TRAINING = ("train", "train_group_")
# localrules (lssr runs-table, lssr summary, lssr verdicts: milliseconds each) and their outputs
BOOKKEEPING = {
    "runs_table": "results/tables/runs.csv",
    "summary": "results/summary.csv",
    "verdicts": "results/verdicts.csv",
}

sys.path.insert(0, str(FAKE))
from fake_slurm import parse_options  # noqa: E402
from signals import default_sigint  # noqa: E402


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "environment.yml", "workflow", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def cluster_env(wd: Path, **extra) -> dict:
    e = dict(os.environ)
    e["PATH"] = os.pathsep.join([str(FAKE), str(BIN), e.get("PATH", "")])
    e.update(OMP_NUM_THREADS="1", FAKE_SLURM_DIR=str(wd / ".fake_slurm"), FAKE_SLURM_ACCOUNT="YOUR_ACCOUNT")
    e.pop("CUDA_VISIBLE_DEVICES", None)
    e.update(extra)
    return e


def local_env() -> dict:
    return {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "OMP_NUM_THREADS": "1"}


def smk(wd, *args, env=None, timeout=1200):
    proc = subprocess.run(
        [*SNAKEMAKE, *args], cwd=wd, env=env or cluster_env(wd), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def outputs(wd: Path) -> dict:
    pats = (
        "results/runs/*/metrics.csv",
        "results/runs/*/diagnostics.csv",
        "figures/data/*.csv",
        "results/tables/fig*.csv",
        "results/claims.csv",
    )  # runs.csv: wall times
    return {str(f.relative_to(wd)): f.read_bytes() for p in pats for f in sorted(wd.glob(p))}


def submissions(wd: Path) -> list[dict]:
    """Every sbatch call: its job id, its rule (from the plugin's --comment rule_<name>[_wildcards_...]) and its
    options."""
    log = wd / ".fake_slurm" / "sbatch.jsonl"
    subs = []
    for line in log.read_text().splitlines() if log.exists() else []:
        entry = json.loads(line)
        opts, _ = parse_options(entry["argv"])
        rule = opts.get("--comment", "").removeprefix("rule_").split("_wildcards_")[0]
        subs.append({"jobid": entry["jobid"], "rule": rule, "opts": opts, "argv": entry["argv"]})
    return subs


def reported_jobids(snakemake_log: Path) -> set[str]:
    """The SLURM job ids snakemake says it submitted (the slurm plugin's "... submitted with SLURM jobid N")."""
    text = snakemake_log.read_text() if snakemake_log.exists() else ""
    return set(re.findall(r"submitted with SLURM jobid (\d+)", text))


def status_queries(wd: Path) -> list[float]:
    """End times (time.time()) of the stand-in's status queries (sacct, squeue)."""
    log = wd / ".fake_slurm" / "status.jsonl"
    return [json.loads(line)["end"] for line in log.read_text().splitlines()] if log.exists() else []


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text()[-chars:] if path.exists() else f"({path} was not written)"


def is_training(rule: str) -> bool:
    return rule == "train" or rule.startswith("train_group_")


def check_bookkeeping_ran_locally(wd: Path, subs: list[dict]) -> None:
    """The bookkeeping rules ran (their outputs exist) but never went through sbatch: they ran on the submit host."""
    for rule, output in BOOKKEEPING.items():
        assert (wd / output).is_file(), f"{rule} did not run: {output} is missing"
    submitted = sorted({s["rule"] for s in subs} & set(BOOKKEEPING))
    assert not submitted, f"bookkeeping jobs were submitted to the cluster: {submitted}"


@pytest.mark.slow
def test_slurm_profile_end_to_end_and_cuda_submissions(tmp_path):
    """config/test.yaml through profiles/slurm and the real slurm plugin: outputs byte-identical to a local run,
    every job on the CPU partition without a GPU, the bookkeeping rules run on the submit host; then the same
    config with device: cuda: every training job (single runs and Figure-5 groups) asks for one GPU on the GPU
    partition, all of them at once (no global cap)."""
    pytest.importorskip(
        "snakemake_executor_plugin_slurm", reason="the cluster extra (SLURM executor plugin) is not installed"
    )
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    res = cfg["resources"]

    local = copy_workflow(tmp_path / "local")
    smk(local, "--cores", "2", "--configfile", "config/test.yaml", env=local_env())
    wd = copy_workflow(tmp_path / "slurm")
    fast = ["--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5"]
    smk(wd, "--profile", "profiles/slurm", "--configfile", "config/test.yaml", *fast)
    a, b = outputs(local), outputs(wd)
    assert a.keys() == b.keys() and len(a) > 20
    assert not [k for k in a if a[k] != b[k]], "slurm outputs differ from the local run"

    subs = submissions(wd)
    check_bookkeeping_ran_locally(wd, subs)
    assert {s["rule"] for s in subs} >= {"subset", "train", "table", "figure", "claims"}
    assert any(s["rule"].startswith("train_group_") for s in subs)
    for s in subs:
        o = s["opts"]
        assert o["-A"] == "YOUR_ACCOUNT" and o["-p"] == "YOUR_CPU_PARTITION" and "--gpus" not in o, s["argv"]
        want = (res["runtime"], res["mem_mb"], res["threads"]) if is_training(s["rule"]) else (60, 4000, 1)
        assert (o["-t"], o["--mem"], o["--cpus-per-task"]) == tuple(map(str, want)), s["argv"]

    # device: cuda. This machine may have no GPU: the stand-in keeps GPU jobs pending (a busy GPU partition);
    # snakemake is stopped (Ctrl-C, it scancels them) once every training job is in the queue, snakemake has
    # recorded its id, and a status query has ended since. Two races of snakemake's own are kept out: the plugin
    # submits from several threads (a Ctrl-C during an sbatch call orphans that job), and a status check takes
    # the jobs off the list that Ctrl-C cancels until it has read their states. Right after a check there is
    # no other for a while (the plugin waits 10 s longer after each check that finds no job finished).
    n_training = sum(is_training(s["rule"]) for s in subs)
    cfg["device"] = "cuda"
    (wd / "cuda.yaml").write_text(yaml.safe_dump(cfg))
    (wd / ".fake_slurm" / "sbatch.jsonl").unlink()
    env = cluster_env(wd, FAKE_SLURM_HOLD_GPU_JOBS="1")
    log = tmp_path / "snakemake-cuda.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*SNAKEMAKE, "--profile", "profiles/slurm", "--configfile", "cuda.yaml", *fast],
            cwd=wd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_sigint,
        )
    try:
        t0 = time.monotonic()
        while True:
            ids = {s["jobid"] for s in submissions(wd) if is_training(s["rule"])}
            if len(ids) == n_training and ids <= reported_jobids(log):
                break
            assert proc.poll() is None, f"snakemake ended before every training job was submitted:\n{tail(log)}"
            assert time.monotonic() - t0 < 600, "training jobs were not all submitted at once (a global GPU cap?)"
            time.sleep(0.5)
        reported = time.time()
        while not [e for e in status_queries(wd) if e > reported]:
            assert proc.poll() is None, f"snakemake ended before a status check:\n{tail(log)}"
            assert time.monotonic() - t0 < 600, f"no status check after the submissions:\n{tail(log)}"
            time.sleep(0.2)
        time.sleep(1.0)  # the plugin puts the checked jobs back on its list
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    subs = submissions(wd)
    gpu = [s for s in subs if is_training(s["rule"])]
    assert len(gpu) == n_training and any(s["rule"].startswith("train_group_") for s in gpu)
    for s in gpu:
        o = s["opts"]
        assert (o["-p"], o.get("--gpus")) == ("YOUR_GPU_PARTITION", "1"), s["argv"]
        want = (res["runtime"], res["mem_mb"], res["threads"])
        assert (o["-t"], o["--mem"], o["--cpus-per-task"]) == tuple(map(str, want)), s["argv"]
    states = [json.loads(p.read_text())["state"] for p in (wd / ".fake_slurm").glob("*.json")]
    assert "PENDING" not in states and "RUNNING" not in states, f"Ctrl-C did not cancel the queued jobs:\n{tail(log)}"


@pytest.mark.slow
def test_cluster_generic_retries_a_job_the_scheduler_killed(tmp_path):
    """profiles/cluster-generic with its submit and status scripts: a training job killed by the (stand-in)
    scheduler at its time limit is reported failed (TIMEOUT), submitted again, resumes from its checkpoint, and
    the outputs are byte-identical to an uninterrupted local run. (Figure-5 group jobs resume from their
    checkpoints in the same way: tests/test_checkpoints.py.)"""
    pytest.importorskip(
        "snakemake_executor_plugin_cluster_generic",
        reason="the cluster extra (cluster-generic plugin) is not installed",
    )
    raw = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    fig4 = raw["experiments"]["fig4"]
    fig4.update(steps=20, gd=[{"loss": "mse", "lr": 0.2}])
    fig4["sgd"]["batch_sizes"] = [16]
    raw.update(figures=["fig4"], checkpoint_every=4, experiments={"fig4": fig4})
    args = ["figures/fig4.pdf", "--configfile", "cfg.yaml"]

    ref = copy_workflow(tmp_path / "ref")
    (ref / "cfg.yaml").write_text(yaml.safe_dump(raw))
    smk(ref, *args, "--cores", "1", env=local_env())

    wd = copy_workflow(tmp_path / "generic")
    (wd / "cfg.yaml").write_text(yaml.safe_dump(raw))
    env = cluster_env(wd, FAKE_SLURM_KILL_MATCH="train", FAKE_SLURM_KILL_WHEN="results/runs/*/checkpoint.pt")
    smk(wd, *args, "--profile", "profiles/cluster-generic", "--jobs", "1", "--latency-wait", "5", env=env)
    jobs = [json.loads(p.read_text()) for p in sorted((wd / ".fake_slurm").glob("*.json"))]
    assert [j["state"] for j in jobs].count("TIMEOUT") == 1
    assert all(j["state"] == "COMPLETED" for j in jobs if j["state"] != "TIMEOUT")
    assert (wd / "results" / "logs" / "cluster").is_dir()
    walltimes = {s["opts"]["-t"] for s in submissions(wd)}
    assert walltimes <= {f"00:{raw['resources']['runtime']:02d}:00", "01:00:00"}, walltimes
    got, want = outputs(wd), outputs(ref)
    assert got.keys() == want.keys() and not [k for k in want if got[k] != want[k]]
    resumed = [json.loads(p.read_text()).get("resumed") for p in (wd / "results" / "runs").glob("*/run.json")]
    assert any(resumed), "the killed job did not resume from its checkpoint"
