"""Writing and reading an embedding index.

An index is either

* `NAME.npy`, a float32 matrix `(N, D)` (one row an image), plus `NAME.json` beside it with the
  file names (row order) and the model's identity; or
* `NAME.parquet` (when pyarrow is installed): columns `file` and `embedding`, with the identity
  in the schema's metadata.

Images are read in batches by a `DataLoader`, and each batch's rows go straight to a
memory-mapped file, so memory stays bounded however many images there are.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import DataLoader, Dataset

from torso.errors import TorsoError
from torso.files import atomic_write
from torso.predictor import choose_device
from torso.tools.embed.model import BadImageError, Embedder, ModelIdentity, read_for_embedding
from torso.train.placement import probe_inference_channels_last, wants_channels_last

INDEX_FORMAT = "torso-embeddings"
INDEX_FORMAT_VERSION = 1
NPY_SUFFIX = ".npy"
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file
PARQUET_SUFFIX = ".parquet"
#: Rows copied at a time when an index is shrunk to the images that could be read.
COPY_CHUNK_ROWS = 65_536


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
    if out.parent.exists() and not out.parent.is_dir():
        raise TorsoError(f"--out '{out}': '{out.parent}' is a file, not a folder")
    # Try now, before any image is embedded: a folder where no file can be created fails here.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TorsoError(
            f"--out '{out}': cannot create the folder '{out.parent}' ({error.strerror or error})"
        ) from None
    Path(_temporary_name(out)).unlink()
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
            for start in range(0, self.count, COPY_CHUNK_ROWS):
                stop = min(start + COPY_CHUNK_ROWS, self.count)
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
    try:
        handle, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    except OSError as error:
        raise TorsoError(
            f"--out '{out}': cannot write in '{out.parent}' ({error.strerror or error})"
        ) from None
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
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = choose_device(device)
    embedder = embedder.to(device).eval()
    # channels_last: on a GPU for any conv model; on a CPU if faster on the first batch
    channels_last = wants_channels_last(embedder, None, device)
    if channels_last:
        embedder = embedder.to(memory_format=torch.channels_last)
    if num_workers is None:
        from torso.data.loaders import default_workers

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
                if channels_last is None:
                    channels_last = probe_inference_channels_last(embedder, device, batch)
                if channels_last:
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
    except OSError as error:
        raise TorsoError(f"cannot read '{sidecar}': {error.strerror or error}") from None
    _check_format(info, sidecar)
    vectors = _read_matrix(path)
    files = info.get("files", [])
    if not isinstance(files, list):
        raise TorsoError(f"'{sidecar}' is damaged: 'files' is not a list of file names")
    files = [str(name) for name in files]
    dim = info.get("dim")
    if isinstance(dim, int) and vectors.shape[1] != dim:
        raise TorsoError(
            f"index '{path}' holds vectors of {vectors.shape[1]} numbers but '{sidecar.name}' "
            f"says {dim}: the two do not belong together"
        )
    if vectors.shape[0] != len(files):
        raise TorsoError(
            f"index '{path}' holds {vectors.shape[0]} rows but "
            f"'{sidecar.name}' names {len(files)} files: the two do not belong together"
        )
    return EmbeddingIndex(
        path,
        vectors,
        files,
        ModelIdentity.from_dict(info["model"], str(sidecar)),
        Path(info.get("root", path.parent)),
    )


def _read_matrix(path: Path) -> np.ndarray:
    """The float matrix `(N, D)` in the `.npy` file `path`, memory-mapped; a file that is empty,
    not a `.npy` file, cut short, or holds anything else is a `TorsoError` naming it."""
    try:
        with path.open("rb") as file:
            start = file.read(len(NPY_MAGIC))
    except OSError as error:
        raise TorsoError(f"cannot read index '{path}': {error.strerror or error}") from None
    if not start:
        raise TorsoError(f"index '{path}' is empty (0 bytes)")
    if start != NPY_MAGIC:
        raise TorsoError(f"index '{path}' is damaged: not a NumPy .npy file")
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise TorsoError(f"index '{path}' is damaged or truncated: {error}") from None
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise TorsoError(
            f"index '{path}' is damaged: it holds a {vectors.ndim}-d {vectors.dtype} array, "
            "not a matrix of float vectors"
        )
    return vectors


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
