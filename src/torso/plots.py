"""Plots and the HTML report of a run.

Every function here is a pure function of plain data (lists, dicts, numpy arrays or torch tensors):
the learner gathers the numbers, these functions draw them. Each plot is a PNG written atomically
to the path it is given, and its path is returned. `write_report` gathers a run's numbers and plots
into one self-contained `report.html` (images embedded as data URIs, inline CSS, nothing fetched).

Matplotlib is used through its object-oriented API with the Agg canvas, never through `pyplot`,
so nothing needs a display and no figure lingers in a global registry.

`palette(num_classes)` is the one colour table for class masks: the overlays drawn here and the
mask PNGs written by `mask_to_image` share it, so a class has the same colour everywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from torso.errors import TorsoError
from torso.files import atomic_write

VOID = 255
"""Mask value for pixels that belong to no class (ignored by losses and metrics)."""

# History keys that describe the run's bookkeeping rather than a metric worth a curve.
_BOOKKEEPING_KEYS = frozenset({"epoch", "step", "time", "seconds", "elapsed", "lr"})

#: Weight of the class colour in an overlay pixel (the rest is the image's grey level).
OVERLAY_ALPHA = 0.6
#: How much of a heat map shows over its image, and matplotlib's colour map for it.
HEATMAP_ALPHA = 0.5
HEATMAP_COLOURS = "jet"
_MAX_LABEL_CHARS = 24


# ---------------------------------------------------------------------------------------------
# Colours for class masks


def palette(num_classes: int) -> np.ndarray:
    """The colour of each class in masks and overlays, as a `(num_classes, 3)` uint8 RGB array.

    Class 0 is black (the usual background). Classes 1-10 take matplotlib's `tab10` colours and
    11-20 their lighter `tab20` partners, chosen to be told apart; further classes step the hue by
    the golden ratio. The table is fixed: class `i` has the same colour for any `num_classes > i`.
    The void value 255 is not a class: overlays leave it transparent and mask PNGs show it black
    and mark it transparent.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TorsoError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 1:
        raise TorsoError(f"num_classes must be at least 1, got {num_classes}")
    tab10 = matplotlib.colormaps["tab10"].colors
    tab20 = matplotlib.colormaps["tab20"].colors
    colours = [(0.0, 0.0, 0.0), *tab10, *tab20[1::2]]
    index = len(colours)
    while len(colours) < num_classes:
        hue = (index * 0.6180339887) % 1.0
        saturation = (0.9, 0.6)[index % 2]
        value = (0.95, 0.75, 0.55)[index % 3]
        colours.append(hsv_to_rgb((hue, saturation, value)))
        index += 1
    table = np.round(np.asarray(colours[:num_classes], dtype=np.float64) * 255)
    return table.astype(np.uint8)


def mask_to_image(mask: Any, num_classes: int) -> Image.Image:
    """A class mask as a palette ("P" mode) PIL image, ready for `.save("mask.png")`.

    `mask` is `(H, W)` (or `(1, H, W)`) with integer class ids in `[0, num_classes)` or `VOID`.
    Pixel values stay the class ids, so the PNG reads back as the same mask; the colours come from
    `palette(num_classes)`, and `VOID` is black and marked transparent.
    """
    values = _class_ids(mask, "mask", num_classes)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise TorsoError(f"mask must have shape (H, W), got {tuple(values.shape)}")
    if num_classes > VOID:
        raise TorsoError(
            f"a mask PNG holds at most {VOID} classes besides void, got num_classes={num_classes}"
        )
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:num_classes] = palette(num_classes)
    image.putpalette(table.reshape(-1).tolist())
    image.info["transparency"] = VOID
    return image


# ---------------------------------------------------------------------------------------------
# Plots


