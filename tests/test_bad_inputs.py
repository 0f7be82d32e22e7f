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
