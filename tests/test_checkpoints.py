"""Checkpoints are read with ``weights_only=True``; an unusable one (truncated, foreign, another config's)
gives one warning line and a fresh start; a resumed group equals an uninterrupted one; job logs show
progress as plain lines."""

import gc
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from lssr.config import config_from_dict
from lssr.data import SubsetSpec, build_subset, load_subset
from lssr.training import batched, train, train_batched

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 64
MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "lssr-test-unpickled-marker"


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    build_subset(SubsetSpec("digits", N, seed=1), folder)
    return folder


@pytest.fixture(scope="module")
def digits(digits_dir):
    return load_subset(digits_dir)


def cfg(lr=0.05, name=None, steps=12, checkpoint_every=5):
    return config_from_dict(
        {
            "name": name,
            "seed": 5,
            "device": "cpu",
            "data": {"dataset": "digits", "n": N, "seed": 1},
            "model": {"name": "digits_cnn"},
            "loss": "mse",
            "optim": {"lr": lr, "batch_size": 16},
            "stop": {"steps": steps},
            "eval_every": 4,
            "checkpoint_every": checkpoint_every,
        }
    )


class Stop(Exception):
    pass


class StopAt:
    """A probe that ends the process's training (an exception, not a kill) before the step ``step``."""

    def __init__(self, step):
        self.step = step

    def wants(self, step):
        return step == self.step

    def before_step(self, ctx):
        raise Stop

    def after_step(self, ctx):
        pass

    def close(self):
        pass


def interrupted_single(cfg_, data, out, step=7):
    with pytest.raises(Stop):
        train(cfg_, data, out, probes=[StopAt(step)], progress=False)
    gc.collect()  # the stopped run's open log is closed (its buffered rows written) now, not during a resume
    assert (out / "checkpoint.pt").exists()


def interrupted_group(cfgs, data, outs, monkeypatch, step=7):
    original = batched._Group.sgd_step
    taken = [0]

    def stopping_step(self, idx):
        if taken[0] == step:
            raise Stop
        taken[0] += 1
        return original(self, idx)

    with monkeypatch.context() as m:
        m.setattr(batched._Group, "sgd_step", stopping_step)
        with pytest.raises(Stop):
            train_batched(cfgs, data, outs, progress=False)
    gc.collect()  # the stopped group's open logs are closed (their buffered rows written) now, not during a resume
    assert (outs[0] / "checkpoint.pt").exists()


