"""Audits of one written training day against its raw sources (the Dagster asset checks).

Independent of the compiled DAG: every rule is re-derived from the registry and the
config (docs/data-contract.md), so a bug in a stage cannot hide itself. Output is read with
DuckDB, projecting only the columns an audit needs; the embedding columns are never
loaded except to count their nulls.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from daedalus.core.config import Config, parse_duration
from daedalus.core.registry import ARROW_TYPES, FeatureView, Registry, aggregation_spec
from daedalus.layout.days import day_path
from daedalus.layout.manifest import read_manifest
from daedalus.layout.object_days import committed, manifest_files
from daedalus.layout.sources import parquet_files, partition_days, sources_root
from daedalus.storage.objects import ObjectPath, open_parquet, parquet_dataset

AUDIT_BATCH_ROWS = 500_000  # output rows per audited batch: bounds the audit's memory
EXAMPLES = 5  # leaked rows shown per feature group


@dataclass(frozen=True)
class WrittenDay:
    """What parquet footers say about a published day folder."""

    path: Path
    exists: bool
    rows: int
    columns: tuple[str, ...]
    files: tuple[Path, ...]
    schema: pa.Schema | None = None     # the first file's Arrow schema (every file shares it)


def written_day(root: Path | ObjectPath, day: dt.date) -> WrittenDay:
    """Row count and schema of `<root>/dt=DAY/*.parquet` from the footers alone; in object
    storage, of the parts the day's committed manifest names."""
    if isinstance(root, ObjectPath):
        folder = day_path(root, day)
        manifest = read_manifest(folder) if committed(folder) else None
        files = tuple(manifest_files(folder, manifest or {}))
        exists = manifest is not None
    else:
        folder = day_path(Path(root), day)
        files = tuple(sorted(folder.glob("*.parquet"))) if folder.is_dir() else ()
        exists = folder.is_dir()
    rows = 0
    schema = None
    for path in files:
        meta = open_parquet(path).metadata
        rows += meta.num_rows
        if schema is None:
            schema = meta.schema.to_arrow_schema().remove_metadata()
    columns = tuple(schema.names) if schema is not None else ()
    return WrittenDay(path=folder, exists=exists, rows=rows, columns=columns, files=files,
                      schema=schema)


def _scan(con: duckdb.DuckDBPyConnection, files: tuple, columns: list[str],
          name: str = "written") -> tuple[str, dict]:
    """The files as a DuckDB relation and its parameters: `read_parquet($files)` of local
    files; in object storage, a pyarrow dataset over S3 of just `columns`, streamed into
    DuckDB as `name`."""
    if files and isinstance(files[0], ObjectPath):
        con.register(name, parquet_dataset(list(files), columns))
        return name, {}
    return "read_parquet($files, hive_partitioning = false)", {"files": [str(f) for f in files]}


@dataclass(frozen=True)
class Finding:
    """One audited feature group: rows it applied to, and rows no visible source row explains."""

    group: str
    rule: str
    checked_rows: int
    leaked_rows: int
    examples: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class LeakageReport:
    day: dt.date
    output_rows: int
    audited_rows: int
    findings: tuple[Finding, ...] = field(default=())
    sample: str = "every row"  # which rows were audited: every row, or the sample taken

    @property
    def leaked_rows(self) -> int:
        return sum(f.leaked_rows for f in self.findings)

    @property
    def passed(self) -> bool:
        return self.leaked_rows == 0


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connect(config: Config) -> duckdb.DuckDBPyConnection:
    settings = config.runtime.compute.duckdb_config
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    if settings.threads:
        con.execute(f"SET threads = {int(settings.threads)}")
    con.execute("SET memory_limit = $v", {"v": settings.memory_limit})
    settings.temp_directory.mkdir(parents=True, exist_ok=True)
    con.execute("SET temp_directory = $v", {"v": str(settings.temp_directory)})
    return con


