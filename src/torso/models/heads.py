"""Classification heads: pooled body features → outputs, with fastai's defaults.

`create_head` reproduces fastai's `create_head` layer for layer (so parameter counts and results
compare), with clearer argument names: `in_features`↔`nf`, `num_outputs`↔`n_out`,
`hidden`↔`lin_ftrs`, `dropout`↔`ps`, `concat_pool`, `first_bn`, `bn_final`, `lin_first`,
`y_range`, `pool`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AdaptiveConcatPool2d(nn.Module):
    """`cat([max_pool, avg_pool], dim=1)` to `output_size`: twice the channels.

    Max first, as fastai has it (timm's "catavgmax" is avg first: weights don't carry over).
    """

    def __init__(self, output_size: int = 1) -> None:
        super().__init__()
        self.max = nn.AdaptiveMaxPool2d(output_size)
        self.avg = nn.AdaptiveAvgPool2d(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], dim=1)


class SigmoidRange(nn.Module):
    """`sigmoid(x) * (high - low) + low`: outputs kept inside (low, high)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = float(low), float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * (self.high - self.low) + self.low

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


def linear_block(
    in_features: int,
    out_features: int,
    *,
    batch_norm: bool,
    dropout: float,
    activation: nn.Module | None,
    linear_first: bool,
) -> list[nn.Module]:
    """fastai's LinBnDrop: [BatchNorm1d, Dropout, Linear, act], or [Linear, act, BN, Dropout].

    The Linear has no bias when a BatchNorm follows or precedes it.
    """
    norm = [nn.BatchNorm1d(out_features if linear_first else in_features)] if batch_norm else []
    drop = [nn.Dropout(dropout)] if dropout else []
    linear = [nn.Linear(in_features, out_features, bias=not batch_norm)]
    act = [activation] if activation is not None else []
    if linear_first:
        return [*linear, *act, *norm, *drop]
    return [*norm, *drop, *linear, *act]


def create_head(
    in_features: int,
    num_outputs: int,
    *,
    hidden: Sequence[int] | None = None,
    dropout: float | Sequence[float] = 0.5,
    pool: bool = True,
    concat_pool: bool = True,
    first_bn: bool = True,
    bn_final: bool = False,
    lin_first: bool = False,
    y_range: tuple[float, float] | None = None,
) -> nn.Sequential:
    """A head from a `(N, in_features, h, w)` feature map (or `(N, in_features)` with pool=False)
    to `(N, num_outputs)`.

    Layout by default (fastai's): AdaptiveConcatPool2d → Flatten → BatchNorm1d(2·in) →
    Dropout(p/2) → Linear(2·in, 512) → ReLU → BatchNorm1d(512) → Dropout(p) → Linear(512, out).
    hidden: widths of the hidden layers (default [512]); dropout: one value p (hidden blocks get
    p/2, the last p) or one per block; pool: False for features that are already pooled;
    concat_pool: max and average pooling side by side (doubles the width) instead of average;
    first_bn: BatchNorm before the first Linear; bn_final: BatchNorm1d on the outputs;
    lin_first: Linear before BatchNorm/Dropout in each block; y_range: (low, high) squashes the
    outputs into that range by a scaled sigmoid.
    """
    if pool and concat_pool:
        in_features *= 2
    widths = [in_features, *(hidden if hidden is not None else [512]), num_outputs]
    batch_norms = [first_bn] + [True] * (len(widths) - 2)
    if isinstance(dropout, (int, float)):
        dropouts = [dropout / 2] * (len(widths) - 2) + [dropout]
    else:
        dropouts = list(dropout)
    activations: list[nn.Module | None] = [nn.ReLU(inplace=True) for _ in widths[1:-1]] + [None]
    layers: list[nn.Module] = []
    if pool:
        layers += [AdaptiveConcatPool2d() if concat_pool else nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if lin_first:
        layers.append(nn.Dropout(dropouts.pop(0)))
    for n_in, n_out, bn, p, act in zip(
        widths[:-1], widths[1:], batch_norms, dropouts, activations, strict=False
    ):
        layers += linear_block(
            n_in, n_out, batch_norm=bn, dropout=p, activation=act, linear_first=lin_first
        )
    if lin_first:
        layers.append(nn.Linear(widths[-2], num_outputs))
    if bn_final:
        layers.append(nn.BatchNorm1d(widths[-1], momentum=0.01))
    if y_range is not None:
        layers.append(SigmoidRange(*y_range))
    head = nn.Sequential(*layers)
    init_head(head)
    return head


def init_head(head: nn.Module) -> None:
    """fastai's init: Kaiming-normal Linear weights, zero biases; norm weight 1, bias 1e-3."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.constant_(module.bias, 1e-3)
