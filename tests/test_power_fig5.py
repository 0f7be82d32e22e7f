"""The cost model of benchmarks/power_fig5.py against numbers worked out by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from power_fig5 import run_epoch_seconds, run_epochs, two_core_hours  # noqa: E402


def test_a_run_to_the_cap_with_goal_checks_by_hand():
    # n = 1024, 10,000 test images, cap 200 epochs, a check every 10: training 200; step 0 both sets
    # 11024 / 3072 = 3.588542; checks at 10, 20, ..., 200: 20 x 1/3 = 6.666667; the test set at the cap
    # 10000 / 3072 = 3.255208. Total 213.510417.
    assert run_epochs(200, 10, 1024, 10_000) == pytest.approx(213.510417, rel=1e-8)
    # a cap that is no multiple of the interval: checks at 10, 20 and the cap 25 (3 x 1/3)
    assert run_epochs(25, 10, 1024, 10_000) == pytest.approx(25 + 3.588542 + 1.0 + 3.255208, rel=1e-6)
    # no goal: both sets at step 0 and at the cap only; measured costs replace the FLOP ratios
    assert run_epochs(200, None, 1024, 10_000) == pytest.approx(200 + 2 * 3.588542, rel=1e-6)
    assert run_epochs(100, 20, 1024, 10_000, check=0.5, test=5.0) == pytest.approx(100 + 5.5 + 5 * 0.5 + 5.0)


def test_groups_on_two_cores_longest_first():
    # one group longer than all the others together: it alone sets the wall time
    assert two_core_hours([5 * 3600, 3600, 3600, 3600]) == pytest.approx(5.0)
    # 3, 2, 2, 1 hours: 3 | 2, then 2 -> the core at 2 (4), 1 -> the core at 3 (4)
    assert two_core_hours([3600 * h for h in (1, 2, 3, 2)]) == pytest.approx(4.0)


def test_rates_between_and_beyond_the_measured_batch_sizes():
    rec = {"s_per_run_epoch": {"8": 0.1, "64": 0.05, "512": 0.064}}
    assert run_epoch_seconds(64, rec) == pytest.approx(0.05)
    # b = 16 lies a third of the way from 8 to 64 in log2 b: 0.1 x (0.05 / 0.1)^(1/3)
    assert run_epoch_seconds(16, rec) == pytest.approx(0.1 * 0.5 ** (1 / 3))
    assert run_epoch_seconds(4, rec) == pytest.approx(0.2)  # twice the steps per epoch of b = 8
    assert run_epoch_seconds(1024, rec) == pytest.approx(0.064)
