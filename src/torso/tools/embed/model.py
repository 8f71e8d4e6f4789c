"""The embedding model and its identity: a body's pooled features as vectors.

`load_embedder(run or backbone)` gives an `Embedder` (body → pooled, optionally L2-normalised
features) and the `ModelIdentity` that names it (backbone, weights hash, size, channels, resize,
pooling); `check_same_model` refuses a query made by another model. Images are read exactly as
validation reads them (`torso.data.prepare`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torso.data.decode import is_image_file
from torso.data.prepare import prepare_image
from torso.data.sources import image_files
from torso.data.transforms import check_resize_mode
from torso.errors import TorsoError

POOLINGS = ("avg", "concat")
DEFAULT_SIZE = 224


class BadImageError(TorsoError):
    """An image file that cannot be read (the message names it); `skip_bad` skips such files."""


# -- the model ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelIdentity:
    """What made an index's vectors; two indexes compare only when these agree.

    source: `"run"` (a folder written by `torso train`) or `"backbone"` (a timm/torchvision
    name). location: the run folder, the weights file, `"pretrained"`, or `"random seed N"`.
    weights_sha256: hash of the body's state dict (names, dtypes, shapes and values).
    """

    backbone: str
    source: str
    location: str
    weights_sha256: str
    in_channels: int
    size: int
    resize: str
    pooling: str
    normalize: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> ModelIdentity:
        try:
            return cls(
                backbone=str(values["backbone"]),
                source=str(values["source"]),
                location=str(values["location"]),
                weights_sha256=str(values["weights_sha256"]),
                in_channels=int(values["in_channels"]),
                size=int(values["size"]),
                resize=str(values["resize"]),
                pooling=str(values["pooling"]),
                normalize=bool(values["normalize"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TorsoError(f"'{where}' is damaged: its model identity lacks {error}") from None

    def describe(self) -> str:
        """One line for a person: `resnet34 (pretrained, weights 1a2b3c4d), 224 px, avg, L2`."""
        norm = ", L2-normalised" if self.normalize else ""
        return (
            f"{self.backbone} ({self.location}, weights {self.weights_sha256[:12]}), "
            f"{self.size} px, {self.in_channels} channel(s), {self.pooling} pooling{norm}"
        )


def body_state_hash(body: nn.Module) -> str:
    """SHA-256 of `body.state_dict()`: every tensor's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(body.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Embedder(nn.Module):
    """Body → pooled (optionally L2-normalised) features.

    Input: images `(N, C, H, W)` in [0, 1]. Output: float32 `(N, D)` where `D` is the body's
    output channels `C_out` (`pooling="avg"`) or `2 * C_out` (`"concat"`: max then average, as
    `torso.models.heads.AdaptiveConcatPool2d`).
    """

    def __init__(self, body: nn.Module, pooling: str = "avg", normalize: bool = False) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise TorsoError(f"pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
        self.body = body
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.body(images)
        if maps.ndim != 4:
            raise TorsoError(f"the body returned a {maps.ndim}-d tensor, not a feature map")
        pooled = maps.mean(dim=(2, 3))
        if self.pooling == "concat":
            pooled = torch.cat([maps.amax(dim=(2, 3)), pooled], dim=1)
        pooled = pooled.float()
        if self.normalize:
            pooled = F.normalize(pooled, dim=1)
        return pooled


def load_embedder(
    model: str | os.PathLike,
    *,
    pretrained: bool | str = False,
    size: int | None = None,
    in_channels: int | None = None,
    resize: str | None = None,
    pooling: str = "avg",
    normalize: bool = False,
    seed: int = 0,
) -> tuple[Embedder, ModelIdentity]:
    """The embedder for a run folder or a backbone name, and its identity (eval mode, CPU).

    model: a folder written by `torso train` (its body, size, channels and resize are used) or a
        timm / torchvision (`tv:`) backbone name.
    pretrained: for a backbone: False (random weights drawn from `seed`, so they are the same
        every time), True (the published weights) or a local weights file.
    size, in_channels, resize: override the run's values (defaults for a backbone: 224, 3,
        squish); a run's body is used at any size.
    """
    from torso.checkpoint import CONFIG_FILE

    path = Path(model)
    if pooling not in POOLINGS:
        raise TorsoError(f"--pool '{pooling}' is not one of {', '.join(POOLINGS)}")
    if path.is_dir() and (path / CONFIG_FILE).exists():
        if pretrained is not False:
            raise TorsoError(f"'{path}' is a trained run: its weights are its own")
        from torso.checkpoint import load_model

        full_model, config = load_model(path)
        body = getattr(full_model, "body", None)
        if body is None:
            body = full_model.body
        backbone = config.backbone
        source, location = "run", str(path.resolve())
        size = size or config.height
        if in_channels is not None and in_channels != config.in_channels:
            raise TorsoError(
                f"'{path}' was trained on {config.in_channels}-channel images, not {in_channels}"
            )
        in_channels = config.in_channels
        resize = resize or config.resize
    elif path.is_dir() or path.suffix == ".json":
        raise TorsoError(f"'{path}' is not a torso run folder (it has no {CONFIG_FILE})")
    else:
        from torso.models.bodies import create_body

        backbone = str(model)
        in_channels = in_channels or 3
        if pretrained is False:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                body = create_body(backbone, pretrained=False, in_channels=in_channels)
            location = f"random seed {seed}"
        else:
            body = create_body(backbone, pretrained=pretrained, in_channels=in_channels)
            location = "pretrained" if pretrained is True else str(Path(pretrained).resolve())
        source = "backbone"
        size = size or DEFAULT_SIZE
        resize = resize or "squish"
    if size < 1:
        raise TorsoError(f"--size must be at least 1, got {size}")
    check_resize_mode(resize)
    body.eval()
    identity = ModelIdentity(
        backbone=backbone,
        source=source,
        location=location,
        weights_sha256=body_state_hash(body),
        in_channels=int(in_channels),
        size=int(size),
        resize=resize,
        pooling=pooling,
        normalize=bool(normalize),
    )
    return Embedder(body, pooling, normalize).eval(), identity


def check_same_model(index: ModelIdentity, query: ModelIdentity, index_name: str) -> None:
    """Raise `TorsoError` listing what differs when `query` is not the model that made `index`."""
    differences = []
    for name in ("backbone", "weights_sha256", "size", "in_channels", "resize", "pooling"):
        made, asked = getattr(index, name), getattr(query, name)
        if made != asked:
            label = "weights" if name == "weights_sha256" else name
            if name == "weights_sha256":
                made, asked = made[:12], asked[:12]
            differences.append(f"{label} {asked} (index: {made})")
    if index.normalize != query.normalize:
        differences.append(f"normalize {query.normalize} (index: {index.normalize})")
    if differences:
        raise TorsoError(
            f"the index '{index_name}' was made by another model: {'; '.join(differences)}. "
            f"Embed the query with the index's model: {index.describe()}"
        )


# -- the images -----------------------------------------------------------------------------
def list_images(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[Path], Path]:
    """Image files from files and folders (searched recursively, hidden files skipped, sorted).

    Returns `(files, root)`: `root` is the folder names are stored relative to (the common
    folder of the inputs). A missing path, a non-image file given by name, or no image at all
    raises `TorsoError`.
    """
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not paths:
        raise TorsoError("no images given")
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = image_files(given)
            if not found:
                raise TorsoError(f"folder '{given}' holds no image files")
            files.extend(found)
        elif given.is_file():
            if not is_image_file(given):
                raise TorsoError(f"'{given}' is not an image file (by its extension)")
            files.append(given)
        else:
            raise TorsoError(f"'{given}' does not exist")
    parents = [path.resolve().parent for path in files]
    folders = [Path(p).resolve() for p in paths if Path(p).is_dir()]
    root = Path(os.path.commonpath([*parents, *folders]))
    return files, root


def read_for_embedding(path: Path, identity: ModelIdentity) -> torch.Tensor:
    """One image as uint8 `(C, size, size)`: exactly the pixels validation (and
    `torso.data.prepare.prepare_images`) gives, with no JPEG draft-mode decoding."""
    return prepare_image(Path(path), identity.size, identity.in_channels, identity.resize)


@torch.inference_mode()
def embed_query(
    embedder: Embedder, identity: ModelIdentity, paths: Sequence[str | os.PathLike]
) -> np.ndarray:
    """Embeddings `(len(paths), D)` of image files, read as `embed_files` reads them."""
    images = []
    for path in paths:
        try:
            images.append(read_for_embedding(Path(path), identity))
        except TorsoError as error:
            raise BadImageError(str(error)) from None
    parameter = next(embedder.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    batch = torch.stack(images).to(device).float().div_(255.0)
    return embedder(batch).cpu().numpy()
