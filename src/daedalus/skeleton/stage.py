"""Skeleton stage: the source-side operators of the DAG, run in DuckDB one day at a time.

Per day, every heavy operator is its own stage, materialized to a parquet file in a scratch
folder (so DuckDB's memory is released between them): the spine (Project), each
PointInTimeJoin and each RollingAggregate. Scans and Filters are inlined as CTEs into the stage
that reads them. The `assign_qid` Arrow function then runs once per day, strictly in date order
(it appends to `qid_map.parquet`), and the last stage assembles the day (Join) and streams it,
sorted, into `part-N-0.parquet` files of a staging folder that is renamed into place: a day is
complete or absent. `--day-workers N` overlaps days but keeps the qid step in date order, so
the output is the same as with N = 1.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from daedalus.core.config import Config, enriched_root_for, parse_duration
from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.core.operators import (
    ArrowUdfTransform,
    OperatorPipeline,
    PointInTimeJoin,
    Project,
    RollingAggregate,
    Scan,
    Sink,
)
from daedalus.core.registry import Registry, check_source_files
from daedalus.core.results import DayResult
from daedalus.layout.days import (
    day_lock,
    day_path,
    ensure_writable,
    retire_day,
    staged_day,
    sweep_staging,
)
from daedalus.layout.manifest import (
    Manifest,
    day_state,
    read_manifest,
    remove_empty_manifest,
    scan_days,
    skeleton_fingerprint,
    write_empty_manifest,
    write_manifest,
)
from daedalus.layout.qid import QidMap
from daedalus.layout.scratch import scratch_dir, sweep_scratch
from daedalus.skeleton.sql import (
    SPINE_ROW,
    day_params,
    files_param,
    ident,
    operator_sql,
    output_columns,
    param_names,
    spine_scan,
    sql_literal,
)

__all__ = ["run_skeleton_stage", "SkeletonPlan"]

Progress = Callable[[str], None]
_MATERIALIZED = (Project, PointInTimeJoin, RollingAggregate)
_BATCH_ROWS = 131_072


@dataclass(frozen=True)
class SkeletonPlan:
    """The source-side operators that feed the skeleton Sink, checked and in run order."""

    pipeline: OperatorPipeline
    ops: tuple  # every operator upstream of the sink, in DAG order
    sink: Sink
    scans: tuple[Scan, ...]
    spine: Project
    embedding_columns: frozenset[str]

    @classmethod
    def build(cls, pipeline: OperatorPipeline, config: Config) -> SkeletonPlan:
        where = f"{pipeline.service} DAG"
        sinks = [op for op in pipeline.of_kind("Sink") if op.target == "skeleton"]
        if len(sinks) != 1 or sinks[0].engine != "sql":
            raise DaedalusError(
                f"{where}: operators: needs exactly one Sink with target skeleton and"
                " engine sql (fix: recompile with `daeda pipeline compile`)"
            )
        sink = sinks[0]
        needed: set[str] = set()
        stack = [sink.name]
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack.extend(pipeline.op(name).inputs)
        ops = tuple(op for op in pipeline.operators if op.name in needed)
        for op in ops:
            if not op.source_side:
                raise DaedalusError(
                    f"{where}: operators.{op.name}.engine: {op.engine} operator feeds the"
                    " skeleton Sink (fix: only sql / sql_arrow_udf operators may)"
                )
        scans = tuple(op for op in ops if isinstance(op, Scan))
        projects = [op for op in ops if isinstance(op, Project)]
        if not projects or SPINE_ROW not in output_columns(projects[0], pipeline):
            raise DaedalusError(
                f"{where}: operators: the spine Project must produce {SPINE_ROW!r}"
                " (fix: recompile with `daeda pipeline compile`)"
            )
        plan = cls(
            pipeline=pipeline,
            ops=ops,
            sink=sink,
            scans=scans,
            spine=projects[0],
            embedding_columns=frozenset(e.name for e in config.aggregations.enrichment_specs),
        )
        plan._check()
        return plan

    def _check(self) -> None:
        """Catch hand edits that would silently give wrong rows."""
        where = f"{self.pipeline.service} DAG: operators"
        by_name = {op.name: op for op in self.ops}
        for op in self.ops:
            if isinstance(op, PointInTimeJoin | RollingAggregate):
                spine_cols = output_columns(by_name[op.inputs[0]], self.pipeline)
                keys = op.keys if isinstance(op, PointInTimeJoin) else (op.entity,)
                for key in keys:
                    if key not in spine_cols:
                        raise DaedalusError(
                            f"{where}.{op.name}: key {key!r} is not a column of"
                            f" {op.inputs[0]} (fix: use one of {spine_cols})"
                        )
                if isinstance(op, PointInTimeJoin) and not op.ttl:
                    raise DaedalusError(
                        f"{where}.{op.name}.ttl: a point-in-time join needs a ttl, since its scan"
                        " reads only a lookback before the day (fix: set ttl, e.g. 3d)"
                    )
                scan = spine_scan(self.pipeline, op.inputs[1])
                needs = (
                    [op.ttl]
                    if isinstance(op, PointInTimeJoin)
                    else [a.window for a in op.aggregations]
                )
                for need in needs:
                    if need and (
                        not scan.lookback or parse_duration(need) > parse_duration(scan.lookback)
                    ):
                        raise DaedalusError(
                            f"{where}.{scan.name}.lookback: {scan.lookback} is shorter than the"
                            f" {need} that {op.name} looks back (fix: set lookback: {need} or more)"
                        )
            if isinstance(op, RollingAggregate):
                for spec in op.aggregations:
                    order = list(spec.order_by)
                    if order and order[0] != op.timestamp_field:
                        raise DaedalusError(
                            f"{where}.{op.name}.aggregations.{spec.name}.order_by: must start with"
                            f" {op.timestamp_field!r} (fix: order by [{op.timestamp_field}, ...])"
                        )
                    if spec.function == "last_n_list" and not spec.column:
                        raise DaedalusError(
                            f"{where}.{op.name}.aggregations.{spec.name}.column: a"
                            " last_n_list needs a column (fix: name the listed column)"
                        )
        produced = set(output_columns(by_name[self.sink.inputs[0]], self.pipeline))
        for col in self.sink.columns:
            if col.name not in produced and not col.has_default:
                raise DaedalusError(
                    f"{where}.{self.sink.name}.columns: {col.name!r} is produced by no"
                    " operator and has no default (fix: give it a default or drop it)"
                )
        for col in self.sink.sort_by:
            if col not in produced:
                raise DaedalusError(
                    f"{where}.{self.sink.name}.sort_by: {col!r} is not a column of"
                    f" {self.sink.inputs[0]} (fix: sort by produced columns)"
                )

    @property
    def udfs(self) -> list[ArrowUdfTransform]:
        return [op for op in self.ops if isinstance(op, ArrowUdfTransform)]

    def statement(self, op, materialized: set[str]) -> str:
        """`op`'s SQL with every not-yet-materialized input inlined as a CTE, in DAG order."""
        inline: list = []
        stack = list(op.inputs)
        while stack:
            name = stack.pop()
            if name in materialized or any(o.name == name for o in inline):
                continue
            dep = self.pipeline.op(name)
            inline.append(dep)
            stack.extend(dep.inputs)
        if not inline:
            return operator_sql(op, self.pipeline)
        order = [o for o in self.ops if o in inline]
        ctes = ",\n".join(
            f"{ident(o.name)} AS (\n{_indent(operator_sql(o, self.pipeline))}\n)" for o in order
        )
        return (
            f"WITH {ctes},\n{ident(op.name)} AS (\n{_indent(operator_sql(op, self.pipeline))}\n)\n"
            f"SELECT * FROM {ident(op.name)}"
        )


