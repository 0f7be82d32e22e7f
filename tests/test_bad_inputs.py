"""Every bad input in tests/bad_inputs.py ends with a clear lssr error naming what is wrong, and
leaves earlier outputs intact (checked inside provoke())."""

import re

import pytest
from bad_inputs import CASES, provoke

# what each message must name (the key, value, file or fix)
EXPECT = {
    "case_config_misspelled": r"unknown key 'optim.lrr'",
    "case_config_negative_lr": r"'optim.lr' = -0.1",
    "case_config_b_gt_n": r"'optim.batch_size' = 128.*n = 64",
    "case_config_unknown_dataset": r"'data.dataset' = 'mnist'.*known data sets",
    "case_config_unknown_model": r"'model.name' = 'vgg16'.*known models",
    "case_workflow_schema": r"^workflow config, key 'experiments\.fig4\.sgd': .*'lr_typo' was unexpected",
    "case_workflow_b_gt_n": r"b = 1024 > n = 256",
    # Snakemake's own answer: no rule produces a figure outside the registry
    "case_unknown_figure_target": r"^MissingRuleException: No rule to produce figures/fig9\.pdf",
    # the plan's answer for a path the config does not plan: what is planned, in one line
    "case_figure_not_planned": r"^NotPlannedError: figure 'fig4' is not planned .*; planned: fig1, fig2\. "
    r"Add it to 'figures:'",
    "case_subset_not_planned": r"^NotPlannedError: subset 'digits-2k-seed0' is not planned .*; "
    r"planned: digits-1k-seed0\.",
    "case_run_not_planned": r"^NotPlannedError: run 'digits-1k_digits_cnn_ce_b32_lr0\.3_s0_wor' is not planned .*"
    r"\d+ are planned, the closest: digits-1k_digits_cnn_ce_b32_lr0\.1_s0_wor",
    "case_imagefolder_no_test": r"no test/ folder",
    "case_tinyimagenet_extra_class": r"n99999999",
    "case_cifar_missing": r"cifar-10-batches-py.*download: true",
    "case_n_too_large": r"n=5000 is larger than the training pool",
    "case_corrupt_jpeg": r"broken\.jpg",
    "case_truncated_subset": r"data\.pt.*rebuild",
    "case_manifest_hash_mismatch": r"sha256 of train_labels does not match",
    "case_subset_other_config": r"seed",
    "case_read_only_output": r"cannot write .*claims\.csv: Permission denied.*nothing at .* was changed",
    "case_disk_full": r"cannot write .*runs\.csv: No space left on device",
    "case_bad_set_override": r"expected KEY=VALUE",
    "case_config_not_utf8": r"run\.yaml is not UTF-8 text",
    "case_train_out_is_a_file": r"--out <tmp>/some_file is a file, not a folder",
    "case_subset_out_is_a_file": r"--out <tmp>/some_file/subset: <tmp>/some_file is a file, not a folder",
    "case_diagnose_nan_inputs": r"^diagnose: 1 of the n = 16 samples holds NaN or inf .*sample 5\); fix: drop or "
    r"repair",
    "case_diagnose_inf_weights": r"^diagnose: parameter '2\.weight' holds 1 non-finite value.*fix: load finite weights",
    "case_diagnose_infinite_loss": r"^diagnose: the loss ℓ_i at θ is inf for \d+ of the n = 16 samples .*fix: check",
    "case_diagnose_lengths": r"^diagnose: the data holds 16 inputs but 10 targets; fix: give one target per input",
    "case_diagnose_loss_shape": r"^diagnose: the loss returned shape \(3,\) on a chunk of 1 sample.*fix: .*"
    r"reduction='none'",
    # the command line names its own options, not the Python call's keywords
    "case_cli_diagnose_batch_norm": r"^lssr diagnose: error: .*batch norm in train mode \(features\.1\).*fix: "
    r"--bn eval to use the running statistics$",
    "case_cli_diagnose_dropout": r"^lssr diagnose: error: .*dropout is active \(3\).*; fix: --dropout off$",
}


def test_table_is_complete():
    assert len(CASES) >= 15
    assert {fn.__name__ for _, fn in CASES} == set(EXPECT)


@pytest.mark.parametrize("title,fn", CASES, ids=[fn.__name__ for _, fn in CASES])
def test_bad_input_gives_clear_error(title, fn):
    msg = provoke(fn)
    assert re.search(EXPECT[fn.__name__], msg, re.S), msg
    assert "\n" not in msg and "KeyError" not in msg, msg


