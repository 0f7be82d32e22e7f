"""Stand-in SLURM commands for the tests: jobs run on this machine, in the background.

Each command in this folder (sbatch, sacct, squeue, scontrol, scancel, sacctmgr, srun, sinfo) is a one-line
wrapper around ``fake_slurm.py <command> ARGS``. State lives in ``$FAKE_SLURM_DIR`` (one JSON file per job);
every sbatch call is appended, argv and all, as one JSON line to ``$FAKE_SLURM_LOG``, and the end time of every
status query (sacct, squeue) as one JSON line to ``$FAKE_SLURM_DIR/status.jsonl``.

Knobs for the tests (environment variables):
- FAKE_SLURM_HOLD_GPU_JOBS=1: a job that requests a GPU (--gpus) is recorded and stays PENDING, as on a cluster
  whose GPUs are all busy (this machine may have none); other jobs run.
- FAKE_SLURM_KILL_MATCH=<text>, FAKE_SLURM_KILL_WHEN=<glob>: the first job whose command or comment contains
  <text> is killed (SIGKILL to its process group) as soon as a file matching <glob> (relative to the job's
  working directory) exists, and reported as TIMEOUT, as if it had hit its time limit.
"""

import fcntl
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", f"/tmp/fake_slurm_{os.getuid()}"))
LOG = Path(os.environ.get("FAKE_SLURM_LOG", str(STATE / "sbatch.jsonl")))
ACCOUNT = os.environ.get("FAKE_SLURM_ACCOUNT", "test_account")
WITH_VALUE = {
    "-A",
    "--account",
    "-p",
    "--partition",
    "-t",
    "--time",
    "-J",
    "--job-name",
    "-o",
    "--output",
    "-e",
    "--error",
    "-D",
    "--chdir",
    "--comment",
    "--mem",
    "-C",
    "--constraint",
    "-c",
    "--cpus-per-task",
    "-n",
    "--ntasks",
    "-N",
    "--nodes",
    "--gpus",
    "-G",
    "--gres",
    "--qos",
    "--mem-per-cpu",
    "--starttime",
    "--endtime",
    "-S",
    "-E",
    "--name",
    "--clusters",
    "-M",
    "--states",
    "-u",
    "--user",
    "-j",
    "--jobs",
}


def parse_options(argv):
    """sbatch-style argv -> ({option: value}, positional script and its arguments)."""
    opts, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("-"):
            return opts, argv[i:]
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            opts[k] = v
        elif a in WITH_VALUE and i + 1 < len(argv):
            opts[a] = argv[i + 1]
            i += 1
        elif len(a) > 2 and a[:2] in WITH_VALUE and not a.startswith("--"):  # -n1, -c4
            opts[a[:2]] = a[2:]
        else:
            opts[a] = True
        i += 1
    return opts, []


def _job_file(jobid):
    return STATE / f"{jobid}.json"


def _load(jobid):
    return json.loads(_job_file(jobid).read_text())


