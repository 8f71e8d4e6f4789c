"""What a model is made of: the input, each body stage, the cut, each head layer, the groups.

`summarize(model)` returns a plain `ModelSummary`; `render(summary)` turns it into a rich table
(what `torso summary` prints).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from torso.models import body_and_head, is_norm_layer, param_groups
from torso.models.bodies import Body


@dataclass(frozen=True)
class Row:
    """One line of the table: a body stage, the cut, or a head layer."""

    section: str  # "input", "body", "cut", "head"
    name: str
    shape: tuple[int, ...]  # output shape without the batch dimension
    parameters: int


@dataclass(frozen=True)
class Group:
    """A parameter group: its size and how much of it trains while the body is frozen."""

    index: int
    name: str
    parameters: int
    trainable_when_frozen: int


@dataclass(frozen=True)
class ModelSummary:
    backbone: str
    rows: list[Row]
    groups: list[Group]
    total: int
    body: int
    head: int
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def stage_parameters(body: Body) -> list[int]:
    """Parameters each stage adds: everything registered after the previous stage, up to this one.

    The last stage also takes what follows it (e.g. EfficientNet's conv_head, a ViT's final norm).
    """
    trunk = body.trunk
    modules = list(trunk.named_modules())
    position = {name: i for i, (name, _) in enumerate(modules)}
    ends = []
    for name in body.stage_names:
        start = position[name]
        ends.append(start + len(list(trunk.get_submodule(name).modules())) - 1)
    counts = [0] * len(ends)
    for i, (_, module) in enumerate(modules):
        own = sum(p.numel() for p in module.parameters(recurse=False))
        stage = next((k for k, end in enumerate(ends) if i <= end), len(ends) - 1)
        counts[stage] += own
    return counts


def summarize(model: nn.Module, size: int | tuple[int, int] = 224) -> ModelSummary:
    """Shapes and parameter counts of a body + head model (`model.body` a Body) for one `size`
    input.

    A head that takes the body's final map has its layers run one by one on it, so each row
    shows what that layer really produces; a head that takes every stage (a model whose
    `head_takes_features` is true: the U-Nets) is shown by `summarize_segmentation`.
    """
    if getattr(model, "head_takes_features", False):
        return summarize_segmentation(model, size)
    if getattr(model, "head_takes_pyramid", False):
        return summarize_detection(model, size)

    def head_rows(head: nn.Module, images: torch.Tensor, maps: list[torch.Tensor]) -> list[Row]:
        rows, x = [], maps[-1]
        for index, layer in enumerate(head if isinstance(head, nn.Sequential) else [head]):
            x = layer(x)
            rows.append(
                Row("head", f"{index}: {type(layer).__name__}", tuple(x.shape[1:]), _count(layer))
            )
        return rows

    return _summarize(model, size, head_rows)


def summarize_segmentation(model: nn.Module, size: int | tuple[int, int] = 224) -> ModelSummary:
    """Like `summarize` for segmentation models (`DynamicUnet`, `UNet2015`) whose head, the
    decoder, takes `(image, body.features(image))`: body stages with shapes, then the decoder's
    parts with their parameters and the output shape."""

    def decoder_rows(decoder: nn.Module, images: torch.Tensor, maps: list[torch.Tensor]):
        rows = [
            Row("decoder", name, (), _count(part))
            for name, part in decoder.named_children()
            if _count(part)
        ]
        output = decoder(images, maps)
        return [*rows, Row("output", "class scores", tuple(output.shape[1:]), 0)]

    return _summarize(model, size, decoder_rows)


def summarize_detection(model: nn.Module, size: int | tuple[int, int] = 224) -> ModelSummary:
    """Like `summarize` for detection models (`torso.models.detection.DetectionModel`): body
    stages, then each level of the feature pyramid built on the last stages, then the
    detector head's parameters."""

    def pyramid_rows(head: nn.Module, images: torch.Tensor, maps: list[torch.Tensor]):
        levels = head.backbone(maps[-3:])
        rows = [
            Row("pyramid", f"level {name}", tuple(level.shape[1:]), 0)
            for name, level in levels.items()
        ]
        rows.insert(0, Row("pyramid", type(head.backbone).__name__, (), _count(head.backbone)))
        name = type(head).__name__
        return [*rows, Row("head", f"{name} head", (), _count(head) - _count(head.backbone))]

    return _summarize(model, size, pyramid_rows)


