"""lssr.io: atomic writes give reproducible bytes."""

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