def _save(job):
    tmp = _job_file(job["id"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, _job_file(job["id"]))


def _next_id():
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "counter.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        n = int(fh.read() or 1000) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(n))
    return str(n)


def sbatch(argv):
    opts, script = parse_options(argv)
    jobid = _next_id()
    command = opts.get("--wrap") or shlex.join(["bash", *script])
    name = opts.get("--job-name") or opts.get("-J") or (Path(script[0]).name if script else "wrap")
    job = {
        "id": jobid,
        "name": name,
        "comment": opts.get("--comment", ""),
        "command": command,
        "state": "PENDING",
        "workdir": opts.get("-D") or opts.get("--chdir") or os.getcwd(),
        "gpus": opts.get("--gpus"),
        "output": (opts.get("--output") or opts.get("-o") or f"slurm-{jobid}.out").replace("%j", jobid),
        "cpus": opts.get("--cpus-per-task") or opts.get("-c") or "1",
    }
    if os.environ.get("FAKE_SLURM_HOLD_GPU_JOBS") == "1" and job["gpus"]:
        _save(job)
    else:
        _save(job)
        subprocess.Popen(
            [sys.executable, __file__, "_run", jobid],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    with open(LOG, "a") as fh:  # logged once the job exists, as squeue would show it
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps({"jobid": jobid, "argv": argv}) + "\n")
    print(jobid if "--parsable" in opts else f"Submitted batch job {jobid}")


def _kill_requested(job):
    match = os.environ.get("FAKE_SLURM_KILL_MATCH")
    if not match or not any(match in job[k] for k in ("command", "comment", "name")):
        return False
    try:  # only the first matching job: an atomic marker
        os.close(os.open(STATE / "killed_once", os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def _run(jobid):
    """The job's life: run the command in its own process group, then record the final state."""
    job = _load(jobid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_SLURM_KILL")}
    env.update(
        SLURM_JOB_ID=jobid,
        SLURM_JOBID=jobid,
        SLURM_JOB_NAME=job["name"],
        SLURM_CPUS_PER_TASK=job["cpus"],
        SLURM_SUBMIT_DIR=job["workdir"],
    )
    if job["gpus"]:
        env["SLURM_GPUS"] = job["gpus"].split(":")[-1]
    Path(job["output"]).parent.mkdir(parents=True, exist_ok=True)
    with open(job["output"], "ab") as out:
        proc = subprocess.Popen(
            ["bash", "-c", job["command"]],
            cwd=job["workdir"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    job.update(state="RUNNING", pid=proc.pid)
    _save(job)
    kill_when = os.environ.get("FAKE_SLURM_KILL_WHEN") if _kill_requested(job) else None
    killed = False
    while proc.poll() is None:
        if kill_when and glob.glob(os.path.join(job["workdir"], kill_when)):
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            proc.wait()
            break
        time.sleep(0.05)
    job = _load(jobid)  # scancel may have marked it
    if job["state"] != "CANCELLED":
        job["state"] = "TIMEOUT" if killed else ("COMPLETED" if proc.returncode == 0 else "FAILED")
    job["exit_code"] = proc.returncode
    _save(job)


def _jobs(ids=None, name=None):
    for f in sorted(STATE.glob("*.json")):
        job = json.loads(f.read_text())
        if (ids is None or job["id"] in ids) and (name is None or job["name"] == name):
            yield job


def _ids(value):
    return {v.split(".")[0] for v in str(value).split(",")} if value else None


def sacct(argv):
    opts, _ = parse_options(argv)
    fmt = str(opts.get("--format") or opts.get("-o") or "JobIdRaw,State").lower()
    if "--format" not in opts and "-o" not in opts and "-j" not in opts and "--name" not in opts:
        return  # account guess (`sacct -nu USER -o Account`): nothing to report
    if "account" in fmt:
        print(ACCOUNT)
        return
    for job in _jobs(_ids(opts.get("-j")), opts.get("--name")):
        if "reason" in fmt:
            print("None")
        elif "nodelist" in fmt:
            print("localhost")
        else:
            print(f"{job['id']}|{job['state']}")


def squeue(argv):
    opts, _ = parse_options(argv)
    for job in _jobs(_ids(opts.get("-j") or opts.get("--jobs")), opts.get("--name")):
        print(f"{job['id']}|{job['state']}")


def scancel(argv):
    for jobid in (a for a in argv if not a.startswith("-")):
        try:
            job = _load(jobid.split("_")[0])
        except FileNotFoundError:
            continue
        if job["state"] in ("PENDING", "RUNNING"):
            job["state"] = "CANCELLED"
            _save(job)
            if job.get("pid"):
                try:
                    os.killpg(job["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass


def scontrol(argv):
    if argv[:2] == ["show", "config"]:
        print("MinJobAge               = 300 sec")
    elif argv[:2] == ["show", "partition"]:
        print("PartitionName=cpu\n   MaxTime=UNLIMITED\nPartitionName=gpu\n   MaxTime=UNLIMITED TRES=gres/gpu=4")


def sacctmgr(argv):
    print(ACCOUNT)


def sinfo(argv):
    print("PARTITION\ncpu*\ngpu")


def srun(argv):
    """Run the command after the options (the jobstep passes it as one shell string or as `sh -s`)."""
    _, command = parse_options(argv)
    if not command:
        return 0
    return subprocess.call(command[0] if len(command) == 1 else shlex.join(command), shell=True)


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "_run":
        return _run(argv[0])
    result = {
        "sbatch": sbatch,
        "sacct": sacct,
        "squeue": squeue,
        "scancel": scancel,
        "scontrol": scontrol,
        "sacctmgr": sacctmgr,
        "sinfo": sinfo,
        "srun": srun,
    }[cmd](argv)
    if cmd in ("sacct", "squeue"):
        sys.stdout.flush()
        STATE.mkdir(parents=True, exist_ok=True)
        with open(STATE / "status.jsonl", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(json.dumps({"cmd": cmd, "end": time.time()}) + "\n")
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
