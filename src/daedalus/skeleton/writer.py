"""The skeleton day's files: sorted batches, in standard Arrow types, cut into parts.

`PartWriter` writes `part-N-0.parquet` files of at most `skeleton_chunk_rows` rows each, the
bound docs/data-contract.md gives a skeleton file, whatever sizes DuckDB's batches come in;
each batch is one row group. A parquet file is encoded by one thread, so the parts are written
on a pool of `threads` writers (pyarrow releases the GIL while it encodes): a part is handed
to the pool once its rows are in, and the next part's rows are not taken until a writer is
free, so the memory held is bounded by `threads` + 1 parts.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def conform(batch: pa.RecordBatch, defaults: set[str],
            embedding_columns: frozenset[str]) -> pa.RecordBatch:
    """Standard Arrow types: plain list<item>, and typed embedding columns.

    `defaults` are the Sink columns no operator produces; an embedding column among them is
    typed list<float16>, the type the enrich stage fills it with.
    """
    fields = []
    for f in batch.schema:
        if f.name in defaults and f.name in embedding_columns:
            fields.append(pa.field(f.name, pa.list_(pa.float16())))
        elif pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            fields.append(pa.field(f.name, pa.list_(f.type.value_type)))
        else:
            fields.append(f)
    schema = pa.schema(fields)
    return batch if schema == batch.schema else batch.cast(schema)


def write_part(path: Path, batches: list[pa.RecordBatch], compression: str) -> None:
    """One part file, a row group per batch."""
    with pq.ParquetWriter(path, batches[0].schema, compression=compression) as writer:
        for batch in batches:
            writer.write_batch(batch)


class PartWriter:
    """`part-N-0.parquet` files of at most `chunk_rows` rows each, written on `threads` threads.

    Use as a context manager: leaving it waits for every part and raises the first failure.
    """

    def __init__(self, folder: Path, chunk_rows: int, compression: str, threads: int = 1):
        self.folder, self.chunk_rows, self.compression = folder, chunk_rows, compression
        self.rows, self.files = 0, []
        self._part: list[pa.RecordBatch] = []
        self._in_part = 0
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="skeleton-part")
        self._slots = threading.BoundedSemaphore(max(1, threads))
        self._pending: list[Future] = []

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._hand_over()
                for future in self._pending:
                    future.result()
        finally:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)

    def write(self, batch: pa.RecordBatch) -> None:
        offset = 0
        while offset < batch.num_rows:
            take = min(self.chunk_rows - self._in_part, batch.num_rows - offset)
            self._part.append(batch.slice(offset, take))
            offset += take
            self._in_part += take
            self.rows += take
            if self._in_part == self.chunk_rows:
                self._hand_over()

    def _hand_over(self) -> None:
        """The part's rows are in: a writer thread writes it."""
        if not self._part:
            return
        name = f"part-{len(self.files)}-0.parquet"
        self.files.append(name)
        batches, self._part, self._in_part = self._part, [], 0
        self._slots.acquire()
        future = self._pool.submit(write_part, self.folder / name, batches, self.compression)
        future.add_done_callback(lambda _: self._slots.release())
        self._pending.append(future)
