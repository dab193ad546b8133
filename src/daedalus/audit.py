"""Audits of one written training day against its raw sources (the Dagster asset checks).

Independent of the compiled DAG: every rule is re-derived from the registry and the
config (contract 00), so a bug in a stage cannot hide itself. Output is read with
DuckDB, projecting only the columns an audit needs; the embedding columns are never
loaded except to count their nulls.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from daedalus.config import Config, parse_duration
from daedalus.days import day_path, present_days
from daedalus.registry import ARROW_TYPES, FeatureView, Registry

DEFAULT_AUDIT_ROWS = 200_000


@dataclass(frozen=True)
class WrittenDay:
    """What parquet footers say about a published day folder."""

    path: Path
    exists: bool
    rows: int
    columns: tuple[str, ...]
    files: tuple[Path, ...]


def written_day(root: Path, day: dt.date) -> WrittenDay:
    """Row count and schema of `<root>/dt=DAY/*.parquet` from the footers alone."""
    folder = day_path(Path(root), day)
    files = tuple(sorted(folder.glob("*.parquet"))) if folder.is_dir() else ()
    rows = 0
    columns: tuple[str, ...] = ()
    for path in files:
        meta = pq.read_metadata(path)
        rows += meta.num_rows
        if not columns:
            columns = tuple(meta.schema.to_arrow_schema().names)
    return WrittenDay(path=folder, exists=folder.is_dir(), rows=rows, columns=columns, files=files)


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


def _day_range(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def source_files(config: Config, view: FeatureView, first: dt.date | None,
                 last: dt.date) -> list[str]:
    """The view's parquet files in `dt` partitions first..last (first None: from the start)."""
    root = Path(config.base.sources_root) / view.source
    days = sorted(d for d in present_days(root) if d <= last and (first is None or d >= first))
    return [str(p) for d in days for p in sorted(day_path(root, d).glob("*.parquet"))]


def _register_source(con: duckdb.DuckDBPyConnection, name: str, view: FeatureView,
                     files: list[str]) -> None:
    """A view's rows as table `name`; an empty typed table when no partition is present."""
    cols = [c.name for c in view.columns]
    if files:
        con.execute(f"CREATE TEMP TABLE {_q(name)} AS SELECT {', '.join(map(_q, cols))}"
                    " FROM read_parquet($files, hive_partitioning = false, union_by_name = true)",
                    {"files": files})
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
        return con.execute(
            f"SELECT count(*) FROM read_parquet($files, hive_partitioning = false)"
            f" WHERE {ts} >= $start AND {ts} < $end",
            {"files": files, "start": start, "end": start + dt.timedelta(days=1)}).fetchone()[0]


def leakage_audit(config: Config, registry: Registry, service: str, day: dt.date, output_root: Path,
                  max_rows: int = DEFAULT_AUDIT_ROWS) -> LeakageReport:
    """Prove every feature value of the written day could only come from the row's past.

    For each point-in-time view: a row with any non-null feature must match (key and
    every feature value) some source row with timestamp < t and >= t - ttl. For each
    rolling list: every id, counted with multiplicity, must be a row of the entity in
    [t - window, t). For each rolling count: the count may not exceed the rows in that
    window. Up to `max_rows` output rows are audited (a repeatable reservoir sample above).
    """
    svc = registry.service(service)
    spine = registry.view(svc.spine.view)
    written = written_day(output_root, day)
    if written.rows == 0:
        return LeakageReport(day=day, output_rows=0, audited_rows=0)
    aggs = {a.name: a for a in config.aggregations.aggregation_specs}
    t = _q(spine.timestamp_field)
    pit = [(registry.view(v), [f for vv, f in svc.feature_refs() if vv == v])
           for v in svc.feature_views()]
    needed = {spine.timestamp_field}
    for view, feats in pit:
        needed |= {e.name for e in view.entities} | set(feats)
    for name in svc.aggregations:
        needed |= {name, aggs[name].entity}
    cols = [c for c in written.columns if c in needed]
    sample = (f" USING SAMPLE reservoir({int(max_rows)} ROWS) REPEATABLE (7)"
              if written.rows > max_rows else "")
    findings: list[Finding] = []
    with _connect(config) as con:
        con.execute(f"CREATE TEMP TABLE audited AS SELECT row_number() OVER () AS rid, * FROM"
                    f" (SELECT {', '.join(map(_q, cols))} FROM read_parquet($files,"
                    f" hive_partitioning = false){sample})",
                    {"files": [str(f) for f in written.files]})
        audited = con.execute("SELECT count(*) FROM audited").fetchone()[0]
        for view, feats in pit:
            findings.append(_audit_point_in_time(con, view, feats, t, config, day))
        for name in svc.aggregations:
            spec = aggs[name]
            view = registry.view(spec.view)
            window = parse_duration(spec.window)
            table = f"src_{view.name}_{name}"
            _register_source(con, table, view, source_files(config, view, day - window, day))
            if spec.function == "last_n_list":
                findings.append(_audit_list(con, table, view, name, spec.entity, spec.column,
                                            t, window))
            else:
                findings.append(_audit_count(con, table, view, name, spec.entity, t, window))
    return LeakageReport(day=day, output_rows=written.rows, audited_rows=audited,
                         findings=tuple(findings))


