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
    return Collate(dls.task)([dataset[i] for i in indices])


def _label(dls: DataLoaders, target: torch.Tensor) -> str:
    if dls.task == "classify" or dls.task == "siamese":
        return dls.classes[int(target)]
    if dls.task == "multilabel":
        names = [dls.classes[i] for i in torch.nonzero(target).flatten().tolist()]
        return ", ".join(names) if names else "(none)"
    if dls.task == "regress":
        names = dls.target_names or [str(i) for i in range(len(target))]
        return ", ".join(f"{n}={v:.3g}" for n, v in zip(names, target.tolist(), strict=False))
    return ""


def _as_picture(image: torch.Tensor):
    picture = image.permute(1, 2, 0).numpy()
    return picture[:, :, 0] if picture.shape[2] == 1 else picture[:, :, :3]


def show_batch(
    dls: DataLoaders, path: str | Path, split: str = "train", max_items: int = 16
) -> Path:
    """Write a PNG grid of up to `max_items` samples of `split` ("train" or "valid") to `path`.

    Classification shows the class (multi-label: every label; regression: the targets) under each
    image; segmentation overlays each mask in colour with a legend of the codes; Siamese shows each
    pair side by side with "same" or "different". Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    images, targets = _sample_batch(dls, split, max_items)
    count = len(targets)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    width = 6.0 if dls.task == "siamese" else 3.0
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, 3.3 * rows), squeeze=False)
    colours = plt.get_cmap("tab20")
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        gray = {"cmap": "gray", "vmin": 0, "vmax": 1} if dls.in_channels == 1 else {}
        if dls.task == "siamese":
            pair = torch.cat([images[0][k], images[1][k]], dim=2)
            ax.imshow(_as_picture(pair), **gray)
        else:
            ax.imshow(_as_picture(images[k]), **gray)
        if dls.task == "segment":
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
            ax.set_title(_label(dls, targets[k]), fontsize=9, y=-0.12)
    if dls.task == "segment":
        handles = [
            Patch(color=colours(i % 20), label=f"{i} {name}") for i, name in enumerate(dls.classes)
        ]
        figure.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    figure.tight_layout(rect=(0, 0.06 if dls.task == "segment" else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