def plot_losses(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    frozen_epochs: Collection[int] = (),
    best_epoch: int | None = None,
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """Loss curves (train and valid) and one panel per metric, over the epochs of `history`.

    `history` has one dict per epoch, e.g. `{"epoch": 0, "train_loss": 0.9, "valid_loss": 0.7,
    "accuracy": 0.8}`. Keys containing "loss" share the first panel; every other numeric key
    except bookkeeping (`epoch`, `step`, `time`, `seconds`, `elapsed`, `lr`) gets a panel of its
    own, since metrics differ in scale. A missing or `None` value leaves a gap. The x axis is
    `epoch` when every entry has it, else the entry's position. Every panel shades the
    `frozen_epochs` (epochs that trained the head only, "head only" in the loss panel's legend)
    and draws a dotted line at `best_epoch` (the epoch `best/` holds). Returns the PNG's path.
    """
    if isinstance(history, Mapping) or not isinstance(history, Sequence) or len(history) == 0:
        raise TorsoError("history must be a non-empty list with one dict per epoch")
    for position, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            raise TorsoError(f"history[{position}] must be a dict, got {type(entry).__name__}")
    keys: list[str] = []
    for entry in history:
        for key in entry:
            if key not in keys and key not in _BOOKKEEPING_KEYS:
                keys.append(key)
    series = {key: [_number_or_nan(entry.get(key)) for entry in history] for key in keys}
    series = {key: values for key, values in series.items() if not all(map(math.isnan, values))}
    if not series:
        raise TorsoError("history has no numeric values to plot (expected e.g. 'train_loss')")
    epochs = [_number_or_nan(entry.get("epoch")) for entry in history]
    if any(math.isnan(epoch) for epoch in epochs):
        epochs = list(range(len(history)))
    loss_keys = [key for key in series if "loss" in key.lower()]
    metric_keys = [key for key in series if key not in loss_keys]
    panels: list[list[str]] = ([loss_keys] if loss_keys else []) + [[key] for key in metric_keys]

    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    with _style():
        figure = Figure(figsize=(4.6 * columns, 3.4 * rows), layout="constrained")
        for number, panel in enumerate(panels):
            axes = figure.add_subplot(rows, columns, number + 1)
            for position, epoch in enumerate(sorted(set(frozen_epochs) & set(epochs))):
                label = "head only" if position == 0 else None
                axes.axvspan(epoch - 0.5, epoch + 0.5, color="tab:gray", alpha=0.15, label=label)
            if best_epoch is not None and best_epoch in epochs:
                axes.axvline(best_epoch, color="tab:green", linestyle=":", label="best")
            for key in panel:
                axes.plot(epochs, series[key], marker="o", markersize=3, label=key)
            axes.set_title("loss" if panel is loss_keys else panel[0])
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(alpha=0.3)
            if panel is loss_keys:
                axes.legend()
        return _save(figure, path)


def plot_lr_find(lrs: Any, losses: Any, suggestion: float | None, path: str | os.PathLike) -> Path:
    """The learning-rate finder's curve: loss against learning rate on a log axis.

    `lrs` and `losses` are 1-D, same length (at least 2), `lrs` positive. Non-finite losses (a
    run that diverged) are left out. `suggestion` (or `None`) is marked with a dashed line and a
    dot on the curve and written in the legend. The y axis stops a little above the loss where
    the descent began, so a final blow-up does not flatten the interesting part. Returns the
    PNG's path.
    """
    rates = _array(lrs, "lrs", ndim=1).astype(np.float64)
    values = _array(losses, "losses", ndim=1).astype(np.float64)
    if len(rates) != len(values):
        raise TorsoError(
            f"lrs and losses must have the same length, got {len(rates)} and {len(values)}"
        )
    if len(rates) < 2:
        raise TorsoError(f"lr_find needs at least 2 points to plot, got {len(rates)}")
    if not np.all(np.isfinite(rates)) or np.any(rates <= 0):
        raise TorsoError("lrs must be finite and positive to plot on a log axis")
    finite = np.isfinite(values)
    if not finite.any():
        raise TorsoError("losses are all non-finite (NaN or inf): the lr_find run diverged")
    if suggestion is not None:
        suggestion = float(suggestion)
        if not (math.isfinite(suggestion) and suggestion > 0):
            raise TorsoError(f"suggestion must be a positive learning rate, got {suggestion}")
    rates, values = rates[finite], values[finite]

    lowest = int(np.argmin(values))
    start = float(values[: lowest + 1].max())
    best = float(values[lowest])
    top = float(values.max())
    if start > best:
        top = min(top, start + 0.5 * (start - best))
    margin = 0.05 * (top - best) if top > best else 0.05 * abs(best) + 1e-3

    with _style():
        figure = Figure(figsize=(6.4, 4.2), layout="constrained")
        axes = figure.add_subplot()
        axes.plot(rates, values, color="tab:blue")
        axes.set_xscale("log")
        axes.set_ylim(best - margin, top + margin)
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        axes.set_title("learning-rate finder")
        axes.grid(alpha=0.3, which="both")
        if suggestion is not None:
            order = np.argsort(rates)
            at = float(np.interp(np.log(suggestion), np.log(rates[order]), values[order]))
            axes.axvline(suggestion, color="tab:red", linestyle="--", linewidth=1)
            axes.plot(
                [suggestion], [at], "o", color="tab:red", label=f"suggested: {suggestion:.2e}"
            )
            axes.legend()
        return _save(figure, path)


def confusion_matrix(targets: Any, predictions: Any, num_classes: int) -> Any:
    """`(K, K)` counts of class ids `(N,)` (torch tensors): row = actual, column = predicted."""
    import torch

    index = torch.as_tensor(targets).long() * num_classes + torch.as_tensor(predictions).long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def images_at(loader: Any, positions: list[int]) -> Any:
    """The input images at `positions` (in loader order) of a loader yielding `(images, y)`,
    as a float tensor `(len(positions), C, H, W)`; None if its inputs are not plain image
    batches."""
    import torch

    wanted = {position: slot for slot, position in enumerate(positions)}
    found: list[Any] = [None] * len(positions)
    offset = 0
    for x, _ in loader:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            return None
        for row in range(len(x)):
            if offset + row in wanted:
                found[wanted[offset + row]] = x[row].float().cpu()
        offset += len(x)
        if all(image is not None for image in found):
            break
    if any(image is None for image in found):
        return None
    return torch.stack(found)


def plot_confusion_matrix(matrix: Any, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """A confusion matrix as a grid of counts: rows are the actual classes, columns predicted.

    `matrix` is `(K, K)` with non-negative counts (integers or floats) and `K == len(class_names)`.
    Each cell shows its count and is shaded by it; the figure grows with `K` and the text shrinks,
    so it stays readable up to about 40 classes. The title gives the accuracy (diagonal / total).
    Returns the PNG's path.
    """
    counts = _array(matrix, "matrix", ndim=2).astype(np.float64)
    names = _names(class_names)
    size = len(names)
    if counts.shape != (size, size):
        raise TorsoError(
            f"matrix must be {size}x{size} for {size} class names, got shape {tuple(counts.shape)}"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise TorsoError("matrix must hold finite, non-negative counts")
    whole = bool(np.all(counts == np.round(counts)))
    total = counts.sum()
    accuracy = np.trace(counts) / total if total > 0 else float("nan")
    side = float(np.clip(2.5 + 0.36 * size, 5.0, 17.0))
    font = float(np.clip(170 / size, 5.5, 12))
    labels = [_label(name) for name in names]

    with _style():
        figure = Figure(figsize=(side + 1.2, side), layout="constrained")
        axes = figure.add_subplot()
        image = axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(counts.max(), 1))
        figure.colorbar(image, ax=axes, shrink=0.8)
        threshold = counts.max() / 2
        for row in range(size):
            for column in range(size):
                value = counts[row, column]
                text = f"{int(value)}" if whole else f"{value:.2g}"
                colour = "white" if value > threshold else "black"
                axes.text(column, row, text, ha="center", va="center", fontsize=font, color=colour)
        if size > 6:
            axes.set_xticks(range(size), labels, rotation=90, fontsize=min(font + 1, 11))
        else:
            axes.set_xticks(range(size), labels, rotation=45, ha="right", rotation_mode="anchor")
        axes.set_yticks(range(size), labels, fontsize=min(font + 1, 11) if size > 6 else None)
        axes.set_xlabel("predicted")
        axes.set_ylabel("actual")
        title = "confusion matrix"
        if total > 0:
            title += f" (accuracy {accuracy:.1%} of {int(total) if whole else total:g})"
        axes.set_title(title)
        return _save(figure, path)


def plot_top_losses(
    images: Any,
    actual: Any,
    predicted: Any,
    losses: Any,
    probabilities: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    maps: Any = None,
) -> Path:
    """The images a model got most wrong, each titled "predicted/actual / loss / probability".

    `images` is float `(N, C, H, W)` in `[0, 1]` with `C` 1 or 3; `actual` and `predicted` hold
    `N` class ids; `losses` `N` values; `probabilities` either `N` values (the probability of the
    predicted class) or `(N, K)` class probabilities, from which the predicted class's is taken.
    `maps`, when given: `(N, H, W)` in [0, 1], each image's class activation map, drawn over
    it (`heatmap_overlay`). The images are shown in decreasing order of loss; titles of wrong
    predictions are red. Returns the PNG's path.
    """
    pictures = _images(images, "images")
    heat = None if maps is None else _maps(maps, pictures.shape)
    count = len(pictures)
    names = _names(class_names)
    actual_ids = _class_ids(actual, "actual", len(names), allow_void=False)
    predicted_ids = _class_ids(predicted, "predicted", len(names), allow_void=False)
    loss_values = _array(losses, "losses", ndim=1).astype(np.float64)
    chances = _array(probabilities, "probabilities").astype(np.float64)
    for name, values in (("actual", actual_ids), ("predicted", predicted_ids)):
        if values.ndim != 1:
            raise TorsoError(f"{name} must be 1-D with one class id per image")
    for name, values in (
        ("actual", actual_ids),
        ("predicted", predicted_ids),
        ("losses", loss_values),
        ("probabilities", chances),
    ):
        if len(values) != count:
            raise TorsoError(f"{name} has {len(values)} entries but there are {count} images")
    if chances.ndim == 2:
        if chances.shape[1] != len(names):
            raise TorsoError(
                f"probabilities has {chances.shape[1]} columns but there are {len(names)} classes"
            )
        chances = chances[np.arange(count), predicted_ids]
    elif chances.ndim != 1:
        raise TorsoError(f"probabilities must be (N,) or (N, K), got {tuple(chances.shape)}")

    order = np.argsort(-loss_values, kind="stable")
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    height, width = pictures.shape[2:]
    cell = 2.8
    with _style():
        figure = Figure(
            figsize=(cell * columns, (cell * height / width + 0.45) * rows), layout="constrained"
        )
        for slot, index in enumerate(order):
            axes = figure.add_subplot(rows, columns, slot + 1)
            if heat is None:
                _show_image(axes, pictures[index])
            else:
                axes.imshow(heatmap_overlay(_rgb(pictures[index]), heat[index], HEATMAP_ALPHA))
                axes.set_axis_off()
            right = actual_ids[index] == predicted_ids[index]
            axes.set_title(
                f"{_label(names[predicted_ids[index]], 14)}/{_label(names[actual_ids[index]], 14)}"
                f" / {loss_values[index]:.2f} / {chances[index]:.2f}",
                fontsize=9,
                color="black" if right else "tab:red",
            )
        title = "top losses: predicted/actual / loss / probability"
        figure.suptitle(title + (" (heat: what drove the prediction)" if heat is not None else ""))
        return _save(figure, path)


def plot_segmentation(
    images: Any,
    truths: Any,
    predictions: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    notes: Sequence[str] | None = None,
) -> Path:
    """Image | truth | prediction side by side, one row per image, masks as colour overlays.

    `images` is float `(N, C, H, W)` in `[0, 1]` with `C` 1 or 3; `truths` and `predictions` are
    `(N, H, W)` (or `(N, 1, H, W)`) class ids in `[0, K)` with `K = len(class_names)`, or `VOID`
    (255) in the truths for pixels without a class, left transparent. Colours come from
    `palette(K)`; the legend lists the classes that appear. Each prediction's title gives its
    pixel accuracy over non-void pixels, and `notes[i]` when given (e.g. "Dice 0.42"). Returns
    the PNG's path.
    """
    pictures = _images(images, "images")
    names = _names(class_names)
    count, _, height, width = pictures.shape
    masks = {}
    for name, value in (("truths", truths), ("predictions", predictions)):
        ids = _class_ids(value, name, len(names))
        if ids.ndim == 4 and ids.shape[1] == 1:
            ids = ids[:, 0]
        if ids.shape != (count, height, width):
            raise TorsoError(
                f"{name} must have shape {(count, height, width)} to match the images, "
                f"got {tuple(ids.shape)}"
            )
        masks[name] = ids
    if notes is not None and len(notes) != count:
        raise TorsoError(f"notes has {len(notes)} entries but there are {count} images")
    colours = palette(len(names))
    present = sorted(
        int(value) for value in np.unique(np.concatenate([m.ravel() for m in masks.values()]))
    )

    cell = 3.0
    with _style():
        figure = Figure(
            figsize=(cell * 3, (cell * height / width + 0.4) * count + 0.6), layout="constrained"
        )
        grid = figure.subplots(count, 3, squeeze=False)
        for row in range(count):
            picture = _rgb(pictures[row])
            truth, prediction = masks["truths"][row], masks["predictions"][row]
            valid = truth != VOID
            accuracy = (prediction[valid] == truth[valid]).mean() if valid.any() else float("nan")
            measure = f"pixel acc {accuracy:.1%}" + (f", {notes[row]}" if notes else "")
            panels = (
                (picture, "image"),
                (overlay(picture, truth, colours), "truth"),
                (overlay(picture, prediction, colours), f"prediction ({measure})"),
            )
            for axes, (shown, title) in zip(grid[row], panels, strict=True):
                axes.imshow(shown, interpolation="nearest")
                axes.set_title(title, fontsize=10)
                axes.set_axis_off()
        handles = [
            Patch(facecolor=colours[value] / 255, edgecolor="gray", label=_label(names[value]))
            for value in present
            if value != VOID
        ]
        if VOID in present:
            handles.append(Patch(facecolor="none", edgecolor="gray", label="void (255)"))
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 6),
            frameon=False,
        )
        return _save(figure, path)


