"""lssr.io: atomic writes give reproducible bytes and the permissions of the user's umask."""

import os
import stat

import pytest
import torch

from lssr.io import torch_save


def test_torch_save_gives_the_same_bytes_for_the_same_object(tmp_path):
    # torch.save(obj, path) names the zip members after the (random) temporary file; through a file
    # handle they are the fixed archive/..., so a rebuilt subset or model file is byte-identical.
    obj = {"w": torch.arange(12.0).reshape(3, 4), "n": torch.tensor(7)}
    torch_save(tmp_path / "a.pt", obj)
    torch_save(tmp_path / "b.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(back["w"], obj["w"]) and int(back["n"]) == 7
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_permissions_of_the_users_umask(tmp_path, umask, mode):
    """Every atomic writer leaves a file with mode 0666 & ~umask, as `open(path, "w")` does, also when it
    replaces a file of another mode."""
    import pandas as pd

    from lssr.io import CsvLog, write_csv, write_json, write_text

    old = os.umask(umask)
    try:
        ref = tmp_path / "plain.txt"
        with open(ref, "w") as fh:  # the oracle: what the operating system gives a new file
            fh.write("x")
        (tmp_path / "t.txt").write_text("old")
        (tmp_path / "t.txt").chmod(0o600)
        write_text(tmp_path / "t.txt", "new")
        write_json(tmp_path / "j.json", {"a": 1})
        write_csv(tmp_path / "sub" / "c.csv", pd.DataFrame({"a": [1]}))
        torch_save(tmp_path / "m.pt", {"w": torch.zeros(2)})
        log = CsvLog(tmp_path / "log.csv", ["a"])
        log.append({"a": 1})
        log.finalize()
    finally:
        os.umask(old)
    assert stat.S_IMODE(ref.stat().st_mode) == mode
    for name in ("t.txt", "j.json", "sub/c.csv", "m.pt", "log.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert (tmp_path / "t.txt").read_text() == "new"
