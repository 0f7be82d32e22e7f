"""The runtime of a training job (lssr.cost) against numbers worked out by hand, and its FLOP table
against torch's own FLOP counter."""

import pytest
import torch

from lssr.config import config_from_dict
from lssr.cost import FWD_BWD_GFLOPS, flops_per_sample, job_seconds, runtime_minutes, total_steps
from lssr.models import build_model
from lssr.workflow import plan


def run(
    device="cuda",
    dataset="cifar10",
    n=1024,
    b=32,
    steps=1000,
    epochs=None,
    model="cnn6",
    lr=0.1,
    probe=None,
    eval_every=100,
):
    raw = {
        "seed": 0,
        "device": device,
        "data": {"dataset": dataset, "n": n},
        "model": {"name": model},
        "loss": "ce",
        "optim": {"lr": lr, "batch_size": b},
        "stop": {"steps": steps, "epochs": epochs},
        "eval_every": eval_every,
    }
    if probe:
        raw["probe"] = probe
    return config_from_dict(raw)


def test_one_gpu_run_by_hand():
    # cnn6 at 32 px: F = 0.4318 GFLOP. Per step 0.0138 s + 32 x 0.4318e9 / 25e12 = 0.0138 + 5.52704e-4 s;
    # 1000 steps = 14.352704 s. Evaluations at 0, 100, ..., 1000: 11 x (1024 + 10000) x 0.4318e9 / 3 / 25e12
    # = 11 x 11024 x 5.757333e-6 = 0.698159 s. Total 15.050863 s -> ceil(2 x 15.05 / 60) + 10 = 1 + 10 = 11 min.
    s = job_seconds([run()])
    assert s == pytest.approx(15.050863, rel=1e-6)
    assert runtime_minutes(s) == 11


def test_a_figure5_group_on_the_gpu_by_hand():
    # Tiny-ImageNet-32k (64 px: F = 4 x 0.4318 = 1.7272 GFLOP), b = 8, 800 epochs = 800 x 4096 = 3,276,800
    # steps, 10 members, evaluation every 10 epochs (40,960 steps). Per step 0.0138 + 10 x 8 x 1.7272e9 / 25e12
    # = 0.0138 + 5.52704e-3 = 0.01932704 s, so 63,330.84 s of steps; evaluations (81 of them) 81 x 10 x
    # (32768 + 10000) x 1.7272e9 / 3 / 25e12 = 81 x 9.849185 = 797.78 s. 64,128.63 s
    # -> ceil(2 x 64128.63 / 60) + 10 = 2138 + 10 = 2148 min (36 h); with the paper config's cap 1440.
    cfgs = [
        run(dataset="tinyimagenet", n=32768, b=8, steps=None, epochs=800, lr=lr, eval_every=40960)
        for lr in range(1, 11)
    ]
    assert total_steps(cfgs[0]) == 3_276_800
    s = job_seconds(cfgs)
    assert s == pytest.approx(64_128.63, rel=1e-6)
    assert runtime_minutes(s) == 2148 and runtime_minutes(s, cap=1440) == 1440


def test_cpu_runs_use_the_threads_and_probes_add_their_gradients():
    # digits_cnn at 8 px: F = 1.0237e6. CPU rate 30e9 per thread, 2 threads, digits_cnn's efficiency 0.24:
    # 14.4e9. steps: 100 x (0.0138 + 16 x 1.0237e6 / 14.4e9) = 100 x (0.0138 + 1.137444e-3) = 1.4937444 s
    # evaluations: 2 x (256 + 773) x 1.0237e6 / 3 / 14.4e9 = 4.876793e-2 s
    # probes every 10 steps: 11 x (100 x 256 + 2 x (4 + 0) x 16) x 1.0237e6 / 14.4e9 = 11 x 25728 x 7.109028e-5
    # = 20.119117 s. Total 21.661630 s.
    probe = {"every": 10, "batch_sizes": [4], "expected_change_batches": 4}
    cfg = run(device="cpu", dataset="digits", n=256, b=16, steps=100, model="digits_cnn", probe=probe)
    assert job_seconds([cfg], threads=2) == pytest.approx(21.661630, rel=1e-6)


def test_cpu_estimates_of_digits_cnn_groups_bound_their_measured_time():
    """Batched Figure-5 groups of 105 digits_cnn members on 1024 8-px images (the replication's), measured by
    benchmarks/bench_fig5_checks.py on one thread (results/bench/fig5_checks_105.json: seconds per member and epoch at
    b = 8, 64, 512): the estimate of a 200-epoch group (the replication's cap), per member and epoch, is at least the
    measured time and at most 4 times it, so that the workflow's runtime (twice the estimate plus 10 minutes) covers
    the job."""
    import json
    from pathlib import Path

    rows = json.loads((Path(__file__).parents[1] / "results/bench/fig5_checks_105.json").read_text())["rows"]
    assert [r["b"] for r in rows] == [8, 64, 512]
    for r in rows:
        b, members = r["b"], r["members"]
        cfg = run(
            device="cpu", dataset="digits", n=1024, b=b, steps=200 * 1024 // b, model="digits_cnn", eval_every=10**9
        )
        per_member_epoch = job_seconds([cfg] * members) / members / 200
        assert r["s_per_member_epoch"] <= per_member_epoch <= 4 * r["s_per_member_epoch"], (b, per_member_epoch)