def plot_class_bars(
    values: Any, class_names: Sequence[str], path: str | os.PathLike, *, title: str, label: str
) -> Path:
    """One horizontal bar per class (e.g. each label's F1), the value written at its end.

    `values` holds one number per name (NaN: no bar); `label` names the axis, e.g. "F1".
    Returns the PNG's path.
    """
    numbers = _array(values, "values", ndim=1).astype(np.float64)
    names = _names(class_names)
    if len(numbers) != len(names):
        raise TorsoError(f"values has {len(numbers)} entries but there are {len(names)} names")
    with _style():
        figure = Figure(figsize=(6.4, 1.2 + 0.3 * len(names)), layout="constrained")
        axes = figure.add_subplot()
        rows = np.arange(len(names))
        shown = np.nan_to_num(numbers, nan=0.0)
        axes.barh(rows, shown, color="tab:blue")
        for row, value in zip(rows, numbers, strict=True):
            text = "n/a" if math.isnan(value) else f"{value:.3f}"
            axes.text(max(shown[row], 0) + 0.01, row, text, va="center", fontsize=8)
        axes.set_yticks(rows, [_label(name) for name in names])
        axes.invert_yaxis()
        axes.set_xlim(0, max(1.0, float(shown.max(initial=0)) * 1.15))
        axes.set_xlabel(label)
        axes.set_title(title)
        axes.grid(alpha=0.3, axis="x")
        return _save(figure, path)


