"""The source an embedding store is built from, and the one query that reads it.

A source (`siglip2_vectors`) is `<sources_root>/<source>/dt=YYYY-MM-DD/*.parquet`. Every file
is checked before the build (id an integer with no nulls, vectors float16 of the store's
size), and the file listing is fingerprinted so a later run can tell that the source moved on.
One DuckDB query over the hive partitions keeps each id's row from its latest `dt`, and
`store_batches` turns DuckDB's record batches into the store's FixedSizeList<float16> rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from daedalus.core.config import Config, EmbeddingStoreSpec
from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.core.registry import column_null_count, open_parquet
from daedalus.layout.sources import mirror, sources_root
from daedalus.storage.objects import ObjectPath


def source_path(config: Config, spec: EmbeddingStoreSpec) -> Path:
    """`source_parquet` is a source folder under `sources_root` unless it is absolute. Under an
    object-store `sources_root` it is mirrored to `<store_root>/.sources/<folder>` first (only
    changed objects are downloaded), and the store is built from that local copy."""
    path = Path(spec.source_parquet)
    if path.is_absolute():
        return path
    root = sources_root(config)
    if isinstance(root, ObjectPath):
        return mirror(root / str(path), Path(config.base.store_root) / ".sources" / path)
    return root / path


def source_files(source: Path) -> list[Path]:
    """Every `dt=YYYY-MM-DD/*.parquet` file of the source, in partition order."""
    if not source.is_dir():
        raise DaedalusError(f"{source}: embedding source folder does not exist (fix: point"
                            " sources_root / DAEDALUS_SOURCES_ROOT at the sources, or set"
                            " source_parquet in embedding_stores)")
    files = []
    for folder in sorted(source.iterdir()):
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue
        try:
            if not folder.name.startswith("dt="):
                raise ValueError
            dt.date.fromisoformat(folder.name[3:])
        except ValueError:
            raise DaedalusError(f"{folder}: not a dt=YYYY-MM-DD partition (fix: rename or move"
                                " it; the latest dt wins, so partitions must be dates)") from None
        files += sorted(folder.glob("*.parquet"))
    if not files:
        raise DaedalusError(f"{source}: no dt=YYYY-MM-DD/*.parquet files to build the store"
                            " from (fix: write the embedding source, or point sources_root at it)")
    return files


def check_source_schema(files: list[Path], spec: EmbeddingStoreSpec) -> None:
    """Each file's footer: an integer id without nulls and float16 vectors of the right size."""
    for path in files:
        parquet = open_parquet(path)
        fields = {f.name: f.type for f in parquet.schema_arrow}
        id_type = fields.get(spec.id_column)
        if id_type is None or not pa.types.is_integer(id_type):
            raise DaedalusError(f"{path}: {spec.id_column}: missing or not an integer column"
                                f" (got {id_type}) (fix: write {spec.id_column} as int64, or set"
                                " id_column in embedding_stores)")
        emb = fields.get(spec.embedding_column)
        ok = (emb is not None and (pa.types.is_list(emb) or pa.types.is_fixed_size_list(emb)
                                   or pa.types.is_large_list(emb))
              and pa.types.is_float16(emb.value_type))
        if not ok:
            raise DaedalusError(f"{path}: {spec.embedding_column}: expected"
                                f" fixed_size_list<halffloat>[{spec.embedding_dim}] or"
                                f" list<halffloat>, got {emb} (fix: write float16 vectors, or set"
                                " embedding_column in embedding_stores)")
        if pa.types.is_fixed_size_list(emb) and emb.list_size != spec.embedding_dim:
            raise DaedalusError(f"{path}: {spec.embedding_column}: vectors have {emb.list_size}"
                                f" values, the store expects embedding_dim {spec.embedding_dim}"
                                " (fix: set embedding_dim to the vectors' size)")
        nulls = column_null_count(parquet, spec.id_column)
        if nulls:
            raise DaedalusError(f"{path}: {spec.id_column}: {nulls:,} null id(s); a vector needs"
                                " its artwork id (fix: drop or repair those rows in the source)")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(config: Config, work: Path):
    """The build's DuckDB connection, spilling to `work`."""
    import duckdb

    duck = config.runtime.compute.duckdb_config
    con = duckdb.connect(config={"threads": duck.threads} if duck.threads else {})
    con.execute(f"SET memory_limit = {_quote(duck.memory_limit)}")
    con.execute(f"SET temp_directory = {_quote(str(work))}")
    con.execute("SET preserve_insertion_order = false")
    return con


def build_query(source: Path, spec: EmbeddingStoreSpec) -> str:
    """The store's one DuckDB query: each id's row from its latest dt (then file, row)."""
    scan = (f"read_parquet({_quote(str(source / 'dt=*' / '*.parquet'))}, hive_partitioning = true,"
            " filename = true, file_row_number = true)")
    ident, emb = f'"{spec.id_column}"', f'"{spec.embedding_column}"'
    return f"""WITH latest AS (
    SELECT {ident} AS id, dt, file_row_number AS row_number, hash(filename) AS file
    FROM {scan}
    WHERE {emb} IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY {ident}
                               ORDER BY dt DESC, filename DESC, file_row_number DESC) = 1
)
SELECT v.{ident}::BIGINT AS id, v.{emb} AS embedding, v.dt::VARCHAR AS dt
FROM {scan} AS v
SEMI JOIN latest
    ON v.{ident} = latest.id AND v.dt = latest.dt
   AND v.file_row_number = latest.row_number AND hash(v.filename) = latest.file"""


def store_batches(reader: pa.RecordBatchReader, spec: EmbeddingStoreSpec, source: Path,
                  schema: pa.Schema, failed: list[DaedalusError]) -> Iterator[pa.RecordBatch]:
    """DuckDB hands float16 vectors over as float32 lists: check sizes, cast back, exactly.

    Lance wraps an error raised here into an OSError; it is kept in `failed` for the caller.
    """
    try:
        yield from _checked_batches(reader, spec, source, schema)
    except DaedalusError as exc:
        failed.append(exc)
        raise


def _checked_batches(reader: pa.RecordBatchReader, spec: EmbeddingStoreSpec, source: Path,
                     schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    dim = spec.embedding_dim
    for batch in reader:
        emb = batch.column(1)
        if isinstance(emb, pa.ChunkedArray):
            emb = emb.combine_chunks()
        lengths = np.diff(emb.offsets.to_numpy())
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            i = int(bad[0])
            raise DaedalusError(
                f"{source}/dt={batch.column(2)[i].as_py()}: {spec.embedding_column}: id"
                f" {batch.column(0)[i].as_py()} has {lengths[i]} values, the store expects"
                f" embedding_dim {dim} (fix: re-export that partition or set embedding_dim)")
        values = emb.values.slice(emb.offsets[0].as_py(), len(emb) * dim)
        halves = values.to_numpy(zero_copy_only=False).astype(np.float16)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(halves), dim)
        yield pa.RecordBatch.from_arrays([batch.column(0), vectors], schema=schema)
        crash_point("store.after_first_batch")
