"""The pre-flight memory estimate (lssr.memory): checked against measured peaks, and the refusal.

What is measured (tests/memory_peak.py, a subprocess per case): the rise of the process's peak resident
set size (VmHWM, reset through /proc/self/clear_refs after a warm-up step) over its resident set just
before one training step of b samples, batch norm in train mode, with and without activation
checkpointing. glibc's mmap threshold is pinned low (MALLOC_MMAP_THRESHOLD_) so freed tensors leave the
resident set at once; torch's CPU allocator does not cache. This is the step's activations plus the
weight gradients, which is what the estimate's ``step`` part plus one set of parameter bytes predicts.
Linux only (skipped where /proc/self/clear_refs cannot be written).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lssr import memory
from lssr.config import config_from_dict
from lssr.data import Subset, SubsetSpec, build_subset, load_subset
from lssr.models import MODELS, build_model, forward_layers
from lssr.training import train

HERE = Path(__file__).resolve().parent


def cfg_for(model="cnn6", n=128, b=128, batch_norm=True, **over):
    raw = {
        "device": "cpu",
        "data": {"dataset": "digits", "n": n},
        "model": {"name": model, "batch_norm": batch_norm},
        "loss": "ce",
        "optim": {"lr": 0.1, "batch_size": b},
        "stop": {"steps": 1},
        "chunk_size": 64,
    }
    raw.update(over)
    return config_from_dict(raw)


def _clear_refs_works() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _clear_refs_works(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "model,px,b,ckpt",
    [("cnn6", 32, 128, False), ("cnn6", 32, 128, True), ("resnet9", 32, 64, False), ("resnet9", 32, 64, True)],
)
def test_estimate_within_25_percent_of_measured_peak(model, px, b, ckpt):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(HERE / "memory_peak.py"), model, str(px), str(b), "1" if ckpt else "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])["measured"]
    cfg = cfg_for(model, n=b, b=b)
    est = memory.estimate(cfg, (3, px, px), 10, 0, 1, torch.float32, checkpointing=ckpt)
    p = memory.profile(model, True, 3, px, 10, torch.float32)
    predicted = est.step + p.param_bytes  # activations + the weight gradients the step allocates
    assert abs(predicted - measured) <= 0.25 * measured, (predicted, measured)
    if ckpt:  # checkpointing must actually save memory on these models
        assert est.step_checkpointed < 0.8 * est.step_plain


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_layers_compose_to_the_model(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 10, True).eval()
    x = torch.randn(2, 3, 16, 16)
    h = x
    for _, layer in forward_layers(model):
        h = layer(h)
    torch.testing.assert_close(h, model(x), atol=0, rtol=0)


def test_estimate_scales_with_members_and_batch():
    one = memory.estimate(cfg_for(b=64), (3, 32, 32), 10, 0, 1, torch.float32)
    four = memory.estimate(cfg_for(b=64), (3, 32, 32), 10, 0, 4, torch.float32)
    big = memory.estimate(cfg_for(b=128), (3, 32, 32), 10, 0, 1, torch.float32)
    assert four.step_plain == 4 * one.step_plain and big.step_plain == 2 * one.step_plain
    ghost = memory.estimate(cfg_for(b=128, bn_ghost_batch=16), (3, 32, 32), 10, 0, 1, torch.float32)
    assert ghost.step_plain * 8 == big.step_plain  # ghost batches of 16: 16 samples per forward pass
    nobn = cfg_for(b=128, batch_norm=False)
    assert memory.samples_per_pass(nobn) == 64  # without batch norm: chunk_size


def test_auto_checkpoints_only_when_needed_and_refuses_what_does_not_fit():
    cfg = cfg_for(b=128)
    est = memory.estimate(cfg, (3, 32, 32), 10, 0, 1, torch.float32)
    cpu = torch.device("cpu")
    roomy = memory.preflight(cfg, (3, 32, 32), 10, 0, 1, torch.float32, cpu, "r", available=10 * est.peak)
    assert not roomy.checkpointing
    tight = int(est.peak_with(True) / memory.USABLE_FRACTION) + 1  # fits with checkpointing only
    assert tight < est.peak_with(False) / memory.USABLE_FRACTION
    assert memory.preflight(cfg, (3, 32, 32), 10, 0, 1, torch.float32, cpu, "r", available=tight).checkpointing
    never = cfg_for(b=128, activation_checkpointing="never")
    with pytest.raises(memory.DoesNotFitError, match="activation_checkpointing: always"):
        memory.preflight(never, (3, 32, 32), 10, 0, 1, torch.float32, cpu, "r", available=tight)
    with pytest.raises(memory.DoesNotFitError) as err:
        memory.preflight(cfg, (3, 32, 32), 10, 0, 3, torch.float32, cpu, "my-run", available=est.peak // 2)
    msg = str(err.value)
    for part in ("my-run", "GiB", "3 member(s)", "--members-per-pass", "activation_checkpointing", "more GPUs"):
        assert part in msg, part


def test_train_refuses_before_any_step(tmp_path, monkeypatch):
    folder = tmp_path / "digits"
    build_subset(SubsetSpec("digits", 64, seed=0), folder)
    d = load_subset(folder)
    data = Subset(d.x_train, d.y_train, d.x_test[:64], d.y_test[:64], d.manifest)
    monkeypatch.setattr(memory, "device_memory", lambda device: 1 << 20)  # 1 MiB free
    cfg = cfg_for("digits_cnn", n=64, b=64, name="tiny-box")
    with pytest.raises(memory.DoesNotFitError, match="tiny-box"):
        train(cfg, data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def _state(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch_norm", [True, False])
def test_profile_of_the_built_model_equals_the_profile_by_name(name, batch_norm):
    """The pre-flight's estimate for a model training built is the one the planner gets for the same model by
    name (byte counts do not depend on the weights), and measuring leaves the model and global RNG as they were."""
    torch.manual_seed(3)
    model = build_model(name, 3, 10, batch_norm).to(torch.float64).eval()
    before, rng = _state(model), torch.get_rng_state()
    mine = memory.profile_model(model, 3, 16, torch.float64)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert mine == memory.profile(name, batch_norm, 3, 16, 10, torch.float64)
    assert torch.equal(torch.get_rng_state(), rng)  # the by-name build runs inside fork_rng
    cfg = cfg_for(name, n=128, b=32, batch_norm=batch_norm)
    by_name = memory.estimate(cfg, (3, 16, 16), 10, 100, 2, torch.float64)
    assert memory.estimate(cfg, (3, 16, 16), 10, 100, 2, torch.float64, model_profile=mine) == by_name


def _digits(tmp_path, n=64):
    folder = tmp_path / "digits"
    build_subset(SubsetSpec("digits", n, seed=0), folder)
    d = load_subset(folder)
    return Subset(d.x_train, d.y_train, d.x_test[:64], d.y_test[:64], d.manifest)


def test_plan_step_measures_the_given_model_and_leaves_it_and_the_rng_alone(tmp_path):
    from lssr.training.forward import model_profile, plan_step

    data = _digits(tmp_path)
    cfg = cfg_for("digits_cnn", n=64, b=16)
    torch.manual_seed(0)
    model = build_model("digits_cnn", data.image_shape[0], data.num_classes, True).train()
    before, rng = _state(model), torch.get_rng_state()
    plan = plan_step(cfg, data, 1, torch.device("cpu"), "r", model_profile(model, data))
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    shape = tuple(data.x_train.shape[1:])
    assert plan.estimate == memory.estimate(cfg, shape, data.num_classes, 64, 1, data.x_train.dtype)


def _stub_plan(cfg, data, members, device, run, profile):
    """The pre-flight switched off: no estimate, no checkpointing."""
    from lssr.training.forward import StepPlan

    stats = "batch" if cfg.model.batch_norm else "none"
    return StepPlan(memory.samples_per_pass(cfg), None, memory.Estimate(0, 0, 0, 0, False), stats)


@pytest.mark.parametrize("engine", ["single", "batched"])
def test_training_losses_are_the_same_with_the_preflight_off(tmp_path, monkeypatch, engine):
    """Batch norm in train mode, SGD: the pre-flight measures a copy, so the running statistics, the weights and
    the global RNG (and hence every metric) are those of a run without it."""
    import importlib

    from lssr.training import train_batched

    data = _digits(tmp_path)
    cfg = cfg_for("digits_cnn", n=64, b=16, stop={"steps": 12}, eval_every=4)
    run = {"single": lambda out: train(cfg, data, out, progress=False)}
    run["batched"] = lambda out: train_batched([cfg], data, [out], progress=False)
    run[engine](tmp_path / "with")
    module = importlib.import_module(f"lssr.training.{engine}")
    monkeypatch.setattr(module, "plan_step", _stub_plan)
    run[engine](tmp_path / "without")
    with_, without = ((tmp_path / d / "metrics.csv").read_text() for d in ("with", "without"))
    assert with_ == without and len(with_.splitlines()) > 3
