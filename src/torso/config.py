"""`RunConfig`: one frozen, versioned description of a run, saved as `torso.json`.

Everything that rebuilds a trained model and prepares its input lives here, complete before
training starts: the task and its options, the backbone and head options, the classes, the
image size and resize mode, the channels and the body's normalisation stats. Every consumer
(training, prediction, export, embeddings, the report, the server) reads the same fields and
prepares images with the same function (`torso.data.prepare.prepare_images(config, ...)`), so
prediction sees the pixels that validation saw.

`torso.json` holds `RunConfig.to_dict()` plus the file format name, the weights' SHA-256 and
the torso version that wrote it. `RunConfig.from_dict` checks every field and names the file
and the field when one is missing or wrong, so a hand-edited or damaged file is a clear
`TorsoError`, never a `KeyError` from deep inside.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torso.errors import TorsoError
from torso.version import __version__

#: Version of the `torso.json` layout. 1: the untyped dict of torso 0.1 (read and upgraded);
#: 2: `RunConfig`.
FORMAT_VERSION = 2
RESIZE_MODES = ("squish", "crop", "pad")
#: The name of the file, and the value of its `format` field.
CONFIG_FILE = "torso.json"
FILE_FORMAT = "torso-model"

Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class RunConfig:
    """A run's description.

    Attributes:
        task: the task's registered name (`"classify"`, `"segment"`, ...).
        backbone: the backbone's name as `create_body` takes it (`"resnet34"`, `"tv:resnet34"`).
        num_outputs: the head's outputs (classes, labels or target values).
        size: `(height, width)` of the images the model was trained on.
        in_channels: channels of the model's input images (1, 3 or 4).
        classes: class (or label, or target) names, one per output; None when unnamed.
        resize: how an image is brought to `size`: `"squish"`, `"crop"` or `"pad"`.
        stats: the body's normalisation `(mean, std)`, one value per channel, or None.
        task_options: the task's options (`get_task(task, **task_options)`).
        head_options: keyword arguments of the head (`create_head`, or the decoder's).
        torso_version: the torso version that made the config.
    """

    task: str
    backbone: str
    num_outputs: int
    size: tuple[int, int]
    in_channels: int = 3
    classes: tuple[str, ...] | None = None
    resize: str = "squish"
    stats: Stats | None = None
    task_options: Mapping[str, Any] = field(default_factory=dict)
    head_options: Mapping[str, Any] = field(default_factory=dict)
    torso_version: str = __version__

    def __post_init__(self) -> None:
        # Normalise the types once, so that every reader gets tuples and plain ints.
        set_ = object.__setattr__
        set_(self, "size", _size(self.size, "size"))
        if self.classes is not None:
            set_(self, "classes", tuple(str(name) for name in self.classes))
        if self.stats is not None:
            set_(self, "stats", _stats(self.stats))
        set_(self, "task_options", dict(self.task_options or {}))
        set_(self, "head_options", dict(self.head_options or {}))
        _check(self)

    # -- reading --------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def class_names(self) -> list[str]:
        """The class names, or `"0"`, `"1"`, ... when the run has none."""
        if self.classes is not None:
            return list(self.classes)
        return [str(index) for index in range(self.num_outputs)]

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with `changes` applied (the config itself never changes)."""
        return dataclasses.replace(self, **changes)

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: tuples become lists; `format_version` is included."""
        plain = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"format_version": FORMAT_VERSION, **plain}

    @classmethod
    def from_dict(cls, data: Any, where: str = "torso.json") -> RunConfig:
        """Check and read a dict written by `to_dict` (or by torso 0.1); `where` names the file
        in error messages. An unknown version, a missing field or a value of the wrong kind is
        a `TorsoError` naming the field."""
        if not isinstance(data, Mapping):
            raise TorsoError(f"'{where}' is damaged: it does not hold a JSON object")
        version = data.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise TorsoError(f"'{where}': format_version must be a whole number, not {version!r}")
        if version > FORMAT_VERSION:
            raise TorsoError(
                f"'{where}' has format_version {version}, newer than this torso reads "
                f"({FORMAT_VERSION}); upgrade torso to load it"
            )
        if version < 1:
            raise TorsoError(f"'{where}': unknown format_version {version}")
        data = dict(data)
        missing = [name for name in ("task", "backbone", "num_outputs", "size") if name not in data]
        if missing:
            raise TorsoError(f"'{where}' is damaged: it lacks {', '.join(map(repr, missing))}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for name in ("task", "backbone", "resize", "torso_version"):
            if name in values and not isinstance(values[name], str):
                raise TorsoError(f"'{where}': {name} must be a string, not {values[name]!r}")
        for name in ("num_outputs", "in_channels"):
            if name in values and not _is_int(values[name]):
                raise TorsoError(f"'{where}': {name} must be a whole number, not {values[name]!r}")
        for name in ("task_options", "head_options"):
            if values.get(name) is None:
                values[name] = {}
            elif not isinstance(values[name], Mapping):
                raise TorsoError(f"'{where}': {name} must be an object, not {values[name]!r}")
        if values.get("classes") is not None and (
            isinstance(values["classes"], str) or not isinstance(values["classes"], Sequence)
        ):
            raise TorsoError(f"'{where}': classes must be a list of names")
        if values.get("resize") is None:
            values.pop("resize", None)
        if values.get("torso_version") is None:
            values.pop("torso_version", None)
        try:
            return cls(**values)
        except TorsoError as error:
            raise TorsoError(f"'{where}': {error}") from None


def as_run_config(config: RunConfig | Mapping[str, Any], where: str = "config") -> RunConfig:
    """`config` itself, or the `RunConfig` that a `torso.json`-style dict describes (checked by
    `RunConfig.from_dict`, errors naming `where`)."""
    if isinstance(config, RunConfig):
        return config
    return RunConfig.from_dict(config, where=where)


def config_file(path: str | os.PathLike) -> Path:
    """The `torso.json` of a saved model: `path` is its folder or the file itself."""
    path = Path(path)
    return path / CONFIG_FILE if path.is_dir() else path


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in a saved model's `torso.json` (`path`: the folder or the file), with its
    `format` checked; a missing, unreadable or foreign file is a `TorsoError` naming it."""
    path = Path(path)
    file = config_file(path)
    if not file.exists():
        if not path.exists():
            raise TorsoError(f"'{path}' does not exist")
        raise TorsoError(f"'{path}' is not a torso model: it has no {CONFIG_FILE}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TorsoError(f"'{file}' is damaged: not valid JSON ({error})") from None
    except OSError as error:
        raise TorsoError(f"cannot read '{file}': {error.strerror or error}") from None
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise TorsoError(f"'{file}' is not a torso model description")
    return data


def load(path: str | os.PathLike) -> RunConfig:
    """The `RunConfig` saved in `torso.json` (`path`: a run folder, its `best/`, or the file).

    Checked field by field: a missing or mistyped field or an unknown `format_version` is a
    `TorsoError` naming the file and the field.
    """
    return RunConfig.from_dict(read_file(path), where=str(config_file(path)))


def _check(config: RunConfig) -> None:
    if not config.task:
        raise TorsoError("task must be given")
    if not config.backbone:
        raise TorsoError("backbone must be given")
    if not _is_int(config.num_outputs) or config.num_outputs < 1:
        raise TorsoError(
            f"num_outputs must be a whole number of at least 1, not {config.num_outputs!r}"
        )
    if not _is_int(config.in_channels) or not 1 <= config.in_channels <= 16:
        raise TorsoError(
            f"in_channels must be a whole number from 1 to 16, not {config.in_channels!r}"
        )
    if config.classes is not None and len(config.classes) != config.num_outputs:
        raise TorsoError(
            f"classes has {len(config.classes)} names but num_outputs is "
            f"{config.num_outputs}: give one name per output"
        )
    if config.resize not in RESIZE_MODES:
        raise TorsoError(f"resize must be one of {', '.join(RESIZE_MODES)}, not {config.resize!r}")
    if config.stats is not None:
        mean, std = config.stats
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise TorsoError(
                f"stats must be (mean, std) of equal length with std > 0, not {config.stats!r}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _size(value: Any, name: str) -> tuple[int, int]:
    """An int or an (height, width) pair → a pair of positive ints."""
    if _is_int(value):
        value = (value, value)
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(_is_int(side) and side >= 1 for side in value)
    ):
        raise TorsoError(
            f"{name} must be a positive whole number or [height, width], not {value!r}"
        )
    return int(value[0]), int(value[1])


def _stats(value: Any) -> Stats:
    try:
        mean, std = value
        stats = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise TorsoError(f"stats must be [mean, std] lists of numbers, not {value!r}") from None
    if not all(math.isfinite(v) for part in stats for v in part):
        raise TorsoError(f"stats must be finite numbers, not {value!r}")
    return stats


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively, so a value survives a JSON round trip unchanged."""
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return value