def source_files(config: Config, view: FeatureView, first: dt.date | None,
                 last: dt.date) -> list:
    """The view's parquet files in `dt` partitions first..last (first None: from the start):
    local paths, or object-store paths."""
    root = sources_root(config) / view.source
    days = [d for d in partition_days(root) if d <= last and (first is None or d >= first)]
    return [p for d in days for p in parquet_files(day_path(root, d))]


def _register_source(con: duckdb.DuckDBPyConnection, name: str, view: FeatureView,
                     files: list[str]) -> None:
    """A view's rows as table `name`; an empty typed table when no partition is present."""
    cols = [c.name for c in view.columns]
    if files and isinstance(files[0], ObjectPath):
        scan, params = _scan(con, tuple(files), cols, name=f"{name}_scan")
        con.execute(f"CREATE TEMP TABLE {_q(name)} AS SELECT {', '.join(map(_q, cols))}"
                    f" FROM {scan}", params)
    elif files:
        con.execute(f"CREATE TEMP TABLE {_q(name)} AS SELECT {', '.join(map(_q, cols))}"
                    " FROM read_parquet($files, hive_partitioning = false, union_by_name = true)",
                    {"files": [str(f) for f in files]})
    else:
        schema = pa.schema([(c.name, ARROW_TYPES[c.dtype]) for c in view.columns])
        con.register(f"{name}_arrow", schema.empty_table())
        con.execute(f"CREATE TEMP TABLE {_q(name)} AS SELECT * FROM {_q(name + '_arrow')}")


def impression_count(config: Config, registry: Registry, service: str, day: dt.date) -> int:
    """Spine rows with a timestamp in [D 00:00, D+1 00:00) UTC, counted in the `dt=D` partition."""
    view = registry.view(registry.service(service).spine.view)
    files = source_files(config, view, day, day)
    if not files:
        return 0
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    ts = _q(view.timestamp_field)
    with _connect(config) as con:
        scan, params = _scan(con, tuple(files), [view.timestamp_field])
        return con.execute(
            f"SELECT count(*) FROM {scan} WHERE {ts} >= $start AND {ts} < $end",
            {**params, "start": start, "end": start + dt.timedelta(days=1)}).fetchone()[0]


def leakage_audit(config: Config, registry: Registry, service: str, day: dt.date, output_root: Path,
                  max_rows: int | None = None,
                  batch_rows: int = AUDIT_BATCH_ROWS) -> LeakageReport:
    """Prove every feature value of the written day could only come from the row's past.

    For each point-in-time view: a row with any non-null feature must match (key and
    every feature value) some source row with timestamp < t and >= t - ttl. For each
    rolling list: every id, counted with multiplicity, must be a row of the entity in
    [t - window, t). For each rolling count: the count may not exceed the rows in that
    window.

    Every row is audited, streamed from the day's files `batch_rows` at a time, so memory
    holds the sources the rules read and one batch. `max_rows` opts into a repeatable
    reservoir sample of that many rows when the day is larger (the report says which).
    """
    svc = registry.service(service)
    spine = registry.view(svc.spine.view)
    written = written_day(output_root, day)
    if written.rows == 0:
        return LeakageReport(day=day, output_rows=0, audited_rows=0)
    aggs = {a: aggregation_spec(svc, a, config) for a in svc.aggregations}
    t = _q(spine.timestamp_field)
    pit = [(registry.view(v), [f for vv, f in svc.feature_refs() if vv == v])
           for v in svc.feature_views()]
    needed = {spine.timestamp_field}
    for view, feats in pit:
        needed |= {e.name for e in view.entities} | set(feats)
    for name, spec in aggs.items():
        needed |= {name, spec.entity}
    cols = [c for c in written.columns if c in needed]
    sampled = max_rows is not None and written.rows > max_rows
    totals: dict[int, Finding] = {}
    audited = 0
    with _connect(config) as con:
        # Build every join's hash table on the source (the right side as written): the
        # optimizer, misjudging an unnest's row count, would build it on the listed ids.
        con.execute("SET disabled_optimizers = 'build_side_probe_side'")
        rules: list[Callable[[], Finding]] = []
        for view, feats in pit:
            table = _source_table(con, config, view, _ttl_start(view, day), day)
            rules.append(functools.partial(_audit_point_in_time, con, table, view, feats, t))
        for name, spec in aggs.items():
            view = registry.view(spec.view)
            window = parse_duration(spec.window)
            table = _source_table(con, config, view, day - window, day)
            audit = _audit_list if spec.function == "last_n_list" else _audit_count
            args = (spec.column,) if spec.function == "last_n_list" else ()
            rules.append(functools.partial(audit, con, table, view, name, spec.entity, *args,
                                           t, window))
        batches = (_sample(con, written.files, cols, int(max_rows)) if sampled
                   else _batches(con, written.files, cols, batch_rows))
        for rows in batches:
            audited += rows
            for i, rule in enumerate(rules):
                found = rule()
                so_far = totals.get(i)
                totals[i] = found if so_far is None else dataclasses.replace(
                    so_far, checked_rows=so_far.checked_rows + found.checked_rows,
                    leaked_rows=so_far.leaked_rows + found.leaked_rows,
                    examples=(so_far.examples + found.examples)[:EXAMPLES])
    sample = (f"repeatable reservoir sample of {audited:,} of {written.rows:,} rows"
              f" (max_rows={max_rows:,})" if sampled else f"every row ({audited:,})")
    return LeakageReport(day=day, output_rows=written.rows, audited_rows=audited,
                         findings=tuple(totals[i] for i in range(len(rules))), sample=sample)


