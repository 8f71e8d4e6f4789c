"""`card.md`: a run's model card, generated from the run, with nothing written by hand.

What the model is (task, backbone, parameters, input), what it is for (`Task.purpose`), the
data it learnt from (source, images per split and per class), its validation metrics (final,
best epoch, and the task's per-class tables), how it was trained (the report's settings and the
`torso train` command), its known limits (from those counts and scores), and how to load it.
`torso train` writes it next to `report.html` (`torso.tools.report.write_run_report`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig
from torso.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from torso.train.learner import Learner

#: The file name of a run's model card.
CARD = "card.md"
#: How many classes the known limits name at most (fewest images, lowest F1).
NAMED_IN_LIMITS = 3
#: The report's settings that count each split's samples (the card's data section).
SPLIT_COUNTS = frozenset(
    f"{split} {unit}" for split in ("training", "validation") for unit in ("images", "pairs")
)
#: The report's settings that the card shows elsewhere than in its training recipe.
NOT_RECIPE = frozenset({"data", "task", "backbone", "outputs", "command"})


def write_model_card(
    learner: Learner,
    folder: str | os.PathLike,
    config: RunConfig,
    *,
    settings: Mapping[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    best: int | None = None,
    command: str | None = None,
) -> Path:
    """Write `folder/card.md` for `learner`'s run (atomically) and return its path.

    settings: the report's "Run" table (`run_settings`); tables: the task's report tables
    (`Task.report_parts`); best: the epoch `best/` holds; command: the `torso train` command.
    """
    folder = Path(folder)
    names = config.class_names()
    counts = {
        split: class_counts(loader, names)
        for split, loader in (
            ("training", learner.train_loader),
            ("validation", learner.valid_loader),
        )
    }
    sections = [
        f"# Model card: {folder.name}",
        _model_section(learner, config),
        _use_section(learner, config, settings),
        _data_section(settings, counts, names if config.classes else []),
        _metrics_section(learner, best, tables),
        _recipe_section(settings, command),
        _limits_section(config, settings, counts, tables),
        _loading_section(folder, learner.task.images_per_sample),
    ]
    text = "\n\n".join(section for section in sections if section) + "\n"
    return atomic_write(folder / CARD, text)


def class_counts(loader: Any, classes: Sequence[str]) -> Counter | None:
    """Items of a loader's dataset per class name (what `torso check` counts an item under:
    `Targets.names`), or None when the dataset does not say (a loader of your own, or pairs,
    whose classes are not the model's)."""
    dataset = getattr(loader, "dataset", None)
    items, targets = getattr(dataset, "items", None), getattr(dataset, "targets", None)
    if items is None or not hasattr(targets, "names"):
        return None
    return Counter(name for item in items for name in targets.names(item.target, list(classes)))


def _model_section(learner: Learner, config: RunConfig) -> str:
    parameters = sum(p.numel() for p in learner.model.parameters())
    lines = [
        "## Model",
        "",
        f"- task: {config.task}",
        f"- backbone: {config.backbone}, {parameters:,} parameters",
        f"- input: {_size(config)} images, {config.in_channels} channel(s), resized by "
        f"{config.resize}",
        f"- outputs: {config.num_outputs}"
        + (f" ({', '.join(config.class_names())})" if config.classes else ""),
        f"- saved by torso {config.torso_version}",
    ]
    return "\n".join(lines)


def _use_section(learner: Learner, config: RunConfig, settings: Mapping[str, Any]) -> str:
    purpose = learner.task.purpose.format(
        size=_size(config), count=config.num_outputs, classes=", ".join(config.class_names())
    )
    data = settings.get("data")
    like = f" like those in `{data}`" if data else " like those it was trained on"
    return (
        f"## Intended use\n\nThis model {purpose}. It is meant for images{like}, prepared "
        "as `torso.load(...).predict` prepares them."
    )


def _data_section(
    settings: Mapping[str, Any], counts: Mapping[str, Counter | None], names: Sequence[str]
) -> str:
    lines = ["## Data", ""]
    if settings.get("data"):
        lines.append(f"- source: `{settings['data']}`")
    lines += [f"- {key}: {value}" for key, value in settings.items() if key in SPLIT_COUNTS]
    known = {split: found for split, found in counts.items() if found}
    if names and known:
        lines += ["", "| class | " + " | ".join(known) + " |", "| --- |" + " ---: |" * len(known)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(str(c[name]) for c in known.values()) + " |")
    return "\n".join(lines)


def _metrics_section(
    learner: Learner, best: int | None, tables: Mapping[str, Sequence[Mapping[str, Any]]]
) -> str:
    if not learner.history:
        return ""
    final = learner.history[-1]
    lines = [
        "## Metrics",
        "",
        f"On the validation images, after the last epoch ({final.get('epoch')}), the weights "
        "in this folder:",
        "",
        _markdown_table(
            [
                {"metric": k, "value": v}
                for k, v in final.items()
                if k not in ("epoch", "time", "lr")
            ]
        ),
    ]
    task = learner.task
    if best is not None:
        row = next((r for r in learner.history if r.get("epoch") == best), {})
        value = row.get(task.main_metric)
        if value is not None:
            lines += ["", f"Best epoch: {best} ({task.main_metric} {_number(value)}), in `best/`."]
    for title, rows in tables.items():
        if rows:
            lines += ["", f"### {title[:1].upper() + title[1:]}", "", _markdown_table(rows)]
    return "\n".join(lines)


def _recipe_section(settings: Mapping[str, Any], command: str | None) -> str:
    lines = ["## Training recipe", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items() if k not in NOT_RECIPE | SPLIT_COUNTS]
    if command:
        lines += ["", "Trained with:", "", "```", command, "```"]
    return "\n".join(lines)


def _limits_section(
    config: RunConfig,
    settings: Mapping[str, Any],
    counts: Mapping[str, Counter | None],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
) -> str:
    validation = next(
        (f"{v} {k}" for k, v in settings.items() if k in SPLIT_COUNTS and "valid" in k), ""
    )
    lines = [
        "## Known limits",
        "",
        f"- Validated only on the {validation} of its data split; no independent test set "
        "measured it."
        if validation and not validation.startswith("0 ")
        else "- Not validated: the run had no validation images.",
        f"- Trained at {_size(config)} pixels (resize {config.resize}): detail finer than "
        "that size shows is lost to it.",
    ]
    training = counts.get("training")
    if training and config.classes:
        fewest = lowest({name: training[name] for name in config.class_names()})
        shown = ", ".join(f"{name} ({count})" for name, count in fewest)
        lines.append(f"- Fewest training images: {shown}.")
    scores = {row["class"]: row["f1"] for rows in tables.values() for row in rows if "f1" in row}
    if scores:
        shown = ", ".join(f"{name} ({_number(f1)})" for name, f1 in lowest(scores))
        lines.append(f"- Lowest validation F1: {shown}.")
    return "\n".join(lines)


def lowest(values: Mapping[str, float]) -> list[tuple[str, float]]:
    """The names whose values are below the mean (the lowest one at least), lowest first, at
    most `NAMED_IN_LIMITS` of them."""
    ordered = sorted(values.items(), key=lambda pair: (pair[1], pair[0]))
    mean = sum(values.values()) / len(values)
    below = [pair for pair in ordered if pair[1] < mean] or ordered[:1]
    return below[:NAMED_IN_LIMITS]


def _loading_section(folder: Path, images_per_sample: int) -> str:
    images = '["a.jpg", "b.jpg"]  # a pair' if images_per_sample == 2 else '["photo.jpg"]'
    command = (
        f"torso predict {folder} --pair a.jpg b.jpg"
        if images_per_sample == 2
        else f"torso predict {folder} photos/ --out predictions.csv"
    )
    return "\n".join(
        [
            "## How to load it",
            "",
            "```python",
            "import torso",
            "",
            f'predictor = torso.load("{folder}")',
            f"records = predictor.predict({images})",
            "```",
            "",
            "```",
            command,
            "```",
        ]
    )


def _markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(str(key) for key in row if str(key) not in columns)
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for row in rows:
        by_name = {str(key): value for key, value in row.items()}
        lines.append("| " + " | ".join(_number(by_name.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def _size(config: RunConfig) -> str:
    return f"{config.size[0]}x{config.size[1]}"
