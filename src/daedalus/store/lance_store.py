"""The Lance embedding stores the enrich stage reads (`embedding_stores` in aggregations.yaml).

A store is built once, on first use or by `daeda store build`, from its source
(`siglip2_vectors`: `<sources_root>/<source>/dt=YYYY-MM-DD/*.parquet`) by one
DuckDB query over the hive partitions: the latest `dt` wins for an id that was
re-embedded, and rows stream as record batches of `build_batch_size` straight
into `lance.write_dataset`, so memory holds the id keys and one batch, never the
vectors. Embeddings are stored as FixedSizeList<float16>[dim], with a BTREE
scalar index on the id. The dataset is written beside its final path and renamed
into place, so a store is complete or absent; Lance needs that rename to be
atomic, which network filesystems do not promise, so their paths are refused.

Reading: `StoreReader` holds the id index (every id, sorted, with its row) and
takes the vectors of a set of ids into an `EmbeddingTable`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from daedalus.core.config import Config, EmbeddingStoreSpec
from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.core.registry import column_null_count, open_parquet
from daedalus.layout.scratch import scratch_dir
from daedalus.store.table import EmbeddingTable

Progress = Callable[[str], None]
METADATA_KEY = b"daedalus.store"
# Rows per Lance take or scan batch. 16K rows of 1152-d float16 (~38 MB) read 1.5-2x faster
# than 64K (~150 MB): buffers that large are mapped fresh and page-faulted on every batch.
TAKE_CHUNK = 16_384
SCAN_FRACTION = 0.25  # above this share of the store, scan it instead of taking rows

# Filesystems without a local atomic rename (Lance commits by renaming a manifest).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "gpfs", "lustre", "ceph", "glusterfs", "beegfs",
    "afs", "9p", "panfs", "wekafs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs",
    "fuse.juicefs", "fuse.rclone", "fuse.cephfs", "fuse.lustre", "fuse.goofys", "fuse.blobfuse",
})


def _silent(_: str) -> None:
    return None


# -- where a store lives ------------------------------------------------------------------------


def store_spec(config: Config, name: str) -> EmbeddingStoreSpec:
    names = [s.name for s in config.aggregations.embedding_stores]
    if name not in names:
        raise DaedalusError(f"{config.aggregation_path}: embedding_stores: no store named {name!r}"
                            f" (fix: use one of {names} or add it to embedding_stores)")
    return config.aggregations.store(name)


def source_path(config: Config, spec: EmbeddingStoreSpec) -> Path:
    """`source_parquet` is a source folder under `sources_root` unless it is absolute."""
    path = Path(spec.source_parquet)
    return path if path.is_absolute() else Path(config.base.sources_root) / path


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding `path` (longest mount point prefix in /proc/mounts)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.abspath(path)
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_local_disk(path: Path, what: str = "embedding store", mounts: str | None = None) -> None:
    """Refuse URIs and network filesystems: Lance needs an atomic rename on local disk."""
    text = str(path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", text):
        raise DaedalusError(f"{text}: {what} path is a URI; the store must be on local disk"
                            " (fix: set DAEDALUS_STORE_ROOT or store_root to a local ext4/xfs"
                            " folder)")
    target = Path(os.path.abspath(path))
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    kind = filesystem_type(probe.resolve() / target.relative_to(probe), mounts)
    if kind in NETWORK_FILESYSTEMS:
        raise DaedalusError(f"{path}: {what} is on a {kind} network filesystem; Lance needs an"
                            " atomic rename on local disk (fix: set DAEDALUS_STORE_ROOT or"
                            " store_root to a local ext4/xfs folder, e.g. under /local)")


# -- the source ---------------------------------------------------------------------------------


def _source_files(source: Path) -> list[Path]:
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


def _check_source_schema(files: list[Path], spec: EmbeddingStoreSpec) -> None:
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


def _source_fingerprint(source: Path, files: list[Path]) -> str:
    listing = [[str(f.relative_to(source)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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


def _store_schema(spec: EmbeddingStoreSpec, metadata: dict[str, Any] | None = None) -> pa.Schema:
    schema = pa.schema([
        pa.field(spec.id_column, pa.int64(), nullable=False),
        pa.field(spec.embedding_column, pa.list_(pa.float16(), spec.embedding_dim)),
    ])
    return schema.with_metadata({METADATA_KEY: json.dumps(metadata)}) if metadata else schema


def _to_store_batches(reader: pa.RecordBatchReader, spec: EmbeddingStoreSpec, source: Path,
                      schema: pa.Schema, failed: list[DaedalusError]) -> Iterator[pa.RecordBatch]:
    """DuckDB hands float16 vectors over as float32 lists: check sizes, cast back, exactly.

    Lance wraps an error raised here into an OSError; it is kept in `failed` for the caller.
    """
    try:
        yield from _store_batches(reader, spec, source, schema)
    except DaedalusError as exc:
        failed.append(exc)
        raise


def _store_batches(reader: pa.RecordBatchReader, spec: EmbeddingStoreSpec, source: Path,
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


# -- build --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One builder per store; a second one waits, then finds the store built."""
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _duckdb(config: Config, work: Path):
    import duckdb

    duck = config.runtime.compute.duckdb_config
    con = duckdb.connect(config={"threads": duck.threads} if duck.threads else {})
    con.execute(f"SET memory_limit = {_quote(duck.memory_limit)}")
    con.execute(f"SET temp_directory = {_quote(str(work))}")
    con.execute("SET preserve_insertion_order = false")
    return con


