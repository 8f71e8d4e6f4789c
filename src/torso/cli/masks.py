"""`torso predict` for a segmentation run: palette mask PNGs, overlays and a CSV of class shares.

Not a command of its own: `torso.cli.predict` hands segmentation runs to `write_mask_predictions`.
For each image `photo.jpg` the output folder receives `photo_mask.png` (a palette PNG whose pixel
values are the class ids, at the image's own size) and `photo_overlay.png` (the image with the
classes' colours blended in), and `predictions.csv` gets one row: the file and the share of its
pixels given to each class.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

#: Weight of the class colour in an overlay pixel.
OVERLAY_ALPHA = 0.45
CSV_NAME = "predictions.csv"


def overlay_image(image: Image.Image, mask: np.ndarray, num_classes: int) -> Image.Image:
    """`image` with the palette colour of each pixel's class blended in (void pixels unchanged).

    mask: class ids `(H, W)` at the image's size, 255 for void.
    """
    from torso.tools.plots import VOID, palette

    picture = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = palette(num_classes).astype(np.float32)
    void = mask == VOID
    tint = colours[np.where(void, 0, mask)]
    blended = (1 - OVERLAY_ALPHA) * picture + OVERLAY_ALPHA * tint
    result = np.where(void[..., None], picture, blended)
    return Image.fromarray(np.clip(np.round(result), 0, 255).astype(np.uint8), mode="RGB")


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems for the outputs, made unique when two inputs share one (`a/x.png`, `b/x.png`)."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}-{count + 1}")
    return stems


def write_mask_predictions(
    model: torch.nn.Module,
    config: dict[str, Any],
    paths: list[Path],
    out: str | Path,
    *,
    tta: bool = False,
    batch_size: int = 16,
    device: str | None = None,
) -> Path:
    """Predict `paths` with a segmentation model and write masks, overlays and the CSV into the
    folder `out`; returns the CSV's path."""
    from torso.data.decode import read_pil
    from torso.errors import TorsoError
    from torso.tasks.segment import predict_masks
    from torso.tools.plots import mask_to_image
    from torso.train.checkpoint import atomic_write

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise TorsoError(f"--out '{folder}': a segmentation run writes a folder of masks")
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = int(config["num_outputs"])
    classes = config.get("classes") or [str(index) for index in range(num_classes)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "mask", *classes])
    stems = _unique_stems(paths)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        masks = predict_masks(model, config, chunk, tta=tta, batch_size=batch_size, device=device)
        for path, stem, mask in zip(chunk, stems[start : start + len(chunk)], masks, strict=True):
            values = mask.numpy()
            mask_file = folder / f"{stem}_mask.png"
            mask_to_image(values, num_classes).save(mask_file)
            overlay_image(read_pil(path), values, num_classes).save(folder / f"{stem}_overlay.png")
            counts = np.bincount(values.reshape(-1), minlength=256)[:num_classes]
            total = max(int(counts.sum()), 1)
            writer.writerow(
                [str(path), mask_file.name, *(f"{count / total:.6f}" for count in counts)]
            )
    csv_path = folder / CSV_NAME
    atomic_write(csv_path, buffer.getvalue().encode())
    return csv_path
