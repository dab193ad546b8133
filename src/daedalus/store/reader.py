"""`StoreReader`: an opened embedding store, its id index, and the vectors of a set of ids.

The id index is every id, sorted, with its row, read when the reader opens (~50 ms for the
bench store's 475K ids).
A set of ids becomes an `EmbeddingTable` by Lance takes in row order, or by one sequential
scan when most of the store is wanted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from daedalus.store.table import EmbeddingTable

# Rows per Lance take or scan batch. 16K rows of 1152-d float16 (~38 MB) read 1.5-2x faster
# than 64K (~150 MB): buffers that large are mapped fresh and page-faulted on every batch.
TAKE_CHUNK = 16_384
SCAN_FRACTION = 0.25  # above this share of the store, scan it instead of taking rows


class StoreReader:
    """An opened store: its id index (sorted ids, their rows) and takes by id."""

    def __init__(self, path: Path | str, id_column: str = "id",
                 embedding_column: str = "image_embedding"):
        import lance

        self.path = str(path)
        self.embedding_column = embedding_column
        self.dataset = lance.dataset(self.path)
        self.sorted_ids, self.rows = _id_index(self.dataset, id_column)
        self.dim = self.dataset.schema.field(embedding_column).type.list_size

    def table(self, ids: np.ndarray) -> EmbeddingTable:
        """The vectors of those of `ids` (unique) that the store has."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.sorted_ids, ids)
        pos[pos == self.sorted_ids.size] = 0
        hit = self.sorted_ids[pos] == ids if self.sorted_ids.size else np.zeros(ids.size, bool)
        found, rows = ids[hit], self.rows[pos[hit]]
        sort = np.argsort(found, kind="stable")
        found, rows = found[sort], rows[sort]
        matrix = np.zeros((found.size + 1, self.dim), dtype=np.float16)
        by_row = np.argsort(rows, kind="stable")
        if rows.size > SCAN_FRACTION * self.sorted_ids.size:
            self._scan_into(matrix, rows, by_row)
            return EmbeddingTable(ids=found, matrix=matrix)
        for lo in range(0, rows.size, TAKE_CHUNK):
            dest = by_row[lo:lo + TAKE_CHUNK]
            part = self.dataset.take(rows[dest], columns=[self.embedding_column])
            matrix[dest] = self._vectors(part.column(0))
        return EmbeddingTable(ids=found, matrix=matrix)

    def _scan_into(self, matrix: np.ndarray, rows: np.ndarray, by_row: np.ndarray) -> None:
        """Most of the store is wanted: one sequential scan beats random takes."""
        wanted = rows[by_row]
        start = 0
        for batch in self.dataset.to_batches(columns=[self.embedding_column],
                                             batch_size=TAKE_CHUNK):
            end = start + batch.num_rows
            lo, hi = np.searchsorted(wanted, [start, end])
            if hi > lo:
                vectors = self._vectors(batch.column(0))
                matrix[by_row[lo:hi]] = vectors[wanted[lo:hi] - start]
            start = end

    def _vectors(self, column) -> np.ndarray:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        flat = column.values.slice(column.offset * self.dim, len(column) * self.dim)
        return flat.to_numpy(zero_copy_only=False).reshape(len(column), self.dim)


def _id_index(dataset, id_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Every id of the store, sorted, and its row offset."""
    ids = dataset.to_table(columns=[id_column]).column(0)
    ids = ids.combine_chunks().to_numpy() if ids.num_chunks else np.empty(0, np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], order.astype(np.int64)
