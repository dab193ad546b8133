"""The enrich stage's Ray Data IO: the skeleton day read in order, the enriched day written.

The read is `skeleton_source`, a datasource of pieces of whole row groups, sized from the
files' footers. The write is `parquet_sink`, whose write tasks expand the actors' compact
blocks (`daedalus.enrich.batch`) into list<halffloat> columns with `write_part`, and name the
files so that they sort like the rows: with `preserve_order` on (`configure_ray_data`), every
file is a contiguous, chronological range of the day.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from daedalus.core.errors import DaedalusError
from daedalus.enrich.batch import expand_table, handed_over
from daedalus.enrich.plan import EnrichPlan
from daedalus.layout.days import day_path
from daedalus.layout.manifest import read_manifest
from daedalus.layout.object_days import manifest_files
from daedalus.storage.objects import ObjectPath, open_parquet
from daedalus.store.table import EmbeddingTable

# Rows per parquet row group of the enriched output (~46 MB of two 1152-d float16 columns).
ROW_GROUP_ROWS = 10_000


def skeleton_files(skeleton_root: Path | ObjectPath, day: dt.date) -> list[Path | ObjectPath]:
    """The skeleton day's files in row order: `dt=` folder (manifest order), else flat file;
    in object storage, the parts its committed manifest names."""
    folder = day_path(skeleton_root, day)
    if isinstance(folder, ObjectPath):
        return manifest_files(folder, read_manifest(folder) or {})
    if folder.is_dir():
        manifest = read_manifest(folder)
        if manifest and manifest.get("files"):
            return [folder / f for f in manifest["files"]]
        return sorted(folder.glob("*.parquet"), key=natural_key)
    flat = Path(skeleton_root) / f"{day:%Y-%m-%d}.parquet"
    return [flat] if flat.is_file() else []


def natural_key(path: Path) -> list:
    """Sort key of a file name with its numbers compared as numbers (part-10 after part-9)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def check_skeleton(files: list[Path], plan: EnrichPlan) -> int:
    """Every file has the sink's columns and the enrichments' inputs; returns the row count."""
    rows = 0
    produced = plan.produced
    for path in files:
        meta = open_parquet(path)
        schema = meta.schema_arrow
        for name in plan.columns:
            if name not in produced and schema.get_field_index(name) < 0:
                raise DaedalusError(f"{path}: {name}: column missing from the skeleton day (fix:"
                                    " rerun the skeleton stage for it, e.g. without --enrich-only)")
        for e in plan.enrichments:
            field = schema.field(e.input_column) if e.input_column in schema.names else None
            want_list = e.kind == "avg_pool"
            ok = field is not None and (
                (want_list and pa.types.is_list(field.type)
                 and pa.types.is_integer(field.type.value_type))
                or (not want_list and pa.types.is_integer(field.type)))
            if not ok:
                kind = "list<int64>" if want_list else "int64"
                got = field.type if field else "no column"
                raise DaedalusError(f"{path}: {e.input_column}: enrichment {e.name!r} needs a"
                                    f" {kind} column, got {got} (fix: rerun the skeleton stage)")
        rows += meta.metadata.num_rows
    return rows