@pytest.mark.parametrize("case", ["not-utf8", "train-out-file", "subset-out-file"])
def test_cli_error_is_one_line(tmp_path, capsys, case):
    """Through `lssr` itself: exit status 2 and one line `lssr <cmd>: error: ...` on stderr, no traceback."""
    import yaml

    from lssr.cli import main

    cfg = tmp_path / "run.yaml"
    some_file = tmp_path / "some_file"
    some_file.write_text("x\n")
    if case == "not-utf8":
        cfg.write_bytes(b"seed: 0\nname: \xff\xfe\n")
        argv, cmd = ["train", str(cfg), "--out", str(tmp_path / "run")], "train"
    elif case == "train-out-file":
        cfg.write_text(
            yaml.safe_dump(
                {
                    "data": {"dataset": "digits", "n": 64},
                    "model": {"name": "digits_cnn"},
                    "loss": "mse",
                    "optim": {"lr": 0.1},
                    "stop": {"steps": 1},
                }
            )
        )
        argv, cmd = ["train", str(cfg), "--out", str(some_file)], "train"
    else:
        argv, cmd = ["subset", "digits-64", "--out", str(some_file)], "subset"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lssr {cmd}: error: "), err


def test_command_line_names_its_own_options():
    """A fix spelled as a keyword of the Python call becomes the command's option, only for the command's own
    options (others stay as they are)."""
    from lssr import LssrError

    e = LssrError("f: bad; fix: model.eval() before the call, or diagnose(..., bn='eval') to use x")
    assert e.for_command_line({"bn", "n"}) == "f: bad; fix: --bn eval to use x"
    assert e.for_command_line({"dropout"}) == str(e)
    e = LssrError('g: slow; fix: diagnose(..., hvp_mode="fd") or diagnose(..., per_sample_chunk=8)')
    assert e.for_command_line({"hvp_mode", "per_sample_chunk"}) == "g: slow; fix: --hvp-mode fd or --per-sample-chunk 8"


def test_loss_shape_checked_on_two_chunk_sizes_and_good_losses_pass():
    """A loss with a fixed number of values passes a chunk of 1 (or 2) and is caught on the chunk of 8; a tuple
    is caught; a scalar, one value per sample and one row of elementwise values per sample are accepted and give
    the registered loss's numbers."""
    import torch
    import torch.nn.functional as F
    from bad_inputs import _tiny_data, _tiny_net

    import lssr

    data = _tiny_data()
    for bad, what in (
        (lambda o, t: F.cross_entropy(o, t, reduction="none")[:2], r"shape \(2,\) on a chunk of 8 sample"),
        (lambda o, t: (F.cross_entropy(o, t), o.sum()), r"failed on the outputs of 1 sample.*'tuple'"),
    ):
        with pytest.raises(lssr.LssrError, match=what):
            lssr.diagnose(_tiny_net(), bad, data)
    ref = lssr.diagnose(_tiny_net(), "ce", data)
    for good in (F.cross_entropy, lambda o, t: F.cross_entropy(o, t, reduction="none")):
        d = lssr.diagnose(_tiny_net(), good, data)
        assert d.tr_HS_1 == pytest.approx(ref.tr_HS_1, rel=1e-5) and d.loss == pytest.approx(ref.loss, rel=1e-6)
    onehot = torch.eye(3)
    rows = lssr.diagnose(_tiny_net(), lambda o, t: 0.5 * (o - onehot[t]).pow(2) * 3, data)
    assert rows.loss == pytest.approx(lssr.diagnose(_tiny_net(), "mse", data).loss, rel=1e-6)


def test_lengths_of_read_batches_and_ragged_batches_with_a_forward():
    """Batches whose targets fall short are refused once read; two single-tensor batches of different sizes
    under a ``forward`` adapter are data, not a mismatched pair."""
    from bad_inputs import _tiny_data, _tiny_net

    import lssr

    x, y = _tiny_data()
    with pytest.raises(lssr.LssrError, match="16 inputs but 12 targets; fix: give one target per input"):
        lssr.diagnose(_tiny_net(), "ce", [(x[:8], y[:8]), (x[8:], y[8:12])])
    d = lssr.diagnose(_tiny_net(), "ce", [x[:10], x[10:]], forward=lambda m, b: (m(b), b[:, 0].gt(0).long()))
    assert d.n == 16