def _indent(sql: str) -> str:
    return "\n".join("    " + line for line in sql.splitlines())


class _DateOrder:
    """Lets concurrent days take one serial step (qid assignment) strictly in date order."""

    def __init__(self, count: int):
        self._passed = [False] * count
        self._failed = False
        self._cond = threading.Condition()

    def wait_turn(self, i: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._failed or all(self._passed[:i]))
            if self._failed:
                raise _Abandoned()

    def pass_turn(self, i: int) -> None:
        with self._cond:
            self._passed[i] = True
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()


class _Abandoned(Exception):
    """An earlier day failed; this one stops before touching the qid map."""


def scan_files(config: Config, scan: Scan, day: dt.date) -> list[Path]:
    """The parquet files `scan` reads for `day`: the day's dt partition and its lookback's."""
    root = Path(config.base.sources_root) / scan.source
    return [
        f
        for d in scan_days(day, scan.lookback)
        for f in sorted((root / f"dt={d:%Y-%m-%d}").glob("*.parquet"))
    ]


def check_sources(
    pipeline: OperatorPipeline, registry: Registry, config: Config, days: list[dt.date]
) -> None:
    """Every source file the days will read is checked against its view before any day runs,
    so a bad file fails the run before it writes anything (see registry.check_source_files).
    The DAG's hand edits (lookbacks, ttls, keys) are checked here too, before the store build."""
    SkeletonPlan.build(pipeline, config)
    for scan in pipeline.of_kind("Scan"):
        root = Path(config.base.sources_root) / scan.source
        if next(iter(root.glob("dt=*/*.parquet")), None) is None:
            raise DaedalusError(
                f"{root}: no parquet files in any dt= partition of source {scan.source!r},"
                " so its column types are unknown (fix: point sources_root or"
                " DAEDALUS_SOURCES_ROOT at the sources, or write one partition)"
            )
        files = sorted({f for day in days for f in scan_files(config, scan, day)})
        check_source_files(registry.view(scan.view), files)