def _window_sql(ts: str, t: str, bound: dt.timedelta | None) -> str:
    lower = f" AND s.{ts} >= o.{t} - to_microseconds({int(bound / dt.timedelta(microseconds=1))})"
    return f"s.{ts} < o.{t}" + (lower if bound else "")


def _examples(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[dict[str, Any], ...]:
    rel = con.execute(sql + " ORDER BY rid LIMIT 5")
    names = [d[0] for d in rel.description]
    return tuple({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                  for k, v in zip(names, row, strict=True)} for row in rel.fetchall())


def _audit_point_in_time(con: duckdb.DuckDBPyConnection, view: FeatureView, feats: list[str],
                         t: str, config: Config, day: dt.date) -> Finding:
    table = f"src_{view.name}"
    first = day - view.ttl_delta - dt.timedelta(days=1) if view.ttl_delta else None
    _register_source(con, table, view, source_files(config, view, first, day))
    keys = [e.name for e in view.entities]
    ts = _q(view.timestamp_field)
    on = " AND ".join([f"s.{_q(k)} = o.{_q(k)}" for k in keys]
                      + [f"s.{_q(f)} IS NOT DISTINCT FROM o.{_q(f)}" for f in feats]
                      + [_window_sql(ts, t, view.ttl_delta)])
    with_values = " OR ".join(f"o.{_q(f)} IS NOT NULL" for f in feats)
    con.execute(f"CREATE OR REPLACE TEMP TABLE leaked AS SELECT o.* FROM audited o"
                f" WHERE ({with_values}) AND NOT EXISTS"
                f" (SELECT 1 FROM {_q(table)} s WHERE {on})")
    checked = con.execute(f"SELECT count(*) FROM audited o WHERE {with_values}").fetchone()[0]
    leaked = con.execute("SELECT count(*) FROM leaked").fetchone()[0]
    shown = ", ".join(["rid", t, *map(_q, keys), *map(_q, feats)])
    window = f"in [t - {view.ttl}, t)" if view.ttl else "before t"
    rule = f"values match a {view.name} row with {view.timestamp_field} {window}"
    return Finding(group=view.name, rule=rule, checked_rows=checked, leaked_rows=leaked,
                   examples=_examples(con, f"SELECT {shown} FROM leaked") if leaked else ())


def _audit_list(con: duckdb.DuckDBPyConnection, table: str, view: FeatureView, name: str,
                entity: str, column: str, t: str, window: dt.timedelta) -> Finding:
    ts, e, c, n = _q(view.timestamp_field), _q(entity), _q(column), _q(name)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE leaked AS
        WITH listed AS (
            SELECT rid, {e}, {t}, unnest({n}) AS item FROM audited WHERE len({n}) > 0),
        wanted AS (
            SELECT rid, {e}, {t}, item, count(*) AS copies FROM listed GROUP BY ALL),
        found AS (
            SELECT o.rid, o.item, o.copies, count(s.{ts}) AS visible
            FROM wanted o LEFT JOIN {_q(table)} s
              ON s.{e} = o.{e} AND s.{c} = o.item AND {_window_sql(ts, t, window)}
            GROUP BY ALL)
        SELECT rid, item, copies, visible FROM found WHERE visible < copies""")
    checked = con.execute(f"SELECT count(*) FROM audited WHERE len({n}) > 0").fetchone()[0]
    leaked = con.execute("SELECT count(DISTINCT rid) FROM leaked").fetchone()[0]
    return Finding(group=name, rule=f"each id is a {view.name} row of the {entity} in"
                   f" [t - {window.days}d, t)", checked_rows=checked, leaked_rows=leaked,
                   examples=_examples(con, "SELECT * FROM leaked") if leaked else ())


def _audit_count(con: duckdb.DuckDBPyConnection, table: str, view: FeatureView, name: str,
                 entity: str, t: str, window: dt.timedelta) -> Finding:
    ts, e, n = _q(view.timestamp_field), _q(entity), _q(name)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE leaked AS
        WITH found AS (
            SELECT o.rid, o.{n} AS reported, count(s.{ts}) AS visible
            FROM (SELECT rid, {e}, {t}, {n} FROM audited WHERE {n} > 0) o
            LEFT JOIN {_q(table)} s ON s.{e} = o.{e} AND {_window_sql(ts, t, window)}
            GROUP BY ALL)
        SELECT * FROM found WHERE reported > visible""")
    checked = con.execute(f"SELECT count(*) FROM audited WHERE {n} > 0").fetchone()[0]
    leaked = con.execute("SELECT count(*) FROM leaked").fetchone()[0]
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
    counts = ", ".join(f"count({_q(c)})" for c in present)
    with _connect(config) as con:
        row = con.execute(f"SELECT {counts} FROM read_parquet($files, hive_partitioning = false)",
                          {"files": [str(f) for f in written.files]}).fetchone()
    out.update({c: n / written.rows for c, n in zip(present, row, strict=True)})
    return out
