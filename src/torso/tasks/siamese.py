"""Siamese pairs: do two images show the same class? Cross-entropy over (different, same).

Batches are `((images_a, images_b), targets)` with targets int64 `(N,)`, 1 = same, 0 = different
(`torso.data.load_data(path, task="siamese")`); outputs are logits `(N, 2)` of a
`torso.models.siamese.SiameseModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig, as_run_config
from torso.errors import TorsoError
from torso.tasks.base import Task, refuse_overlays
from torso.tasks.classify import LABEL_SMOOTHING, cross_entropy

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from torchmetrics import Metric

    from torso.predictor import Predictor

PAIR_CLASSES = ("different", "same")


class SiameseTask(Task):
    """Cross-entropy on same/different (optional label smoothing); accuracy and error rate.

    Options:
        label_smoothing: in [0, 1), as in `torch.nn.functional.cross_entropy`.
    """

    name = "siamese"
    main_metric = "accuracy"
    higher_is_better = True
    cli_options = (LABEL_SMOOTHING,)
    images_per_sample = 2
    input_names = ("images_a", "images_b")
    output_meaning = "scores (logits) (N, 2) for (different, same); softmax gives probabilities"
    purpose = "tells whether two {size} images show the same class"
    output_activation = "softmax"
    serve_view = "pair"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0 <= label_smoothing < 1:
            raise TorsoError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(label_smoothing=float(label_smoothing))

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """Classification's data (class folders or a CSV of one label column), drawn as
        same/different pairs; targets int64, 1 same, 0 different."""
        from torso.data import ClassTargets, DataLayout, read_classes

        return DataLayout(read=read_classes, targets=ClassTargets(), pairs=True)

    def build_model(self, config: RunConfig, *, pretrained: bool | str = False) -> nn.Module:
        """A `SiameseModel`: the backbone's body, shared, and `create_head(2 * C, 2)`."""
        from torso.models.siamese import create_siamese_model

        config = as_run_config(config)
        if config.num_outputs != 2:
            raise TorsoError(
                f"a Siamese model has 2 outputs (different, same), not "
                f"num_outputs={config.num_outputs}"
            )
        return create_siamese_model(
            config.backbone,
            pretrained=pretrained,
            in_channels=config.in_channels,
            **self.head_options(config),
        )

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        return cross_entropy(outputs, targets, self.options["label_smoothing"], reduction)

    def metrics(self, config: RunConfig) -> dict[str, Metric]:
        from torchmetrics.classification import MulticlassAccuracy

        return {
            "accuracy": MulticlassAccuracy(2, average="micro"),
            "error_rate": 1 - MulticlassAccuracy(2, average="micro"),
        }

    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=1)

    def decode(self, activations: torch.Tensor) -> torch.Tensor:
        """1 where the pair is judged the same, 0 where different: int64 `(N,)`."""
        return activations.argmax(dim=1)

    def describe(
        self, activations: torch.Tensor, classes: list[str] | None
    ) -> list[dict[str, Any]]:
        """`{"prediction": "same" | "different", "probability": p, "same_probability": q}`;
        `p` is the probability of the prediction, `q` that of "same"."""
        names = classes or list(PAIR_CLASSES)
        records = []
        for row in activations:
            index = int(row.argmax())
            records.append(
                {
                    "prediction": names[index],
                    "probability": round(float(row[index]), 6),
                    "same_probability": round(float(row[1]), 6),
                }
            )
        return records

    def report_figures(self, predictor: Predictor, loader: Any, folder: Path) -> list[Path]:
        """The predicted probability of "same" for the validation pairs that are the same and
        for those that are different, as two histograms (`pair_probabilities.png`)."""
        from torso import plots

        predictions = predictor.get_preds(loader)
        same_probabilities = predictions["activations"][:, 1]
        path = folder / "pair_probabilities.png"
        return [plots.plot_pair_histogram(same_probabilities, predictions["targets"], path)]

    def predict_files(
        self,
        predictor: Predictor,
        paths: Sequence[Path],
        out: Path | None,
        *,
        tta: bool = False,
        batch_size: int = 32,
        overlays: Path | None = None,
    ) -> list[dict[str, Any]]:
        """`torso predict RUN --pair A B`: prints "same" or "different" and its probability."""
        refuse_overlays(self, overlays)
        if len(paths) != 2:
            raise TorsoError("a Siamese run compares two images: torso predict RUN --pair A B")
        same, probability = predict_pair(predictor, paths[0], paths[1], tta=tta)
        verdict = "same" if same else "different"
        print(f"{verdict} (probability {probability:.3f}): {paths[0]} vs {paths[1]}")
        return [{"prediction": verdict, "probability": probability}]


def predict_pair(
    predictor: Predictor, path_a: Any, path_b: Any, *, tta: bool = False
) -> tuple[bool, float]:
    """Whether two images show the same thing, and the probability of that verdict.

    predictor: a Siamese run's `torso.predictor.Predictor` (`torso.load(run)`); the images are
    anything `torso.data.prepare.prepare_images` takes, read as validation reads them. Returns
    `(same, probability)`: `(True, P(same))` or `(False, P(different))`. A file that cannot be
    read raises `TorsoError` naming it.
    """
    if predictor.task.images_per_sample != 2:
        raise TorsoError(
            f"--pair needs a model trained with --task siamese; this one is "
            f"{predictor.config.task!r}"
        )
    activations = predictor.activations([path_a, path_b], tta=tta)
    same_probability = float(activations[0, 1])
    same = same_probability >= 0.5
    return same, same_probability if same else 1.0 - same_probability