def plot_threshold_curve(
    thresholds: Any, scores: Any, chosen: float, path: str | os.PathLike, *, label: str = "F1"
) -> Path:
    """A score (e.g. micro F1) against the decision threshold; the run's threshold `chosen` and
    the best one are marked. Returns the PNG's path."""
    xs = _array(thresholds, "thresholds", ndim=1).astype(np.float64)
    ys = _array(scores, "scores", ndim=1).astype(np.float64)
    if len(xs) != len(ys) or len(xs) < 2:
        raise TorsoError("thresholds and scores must have the same length, at least 2")
    best = int(np.nanargmax(ys))
    with _style():
        figure = Figure(figsize=(6.4, 4.2), layout="constrained")
        axes = figure.add_subplot()
        axes.plot(xs, ys, color="tab:blue")
        axes.axvline(chosen, color="tab:red", linestyle="--", label=f"threshold {chosen:g}")
        axes.plot(
            [xs[best]], [ys[best]], "o", color="tab:green",
            label=f"best {ys[best]:.3f} at {xs[best]:.2f}",
        )  # fmt: skip
        axes.set_xlabel("threshold")
        axes.set_ylabel(label)
        axes.set_title(f"{label} against the threshold")
        axes.grid(alpha=0.3)
        axes.legend()
        return _save(figure, path)


