"""Models and losses: exact parameter counts, input sizes, class counts, loss definitions."""

import math

import pytest
import torch

from lssr import LssrError
from lssr.losses import get_loss, per_sample_loss
from lssr.models import MODELS, build_model, count_parameters, has_batch_norm

# Exact counts for 3 input channels and 10 classes (documented in docs/ARCHITECTURE.md).
EXPECTED = {
    ("cnn6", False): 510_370,
    ("cnn6", True): 510_986,
    ("resnet9", False): 2_318_694,
    ("resnet9", True): 2_320_024,
    ("wrn28_2", False): 1_466_026,
    ("wrn28_2", True): 1_467_610,
}


@pytest.mark.parametrize("name,bn", sorted(EXPECTED))
def test_parameter_counts(name, bn):
    model = build_model(name, 3, 10, bn)
    assert count_parameters(model) == EXPECTED[(name, bn)]
    assert has_batch_norm(model) == bn


def test_paper_sizes():
    # the paper: 6CNN m = 0.51M, ResNet-9 m = 2.3M
    assert abs(count_parameters(build_model("cnn6", 3, 10)) / 1e6 - 0.51) < 0.005
    assert abs(count_parameters(build_model("resnet9", 3, 10)) / 1e6 - 2.3) < 0.05
    # WideResNet-28-2 of Zagoruyko & Komodakis: 1.47M
    assert abs(count_parameters(build_model("wrn28_2", 3, 10, True)) / 1e6 - 1.47) < 0.01


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size,classes", [(32, 10), (64, 200), (96, 10)])
def test_input_sizes_and_class_counts(name, size, classes):
    torch.manual_seed(0)
    model = build_model(name, 3, classes, batch_norm=True).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_param_count_independent_of_input_size():
    for name in MODELS:
        m = build_model(name, 3, 10)
        c = count_parameters(m)
        with torch.no_grad():
            m(torch.randn(1, 3, 64, 64))
        assert count_parameters(m) == c


def test_unknown_model_lists_known():
    with pytest.raises(LssrError, match="known: .*cnn6.*resnet9"):
        build_model("vgg", 3, 10)


def test_losses_match_definitions():
    torch.manual_seed(0)
    f = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    onehot = torch.eye(4, dtype=torch.float64)[y]
    mse_manual = [0.5 * sum((f[i, k] - onehot[i, k]).item() ** 2 for k in range(4)) for i in range(5)]
    assert torch.allclose(per_sample_loss("mse")(f, y), torch.tensor(mse_manual, dtype=torch.float64))
    assert math.isclose(get_loss("mse")(f, y).item(), sum(mse_manual) / 5, rel_tol=1e-12)
    ce_manual = [-(f[i, y[i]] - torch.logsumexp(f[i], 0)).item() for i in range(5)]
    assert torch.allclose(per_sample_loss("ce")(f, y), torch.tensor(ce_manual, dtype=torch.float64))
    with pytest.raises(LssrError, match="known: ce, mse"):
        get_loss("hinge")