@pytest.mark.parametrize("model", sorted(FWD_BWD_GFLOPS))
def test_flop_table_matches_torch_flop_counter(model):
    from torch.utils.flop_counter import FlopCounterMode

    px, channels, _ = FWD_BWD_GFLOPS[model]
    sizes = [px] if model == "digits_cnn" else [px, 2 * px]  # conv nets: FLOPs grow with the pixel count
    for side in sizes:
        m = build_model(model, channels, 10, True)
        with FlopCounterMode(display=False) as fc:
            m(torch.randn(2, channels, side, side)).sum().backward()
        assert flops_per_sample(model, side) == pytest.approx(fc.get_total_flops() / 2, rel=2e-3)


def _fig5_workflow() -> dict:
    """Figure 5 alone on digits-256 on CUDA: b = 8 and 64, η = 0.1 and 0.2, 100 epochs, batched groups."""
    fig5 = {"datasets": ["d"], "model": "digits_cnn", "loss": "ce", "lrs": [0.1, 0.2], "batch_sizes": [8, 64]}
    data = {"d": {"source": "digits", "n": 256}}
    return {"figures": ["fig5"], "device": "cuda", "batch_runs": True, "datasets": data,
            "experiments": {"fig5": {**fig5, "epochs": 100}}}  # fmt: skip


def test_plan_gives_each_job_its_own_runtime_capped_by_resources():
    wf = _fig5_workflow()
    p = plan(wf)
    # b = 8: 3200 steps, b = 64: 400 steps; the small-b group takes longer
    assert set(p.group_runtime) == {"d_b8", "d_b64"} and p.group_runtime["d_b8"] > p.group_runtime["d_b64"]
    assert set(p.runtime) == set(p.runs)
    capped = plan({**wf, "resources": {"runtime": 10}})
    assert max(capped.group_runtime.values()) == 10


@pytest.mark.parametrize(
    "probe,T",
    [
        ({"every": 25, "dense_until": 200}, 2000),
        ({"every": 7, "dense_until": 10, "start": 3}, 100),
        ({"every": 4, "start": 5, "stop": 50}, 100),
        ({"every": 3, "dense_until": 500}, 40),
        ({"every": 10, "start": 200}, 100),
    ],
)
def test_probed_steps_counts_the_probe_schedule(probe, T):
    from lssr.cost import probed_steps
    from lssr.training.probe_schedule import ProbeSchedule

    cfg = run(device="cpu", probe=probe)
    schedule = ProbeSchedule.of(cfg.probe)  # the schedule the training's probe follows, step by step
    assert probed_steps(cfg.probe, T) == sum(schedule.scheduled(s) for s in range(T + 1))


def test_gpu_hours_sums_the_jobs_of_a_plan():
    from lssr.cost import gpu_hours, training_jobs

    wf = _fig5_workflow()
    p = plan(wf)
    jobs = training_jobs(p)
    assert sorted(j.name for j in jobs) == ["d_b64", "d_b8"] and all(j.figure == "fig5" for j in jobs)
    cfgs = {rid: config_from_dict(raw) for rid, raw in p.runs.items()}
    by_hand = sum(job_seconds([cfgs[r] for r in rids]) for rids in p.groups.values()) / 3600
    est = gpu_hours(p)
    assert set(est) == {"Figure 5"} and est["Figure 5"]["jobs"] == 2 and est["Figure 5"]["runs"] == len(p.runs)
    assert est["Figure 5"]["hours"] == pytest.approx(by_hand, rel=1e-12)
    assert est["Figure 5"]["longest"]["name"] == "d_b8"


@pytest.mark.parametrize("T,eval_every,goal_every", [(100, 30, 8), (400, 1_000_000, 20), (120, 40, 8), (7, 1, 3)])
def test_goal_checks_cost_the_training_set_alone(T, eval_every, goal_every):
    """Evaluations (training and test sets) at 0, eval_every, ... and T; goal checks (training set only) at the
    other multiples of goal_every, counted here step by step; each check adds members x n x F / 3 to the job."""
    from lssr.cost import evaluation_steps

    kw = dict(device="cpu", dataset="digits", n=256, b=16, steps=T, model="digits_cnn", eval_every=eval_every)
    cfg = config_from_dict({**run(**kw).to_dict(), "goal_every": goal_every})
    full = sum(t % eval_every == 0 or t == T for t in range(T + 1))
    checks = sum(t % goal_every == 0 and not (t % eval_every == 0 or t == T) for t in range(T + 1))
    assert evaluation_steps(cfg, T) == (full, checks)
    members, F, rate = 5, flops_per_sample("digits_cnn", 8), 30e9 * 0.24  # digits_cnn's CPU efficiency
    extra = job_seconds([cfg] * members) - job_seconds([run(**kw)] * members)
    assert extra == pytest.approx(checks * members * 256 * F / 3 / rate, rel=1e-9)