def plot_predicted_vs_true(
    actual: Any, predicted: Any, names: Sequence[str], path: str | os.PathLike
) -> Path:
    """One scatter panel per target: predicted against true value, with the line y = x.

    `actual` and `predicted` are `(N,)` or `(N, T)` with `T == len(names)`. Each panel's title
    gives the mean absolute error. Returns the PNG's path.
    """
    truth = _array(actual, "actual").astype(np.float64).reshape(len(actual), -1)
    guess = _array(predicted, "predicted").astype(np.float64).reshape(len(predicted), -1)
    labels = _names(names)
    if truth.shape != guess.shape or truth.shape[1] != len(labels):
        raise TorsoError(
            f"actual {truth.shape} and predicted {guess.shape} must match, one column per name"
        )
    columns = min(len(labels), 3)
    rows = math.ceil(len(labels) / columns)
    with _style():
        figure = Figure(figsize=(4.2 * columns, 4.0 * rows), layout="constrained")
        for index, name in enumerate(labels):
            axes = figure.add_subplot(rows, columns, index + 1)
            x, y = truth[:, index], guess[:, index]
            axes.scatter(x, y, s=12, alpha=0.7, color="tab:blue")
            low = float(min(x.min(), y.min()))
            high = float(max(x.max(), y.max()))
            axes.plot([low, high], [low, high], color="tab:gray", linestyle="--", linewidth=1)
            axes.set_xlabel(f"true {_label(name)}")
            axes.set_ylabel(f"predicted {_label(name)}")
            axes.set_title(f"{_label(name)} (MAE {np.abs(x - y).mean():.3g})")
            axes.grid(alpha=0.3)
        return _save(figure, path)