class Evil:
    """Unpickling this (a full ``torch.load``) would create MARKER: ``weights_only=True`` must refuse it."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def plant(kind, path, data, monkeypatch, group):
    """Put a bad checkpoint of ``kind`` at ``path`` (the checkpoint place of the run or group in path.parent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "random-bytes":
        path.write_bytes(bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0)).tolist()))
    elif kind == "foreign-zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/notes.txt", "not a checkpoint")
    elif kind == "foreign-pickle":
        torch.save({"format": "lssr-checkpoint-1", "model": Evil()}, path)
    elif kind == "tensor-dict":  # loadable, but not one of ours
        torch.save({"model": {"w": torch.zeros(3)}, "step": 5}, path)
    elif kind in ("truncated", "other-config"):
        lr = 0.05 if kind == "truncated" else 0.02
        tmp = path.parent.parent / f"make-{kind}-{path.parent.name}"
        if group:
            outs = [tmp / "a", tmp / "b"]
            interrupted_group([cfg(lr, "a"), cfg(2 * lr, "b")], data, outs, monkeypatch)
            made = outs[0] / "checkpoint.pt"
        else:
            interrupted_single(cfg(lr), data, tmp)
            made = tmp / "checkpoint.pt"
        raw = made.read_bytes()
        path.write_bytes(raw[: len(raw) // 2] if kind == "truncated" else raw)
        if kind == "other-config" and not group:  # its partial log too, which a fresh start must discard
            (path.parent / "metrics.csv.partial").write_bytes((tmp / "metrics.csv.partial").read_bytes())
    else:
        raise AssertionError(kind)


KINDS = ["truncated", "random-bytes", "foreign-zip", "foreign-pickle", "tensor-dict", "other-config"]


def one_warning(err, path):
    lines = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "starting from step 0" in lines[0]
    return lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_unusable_single_checkpoint_warns_and_starts_afresh(digits, tmp_path, capsys, monkeypatch, kind):
    ref = tmp_path / "ref"
    train(cfg(), digits, ref, progress=False)
    out = tmp_path / "out"
    plant(kind, out / "checkpoint.pt", digits, monkeypatch, group=False)
    capsys.readouterr()
    MARKER.unlink(missing_ok=True)
    res = train(cfg(), digits, out, progress=False)
    assert not MARKER.exists()  # nothing in the file was executed
    one_warning(capsys.readouterr().err, out / "checkpoint.pt")
    assert res.status == "completed" and res.steps == 12
    assert (out / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    assert json.loads((out / "run.json").read_text())["resumed"] is False
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_unusable_group_checkpoint_warns_and_starts_afresh(digits, tmp_path, capsys, monkeypatch, kind):
    cfgs = [cfg(0.05, "a"), cfg(0.1, "b")]
    ref = [tmp_path / "ref" / "a", tmp_path / "ref" / "b"]
    train_batched(cfgs, digits, ref, progress=False)
    outs = [tmp_path / "out" / "a", tmp_path / "out" / "b"]
    plant(kind, outs[0] / "checkpoint.pt", digits, monkeypatch, group=True)
    capsys.readouterr()
    MARKER.unlink(missing_ok=True)
    res = train_batched(cfgs, digits, outs, progress=False)
    assert not MARKER.exists()
    one_warning(capsys.readouterr().err, outs[0] / "checkpoint.pt")
    assert [r.steps for r in res] == [12, 12]
    for o, r in zip(outs, ref):
        assert (o / "metrics.csv").read_bytes() == (r / "metrics.csv").read_bytes()
        assert json.loads((o / "run.json").read_text())["resumed"] is False
    assert not (outs[0] / "checkpoint.pt").exists()


def test_single_run_checkpoint_of_a_group_is_foreign(digits, tmp_path, capsys, monkeypatch):
    """A group's checkpoint in a run's folder (batch_runs toggled) is not resumed by ``train``."""
    outs = [tmp_path / "a", tmp_path / "b"]
    interrupted_group([cfg(0.05, "a"), cfg(0.1, "b")], digits, outs, monkeypatch)
    capsys.readouterr()
    train(cfg(0.05, "a"), digits, outs[0], progress=False)
    assert "another config" in one_warning(capsys.readouterr().err, outs[0] / "checkpoint.pt")


def test_group_checkpoint_is_weights_only_and_resumes_exactly(digits, tmp_path, capsys, monkeypatch):
    """In process: a group stopped at step 7 (checkpoint at 5) and restarted equals an uninterrupted one."""
    cfgs = [cfg(0.05, "a"), cfg(3.0, "b"), cfg(0.1, "c")]  # "b" diverges before the checkpoint
    ref = [tmp_path / "ref" / m for m in "abc"]
    train_batched(cfgs, digits, ref, progress=False)
    outs = [tmp_path / "out" / m for m in "abc"]
    interrupted_group(cfgs, digits, outs, monkeypatch)
    state = torch.load(outs[0] / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and state["active"] == [0, 2] and state["members"][1]["done"]
    res = train_batched(cfgs, digits, outs, progress=False)
    assert "warning" not in capsys.readouterr().err
    assert [r.status for r in res] == ["completed", "diverged", "completed"]
    for o, r in zip(outs, ref):
        assert (o / "metrics.csv").read_bytes() == (r / "metrics.csv").read_bytes()
        a, b = (json.loads((p / "run.json").read_text()) for p in (o, r))
        assert {k: v for k, v in a.items() if k not in ("wall_time_s", "resumed")} == {
            k: v for k, v in b.items() if k not in ("wall_time_s", "resumed")
        }
        got, want = torch.load(o / "model.pt"), torch.load(r / "model.pt")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not (outs[0] / "checkpoint.pt").exists()


def test_single_checkpoint_is_weights_only(digits, tmp_path):
    interrupted_single(cfg(), digits, tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and isinstance(state["metrics_offset"], int)


@pytest.mark.parametrize("command", ["train", "train-batch"])
def test_progress_in_a_log_file_is_plain_lines(digits_dir, tmp_path, command):
    """stderr to a file (a job's log): no carriage returns, a progress line at every tenth of the steps."""
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg(steps=40).to_dict()))
    args = [path, "--out", tmp_path / "out"] if command == "train" else ["--config", path, "--out", tmp_path / "out"]
    log = tmp_path / "job.log"
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "lssr", command, *map(str, args), "--data", str(digits_dir)],
            stderr=fh,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text
    lines = [ln for ln in text.splitlines() if " step " in ln and "/40 (" in ln]
    assert len(lines) >= 11, text  # started, 10%, ..., 100%
    assert lines[0].endswith("(started)") and "step 40/40 (100%" in lines[-1]


# -- the rows of a group's members: in each member's metrics.csv.partial, the checkpoint keeps byte offsets --


def same_outputs(outs, ref):
    """Each member's metrics.csv and model.pt byte-identical, run.json equal apart from wall time and resumed."""
    for o, r in zip(outs, ref):
        assert (o / "metrics.csv").read_bytes() == (r / "metrics.csv").read_bytes()
        assert (o / "model.pt").read_bytes() == (r / "model.pt").read_bytes()
        a, b = (json.loads((p / "run.json").read_text()) for p in (o, r))
        drop = ("wall_time_s", "resumed")
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def test_group_checkpoint_size_does_not_grow_with_the_steps(digits, tmp_path, monkeypatch):
    """The checkpoint after 200 steps is as large as the one after 20 (within a few bytes per member: the
    offsets and step counter are larger numbers); with the rows in it, it would be ~180 rows x 3 larger."""
    cfgs = [cfg(lr, name, steps=300, checkpoint_every=20) for lr, name in ((0.05, "a"), (0.1, "b"), (0.02, "c"))]
    sizes = {}
    for stop in (21, 201):
        outs = [tmp_path / str(stop) / c.name for c in cfgs]
        interrupted_group(cfgs, digits, outs, monkeypatch, step=stop)
        state = torch.load(outs[0] / "checkpoint.pt", weights_only=True)
        assert state["step"] == stop - 1
        sizes[stop] = (outs[0] / "checkpoint.pt").stat().st_size
        # the rows are in the members' logs: the header and one line per step (a batch loss at every step)
        for o, ms in zip(outs, state["members"]):
            assert "rows" not in ms
            lines = (o / "metrics.csv.partial").read_bytes()[: ms["metrics_offset"]].decode().splitlines()
            assert lines[0].startswith("step,epoch,batch_loss") and [int(ln.split(",")[0]) for ln in lines[1:]] == list(
                range(stop - 1)
            )
    assert abs(sizes[201] - sizes[21]) <= 64 + 16 * len(cfgs), sizes


def test_group_resume_cuts_rows_written_after_the_checkpoint(digits, tmp_path, capsys, monkeypatch):
    """Rows a killed group wrote after its last checkpoint (here, a member's log runs on past the offset
    with made-up lines) are cut back on resume; the outputs equal an uninterrupted run's, no log is left."""
    cfgs = [cfg(0.05, "a"), cfg(3.0, "b"), cfg(0.1, "c")]  # "b" diverges before the checkpoint at step 5
    ref = [tmp_path / "ref" / m for m in "abc"]
    train_batched(cfgs, digits, ref, progress=False)
    assert not list((tmp_path / "ref").glob("*/*.partial"))
    outs = [tmp_path / "out" / m for m in "abc"]
    interrupted_group(cfgs, digits, outs, monkeypatch)
    state = torch.load(outs[0] / "checkpoint.pt", weights_only=True)
    for o, ms in zip(outs, state["members"]):
        with open(o / "metrics.csv.partial", "a") as fh:
            fh.write("6,0.1,9.9,,,,\n7,0.2,9.9,,,,\n")
        assert (o / "metrics.csv.partial").stat().st_size > ms["metrics_offset"]
    (outs[1] / "metrics.csv").unlink()  # a stopped member's outputs deleted (as Snakemake does after a failure)
    capsys.readouterr()
    res = train_batched(cfgs, digits, outs, progress=False)
    assert "warning" not in capsys.readouterr().err
    assert [r.status for r in res] == ["completed", "diverged", "completed"]
    same_outputs(outs, ref)
    assert not list((tmp_path / "out").glob("*/*.partial")) and not (outs[0] / "checkpoint.pt").exists()


def test_group_checkpoint_with_a_missing_log_warns_and_starts_afresh(digits, tmp_path, capsys, monkeypatch):
    cfgs = [cfg(0.05, "a"), cfg(0.1, "b")]
    ref = [tmp_path / "ref" / m for m in "ab"]
    train_batched(cfgs, digits, ref, progress=False)
    outs = [tmp_path / "out" / m for m in "ab"]
    interrupted_group(cfgs, digits, outs, monkeypatch)
    (outs[1] / "metrics.csv.partial").unlink()
    capsys.readouterr()
    train_batched(cfgs, digits, outs, progress=False)
    line = one_warning(capsys.readouterr().err, outs[0] / "checkpoint.pt")
    assert "metrics.csv.partial is missing or shorter" in line
    same_outputs(outs, ref)
    assert all(json.loads((o / "run.json").read_text())["resumed"] is False for o in outs)


def test_single_run_resumes_byte_identical_in_process(digits, tmp_path):
    ref = tmp_path / "ref"
    train(cfg(), digits, ref, progress=False)
    out = tmp_path / "out"
    interrupted_single(cfg(), digits, out)
    with open(out / "metrics.csv.partial", "a") as fh:  # rows after the checkpoint at step 5
        fh.write("6,0.1,9.9,,,,\n")
    res = train(cfg(), digits, out, progress=False)
    assert res.steps == 12 and json.loads((out / "run.json").read_text())["resumed"] is True
    same_outputs([out], [ref])


def test_group_checkpoints_change_no_output(digits, tmp_path):
    """A group that checkpoints (and syncs with the host) every 3 steps writes the same metrics.csv and
    model.pt as one that never checkpoints, and leaves no checkpoint or row log behind."""
    names = (("a", 0.05), ("b", 3.0), ("c", 0.1))
    plain = [tmp_path / "plain" / m for m, _ in names]
    train_batched([cfg(lr, m, checkpoint_every=None) for m, lr in names], digits, plain, progress=False)
    ckpt = [tmp_path / "ckpt" / m for m, _ in names]
    train_batched([cfg(lr, m, checkpoint_every=3) for m, lr in names], digits, ckpt, progress=False)
    for o, r in zip(ckpt, plain):
        assert (o / "metrics.csv").read_bytes() == (r / "metrics.csv").read_bytes()
        assert (o / "model.pt").read_bytes() == (r / "model.pt").read_bytes()
        assert sorted(p.name for p in o.iterdir()) == ["metrics.csv", "model.pt", "run.json"]