def run_skeleton_stage(
    pipeline: OperatorPipeline,
    config: Config,
    days: list[dt.date],
    output_root: Path,
    *,
    day_workers: int = 1,
    progress: Progress = print,
    force: bool = False,
) -> list[DayResult]:
    """Write `<output_root>/dt=YYYY-MM-DD/` for every day absent, stale, or forced.

    A day is skipped only when its manifest matches the current inputs, DAG and config; an
    empty day's manifest is its 0-row sidecar, so an unchanged empty day is skipped too.
    """
    plan = SkeletonPlan.build(pipeline, config)
    output_root = ensure_writable(Path(output_root))
    sweep_staging(output_root)
    sweep_scratch(Path(config.runtime.compute.duckdb_config.temp_directory))
    results: dict[dt.date, DayResult] = {}
    todo: list[dt.date] = []
    for day in sorted(set(days)):
        folder = day_path(output_root, day)
        state, reason = day_state(folder, skeleton_fingerprint(pipeline, config, day))
        if state == "complete" and not force:
            rows = int((read_manifest(folder) or {}).get("rows", 0))
            results[day] = DayResult("skeleton", day, "skipped", rows, str(folder), 0.0, "up to date")
            progress(f"skeleton {day}: skipped, up to date ({rows:,} rows)")
            continue
        if state == "empty" and not force:
            results[day] = DayResult("skeleton", day, "skipped", 0, None, 0.0, "no impressions")
            progress(f"skeleton {day}: skipped, no impressions")
            continue
        if state in ("stale", "incomplete") or (force and state in ("complete", "empty")):
            progress(f"skeleton {day}: recomputing, {'--force' if force else reason}")
        todo.append(day)
    qid_maps = {
        op.name: QidMap(output_root, op.state_file, op.input_column, op.output_column)
        for op in plan.udfs
    }
    for qid_map in qid_maps.values():
        qid_map.recover_if_missing()
    order = _DateOrder(len(todo))
    errors: dict[dt.date, BaseException] = {}

    def one(i: int, day: dt.date) -> None:
        if errors:
            return
        try:
            result = _DayRun(plan, config, day, output_root, qid_maps, order, i).run()
        except _Abandoned:
            return
        except BaseException as exc:
            order.fail()
            errors[day] = exc
            return
        results[day] = result
        progress(f"skeleton {day}: {result.message} ({result.seconds:.1f}s)")

    workers = max(1, min(day_workers, len(todo)))
    if workers == 1:
        for i, day in enumerate(todo):
            one(i, day)
            if errors:
                break
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="skeleton-day") as pool:
            list(pool.map(one, range(len(todo)), todo))
    if errors:
        raise errors[min(errors)]
    return [results[d] for d in sorted(results)]