@torch.no_grad()
def _summarize(model: nn.Module, size: int | tuple[int, int], second_part) -> ModelSummary:
    """Input and body rows, the cut, then `second_part(model.head, images, maps)`'s rows."""
    body, head = body_and_head(model)
    if not isinstance(body, Body):
        raise TypeError(f"torso summary needs a Body as model.body, not {type(body).__name__}")
    height, width = (size, size) if isinstance(size, int) else size
    was_training = model.training
    model.eval()
    try:
        images = torch.zeros(1, body.in_channels, height, width)
        rows = [Row("input", "image", tuple(images.shape[1:]), 0)]
        maps = body.features(images)
        for name, fmap, count in zip(body.stage_names, maps, stage_parameters(body), strict=True):
            rows.append(Row("body", name, tuple(fmap.shape[1:]), count))
        rows.append(Row("cut", f"cut: {body.name} ends here", tuple(maps[-1].shape[1:]), 0))
        rows += second_part(head, images, maps)
    finally:
        model.train(was_training)
    return ModelSummary(
        backbone=body.name,
        rows=rows,
        groups=describe_groups(model),
        total=_count(model),
        body=_count(body),
        head=_count(head),
    )


def describe_groups(model: nn.Module) -> list[Group]:
    """The parameter groups with their sizes and what trains when the body is frozen (train_bn)."""
    groups = param_groups(model)
    norm = {id(p) for m in model.modules() if is_norm_layer(m) for p in m.parameters()}
    described = []
    for index, group in enumerate(groups):
        last = index == len(groups) - 1
        if last or len(groups) == 2:
            name = "head" if last else "body"
        else:
            name = "body (early)" if index == 0 else "body (late)"
        frozen = sum(p.numel() for p in group if last or id(p) in norm)
        described.append(Group(index, name, sum(p.numel() for p in group), frozen))
    return described


def render(summary: ModelSummary, console: Console | None = None) -> None:
    """Print the summary as two rich tables: layers with shapes, then parameter groups."""
    console = console or Console()
    table = Table(title=f"{summary.backbone}: body + head", title_justify="left")
    head_name = "decoder" if any(row.section == "decoder" for row in summary.rows) else "head"
    table.add_column("part")
    table.add_column("layer")
    table.add_column("output shape", justify="right")
    table.add_column("parameters", justify="right")
    for row in summary.rows:
        style = "bold yellow" if row.section == "cut" else None
        shape = "×".join(str(s) for s in row.shape) or "-"
        table.add_row(row.section, row.name, shape, f"{row.parameters:,}", style=style)
    table.add_section()
    table.add_row("total", "", "", f"{summary.total:,}", style="bold")
    table.add_row("", "body", "", f"{summary.body:,}")
    table.add_row("", head_name, "", f"{summary.head:,}")
    console.print(table)
    groups = Table(title="parameter groups (discriminative learning rates)", title_justify="left")
    groups.add_column("group")
    groups.add_column("parameters", justify="right")
    groups.add_column("trains when frozen", justify="right")
    groups.add_column("trains when unfrozen", justify="right")
    for group in summary.groups:
        groups.add_row(
            f"{group.index}: {group.name}",
            f"{group.parameters:,}",
            f"{group.trainable_when_frozen:,}",
            f"{group.parameters:,}",
        )
    console.print(groups)
    console.print(
        "Frozen (the default for a pretrained body): only the head trains, plus the body's "
        "normalisation layers (train_bn, as in fastai)."
    )


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
