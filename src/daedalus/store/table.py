"""`EmbeddingTable`: the vectors of a set of ids as one float16 matrix, the unit every reader
of an embedding store hands out and every enrich kernel gathers from."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbeddingTable:
    """Embeddings of a set of ids: sorted `ids` and `matrix[i]` the vector of `ids[i]`.

    `matrix` has one extra all-zero row at the end, the row every missing id maps to,
    so gathers never need a mask.
    """

    ids: np.ndarray
    matrix: np.ndarray

    @classmethod
    def from_rows(cls, ids: np.ndarray, vectors: np.ndarray) -> EmbeddingTable:
        """Build from unsorted unique ids and their (n, dim) float16 vectors."""
        order = np.argsort(ids, kind="stable")
        matrix = np.zeros((ids.size + 1, vectors.shape[1]), dtype=np.float16)
        np.take(vectors, order, axis=0, out=matrix[:-1])
        return cls(ids=np.ascontiguousarray(ids[order], dtype=np.int64), matrix=matrix)

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    @functools.cached_property
    def max_abs(self) -> float:
        """The largest magnitude of any value (what bounds the exactness of pooled sums)."""
        if self.matrix.size == 0:
            return 0.0
        return float(max(self.matrix.max(), -self.matrix.min()))

    @property
    def missing_row(self) -> int:
        return self.ids.size

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in `matrix`, `missing_row` where the table lacks it."""
        if self.ids.size == 0:
            return np.full(ids.shape, 0, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos[pos == self.ids.size] = 0
        return np.where(self.ids[pos] == ids, pos, self.ids.size)
