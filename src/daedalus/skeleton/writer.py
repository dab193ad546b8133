"""The skeleton day's files: sorted batches, in standard Arrow types, cut into parts.

`PartWriter` writes `part-N-0.parquet` files of at most `skeleton_chunk_rows` rows each, the
bound docs/data-contract.md gives a skeleton file, whatever sizes DuckDB's batches come in.
"""

from __future__ import annotations

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


class PartWriter:
    """`part-N-0.parquet` files of at most `chunk_rows` rows each."""

    def __init__(self, folder: Path, chunk_rows: int, compression: str):
        self.folder, self.chunk_rows, self.compression = folder, chunk_rows, compression
        self.rows, self.files = 0, []
        self._writer: pq.ParquetWriter | None = None
        self._in_part = 0

    def write(self, batch: pa.RecordBatch) -> None:
        offset = 0
        while offset < batch.num_rows:
            if self._writer is None:
                name = f"part-{len(self.files)}-0.parquet"
                self._writer = pq.ParquetWriter(
                    self.folder / name, batch.schema, compression=self.compression
                )
                self.files.append(name)
            take = min(self.chunk_rows - self._in_part, batch.num_rows - offset)
            self._writer.write_batch(batch.slice(offset, take))
            offset += take
            self._in_part += take
            self.rows += take
            if self._in_part == self.chunk_rows:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._in_part = 0