def _batches(con: duckdb.DuckDBPyConnection, files: tuple[Path, ...], cols: list[str],
             batch_rows: int) -> Iterator[int]:
    """Fill table `audited` with the day's rows, `batch_rows` at a time (DuckDB reads only the
    row groups a batch spans); `rid` is the row's 1-based index in the day. Yields row counts."""
    offset = 0
    for path in files:
        if isinstance(path, ObjectPath):  # read through pyarrow's S3 layer, batch by batch
            for batch in open_parquet(path).iter_batches(batch_size=batch_rows, columns=cols):
                rid = pa.array(range(offset + 1, offset + 1 + batch.num_rows), pa.int64())
                con.register("audited_batch", pa.Table.from_batches([batch]).add_column(0, "rid", rid))
                con.execute(f"CREATE OR REPLACE TEMP TABLE audited AS SELECT rid,"
                            f" {', '.join(map(_q, cols))} FROM audited_batch")
                con.unregister("audited_batch")
                offset += batch.num_rows
                yield batch.num_rows
            continue
        rows = pq.read_metadata(path).num_rows
        for start in range(0, rows, batch_rows):
            con.execute(f"CREATE OR REPLACE TEMP TABLE audited AS SELECT"
                        f" $offset + file_row_number + 1 AS rid, {', '.join(map(_q, cols))}"
                        f" FROM read_parquet($file, file_row_number = true)"
                        f" WHERE file_row_number >= $start AND file_row_number < $stop",
                        {"offset": offset, "file": str(path), "start": start,
                         "stop": start + batch_rows})
            yield min(batch_rows, rows - start)
        offset += rows


def _sample(con: duckdb.DuckDBPyConnection, files: tuple[Path, ...], cols: list[str],
            rows: int) -> Iterator[int]:
    """Fill table `audited` with a repeatable reservoir sample of `rows` rows (`rid` numbers
    the sample)."""
    scan, params = _scan(con, files, cols)
    con.execute(f"CREATE OR REPLACE TEMP TABLE audited AS SELECT row_number() OVER () AS rid, *"
                f" FROM (SELECT {', '.join(map(_q, cols))} FROM {scan}"
                f" USING SAMPLE reservoir({rows} ROWS) REPEATABLE (7))", params)
    yield rows


def _ttl_start(view: FeatureView, day: dt.date) -> dt.date | None:
    return day - view.ttl_delta - dt.timedelta(days=1) if view.ttl_delta else None