def build_store(config: Config, name: str, *, force: bool = False,
                progress: Progress = _silent) -> dict:
    """Build the store from its source (or keep the one there unless `force`); return its info."""
    import lance

    spec = store_spec(config, name)
    path = config.store_path(spec)
    check_local_disk(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(path):
        _sweep_builds(path)
        if _is_store(path) and not force:
            return store_info(config, name)
        source = source_path(config, spec)
        files = _source_files(source)
        _check_source_schema(files, spec)
        progress(f"store {name}: building from {len(files)} file(s) under {source} → {path}")
        started = time.perf_counter()
        staging = path.with_name(f".{path.name}.building-{uuid.uuid4().hex[:12]}")
        work = Path(config.runtime.compute.duckdb_config.temp_directory) / staging.name.lstrip(".")
        metadata = {"name": name, "source": str(source.resolve()), "source_files": len(files),
                    "source_fingerprint": _source_fingerprint(source, files),
                    "built_at": dt.datetime.now(dt.UTC).isoformat(), "build_id": uuid.uuid4().hex}
        schema = _store_schema(spec, metadata)
        failed: list[DaedalusError] = []
        with scratch_dir(work):
            con = _duckdb(config, work)
            try:
                reader = con.sql(build_query(source, spec)).to_arrow_reader(spec.build_batch_size)
                batches = pa.RecordBatchReader.from_batches(
                    schema, _to_store_batches(reader, spec, source, schema, failed))
                try:
                    dataset = lance.write_dataset(batches, str(staging), schema=schema, mode="create")
                except OSError:
                    if failed:
                        raise failed[0] from None
                    raise
                dataset.create_scalar_index(spec.id_column, index_type="BTREE")
                rows = dataset.count_rows()
                crash_point("store.before_publish")
                _publish(staging, path)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                con.close()
        progress(f"store {name}: {rows:,} vectors in {time.perf_counter() - started:.1f}s")
    return store_info(config, name)


def _publish(staging: Path, path: Path) -> None:
    if path.exists():
        retired = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
        path.rename(retired)
        staging.rename(path)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(path)


def _sweep_builds(path: Path) -> None:
    """Remove the build folders a killed builder left beside the store (caller holds the lock)."""
    for child in path.parent.glob(f".{path.name}.*"):
        if child.is_dir() and (".building-" in child.name or ".old-" in child.name):
            shutil.rmtree(child, ignore_errors=True)


def _is_store(path: Path) -> bool:
    return (path / "_versions").is_dir()


def ensure_store(config: Config, name: str, progress: Progress = _silent) -> Path:
    """The store's path, built first if it is not there yet; warns when its source moved on."""
    spec = store_spec(config, name)
    path = config.store_path(spec)
    check_local_disk(path)
    if not _is_store(path):
        build_store(config, name, progress=progress)
    else:
        stale = _staleness(config, spec, _metadata(path))
        if stale:
            progress(f"store {name}: {stale}; using it as built (fix: daeda store build --force)")
    return path


# -- inspect ------------------------------------------------------------------------------------


def _metadata(path: Path) -> dict[str, Any]:
    import lance

    raw = (lance.dataset(str(path)).schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def _staleness(config: Config, spec: EmbeddingStoreSpec, metadata: dict[str, Any]) -> str | None:
    source = source_path(config, spec)
    try:
        files = _source_files(source)
    except DaedalusError:
        return None
    if metadata.get("source_fingerprint") != _source_fingerprint(source, files):
        return f"{source} changed since the store was built"
    return None


def store_version(path: Path) -> str:
    """Identifies the store's content: its build and Lance version (for day fingerprints)."""
    import lance

    ds = lance.dataset(str(path))
    meta = json.loads((ds.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return f"{meta.get('build_id', 'unknown')}@v{ds.version}"


def store_info(config: Config, name: str) -> dict:
    """What `daeda store info` shows: where, how big, when built, from what, and if stale."""
    import lance

    spec = store_spec(config, name)
    path = config.store_path(spec)
    info: dict[str, Any] = {"name": name, "path": str(path), "exists": _is_store(path),
                            "source": str(source_path(config, spec))}
    if not info["exists"]:
        info["hint"] = "built on first use, or now with `daeda store build`"
        return info
    ds = lance.dataset(str(path))
    meta = _metadata(path)
    field = ds.schema.field(spec.embedding_column).type
    info.update({
        "rows": ds.count_rows(),
        "embedding_type": str(field),
        "lance_version": ds.version,
        "indices": [{"name": i.name, "fields": list(i.field_names),
                     "type": i.type_url.rsplit(".", 1)[-1].removesuffix("IndexDetails")}
                    for i in ds.describe_indices()],
        "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        "built_at": meta.get("built_at"),
        "source_files": meta.get("source_files"),
        "stale": _staleness(config, spec, meta),
    })
    return info


def render_info(info: dict) -> str:
    if not info.get("exists"):
        return f"{info['name']}: not built at {info['path']} ({info.get('hint', '')})"
    index = ", ".join(f"{i['type']} on {','.join(i['fields'])}" for i in info["indices"]) or "none"
    lines = [
        f"{info['name']}: {info['rows']:,} vectors, {info['bytes'] / 2**20:,.1f} MiB"
        f" at {info['path']}",
        f"  type     {info['embedding_type']}",
        f"  index    {index}",
        f"  built    {info['built_at']} from {info['source_files']} file(s) under {info['source']}",
        f"  fresh    {'no: ' + info['stale'] if info['stale'] else 'yes'}",
    ]
    return "\n".join(lines)


# -- read ---------------------------------------------------------------------------------------


class StoreReader:
    """An opened store: its id index (sorted ids, their rows) and takes by id."""

    def __init__(self, path: Path | str, id_column: str = "id",
                 embedding_column: str = "image_embedding"):
        import lance

        self.path = str(path)
        self.embedding_column = embedding_column
        self.dataset = lance.dataset(self.path)
        self.sorted_ids, self.rows = _id_index(self.path, self.dataset.version, id_column)
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


@functools.lru_cache(maxsize=4)
def _id_index(path: str, version: int, id_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Every id of the store, sorted, and its row offset; cached per store version."""
    import lance

    ids = lance.dataset(path, version=version).to_table(columns=[id_column]).column(0)
    ids = ids.combine_chunks().to_numpy() if ids.num_chunks else np.empty(0, np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], order.astype(np.int64)
