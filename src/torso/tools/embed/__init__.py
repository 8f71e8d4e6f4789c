"""Embeddings: a body's pooled features as vectors, written to disk, searched by cosine similarity.

```python
embedder, identity = load_embedder("resnet34", pretrained=True, pooling="avg", normalize=True)
result = embed_files(embedder, identity, list_images("photos/"), "photos.npy")
index = read_index("photos.npy")            # vectors (memory-mapped), file names, identity
rows, scores = search(index.vectors, embedder(query_images)[0].numpy(), k=5)
```

Three modules: `model` (the `Embedder` and its `ModelIdentity`: the backbone, where its weights
came from, the SHA-256 of the body's state dict, the image size, channels, resize mode, pooling
and normalisation; a query must be embedded by a model with the same identity, or its
similarities mean nothing), `index` (writing and reading `NAME.npy` + `NAME.json` or
`NAME.parquet`) and `search` (nearest neighbours). Their public names are all here.

Images are read exactly as validation reads them (`torso.data.prepare`).
"""

from __future__ import annotations

from torso.tools.embed.index import (
    INDEX_FORMAT,
    INDEX_FORMAT_VERSION,
    NPY_SUFFIX,
    PARQUET_SUFFIX,
    EmbeddingIndex,
    EmbedResult,
    embed_files,
    read_index,
    sidecar_path,
)
from torso.tools.embed.model import (
    DEFAULT_SIZE,
    POOLINGS,
    BadImageError,
    Embedder,
    ModelIdentity,
    body_state_hash,
    check_same_model,
    embed_query,
    list_images,
    load_embedder,
    read_for_embedding,
)
from torso.tools.embed.search import FAISS_MIN_ROWS, SEARCH_CHUNK_ROWS, search

__all__ = [
    "DEFAULT_SIZE",
    "FAISS_MIN_ROWS",
    "INDEX_FORMAT",
    "INDEX_FORMAT_VERSION",
    "NPY_SUFFIX",
    "PARQUET_SUFFIX",
    "POOLINGS",
    "SEARCH_CHUNK_ROWS",
    "BadImageError",
    "EmbedResult",
    "Embedder",
    "EmbeddingIndex",
    "ModelIdentity",
    "body_state_hash",
    "check_same_model",
    "embed_files",
    "embed_query",
    "list_images",
    "load_embedder",
    "read_for_embedding",
    "read_index",
    "search",
    "sidecar_path",
]