def plot_pair_histogram(
    same_probabilities: Any, same: Any, path: str | os.PathLike, *, bins: int = 20
) -> Path:
    """Histograms of the predicted probability of "same" for the pairs that are the same and
    for those that are different: two well-separated humps mean a model that tells them apart.

    `same_probabilities` `(N,)` in [0, 1]; `same` `(N,)` of 1 (same) / 0 (different).
    Returns the PNG's path.
    """
    values = _array(same_probabilities, "same_probabilities", ndim=1).astype(np.float64)
    truth = _array(same, "same", ndim=1).astype(bool)
    if len(values) != len(truth):
        raise TorsoError(f"{len(values)} probabilities but {len(truth)} pair labels")
    edges = np.linspace(0, 1, bins + 1)
    with _style():
        figure = Figure(figsize=(6.4, 4.2), layout="constrained")
        axes = figure.add_subplot()
        for selected, name, colour in (
            (truth, "same", "tab:green"),
            (~truth, "different", "tab:red"),
        ):
            axes.hist(
                values[selected], bins=edges, alpha=0.6, color=colour,
                label=f"{name} pairs ({int(selected.sum())})",
            )  # fmt: skip
        axes.axvline(0.5, color="tab:gray", linestyle="--", linewidth=1)
        axes.set_xlabel('predicted probability of "same"')
        axes.set_ylabel("pairs")
        axes.set_title("same and different pairs")
        axes.legend()
        return _save(figure, path)


