"""Model registry: the paper's networks (6CNN, ResNet-9, WRN-28-2) and a small CNN for the digits demo.

Every model takes ``(in_channels, num_classes, batch_norm)`` and accepts any square input size
(8, 32, 64, 96 pixels ...): the convolutional trunk ends in a global average pool, so the parameter
count does not depend on the input size. Exact counts (3 input channels, 10 classes) are in
``docs/ARCHITECTURE.md`` and asserted by the tests.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import LssrError


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _conv_block(cin: int, cout: int, batch_norm: bool) -> list[nn.Module]:
    # Without batch norm the convolution keeps its bias; with it, the BN shift replaces the bias.
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm), _norm(cout, batch_norm), nn.ReLU(inplace=False)]


class CNN6(nn.Module):
    """6CNN: six 3x3 conv layers (widths 32-64-64-128-128-200), ReLU, 2x2 max-pool after
    layers 2, 4 and 6, global average pool, one linear classifier. 0.51M parameters without batch norm
    (3 input channels, 10 classes), as the paper's 6CNN (m = 0.51M)."""

    LAYERS = ("features", "classifier")

    WIDTHS = (32, 64, 64, 128, 128, 200)

    def __init__(self, in_channels: int = 3, num_classes: int = 10, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(self.WIDTHS):
            layers += _conv_block(cin, w, batch_norm)
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _Residual(nn.Module):
    def __init__(self, channels: int, batch_norm: bool):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(channels, channels, batch_norm), *_conv_block(channels, channels, batch_norm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 (the DAWNBench / Myrtle design, He et al. residual blocks): prep conv, then
    [conv, pool, residual(2 convs)], conv+pool, [conv, pool, residual], global pool, linear.
    Widths (w, 2w, 4w, 8w) with w = 38 give 2.32M parameters, the paper's m = 2.3M (the usual
    w = 64 gives 6.6M)."""

    LAYERS = ("net", "classifier")

    def __init__(self, in_channels: int = 3, num_classes: int = 10, batch_norm: bool = False, width: int = 38):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            *_conv_block(in_channels, w, batch_norm),
            *_conv_block(w, 2 * w, batch_norm),
            nn.MaxPool2d(2, ceil_mode=True),
            _Residual(2 * w, batch_norm),
            *_conv_block(2 * w, 4 * w, batch_norm),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_block(4 * w, 8 * w, batch_norm),
            nn.MaxPool2d(2, ceil_mode=True),
            _Residual(8 * w, batch_norm),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.net(x))


class _WideBlock(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv-BN-ReLU-conv) with a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, batch_norm: bool):
        super().__init__()
        self.bn1, self.bn2 = _norm(cin, batch_norm), _norm(cout, batch_norm)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batch_norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=not batch_norm)
        self.relu = nn.ReLU()
        self.shortcut = (
            None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride=stride, bias=not batch_norm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.relu(self.bn2(o)))
        return o + short


class WideResNet(nn.Module):
    """WRN-d-k of Zagoruyko & Komodakis (2016): depth d = 6N + 4, widths (16, 16k, 32k, 64k).
    WRN-28-2 has 1.47M parameters with batch norm (the paper's text says 36M, which is WRN-28-10's
    count; we follow the name)."""

    LAYERS = ("features", "classifier")

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, batch_norm: bool = False, depth: int = 28, widen: int = 2
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise LssrError(f"WideResNet depth must be 6N+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=not batch_norm)]
        cin = widths[0]
        for stage, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(_WideBlock(cin, stage, stride if i == 0 else 1, batch_norm))
                cin = stage
        layers += [_norm(cin, batch_norm), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    """The demo's small CNN for 8x8 digits (conv16-conv16-pool-fc64-fc10, 19.6k parameters on
    1x8x8 inputs). Its fully connected part sees a 4x4 map (adaptive average pool), so larger inputs work too."""

    LAYERS = ("features", "classifier")

    def __init__(self, in_channels: int = 1, num_classes: int = 10, batch_norm: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, 16, batch_norm),
            *_conv_block(16, 16, batch_norm),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 16, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn6": CNN6,
    "resnet9": ResNet9,
    "wrn28_2": lambda in_channels=3, num_classes=10, batch_norm=False: WideResNet(
        in_channels, num_classes, batch_norm, 28, 2
    ),
    "digits_cnn": DigitsCNN,
}


def build_model(name: str, in_channels: int, num_classes: int, batch_norm: bool = False) -> nn.Module:
    """Build a registered model by name; unknown names raise an error listing the known ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise LssrError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    return factory(in_channels=in_channels, num_classes=num_classes, batch_norm=batch_norm)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def forward_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as a chain of layers (qualified name, module) whose composition is ``model.forward``:
    the children of the attributes named in the class's ``LAYERS``, in order (a ``Sequential`` is
    expanded, a residual block stays one layer). Activation checkpointing cuts this chain into segments."""
    names = getattr(type(model), "LAYERS", None)
    if names is None:
        raise LssrError(f"{type(model).__name__} has no LAYERS attribute, so it cannot be split for checkpointing")
    out: list[tuple[str, nn.Module]] = []
    for attr in names:
        mod = getattr(model, attr)
        if isinstance(mod, nn.Sequential):
            out += [(f"{attr}.{k}", m) for k, m in mod.named_children()]
        else:
            out.append((attr, mod))
    return out