def configure_ray_data():
    """This process's Ray Data context for the stage: order kept, no progress output, the
    datasource API `skeleton_source` implements."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.use_datasource_v2 = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ctx


def skeleton_source(files: list[Path], columns: list[str], batch_rows: int):
    """A Ray Data datasource over the skeleton day's files, in order: one read task per run of
    whole row groups of about `batch_rows` rows (at least one group), reading only `columns`.
    Returns (the datasource, its number of pieces).

    Not `read_parquet`, for two reasons measured on the bench day: it samples files in a Ray
    task before it returns, and on a process's first day that task waited seconds for a
    worker process to boot and import Ray Data, holding back the whole plan (here every
    piece's rows and size come from the footers); and it merges a file's batches into ~128 MiB
    blocks, so an actor got ~300K rows at once and the writers waited for all of them. A
    piece per block keeps the stream as fine as the batches."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    pieces = skeleton_pieces(files, columns, batch_rows)

    class SkeletonDay(Datasource):
        def get_name(self) -> str:
            return "SkeletonDay"

        def estimate_inmemory_data_size(self) -> int:
            return sum(size for *_, size in pieces)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list:
            return [ReadTask(functools.partial(read_piece, path, groups, columns, batch_rows),
                             BlockMetadata(num_rows=rows, size_bytes=size, input_files=[str(path)],
                                           exec_stats=None),
                             per_task_row_limit=per_task_row_limit)
                    for path, groups, rows, size in pieces]

    return SkeletonDay(), len(pieces)


def skeleton_pieces(files: list[Path | ObjectPath], columns: list[str], batch_rows: int
                    ) -> list[tuple[Path | ObjectPath, tuple[int, ...], int, int]]:
    """The day in pieces, in row order: (file, its row groups, rows, uncompressed bytes of
    `columns`), each piece a run of whole row groups of at least `batch_rows` rows (or a
    file's last groups), sized from the footers alone."""
    pieces = []
    for path in files:
        meta = open_parquet(path).metadata
        wanted = [i for i in range(meta.num_columns)
                  if meta.schema.column(i).path.split(".")[0] in columns]
        groups, rows, size = [], 0, 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            groups.append(g)
            rows += group.num_rows
            size += sum(group.column(i).total_uncompressed_size for i in wanted)
            if rows >= batch_rows or g == meta.num_row_groups - 1:
                pieces.append((path, tuple(groups), rows, size))
                groups, rows, size = [], 0, 0
    return pieces


def read_piece(path: Path | ObjectPath, groups: tuple[int, ...], columns: list[str],
               batch_rows: int) -> Iterator[pa.Table]:
    """One piece's `columns`, `batch_rows` rows at a time."""
    for batch in open_parquet(path).iter_batches(batch_size=batch_rows, row_groups=groups,
                                                   columns=columns):
        yield pa.Table.from_batches([batch])


def parquet_sink(folder: Path | ObjectPath, compression: str, plain: list[str],
                 handoff: tuple[Any, str] | None = None):
    """The write side of the plan: each block the actors return (compact form) is expanded to
    the output's list<halffloat> columns and written as `part-<task>-<block>.parquet`,
    numbered by write task so names sort like the rows. Expanding here rather than in the
    actor keeps the day's ~4.6 GB of float16 vectors out of the object store: only each
    batch's distinct window means cross it, and looked-up vectors are gathered straight from
    the day's preloaded matrix (`handoff`), which the writers map zero-copy as the actors do."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class EnrichedParquetSink(Datasink[int]):
        def write(self, blocks, ctx) -> int:
            tables = handed_over(handoff) if handoff is not None else {}
            rows = sum(write_part(BlockAccessor.for_block(block).to_arrow(),
                                  folder / f"part-{ctx.task_idx:05d}-{i}.parquet",
                                  compression, plain, tables)
                       for i, block in enumerate(blocks))
            del tables
            # An idle worker never gives its allocator's free pages back on its own, and the
            # raylet keeps several writers alive between tasks (see `idle_workers`).
            pa.default_memory_pool().release_unused()
            return rows

    return EnrichedParquetSink()


def import_writer() -> None:
    """Import what a write task needs (Ray Data's datasink, this module): run as a task in
    the worker processes that will write, before they do."""
    parquet_sink(Path("."), "zstd", [])


def write_part(table: pa.Table, path: Path | ObjectPath, compression: str, plain: list[str],
               tables: dict[str, EmbeddingTable] | None = None) -> int:
    """Write one compact block (`compact_table`'s form) as a parquet file of list<halffloat>
    columns, expanding and writing `ROW_GROUP_ROWS` rows at a time (`tables`: the shared
    stores its row-number columns point into). Embedding columns get neither dictionary
    pages nor statistics (`plain` lists the columns that do).

    Row groups of a whole 50K-row batch (~230 MB expanded) cost a third more: buffers that
    large go straight back to the OS when freed, so every batch paid its page faults again
    (on 2 CPUs, ~40% of the writer's time was system time)."""
    if table.num_rows == 0:
        return 0
    schema = expand_table(table.slice(0, 0), tables).schema
    sink = path.open_output() if isinstance(path, ObjectPath) else path
    with pq.ParquetWriter(sink, schema, compression=compression, use_dictionary=plain,
                          write_statistics=plain) as writer:
        for start in range(0, table.num_rows, ROW_GROUP_ROWS):
            writer.write_table(expand_table(table.slice(start, ROW_GROUP_ROWS), tables),
                               row_group_size=ROW_GROUP_ROWS)
    if isinstance(path, ObjectPath):
        sink.close()  # the upload completes here: the part exists only once it is whole
    return table.num_rows


def written_parts(folder: Path | ObjectPath) -> list[tuple[str, int]]:
    """(name, rows) of every part in a staging folder or run prefix, in row order."""
    if isinstance(folder, ObjectPath):
        paths = [i.path for i in folder.iter_objects() if i.path.name.endswith(".parquet")]
    else:
        paths = list(folder.glob("*.parquet"))
    paths.sort(key=lambda p: natural_key(Path(p.name)))
    return [(p.name, open_parquet(p).metadata.num_rows) for p in paths]
