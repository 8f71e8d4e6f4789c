"""`torso interpret`: what drove a model's answer for image files, as heat maps over the images.

For each image `photo.jpg` the class activation map (`Predictor.explain`, Grad-CAM) is brought
back to the image's own size (undoing the run's resize), drawn over the image
(`torso.plots.heatmap_image`) and written as `photo_cam.png`; `interpret.json` lists, per
image, the file, the model's prediction, the class explained and its probability, and the
overlay's name.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from torso.errors import TorsoError
from torso.files import atomic_write, unique_stems
from torso.plots import HEATMAP_ALPHA, heatmap_image
from torso.predictor import Predictor

#: The index `interpret_files` writes next to the overlays.
INDEX = "interpret.json"


def interpret_files(
    predictor: Predictor,
    paths: Sequence[Path],
    out: str | Path,
    *,
    target: int | str | None = None,
    alpha: float = HEATMAP_ALPHA,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Write `out/<stem>_cam.png` for each image file of `paths` and `out/interpret.json`;
    returns the index's records.

    target: the class to explain in every image (index or name); default: the class the
    model gives the highest probability (its prediction for a classifier). A record is
    `{"file", "prediction", "explained", "probability", "overlay"}`: the task's prediction,
    the class whose map is drawn and the model's probability of it, the overlay's file name.
    A task without class activation maps raises `NotExplainableError` before anything is
    written.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise TorsoError(f"--out '{folder}' is a file: give a folder for the heat maps")
    stems = unique_stems(paths)
    records: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        records.extend(
            _interpret_chunk(
                predictor, chunk, stems[start : start + batch_size], folder, target, alpha
            )
        )
    atomic_write(folder / INDEX, json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    return records


def explain_images(
    predictor: Predictor,
    images: Sequence[Image.Image],
    *,
    target: int | str | None = None,
    alpha: float = HEATMAP_ALPHA,
) -> list[tuple[Image.Image, dict[str, Any]]]:
    """Each PIL image (as decoded, e.g. by `torso.data.decode.read_pil`) with its class
    activation map drawn over it at its own size, and `{"prediction", "explained",
    "probability"}` (see `interpret_files`). A task without maps: `NotExplainableError`."""
    from torso.data.decode import convert_mode, image_to_tensor
    from torso.data.transforms import undo_resize_square

    config = predictor.config
    tensors = [image_to_tensor(convert_mode(image, config.in_channels)) for image in images]
    maps = predictor.explain(tensors, target=target, batch_size=len(tensors))
    activations = predictor.activations(tensors, batch_size=len(tensors))
    names = config.class_names()
    if target is None:  # explain's default: the class of highest probability
        indices = activations.argmax(dim=1).tolist()
    else:
        indices = [names.index(target) if isinstance(target, str) else int(target)] * len(images)
    described = predictor.task.describe(activations, names)
    results = []
    for i, image in enumerate(images):
        heat = undo_resize_square(
            maps[i], image.height, image.width, config.resize, fill=0.0, mode="bilinear"
        )
        record = {
            "prediction": described[i].get("prediction"),
            "explained": names[indices[i]],
            "probability": round(float(activations[i, indices[i]]), 6),
        }
        results.append((heatmap_image(image, heat.clamp(0, 1), alpha), record))
    return results


def _interpret_chunk(
    predictor: Predictor,
    paths: list[Path],
    stems: list[str],
    folder: Path,
    target: int | str | None,
    alpha: float,
) -> list[dict[str, Any]]:
    from torso.data.decode import converted, read_pil

    config = predictor.config
    # Decoded and converted as prediction reads a file (an unreadable one names its path).
    originals = [converted(read_pil(path), config.in_channels, path) for path in paths]
    # Everything is measured before anything is written: a task without maps refuses first.
    drawn = explain_images(predictor, originals, target=target, alpha=alpha)
    records = []
    for path, stem, (overlay, record) in zip(paths, stems, drawn, strict=True):
        _save_png(overlay, folder / f"{stem}_cam.png")
        records.append({"file": str(path), **record, "overlay": f"{stem}_cam.png"})
    return records


def _save_png(image: Any, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