# ---------------------------------------------------------------------------------------------
# The HTML report

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th { background: #f4f4f4; }
td.key, th.key { text-align: left; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #555; }
pre { background: #f7f7f7; padding: .8rem; overflow-x: auto; font-size: .8rem; }
.meta { color: #666; font-size: .85rem; }
tr.best td { font-weight: bold; }
"""

_IMAGE_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def write_report(
    run_dir: str | os.PathLike,
    *,
    title: str,
    summary_text: str = "",
    metrics: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    images: Sequence[str | os.PathLike] = (),
    config: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    frozen_epochs: Collection[int] = (),
    best_epoch: int | None = None,
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """Write `run_dir/report.html`: one self-contained page about a run, and return its path.

    The page holds, each section only when there is something in it: the title, a table of the
    run's `settings` (what was trained how, on what, when and where: name → value), a table of
    the final `metrics`, a table of the `history` (one row per epoch, one column per key; with
    `frozen_epochs` or `best_epoch`, a last column notes "head only" and "best" for the rows
    whose `epoch` is one of them, and the best row is bold), each of `tables` (title → rows,
    one dict column → value a row: a task's per-class scores), every image
    of `images` (PNG, JPEG or GIF files, embedded as base64 data URIs and captioned by file name),
    the model summary `summary_text` as pre-formatted text, and the run `config` as JSON. Styles
    are inline and a Content-Security-Policy forbids fetching anything, so the file can be mailed
    or archived alone. Every piece of text is HTML-escaped. The file is written atomically.
    """
    directory = Path(run_dir)
    metrics = {} if metrics is None else metrics
    config = {} if config is None else config
    if not isinstance(metrics, Mapping):
        raise TorsoError(f"metrics must be a dict, got {type(metrics).__name__}")
    if not isinstance(config, Mapping):
        raise TorsoError(f"config must be a dict, got {type(config).__name__}")
    if isinstance(history, Mapping) or not isinstance(history, Sequence):
        raise TorsoError("history must be a list with one dict per epoch")
    for position, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            raise TorsoError(f"history[{position}] must be a dict, got {type(entry).__name__}")
    if isinstance(images, (str, os.PathLike)):
        raise TorsoError("images must be a list of image paths, not a single path")
    embedded = [(_caption(image), _data_uri(image)) for image in images]

    from torso.version import __version__

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{_escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_escape(title)}</h1>",
        f'<p class="meta">report written by torso {_escape(__version__)}</p>',
    ]
    if settings:
        parts.append("<h2>Run</h2>")
        parts.append('<table><tr><th class="key">setting</th><th>value</th></tr>')
        for key, value in settings.items():
            parts.append(f'<tr><td class="key">{_escape(key)}</td><td>{_cell(value)}</td></tr>')
        parts.append("</table>")
    if metrics:
        parts.append("<h2>Final metrics</h2>")
        parts.append('<table><tr><th class="key">metric</th><th>value</th></tr>')
        for key, value in metrics.items():
            parts.append(f'<tr><td class="key">{_escape(key)}</td><td>{_cell(value)}</td></tr>')
        parts.append("</table>")
    for caption, rows in (tables or {}).items():
        if rows:
            parts.append(f"<h2>{_escape(caption[:1].upper() + caption[1:])}</h2>")
            parts.append(_table(rows))
    if history:
        columns: list[str] = []
        for entry in history:
            columns.extend(str(key) for key in entry if str(key) not in columns)
        parts.append("<h2>History</h2>")
        parts.append('<div class="scroll"><table><tr>')
        parts.extend(f"<th>{_escape(column)}</th>" for column in columns)
        marked = bool(frozen_epochs) or best_epoch is not None
        if marked:
            parts.append('<th class="key">note</th>')
        parts.append("</tr>")
        for entry in history:
            by_name = {str(key): value for key, value in entry.items()}
            cells = "".join(f"<td>{_cell(by_name.get(column))}</td>" for column in columns)
            epoch = by_name.get("epoch")
            best = best_epoch is not None and epoch == best_epoch
            if marked:
                notes = ["head only"] if epoch in frozen_epochs else []
                notes += ["best"] if best else []
                cells += f'<td class="key">{_escape(", ".join(notes))}</td>'
            parts.append('<tr class="best">' + cells + "</tr>" if best else f"<tr>{cells}</tr>")
        parts.append("</table></div>")
    if embedded:
        parts.append("<h2>Plots</h2>")
        for caption, uri in embedded:
            parts.append(
                f'<figure><img src="{uri}" alt="{_escape(caption)}">'
                f"<figcaption>{_escape(caption)}</figcaption></figure>"
            )
    if summary_text:
        parts.append("<h2>Model summary</h2>")
        parts.append(f"<pre>{_escape(summary_text)}</pre>")
    if config:
        parts.append("<h2>Configuration</h2>")
        text = json.dumps(_plain(config), indent=2, ensure_ascii=False)
        parts.append(f"<pre>{_escape(text)}</pre>")
    parts.extend(["</body>", "</html>", ""])

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TorsoError(f"cannot create run folder '{directory}': {error.strerror}") from error
    target = directory / "report.html"
    atomic_write(target, "\n".join(parts))
    return target


# ---------------------------------------------------------------------------------------------
# Helpers


@contextmanager
def _style():
    with matplotlib.rc_context({"font.size": 10, "axes.titlesize": 11, "figure.dpi": 100}):
        yield


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise TorsoError(f"plot path '{target}' must end in .png")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TorsoError(f"cannot create folder '{target.parent}': {error.strerror}") from error
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    atomic_write(target, buffer.getvalue())
    return target


def _array(value: Any, name: str, ndim: int | None = None) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, on any device, in any dtype
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        value = value.numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TorsoError(f"{name} must be an array of numbers: {error}") from error
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise TorsoError(f"{name} must be an array of numbers, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise TorsoError(f"{name} must be {ndim}-D, got shape {tuple(array.shape)}")
    return array


def _images(value: Any, name: str) -> np.ndarray:
    pictures = _array(value, name).astype(np.float32)
    if pictures.ndim != 4 or pictures.shape[1] not in (1, 3):
        raise TorsoError(
            f"{name} must have shape (N, C, H, W) with C = 1 or 3, got {tuple(pictures.shape)}"
        )
    if len(pictures) == 0:
        raise TorsoError(f"{name} is empty: there is nothing to show")
    if not np.all(np.isfinite(pictures)):
        raise TorsoError(f"{name} contain NaN or infinite values")
    low, high = float(pictures.min()), float(pictures.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise TorsoError(
            f"{name} must have values in [0, 1], got [{low:.3g}, {high:.3g}] "
            "(pass images before normalisation)"
        )
    return np.clip(pictures, 0, 1)


def _maps(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Heat maps `(N, H, W)` in [0, 1] for the images of `shape` `(N, C, H, W)`."""
    maps = np.clip(_array(value, "maps").astype(np.float32), 0, 1)
    if maps.shape != (shape[0], *shape[2:]):
        raise TorsoError(
            f"maps must have shape (N, H, W) = {(shape[0], *shape[2:])}, got {tuple(maps.shape)}"
        )
    return maps


def _class_ids(value: Any, name: str, num_classes: int, allow_void: bool = True) -> np.ndarray:
    ids = _array(value, name)
    if not np.issubdtype(ids.dtype, np.integer):
        if not np.all(ids == np.round(ids)):
            raise TorsoError(f"{name} must hold integer class ids, got fractional values")
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids >= num_classes)
    if allow_void:
        bad &= ids != VOID
    if bad.any():
        allowed = f"0..{num_classes - 1}" + (f" or {VOID} (void)" if allow_void else "")
        raise TorsoError(
            f"{name} holds class id {int(ids[bad].flat[0])} but there are {num_classes} classes "
            f"(allowed: {allowed})"
        )
    return ids


def _names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TorsoError("class_names must be a list of names")
    if len(class_names) == 0:
        raise TorsoError("class_names is empty")
    return [str(name) for name in class_names]


def _label(text: str, limit: int = _MAX_LABEL_CHARS) -> str:
    """A user's name as plot text: shortened, and with `$` escaped so it is never mathtext."""
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return short.replace("$", r"\$")


def _number_or_nan(value: Any) -> float:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return float("nan")
    return float(value)


def _rgb(picture: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3)."""
    channels_last = np.transpose(picture, (1, 2, 0))
    return np.repeat(channels_last, 3, axis=2) if channels_last.shape[2] == 1 else channels_last


def _show_image(axes: Any, picture: np.ndarray) -> None:
    if picture.shape[0] == 1:
        axes.imshow(picture[0], cmap="gray", vmin=0, vmax=1)
    else:
        axes.imshow(np.transpose(picture, (1, 2, 0)))
    axes.set_axis_off()


def overlay(picture: np.ndarray, mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Blend the class colours onto an image; void pixels keep the image.

    picture: float `(H, W, 3)` in [0, 1]; mask: class ids `(H, W)`, `VOID` for none; colours:
    `palette(K)`. Returns float `(H, W, 3)` in [0, 1]. The colours go onto the image's grey
    levels, so they match the legend whatever the image's own colours are.
    """
    void = mask == VOID
    tint = colours[np.where(void, 0, mask)].astype(np.float32) / 255
    grey = picture.mean(axis=2, keepdims=True)
    blended = (1 - OVERLAY_ALPHA) * grey + OVERLAY_ALPHA * tint
    return np.where(void[..., None], picture, blended)


def overlay_image(image: Image.Image, mask: np.ndarray, num_classes: int) -> Image.Image:
    """A PIL image with the `palette(num_classes)` colour of each pixel's class blended in, as
    `overlay` does; mask: class ids `(H, W)` at the image's size, `VOID` for none."""
    picture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    blended = overlay(picture, np.asarray(mask), palette(num_classes))
    return Image.fromarray(np.clip(np.round(blended * 255), 0, 255).astype(np.uint8), mode="RGB")


def heatmap_overlay(picture: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """Blend a heat map onto an image: picture float `(H, W, 3)` in [0, 1], heat `(H, W)` in
    [0, 1]; returns float `(H, W, 3)` in [0, 1]."""
    colours = matplotlib.colormaps[HEATMAP_COLOURS](heat)[..., :3].astype(np.float32)
    return (1 - alpha) * picture + alpha * colours


def heatmap_image(image: Image.Image, heat: Any, alpha: float = HEATMAP_ALPHA) -> Image.Image:
    """A PIL image with a heat map (a class activation map) drawn over it.

    heat: `(H, W)` in [0, 1] at the image's size; each value becomes its `HEATMAP_COLOURS`
    colour (blue for 0, red for 1), blended over the image with weight `alpha` in [0, 1].
    """
    if not 0 <= alpha <= 1:
        raise TorsoError(f"alpha must be between 0 and 1, got {alpha}")
    values = np.clip(_array(heat, "heat", ndim=2).astype(np.float32), 0, 1)
    if values.shape != (image.height, image.width):
        raise TorsoError(
            f"heat map is {values.shape[1]}x{values.shape[0]} but its image is "
            f"{image.width}x{image.height}"
        )
    picture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    blended = heatmap_overlay(picture, values, alpha)
    return Image.fromarray(np.clip(np.round(blended * 255), 0, 255).astype(np.uint8), mode="RGB")


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    """An HTML table of `rows` (dicts column → value); the first column is left-aligned."""
    columns: list[str] = []
    for row in rows:
        columns.extend(str(key) for key in row if str(key) not in columns)
    kinds = [' class="key"'] + [""] * (len(columns) - 1)
    head = "".join(f"<th{kind}>{_escape(c)}</th>" for kind, c in zip(kinds, columns, strict=True))
    lines = [f'<div class="scroll"><table><tr>{head}</tr>']
    for row in rows:
        by_name = {str(key): value for key, value in row.items()}
        cells = "".join(
            f"<td{kind}>{_cell(by_name.get(c))}</td>"
            for kind, c in zip(kinds, columns, strict=True)
        )
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table></div>")
    return "\n".join(lines)


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _plain(value: Any) -> Any:
    """Turn tensors, arrays, paths and other objects into JSON-friendly values."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return _escape(value)
    if isinstance(value, float):
        return _escape(f"{value:.4g}")
    if isinstance(value, (dict, list)):
        return _escape(json.dumps(value, ensure_ascii=False))
    return _escape(value)


def _caption(image: str | os.PathLike) -> str:
    return Path(image).stem.replace("_", " ")


def _data_uri(image: str | os.PathLike) -> str:
    source = Path(image)
    try:
        data = source.read_bytes()
    except OSError as error:
        raise TorsoError(f"cannot read report image '{source}': {error.strerror}") from error
    for magic, mime in _IMAGE_TYPES:
        if data.startswith(magic):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    raise TorsoError(f"report image '{source}' is not a PNG, JPEG or GIF file")
