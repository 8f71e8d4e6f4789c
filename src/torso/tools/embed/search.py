"""Nearest neighbours in an embedding index by cosine similarity.

`search(vectors, queries, k)` goes through the index in chunks of `SEARCH_CHUNK_ROWS` rows (an
index memory-mapped from disk never has to fit in memory), or uses faiss, when installed, from
`FAISS_MIN_ROWS` rows on (exact inner-product search).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from torso.errors import TorsoError

SEARCH_CHUNK_ROWS = 65_536
# From this many rows `search` uses faiss when it is installed (exact inner-product search).
FAISS_MIN_ROWS = 100_000


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
