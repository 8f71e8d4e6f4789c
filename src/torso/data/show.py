"""`show_batch`: a PNG grid of a batch, labels under the images, masks overlaid with a legend."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from torso.data.loaders import Collate, DataLoaders

_MASK_ALPHA = 0.45


def _sample_batch(dls: DataLoaders, split: str, count: int):
    """The first `count` samples of `split` in the current epoch's order, without iterating
    the loader (which would advance its epoch)."""
    loader = dls.train if split == "train" else dls.valid
    dataset = loader.dataset
    if split == "train":
        dataset.epoch = loader.next_epoch
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(loader.next_epoch)
    indices = list(loader.sampler)[:count]
    if not indices:
        raise ValueError(f"the {split} set is empty")
    return Collate(dls.layout.pairs)([dataset[i] for i in indices])


def _as_picture(image: torch.Tensor):
    picture = image.permute(1, 2, 0).numpy()
    return picture[:, :, 0] if picture.shape[2] == 1 else picture[:, :, :3]


def show_batch(
    dls: DataLoaders, path: str | Path, split: str = "train", max_items: int = 16
) -> Path:
    """Write a PNG grid of up to `max_items` samples of `split` ("train" or "valid") to `path`.

    Each image gets its caption from the data layout's targets (the class; every label; the
    numbers); masks are overlaid in colour with a legend of the codes; pairs are shown side by
    side with "same" or "different". Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    images, targets = _sample_batch(dls, split, max_items)
    pairs, masks = dls.layout.pairs, dls.layout.targets.masks
    count = len(targets)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    width = 6.0 if pairs else 3.0
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, 3.3 * rows), squeeze=False)
    colours = plt.get_cmap("tab20")
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        gray = {"cmap": "gray", "vmin": 0, "vmax": 1} if dls.in_channels == 1 else {}
        if pairs:
            pair = torch.cat([images[0][k], images[1][k]], dim=2)
            ax.imshow(_as_picture(pair), **gray)
        else:
            ax.imshow(_as_picture(images[k]), **gray)
        if masks:
            mask = targets[k].clone().float()
            mask[targets[k] == dls.ignore_index] = float("nan")
            palette = ListedColormap([colours(i % 20) for i in range(len(dls.classes))])
            ax.imshow(
                mask.numpy(),
                cmap=palette,
                vmin=-0.5,
                vmax=len(dls.classes) - 0.5,
                alpha=_MASK_ALPHA,
                interpolation="nearest",
            )
        else:
            caption = dls.layout.targets.caption(targets[k], dls.classes, dls.target_names)
            ax.set_title(caption, fontsize=9, y=-0.12)
    if masks:
        handles = [
            Patch(color=colours(i % 20), label=f"{i} {name}") for i, name in enumerate(dls.classes)
        ]
        figure.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    figure.tight_layout(rect=(0, 0.06 if masks else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
