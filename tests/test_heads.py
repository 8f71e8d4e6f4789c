"""create_head reproduces fastai's create_head: layout and parameter counts (fastai 2.8.12)."""

import pytest
import torch
from torch import nn

from torso.models.heads import AdaptiveConcatPool2d, SigmoidRange, create_head


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("in_features", "num_outputs", "expected"),
    [(512, 10, 532_480), (512, 37, 546_304), (2048, 37, 2_125_312), (20, 2, 22_608)],
)
def test_parameter_counts_match_fastai(in_features, num_outputs, expected):
    assert count(create_head(in_features, num_outputs)) == expected


def test_default_layout():
    head = create_head(512, 10)
    kinds = [type(m) for m in head]
    assert kinds == [
        AdaptiveConcatPool2d,
        nn.Flatten,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
    ]
    assert [head[3].p, head[7].p] == [0.25, 0.5]
    assert head[2].num_features == 1024
    assert head[4].bias is None and head[8].bias is None
    assert head(torch.rand(4, 512, 7, 7)).shape == (4, 10)


def test_concat_pool_is_max_then_average():
    x = torch.rand(2, 3, 5, 5)
    pooled = AdaptiveConcatPool2d()(x).flatten(1)
    torch.testing.assert_close(pooled[:, :3], x.amax(dim=(2, 3)))
    torch.testing.assert_close(pooled[:, 3:], x.mean(dim=(2, 3)))


def test_average_pool_does_not_double_the_width():
    head = create_head(512, 10, concat_pool=False)
    assert head[2].num_features == 512
    assert count(head) == 2 * 512 + 512 * 512 + 2 * 512 + 512 * 10


def test_options():
    head = create_head(64, 3, hidden=[32, 16], dropout=0.4, bn_final=True, y_range=(-1, 2))
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 32), (32, 16), (16, 3)]
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.4]
    assert isinstance(head[-2], nn.BatchNorm1d) and isinstance(head[-1], SigmoidRange)
    out = head.eval()(torch.randn(5, 64, 2, 2) * 100)
    assert out.min() >= -1 and out.max() <= 2
    assert out.max() - out.min() > 2.5  # large inputs reach both ends of the range


def test_lin_first_and_no_pool():
    head = create_head(20, 2, lin_first=True, pool=False)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert head[-1].bias is not None
    assert head(torch.rand(3, 20)).shape == (3, 2)


def test_first_bn_off():
    head = create_head(512, 10, first_bn=False)
    assert type(head[2]) is nn.Dropout
