"""What a fine-tune leaves as it is: the first `freeze` conv layers of the model, each with its BatchNorm.

A frozen layer's weights get no gradient, and its BatchNorm stays in eval mode, so its running
statistics stay those the start checkpoint learnt on its own data: the early layers (edges, parts
of a face) carry over to new labels, and with no backward pass through them a step is cheaper.
"""

from __future__ import annotations

from torch import nn

from fer_optuna.errors import FerOptError


def conv_layers(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Each conv layer of the model in order, with the BatchNorm that follows it (if one does)."""
    modules = list(model.modules())
    pairs = []
    for i, m in enumerate(modules):
        if isinstance(m, nn.Conv2d):
            after = modules[i + 1] if i + 1 < len(modules) else None
            pairs.append((m, after if isinstance(after, nn.BatchNorm2d) else None))
    return pairs


def freeze(model: nn.Module, n: int, model_name: str) -> list[nn.Module]:
    """Freeze the first `n` conv layers and their BatchNorms; returns the BatchNorms to hold in eval mode."""
    layers = conv_layers(model)
    if n > len(layers):
        raise FerOptError(f"config field 'freeze' is {n}, but {model_name} has {len(layers)} conv layers; "
                          f"give 0 (nothing frozen) to {len(layers)} (every conv layer)")
    held = []
    for conv, bn in layers[:n]:
        conv.requires_grad_(False)
        if bn is not None:
            bn.requires_grad_(False)
            held.append(bn)
    return held


def hold(frozen: list[nn.Module]) -> None:
    """After model.train(): the frozen BatchNorms back in eval mode, so their running statistics stay."""
    for bn in frozen:
        bn.eval()