class _DayRun:
    """One day through the stages; owns its DuckDB connection and scratch folder."""

    def __init__(
        self,
        plan: SkeletonPlan,
        config: Config,
        day: dt.date,
        output_root: Path,
        qid_maps: dict[str, QidMap],
        order: _DateOrder,
        index: int,
    ):
        self.plan, self.config, self.day = plan, config, day
        self.output_root = output_root
        self.qid_maps, self.order, self.index = qid_maps, order, index
        self.timings: dict[str, float] = {}
        self.materialized: set[str] = set()
        duck = config.runtime.compute.duckdb_config
        self.work = Path(duck.temp_directory) / f"skeleton-{day:%Y-%m-%d}-{uuid.uuid4().hex[:12]}"

    def run(self) -> DayResult:
        started = time.perf_counter()
        with day_lock(self.output_root, self.day), scratch_dir(self.work):
            fingerprint = skeleton_fingerprint(self.plan.pipeline, self.config, self.day)
            retired: list[str] = []
            self.con = self._connect()
            try:
                rows = self._stages()
                files = self._publish(rows, fingerprint) if rows else []
            finally:
                self.con.close()
            if not rows:
                retired = self._record_empty(fingerprint)
        seconds = time.perf_counter() - started
        if not rows:
            if retired:
                message = f"no impressions now: removed {' and '.join(retired)}"
            else:
                message = f"no rows: no impressions on {self.day}, nothing written"
            return DayResult("skeleton", self.day, "empty", 0, None, seconds, message)
        path = day_path(self.output_root, self.day)
        message = f"wrote {rows:,} rows in {len(files)} file(s) → {path}"
        return DayResult("skeleton", self.day, "written", rows, str(path), seconds, message)

    def _publish(self, rows: int, fingerprint) -> list[str]:
        """Sink into a staging folder, check the row count, add the manifest, rename into place."""
        sink = self.plan.sink
        with staged_day(self.output_root, self.day) as staging:
            written, files = self._sink(staging)
            if written != rows:
                raise DaedalusError(
                    f"{self.plan.pipeline.service} DAG: operators.{sink.name}: {written:,} rows"
                    f" for {rows:,} impressions on {self.day} (fix: join feature operators on"
                    f" {SPINE_ROW} only, so no row is dropped or duplicated)"
                )
            manifest = Manifest(
                stage="skeleton",
                day=self.day.isoformat(),
                rows=rows,
                files=files,
                fingerprint=fingerprint,
                timings=self._rounded(),
            )
            write_manifest(staging, manifest)
            crash_point("skeleton.before_publish")
        remove_empty_manifest(self.output_root, self.day)
        return files

    def _record_empty(self, fingerprint) -> list[str]:
        """The day has no impressions (now): retire a day published before, the enriched day
        made from it first, each in one rename, then record the day as empty (a 0-row sidecar
        manifest, no folder). Says what it removed. Caller holds the skeleton day lock."""
        enriched_root = enriched_root_for(self.output_root)
        enriched = None
        if day_path(enriched_root, self.day).is_dir():
            with day_lock(enriched_root, self.day):
                enriched = retire_day(enriched_root, self.day)
        skeleton = retire_day(self.output_root, self.day)
        write_empty_manifest(self.output_root, self.day, Manifest(
            stage="skeleton", day=self.day.isoformat(), rows=0, files=[],
            fingerprint=fingerprint, timings=self._rounded()))
        removed = [f"the stale day {skeleton}"] if skeleton else []
        if enriched:
            removed.append(f"{'its' if skeleton else 'the stale'} enriched day {enriched}")
        return removed

    def _rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.timings.items()}

    def _connect(self) -> duckdb.DuckDBPyConnection:
        duck = self.config.runtime.compute.duckdb_config
        con = duckdb.connect(config={"threads": duck.threads} if duck.threads else {})
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")  # stdout carries --json
        con.execute(f"SET memory_limit = {sql_literal(duck.memory_limit)}")
        con.execute(f"SET temp_directory = {sql_literal(str(self.work / 'spill'))}")
        con.execute(f"SET preserve_insertion_order = {sql_literal(duck.preserve_insertion_order)}")
        return con

    def _params(self, sql: str) -> dict:
        values: dict = dict(day_params(self.day))
        scans = {files_param(scan): scan for scan in self.plan.scans}
        return {
            name: self._scan_files(scans[name]) if name in scans else values[name]
            for name in param_names(sql)
        }

    def _scan_files(self, scan: Scan) -> list[str]:
        root = Path(self.config.base.sources_root) / scan.source
        files = [str(f) for f in scan_files(self.config, scan, self.day)]
        if files:
            return files
        return [self._empty_like(scan, root)]

    def _empty_like(self, scan: Scan, root: Path) -> str:
        """A missing partition is no rows: a zero-row file with the source's schema stands in."""
        target = self.work / f"empty_{scan.name}.parquet"
        if not target.exists():
            any_file = next(iter(sorted(root.glob("dt=*/*.parquet"))), None)
            if any_file is None:
                raise DaedalusError(
                    f"{root}: no parquet files in any dt= partition of source {scan.source!r},"
                    " so its column types are unknown (fix: point sources_root or"
                    " DAEDALUS_SOURCES_ROOT at the sources, or write one partition)"
                )
            pq.write_table(pa.Table.from_batches([], schema=pq.read_schema(any_file)), target)
        return str(target)

    def _stages(self) -> int:
        """Materialize the spine, joins and aggregates; assign qids. Returns the spine's rows."""
        rows = 0
        for op in self.plan.ops:
            if not isinstance(op, _MATERIALIZED):
                continue
            n = self._materialize(op)
            if op is self.plan.spine:
                rows = n
                if not rows:
                    self.order.pass_turn(self.index)
                    return 0
        self.order.wait_turn(self.index)
        try:
            for op in self.plan.udfs:
                self._udf(op)
        finally:
            self.order.pass_turn(self.index)
        return rows

    def _materialize(self, op) -> int:
        if isinstance(op, RollingAggregate) and self.config.runtime.compute.engine == "polars":
            return self._rolling_polars(op)
        started = time.perf_counter()
        sql = self.plan.statement(op, self.materialized)
        target = self.work / f"{op.name}.parquet"
        copy = (
            f"COPY (\n{sql}\n) TO {sql_literal(str(target))}"
            " (FORMAT parquet, COMPRESSION uncompressed)"
        )
        try:
            rows = self.con.execute(copy, self._params(copy)).fetchone()[0]
        except duckdb.Error as exc:
            unreadable = self._unreadable_source()
            if unreadable:
                raise unreadable from None
            raise DaedalusError(
                f"{self.plan.pipeline.service} DAG: operators.{op.name}: DuckDB"
                f" failed on {self.day}: {str(exc).splitlines()[0]} (fix: check the"
                " operator's parameters and the source files)"
            ) from None
        self._view(op.name, target)
        self.timings[op.name] = time.perf_counter() - started
        return rows

    def _unreadable_source(self) -> DaedalusError | None:
        """After a DuckDB failure: the day's source file whose data pages do not decode, if any
        (a footer that reads fine was checked before the run; the pages only now)."""
        for scan in self.plan.scans:
            for path in scan_files(self.config, scan, self.day):
                try:
                    pq.read_table(path)
                except Exception as exc:  # noqa: BLE001 - any decode failure is a corrupt file
                    detail = str(exc).splitlines()[0] if str(exc) else ""
                    return DaedalusError(
                        f"{path}: unreadable parquet data ({type(exc).__name__}: {detail})"
                        " (fix: rewrite or remove the file)"
                    )
        return None

    def _rolling_polars(self, op: RollingAggregate) -> int:
        """`compute.engine: polars`: the same scanned inputs, aggregated by Polars."""
        from daedalus.skeleton.polars_engine import rolling_aggregate

        started = time.perf_counter()
        spine, view = op.inputs
        spine_ts = spine_scan(self.plan.pipeline, spine).timestamp_field
        tables = []
        for name in (spine, view):
            sql = (f"SELECT * FROM {ident(name)}" if name in self.materialized
                   else self.plan.statement(self.plan.pipeline.op(name), self.materialized))
            try:
                tables.append(self.con.sql(sql, params=self._params(sql)).to_arrow_table())
            except duckdb.Error as exc:
                raise DaedalusError(
                    f"{self.plan.pipeline.service} DAG: operators.{name}: DuckDB failed on"
                    f" {self.day}: {str(exc).splitlines()[0]} (fix: check the operator's"
                    " parameters and the source files)"
                ) from None
        result = rolling_aggregate(op, tables[0], tables[1], spine_ts)
        target = self.work / f"{op.name}.parquet"
        pq.write_table(result, target, compression="none")
        self._view(op.name, target)
        self.timings[op.name] = time.perf_counter() - started
        return result.num_rows

    def _view(self, name: str, target: Path) -> None:
        self.con.execute(
            f"CREATE OR REPLACE VIEW {ident(name)} AS"
            f" SELECT * FROM read_parquet({sql_literal(str(target))})"
        )
        self.materialized.add(name)

    def _udf(self, op: ArrowUdfTransform) -> None:
        started = time.perf_counter()
        sql = self.plan.statement(op, self.materialized)
        rel = self.con.sql(sql, params=self._params(sql)).to_arrow_table()
        qids, _ = self.qid_maps[op.name].assign(rel[op.input_column])
        target = self.work / f"{op.name}.parquet"
        pq.write_table(
            pa.table({SPINE_ROW: rel[SPINE_ROW], op.output_column: qids}),
            target,
            compression="none",
        )
        self._view(op.name, target)
        self.timings[op.name] = time.perf_counter() - started

    def _sink(self, staging: Path) -> tuple[int, list[str]]:
        started = time.perf_counter()
        sink = self.plan.sink
        sql = self.plan.statement(sink, self.materialized)
        reader = self.con.sql(sql, params=self._params(sql)).to_arrow_reader(_BATCH_ROWS)
        defaults = {c.name for c in sink.columns if c.has_default} - set(
            output_columns(self.plan.pipeline.op(sink.inputs[0]), self.plan.pipeline)
        )
        writer = _PartWriter(staging, self.config.runtime.skeleton_chunk_rows, sink.compression)
        try:
            for batch in reader:
                writer.write(self._conform(batch, defaults))
        finally:
            writer.close()
        self.timings[sink.name] = time.perf_counter() - started
        return writer.rows, writer.files

    def _conform(self, batch: pa.RecordBatch, defaults: set[str]) -> pa.RecordBatch:
        """Standard Arrow types: plain list<item>, and typed embedding columns."""
        fields = []
        for f in batch.schema:
            if f.name in defaults and f.name in self.plan.embedding_columns:
                fields.append(pa.field(f.name, pa.list_(pa.float16())))
            elif pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
                fields.append(pa.field(f.name, pa.list_(f.type.value_type)))
            else:
                fields.append(f)
        schema = pa.schema(fields)
        return batch if schema == batch.schema else batch.cast(schema)


class _PartWriter:
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
