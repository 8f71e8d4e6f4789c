"""Embeddings: a body's pooled features as vectors, written to disk, searched by cosine similarity.

```python
embedder, identity = load_embedder("resnet34", pretrained=True, pooling="avg", normalize=True)
result = embed_files(embedder, identity, list_images("photos/"), "photos.npy")
index = read_index("photos.npy")            # vectors (memory-mapped), file names, identity
rows, scores = search(index.vectors, embedder(query_images)[0].numpy(), k=5)
```

An index is either

* `NAME.npy`, a float32 matrix `(N, D)` (one row an image), plus `NAME.json` beside it with the
  file names (row order) and the model's identity; or
* `NAME.parquet` (when pyarrow is installed): columns `file` and `embedding`, with the identity
  in the schema's metadata.

The identity names the backbone, where its weights came from, the SHA-256 of the body's state
dict, the image size, channels, resize mode, pooling and normalisation. A query must be embedded
by a model with the same identity, or its similarities mean nothing; `check_same_model` refuses
one that differs.

Images are read exactly as validation reads them (`torso.data`), in batches by a `DataLoader`,
and each batch's rows go straight to a memory-mapped file, so memory stays bounded however many
images there are.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.format import open_memmap
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torso.data.decode import is_image_file
from torso.data.prepare import prepare_image
from torso.data.transforms import check_resize_mode
from torso.errors import TorsoError
from torso.files import atomic_write

POOLINGS = ("avg", "concat")
INDEX_FORMAT = "torso-embeddings"
INDEX_FORMAT_VERSION = 1
NPY_SUFFIX = ".npy"
PARQUET_SUFFIX = ".parquet"
DEFAULT_SIZE = 224
SEARCH_CHUNK_ROWS = 65_536
# From this many rows `search` uses faiss when it is installed (exact inner-product search).
FAISS_MIN_ROWS = 100_000


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
    from torso.train.checkpoint import CONFIG_FILE

    path = Path(model)
    if pooling not in POOLINGS:
        raise TorsoError(f"--pool '{pooling}' is not one of {', '.join(POOLINGS)}")
    if path.is_dir() and (path / CONFIG_FILE).exists():
        if pretrained is not False:
            raise TorsoError(f"'{path}' is a trained run: its weights are its own")
        from torso.train.checkpoint import load_model

        full_model, config = load_model(path)
        body = getattr(full_model, "body", None)
        if body is None:
            body = full_model[0]
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
            found = sorted(
                path
                for path in given.rglob("*")
                if path.is_file()
                and is_image_file(path)
                and not any(part.startswith(".") for part in path.relative_to(given).parts)
            )
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


class _ImageFiles(Dataset):
    """`(index, image uint8 (C, S, S) or None, problem or None)`: errors are returned, not
    raised, so the main process decides (a worker's exception would lose its message)."""

    def __init__(self, files: Sequence[Path], identity: ModelIdentity) -> None:
        self.files = files
        self.identity = identity

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, read_for_embedding(self.files[index], self.identity), None
        except TorsoError as error:
            return index, None, str(error)


def _collate(samples: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    good = [(index, image) for index, image, _ in samples if image is not None]
    bad = [(index, problem) for index, image, problem in samples if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return [index for index, _ in good], images, bad


# -- writing --------------------------------------------------------------------------------
@dataclass
class EmbedResult:
    """What `embed_files` wrote: `path`, `count` rows of `dim` numbers, the `skipped` files
    (with reasons), and the sidecar (`.json`, None for parquet)."""

    path: Path
    count: int
    dim: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sidecar: Path | None = None


def sidecar_path(path: str | os.PathLike) -> Path:
    """`NAME.npy` → `NAME.json`, where the file names and the identity of an `.npy` index live."""
    return Path(path).with_suffix(".json")


def _check_output(out: Path) -> str:
    if out.suffix not in (NPY_SUFFIX, PARQUET_SUFFIX):
        raise TorsoError(f"--out '{out}': give a file name ending in .npy or .parquet")
    if out.suffix == PARQUET_SUFFIX:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise TorsoError(
                f"--out '{out}': writing .parquet needs pyarrow (pip install pyarrow); "
                "or write .npy"
            ) from None
    if out.is_dir():
        raise TorsoError(f"--out '{out}' is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TorsoError(f"cannot write to '{out.parent}': {error.strerror or error}") from None
    return out.suffix


class _NpyRows:
    """Rows written into a memory-mapped `.npy` under a temporary name, renamed at the end."""

    def __init__(self, out: Path, rows: int, dim: int) -> None:
        self.out = out
        self.temporary = _temporary_name(out)
        self.matrix = open_memmap(self.temporary, mode="w+", dtype=np.float32, shape=(rows, dim))
        self.dim = dim
        self.count = 0

    def write(self, vectors: np.ndarray, names: list[str]) -> None:
        self.matrix[self.count : self.count + len(vectors)] = vectors
        self.count += len(vectors)

    def finish(self) -> None:
        rows, dim = self.matrix.shape
        self.matrix.flush()
        del self.matrix
        if self.count < rows:  # skipped files: copy the written rows to a file of the right size
            source = np.load(self.temporary, mmap_mode="r")
            smaller = _temporary_name(self.out)
            target = open_memmap(smaller, mode="w+", dtype=np.float32, shape=(self.count, dim))
            for start in range(0, self.count, SEARCH_CHUNK_ROWS):
                stop = min(start + SEARCH_CHUNK_ROWS, self.count)
                target[start:stop] = source[start:stop]
            target.flush()
            del target, source
            os.replace(smaller, self.temporary)
        os.replace(self.temporary, self.out)

    def abort(self) -> None:
        self.matrix = None
        Path(self.temporary).unlink(missing_ok=True)


class _ParquetRows:
    """Row groups appended to a `.parquet` file under a temporary name, renamed at the end."""

    def __init__(self, out: Path, dim: int, identity: ModelIdentity, root: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.out = out
        self.temporary = _temporary_name(out)
        info = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "model": identity.to_dict(),
            "root": str(root),
        }
        self.schema = pa.schema(
            [("file", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
            metadata={"torso": json.dumps(info)},
        )
        self.writer = pq.ParquetWriter(self.temporary, self.schema)
        self.dim = dim
        self.count = 0

    def write(self, vectors: np.ndarray, names: list[str]) -> None:
        pa = self.pa
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        self.writer.write_table(pa.table([pa.array(names), column], schema=self.schema))
        self.count += len(vectors)

    def finish(self) -> None:
        self.writer.close()
        os.replace(self.temporary, self.out)

    def abort(self) -> None:
        self.writer.close()
        Path(self.temporary).unlink(missing_ok=True)


def _temporary_name(out: Path) -> str:
    """A fresh file beside `out`, with ordinary permissions (mkstemp makes it private)."""
    handle, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return name


@torch.inference_mode()
def embed_files(
    embedder: Embedder,
    identity: ModelIdentity,
    files: Sequence[Path],
    out: str | os.PathLike,
    *,
    root: Path | None = None,
    batch_size: int = 64,
    skip_bad: bool = False,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EmbedResult:
    """Embed image `files` in batches and write them to `out` (`.npy` + `.json`, or `.parquet`).

    Row `i` of the matrix is the embedding of the `i`-th readable file; the names (relative to
    `root`, default the files' common folder) are stored in that order. A file that cannot be
    read raises `BadImageError` naming it, unless `skip_bad`, which leaves it out and lists it
    in the result. `on_batch(n)` is called after each batch with the number of files it held.
    The embedder is moved to `device` (default CUDA when available; channels-last there).
    The output appears only when complete (written under a temporary name, then renamed).
    """
    out = Path(out)
    kind = _check_output(out)
    if batch_size < 1:
        raise TorsoError(f"--batch-size must be at least 1, got {batch_size}")
    if not files:
        raise TorsoError("no images to embed")
    if root is None:
        root = Path(os.path.commonpath([Path(f).resolve().parent for f in files]))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    embedder = embedder.to(device).eval()
    if device.type == "cuda":
        embedder = embedder.to(memory_format=torch.channels_last)
    if num_workers is None:
        from torso.data.checks import default_workers

        num_workers = min(default_workers(), max(0, len(files) // batch_size))
    loader = DataLoader(
        _ImageFiles(list(files), identity),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    writer: _NpyRows | _ParquetRows | None = None
    try:
        for indices, images, bad in loader:
            for index, problem in bad:
                if not skip_bad:
                    raise BadImageError(f"{problem} (skip unreadable files with --skip-bad)")
                skipped.append((_relative_name(files[index], root), problem))
            if images is not None:
                batch = images.to(device, non_blocking=True).float().div_(255.0)
                if device.type == "cuda":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                vectors = embedder(batch).cpu().numpy()
                batch_names = [_relative_name(files[i], root) for i in indices]
                if writer is None:
                    writer = (
                        _NpyRows(out, len(files), vectors.shape[1])
                        if kind == NPY_SUFFIX
                        else _ParquetRows(out, vectors.shape[1], identity, root)
                    )
                writer.write(vectors, batch_names)
                names.extend(batch_names)
            if on_batch is not None:
                on_batch(len(indices) + len(bad))
        if writer is None:
            raise BadImageError(f"none of the {len(files)} image(s) could be read")
        dim = writer.dim
        writer.finish()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    result = EmbedResult(out, len(names), dim, skipped)
    if kind == NPY_SUFFIX:
        result.sidecar = sidecar_path(out)
        sidecar = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "model": identity.to_dict(),
            "count": len(names),
            "dim": dim,
            "root": str(root),
            "files": names,
            "skipped": [{"file": file, "reason": reason} for file, reason in skipped],
        }
        atomic_write(result.sidecar, json.dumps(sidecar, indent=1) + "\n")
    return result


def _relative_name(path: Path, root: Path) -> str:
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return str(resolved)


# -- reading and searching ------------------------------------------------------------------
@dataclass
class EmbeddingIndex:
    """An index read back: `vectors` float32 `(N, D)` (memory-mapped for `.npy`), `files` (N
    names, relative to `root`), the `identity` of the model that made it, its `path`."""

    path: Path
    vectors: np.ndarray
    files: list[str]
    identity: ModelIdentity
    root: Path


def read_index(path: str | os.PathLike) -> EmbeddingIndex:
    """Read an index written by `embed_files`: `NAME.npy` (or its `NAME.json`) or `.parquet`."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(NPY_SUFFIX)
    if path.suffix == PARQUET_SUFFIX:
        return _read_parquet(path)
    if path.suffix != NPY_SUFFIX:
        raise TorsoError(f"'{path}' is not an index: give the .npy, .json or .parquet file")
    if not path.exists():
        raise TorsoError(f"index '{path}' does not exist")
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        raise TorsoError(
            f"index '{path}' has no {sidecar.name} beside it (file names and model identity)"
        )
    try:
        info = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TorsoError(f"'{sidecar}' is damaged: not valid JSON ({error})") from None
    _check_format(info, sidecar)
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise TorsoError(f"index '{path}' is damaged: {error}") from None
    files = [str(name) for name in info.get("files", [])]
    if vectors.ndim != 2 or vectors.shape[0] != len(files):
        raise TorsoError(
            f"index '{path}' holds {vectors.shape[0] if vectors.ndim else 0} rows but "
            f"'{sidecar.name}' names {len(files)} files: the two do not belong together"
        )
    return EmbeddingIndex(
        path,
        vectors,
        files,
        ModelIdentity.from_dict(info["model"], str(sidecar)),
        Path(info.get("root", path.parent)),
    )


def _check_format(info: Any, where: Path) -> None:
    if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT:
        raise TorsoError(f"'{where}' is not a torso embedding index")
    if info.get("format_version", 0) > INDEX_FORMAT_VERSION:
        raise TorsoError(f"'{where}' was written by a newer torso; upgrade torso to read it")
    if not isinstance(info.get("model"), dict):
        raise TorsoError(f"'{where}' is damaged: it has no model identity")


def _read_parquet(path: Path) -> EmbeddingIndex:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TorsoError(f"reading '{path}' needs pyarrow (pip install pyarrow)") from None
    if not path.exists():
        raise TorsoError(f"index '{path}' does not exist")
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own error types for damaged files
        raise TorsoError(f"index '{path}' is damaged: {error}") from None
    metadata = table.schema.metadata or {}
    try:
        info = json.loads(metadata.get(b"torso", b"{}"))
    except json.JSONDecodeError:
        info = {}
    _check_format(info, path)
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy().astype(np.float32, copy=False).reshape(-1, dim)
    return EmbeddingIndex(
        path,
        vectors,
        [str(name) for name in table.column("file").to_pylist()],
        ModelIdentity.from_dict(info["model"], str(path)),
        Path(info.get("root", path.parent)),
    )


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def search(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 5,
    *,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows of `vectors` `(N, D)` most cosine-similar to each query `(Q, D)` or `(D,)`.

    Returns `(rows, similarities)`, each `(Q, min(k, N))` (or `(min(k, N),)` for one query),
    most similar first. `backend`: `"numpy"` (exact, in chunks of rows, so a memory-mapped
    index is never loaded whole), `"faiss"` (exact inner product on normalised vectors; needs
    faiss), or `"auto"` (faiss when installed and the index has at least 100,000 rows).
    """
    single = queries.ndim == 1
    queries = _unit_rows(queries.reshape(1, -1) if single else queries)
    if vectors.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise TorsoError(
            f"the query has {queries.shape[1]} numbers but the index's vectors have "
            f"{vectors.shape[-1]}"
        )
    if k < 1:
        raise TorsoError(f"-k must be at least 1, got {k}")
    if backend not in ("auto", "numpy", "faiss"):
        raise TorsoError(f"backend '{backend}' is not one of auto, numpy, faiss")
    k = min(k, len(vectors))
    faiss = _faiss() if backend != "numpy" else None
    if backend == "faiss" and faiss is None:
        raise TorsoError("the faiss backend needs faiss (pip install faiss-cpu)")
    if faiss is not None and (backend == "faiss" or len(vectors) >= FAISS_MIN_ROWS):
        rows, scores = _search_faiss(faiss, vectors, queries, k)
    else:
        rows, scores = _search_numpy(vectors, queries, k)
    return (rows[0], scores[0]) if single else (rows, scores)


def _search_numpy(
    vectors: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start, chunk in _chunks(vectors):
        scores = queries @ _unit_rows(chunk).T  # (Q, rows in chunk)
        rows = np.broadcast_to(np.arange(start, start + len(chunk)), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_rows = np.take_along_axis(best_rows, keep, axis=1)
    # Most similar first; equal scores in row order, so results are stable.
    order = np.lexsort((best_rows, -best_scores), axis=1)
    return np.take_along_axis(best_rows, order, axis=1), np.take_along_axis(
        best_scores, order, axis=1
    )


def _chunks(vectors: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(vectors), SEARCH_CHUNK_ROWS):
        yield start, np.asarray(vectors[start : start + SEARCH_CHUNK_ROWS], dtype=np.float32)


def _search_faiss(faiss, vectors: np.ndarray, queries: np.ndarray, k: int):
    index = faiss.IndexFlatIP(vectors.shape[1])
    for _, chunk in _chunks(vectors):
        index.add(np.ascontiguousarray(_unit_rows(chunk)))
    scores, rows = index.search(np.ascontiguousarray(queries), k)
    return rows.astype(np.int64), scores.astype(np.float32)


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