def _source_table(con: duckdb.DuckDBPyConnection, config: Config, view: FeatureView,
                  first: dt.date | None, last: dt.date) -> str:
    """The view's rows in partitions first..last as a temp table, loaded once per range."""
    table = f"src_{view.name}_{first or 'all'}_{last}".replace("-", "")
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = $t",
                         {"t": table}).fetchall()[0][0]
    if not exists:
        _register_source(con, table, view, source_files(config, view, first, last))
    return table


def _window_sql(ts: str, t: str, bound: dt.timedelta | None) -> str:
    lower = f" AND s.{ts} >= o.{t} - to_microseconds({int(bound / dt.timedelta(microseconds=1))})"
    return f"s.{ts} < o.{t}" + (lower if bound else "")


def _examples(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[dict[str, Any], ...]:
    rel = con.execute(sql + f" ORDER BY rid LIMIT {EXAMPLES}")
    names = [d[0] for d in rel.description]
    return tuple({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                  for k, v in zip(names, row, strict=True)} for row in rel.fetchall())


def _audit_point_in_time(con: duckdb.DuckDBPyConnection, table: str, view: FeatureView,
                         feats: list[str], t: str) -> Finding:
    keys = [e.name for e in view.entities]
    ts = _q(view.timestamp_field)
    on = " AND ".join([f"s.{_q(k)} = o.{_q(k)}" for k in keys]
                      + [f"s.{_q(f)} IS NOT DISTINCT FROM o.{_q(f)}" for f in feats]
                      + [_window_sql(ts, t, view.ttl_delta)])
    with_values = " OR ".join(f"o.{_q(f)} IS NOT NULL" for f in feats)
    con.execute(f"CREATE OR REPLACE TEMP TABLE leaked AS SELECT o.* FROM audited o"
                f" ANTI JOIN {_q(table)} s ON {on} WHERE {with_values}")
    checked = con.execute(f"SELECT count(*) FROM audited o WHERE {with_values}").fetchall()[0][0]
    leaked = con.execute("SELECT count(*) FROM leaked").fetchall()[0][0]
    shown = ", ".join(["rid", t, *map(_q, keys), *map(_q, feats)])
    window = f"in [t - {view.ttl}, t)" if view.ttl else "before t"
    rule = f"values match a {view.name} row with {view.timestamp_field} {window}"
    return Finding(group=view.name, rule=rule, checked_rows=checked, leaked_rows=leaked,
                   examples=_examples(con, f"SELECT {shown} FROM leaked") if leaked else ())


def _audit_list(con: duckdb.DuckDBPyConnection, table: str, view: FeatureView, name: str,
                entity: str, column: str, t: str, window: dt.timedelta) -> Finding:
    """Lists without a repeated id need each id visible once: an anti join, no grouping. The
    few with a repeat (or a null) count each id's copies against its visible rows."""
    ts, e, c, n = _q(view.timestamp_field), _q(entity), _q(column), _q(name)
    visible = f"s.{e} = o.{e} AND s.{c} = o.item AND {_window_sql(ts, t, window)}"
    # A list repeats an id where the id's first position is before its own (cheaper than
    # list_unique or a group by).
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE repeats AS SELECT DISTINCT rid FROM (
            SELECT rid, {n} AS items, unnest({n}) AS item, generate_subscripts({n}, 1) AS pos
            FROM audited WHERE len({n}) > 1)
        WHERE list_position(items, item) < pos""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE leaked AS
        WITH single AS (
            SELECT rid, {e}, {t}, unnest({n}) AS item FROM audited
            ANTI JOIN repeats USING (rid) WHERE len({n}) > 0),
        repeated AS (
            SELECT rid, {e}, {t}, unnest({n}) AS item FROM audited SEMI JOIN repeats USING (rid)),
        wanted AS (
            SELECT rid, {e}, {t}, item, count(*) AS copies FROM repeated GROUP BY ALL),
        found AS (
            SELECT o.rid, o.item, o.copies, count(s.{ts}) AS visible
            FROM wanted o LEFT JOIN {_q(table)} s ON {visible}
            GROUP BY ALL)
        SELECT o.rid, o.item, 1::BIGINT AS copies, 0::BIGINT AS visible
        FROM single o ANTI JOIN {_q(table)} s ON {visible}
        UNION ALL
        SELECT rid, item, copies, visible FROM found WHERE visible < copies""")
    checked = con.execute(f"SELECT count(*) FROM audited WHERE len({n}) > 0").fetchall()[0][0]
    leaked = con.execute("SELECT count(DISTINCT rid) FROM leaked").fetchall()[0][0]
    return Finding(group=name, rule=f"each id is a {view.name} row of the {entity} in"
                   f" [t - {window.days}d, t)", checked_rows=checked, leaked_rows=leaked,
                   examples=_examples(con, "SELECT * FROM leaked") if leaked else ())


def _audit_count(con: duckdb.DuckDBPyConnection, table: str, view: FeatureView, name: str,
                 entity: str, t: str, window: dt.timedelta) -> Finding:
    """Rows of the entity in [t - window, t) = rows before t - rows before t - window: two
    as-of lookups into the source's running count per entity, no join fan-out."""
    ts, e, n = _q(view.timestamp_field), _q(entity), _q(name)
    lower = f"o.{t} - to_microseconds({int(window / dt.timedelta(microseconds=1))})"
    running = f"running_{table}"
    con.execute(f"""
        CREATE TEMP TABLE IF NOT EXISTS {_q(running)} AS
        SELECT {e}, {ts}, count(*) OVER (PARTITION BY {e} ORDER BY {ts}) AS upto
        FROM {_q(table)}""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE leaked AS
        WITH o AS (SELECT rid, {e}, {t}, {lower} AS since, {n} AS reported
                   FROM audited o WHERE {n} > 0),
        before_t AS (
            SELECT o.*, coalesce(s.upto, 0) AS upto_t FROM o
            ASOF LEFT JOIN {_q(running)} s ON s.{e} = o.{e} AND s.{ts} < o.{t}),
        counted AS (
            SELECT o.*, o.upto_t - coalesce(s.upto, 0) AS visible FROM before_t o
            ASOF LEFT JOIN {_q(running)} s ON s.{e} = o.{e} AND s.{ts} < o.since)
        SELECT rid, reported, visible FROM counted WHERE reported > visible""")
    checked = con.execute(f"SELECT count(*) FROM audited WHERE {n} > 0").fetchall()[0][0]
    leaked = con.execute("SELECT count(*) FROM leaked").fetchall()[0][0]
    return Finding(group=name, rule=f"count <= {view.name} rows of the {entity} in"
                   f" [t - {window.days}d, t)", checked_rows=checked, leaked_rows=leaked,
                   examples=_examples(con, "SELECT * FROM leaked") if leaked else ())


def embedding_coverage(config: Config, root: Path, day: dt.date,
                       columns: list[str]) -> dict[str, float | None]:
    """Share of the day's rows with a non-null value in each embedding column.

    Null counts come from DuckDB reading only those columns, streamed; parquet
    statistics are not used because the enrich stage may write them off for speed.
    None marks a column the day does not have.
    """
    written = written_day(root, day)
    present = [c for c in columns if c in written.columns]
    out: dict[str, float | None] = {c: None for c in columns}
    if not written.rows or not present:
        return out
    if isinstance(root, ObjectPath):  # DuckDB has no Arrow float16: pyarrow counts them
        row = [0] * len(present)
        for path in written.files:
            for batch in open_parquet(path).iter_batches(columns=present):
                row = [n + len(col) - col.null_count for n, col in zip(row, batch.columns,
                                                                      strict=True)]
    else:
        counts = ", ".join(f"count({_q(c)})" for c in present)
        with _connect(config) as con:
            scan, params = _scan(con, written.files, present)
            row = con.execute(f"SELECT {counts} FROM {scan}", params).fetchone()
    out.update({c: n / written.rows for c, n in zip(present, row, strict=True)})
    return out
