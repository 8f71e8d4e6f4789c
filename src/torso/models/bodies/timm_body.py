"""Bodies from timm backbones, using timm's own metadata.

Channels and strides come from `feature_info`, stats from `pretrained_cfg`, parameter groups from
`group_matcher`, and the multi-scale maps from `forward_intermediates`, so no table of ours has to
follow timm's thousand architectures.
"""

from __future__ import annotations

import timm
import torch
from timm.models import group_parameters
from torch import nn

from torso.models.bodies.body import Body, Stats, split_in_two

# Transformers have one map per block, all at the same stride; a decoder wants a few of them.
TRANSFORMER_STAGES = 4


def create_timm_backbone(name: str, in_channels: int = 3) -> nn.Module:
    """A timm model without classifier or pooling, taking images of any size where it can."""
    model = timm.create_model(
        name, pretrained=False, num_classes=0, global_pool="", in_chans=in_channels
    )
    if getattr(model, "dynamic_img_size", None) is False:
        # Vision transformers fix their input size unless asked not to.
        model = timm.create_model(
            name,
            pretrained=False,
            num_classes=0,
            global_pool="",
            in_chans=in_channels,
            dynamic_img_size=True,
        )
    return model


def timm_stats(model: nn.Module) -> Stats | None:
    """`(mean, std)` from the model's pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        return None
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


@torch.no_grad()
def _final_channels(model: nn.Module, in_channels: int) -> int:
    """Channels `forward_features` returns (`num_features` may count a head's conv instead)."""
    was_training = model.training
    model.eval()
    try:
        size = max(64, *getattr(model, "pretrained_cfg", {}).get("min_input_size", (0, 0, 0))[1:])
        return int(model.forward_features(torch.zeros(1, in_channels, size, size)).shape[1])
    finally:
        model.train(was_training)


class TimmBody(Body):
    """A timm model as a body: `forward_intermediates` gives the stage maps.

    For convolutional networks the deepest map is the output of `forward_features` (so, e.g.,
    EfficientNet's 1280-channel `conv_head` is part of the body, as fastai's timm bodies have it);
    for transformers the tokens of four evenly spaced blocks, final-normed and reshaped to maps.
    """

    def __init__(self, model: nn.Module, *, name: str, in_channels: int, stats: Stats | None):
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
            raise TypeError(
                f"timm model {name!r} has no forward_intermediates; create it with "
                "features_only=True and pass the module to create_body instead"
            )
        info = list(model.feature_info)
        reductions = [int(entry["reduction"]) for entry in info]
        tokens = len(set(reductions)) == 1 and len(info) > TRANSFORMER_STAGES
        if tokens:
            count = len(info)
            indices = [count * (k + 1) // TRANSFORMER_STAGES - 1 for k in range(TRANSFORMER_STAGES)]
        else:
            indices = list(range(len(info)))
        channels = [int(info[i]["num_chs"]) for i in indices]
        if not tokens:
            channels[-1] = _final_channels(model, in_channels)
        super().__init__(
            name,
            in_channels,
            stats,
            channels,
            [reductions[i] for i in indices],
            [str(info[i]["module"]) for i in indices],
        )
        self.model = model
        self.indices = indices
        self.tokens = tokens
        self.dropped = self._drop_unused_modules()

    def _drop_unused_modules(self) -> list[str]:
        """Replace the modules the body never runs by `nn.Identity`; return their names.

        A timm model without classifier still holds parts of its head, e.g. ConvNeXt's
        `head.norm` or MobileNetV3's `conv_head`, which `forward_features` does not use. Left in,
        they would never train and DDP would have to search for unused parameters every step.
        One backward pass in eval mode (running statistics untouched) finds them.
        """
        was_training = self.training
        self.eval()
        size = max(
            64, *getattr(self.model, "pretrained_cfg", {}).get("min_input_size", (0, 0, 0))[1:]
        )
        try:
            # Gradients are the probe, so they are on even when the caller builds the body
            # inside `torch.no_grad()`.
            with torch.enable_grad():
                maps = self.features(torch.zeros(1, self.in_channels, size, size))
                torch.stack([m.float().sum() for m in maps]).sum().backward()
            unused = {
                name.rsplit(".", 1)[0]
                for name, p in self.model.named_parameters()
                if p.grad is None and "." in name
            }
            used = {
                name.rsplit(".", 1)[0]
                for name, p in self.model.named_parameters()
                if p.grad is not None
            }
        finally:
            for parameter in self.model.parameters():
                parameter.grad = None
            self.train(was_training)
        dropped: list[str] = []
        for path in sorted(unused - used, key=len):
            if any(path.startswith(done + ".") for done in dropped):
                continue
            self.model.set_submodule(path, nn.Identity())
            dropped.append(path)
        return dropped

    @property
    def trunk(self) -> nn.Module:
        return self.model

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.normalize(images)
        if self.tokens:
            return self.model.forward_intermediates(
                x, indices=self.indices, norm=True, output_fmt="NCHW", intermediates_only=True
            )
        final, maps = self.model.forward_intermediates(x, indices=self.indices)
        return [*maps[:-1], final]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return self.features(images)[-1]
        return self.model.forward_features(self.normalize(images))

    def groups(self) -> list[list[nn.Parameter]]:
        named = dict(self.model.named_parameters())
        matcher = getattr(self.model, "group_matcher", None)
        if matcher is None:
            ordered = [[p] for p in named.values()]
        else:
            grouped = group_parameters(self.model, matcher(coarse=True))
            ordered = [[named[n] for n in grouped[key]] for key in sorted(grouped)]
        split = split_in_two(len(ordered))
        early = [p for group in ordered[:split] for p in group]
        late = [p for group in ordered[split:] for p in group]
        return [group for group in (early, late) if group]
