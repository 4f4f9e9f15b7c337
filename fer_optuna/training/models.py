"""The model registry: every network takes a (N, 1, 48, 48) float batch and gives one logit per class
(FER2013's seven by default; the data's classes size the head).

`mlp`, `cnn_small` and `cnn3` are the original experiments 1-3; `vgg` and
`resnet18` are the families that reach the state of the art from scratch.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask is drawn as random bytes.

    On CPU, `bernoulli_` costs a quarter of a cnn3 training step. The mask here is
    the bytes of uniform 64-bit integers: one generator call per 8 values, 13x cheaper
    than `bernoulli_` and 6x than drawing bytes one by one (2 AVX2 threads).
    p is rounded to 1/256; the kept values are rescaled by the exact keep rate, so
    the expectation is unchanged. CUDA uses the fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        cut = round(self.p * 256)
        n = x.numel()
        words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= cut
        # The scale goes into the mask, which needs no gradient: one multiply forward, one back.
        return x * keep.to(x.dtype).mul_(256 / (256 - cut))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _conv_bn_pool(cin: int, cout: int) -> list[nn.Module]:
    """conv-BN-ReLU-maxpool, run as conv-BN-maxpool-ReLU.

    The two orders give the same outputs and gradients (max and ReLU commute), but
    ReLU and its backward then touch a quarter of the values: 10% of a cnn3 step on CPU.
    The modules keep their indices, so checkpoints of either order load.
    """
    conv, bn, relu = _conv_bn(cin, cout)
    return [conv, bn, nn.MaxPool2d(2), relu]


def _head(features: int, hidden_dim: int, dropout: float, n_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), Dropout(dropout), nn.Linear(features, hidden_dim), nn.ReLU(inplace=True),
        Dropout(dropout), nn.Linear(hidden_dim, n_classes),
    )


def mlp(dropout: float, hidden_dim: int, width: float, n_classes: int) -> nn.Module:
    """Experiment 1: flatten 2304 -> hidden (64 in the original) -> ReLU -> classes."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(48 * 48, hidden_dim), nn.ReLU(inplace=True), Dropout(dropout),
        nn.Linear(hidden_dim, n_classes),
    )


def cnn_small(dropout: float, hidden_dim: int, width: float, n_classes: int) -> nn.Module:
    """Experiment 2: two conv-BN-ReLU-maxpool blocks (32, 64 channels), dropout, a small FC head."""
    return nn.Sequential(
        *_conv_bn_pool(1, 32), *_conv_bn_pool(32, 64), Dropout(dropout),
        nn.Flatten(), nn.Linear(64 * 12 * 12, hidden_dim), nn.ReLU(inplace=True), Dropout(dropout),
        nn.Linear(hidden_dim, n_classes),
    )


def cnn3(dropout: float, hidden_dim: int, width: float, n_classes: int) -> nn.Module:
    """Experiment 3: three conv-BN-ReLU-maxpool-dropout blocks (32/64/128), FC -> hidden -> classes."""
    blocks: list[nn.Module] = []
    for cin, cout in ((1, 32), (32, 64), (64, 128)):
        blocks += [*_conv_bn_pool(cin, cout), Dropout(dropout)]
    return nn.Sequential(
        *blocks, nn.Flatten(), nn.Linear(128 * 6 * 6, hidden_dim), nn.ReLU(inplace=True),
        Dropout(dropout), nn.Linear(hidden_dim, n_classes),
    )


def vgg(dropout: float, hidden_dim: int, width: float, n_classes: int) -> nn.Module:
    """VGG-style: 4 stages of two 3x3 conv-BN-ReLU and a max-pool (64->512 x width), then an FC head."""
    widths = [max(8, round(c * width)) for c in (64, 128, 256, 512)]
    layers: list[nn.Module] = []
    cin = 1
    for c in widths:
        layers += [*_conv_bn(cin, c), *_conv_bn_pool(c, c)]
        cin = c
    return nn.Sequential(*layers, _head(cin * 3 * 3, hidden_dim, dropout, n_classes))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet18(dropout: float, hidden_dim: int, width: float, n_classes: int) -> nn.Module:
    """ResNet-18 for 48x48 grayscale: a 3x3 stem, no early max-pool, 4 stages of 2 blocks."""
    widths = [max(8, round(c * width)) for c in (64, 128, 256, 512)]
    layers: list[nn.Module] = [*_conv_bn(1, widths[0])]
    cin = widths[0]
    for i, c in enumerate(widths):
        layers += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), _head(cin, hidden_dim, dropout, n_classes))


MODELS: dict[str, Callable[[float, int, float, int], nn.Module]] = {
    "mlp": mlp, "cnn_small": cnn_small, "cnn3": cnn3, "vgg": vgg, "resnet18": resnet18,
}


def build_model(name: str, dropout: float, hidden_dim: int, width: float = 1.0, n_classes: int = 7) -> nn.Module:
    assert name in MODELS, name  # TrainConfig validates the name
    return MODELS[name](dropout, hidden_dim, width, n_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(name: str) -> str:
    return (MODELS[name].__doc__ or "").strip().splitlines()[0]
