"""`DayRun`: one skeleton day, in its own DuckDB connection and scratch folder.

A day is one DuckDB statement: every operator up to the Sink is a CTE of it, so nothing
between operators is written out and DuckDB plans the day as a whole. Before it, two small
queries over the spine: its row count (the Sink must write exactly that many rows), and each
Arrow function's feed (each input value once), which runs on the day's date-order turn
(`assign_qid` appends to `qid_map.parquet`); what the function returns is held in memory and
joined in (the operator's `materialized` field says so in the DAG), as is a RollingAggregate
that `compute.engine: polars` computes. The statement streams the sorted day into the part
files of a staging folder that is renamed into place: a day is complete or absent. A day
without impressions writes no folder, only a 0-row sidecar manifest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

from daedalus.core.config import Config, enriched_root_for
from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.core.operators import ArrowUdfTransform, PointInTimeJoin, RollingAggregate
from daedalus.core.results import DayResult
from daedalus.layout.days import day_lock, day_path, retire_day, staged_day
from daedalus.layout.manifest import (
    Manifest,
    recorded_day_fingerprint,
    remove_empty_manifest,
    skeleton_fingerprint,
    write_empty_manifest,
    write_manifest,
)
from daedalus.layout.qid import QidMap
from daedalus.layout.scratch import scratch_dir
from daedalus.skeleton.order import DateOrder
from daedalus.skeleton.plan import SkeletonPlan
from daedalus.skeleton.sources import day_files, unreadable_source
from daedalus.skeleton.sql import (
    SPINE_ROW,
    day_params,
    files_param,
    ident,
    output_columns,
    param_names,
    spine_scan,
    sql_literal,
    udf_feed_sql,
    udf_values,
)
from daedalus.skeleton.writer import PartWriter, conform

_BATCH_ROWS = 131_072


class DayRun:
    """One day through the stages; owns its DuckDB connection and scratch folder."""

    def __init__(
        self,
        plan: SkeletonPlan,
        config: Config,
        day: dt.date,
        output_root: Path,
        qid_maps: dict[str, QidMap],
        order: DateOrder,
        index: int,
    ):
        self.plan, self.config, self.day = plan, config, day
        self.output_root = output_root
        self.qid_maps, self.order, self.index = qid_maps, order, index
        self.timings: dict[str, float] = {}
        self.held: dict[str, pa.Table] = {}
        duck = config.runtime.compute.duckdb_config
        self.work = Path(duck.temp_directory) / f"skeleton-{day:%Y-%m-%d}-{uuid.uuid4().hex[:12]}"

    def run(self) -> DayResult:
        started = time.perf_counter()
        with day_lock(self.output_root, self.day), scratch_dir(self.work):
            previous = recorded_day_fingerprint(day_path(self.output_root, self.day))
            fingerprint = skeleton_fingerprint(self.plan.pipeline, self.config, self.day, previous)
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

    # -- publish ------------------------------------------------------------------------------

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

    # -- DuckDB -------------------------------------------------------------------------------

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
            name: day_files(self.config, scans[name], self.day, self.work)
            if name in scans else values[name]
            for name in param_names(sql)
        }

    def _query(self, sql: str) -> duckdb.DuckDBPyRelation:
        """`sql` with its parameters bound (run it inside `_failures`)."""
        return self.con.sql(sql, params=self._params(sql))

    @contextlib.contextmanager
    def _failures(self, op_name: str) -> Iterator[None]:
        """A DuckDB failure (when a statement binds or as its rows are fetched) becomes a
        one-line error naming the unreadable source file if there is one, else the operator."""
        try:
            yield
        except duckdb.Error as exc:
            unreadable = unreadable_source(self.config, self.plan.scans, self.day)
            raise unreadable or DaedalusError(
                f"{self.plan.pipeline.service} DAG: operators.{op_name}: DuckDB failed on"
                f" {self.day}: {str(exc).splitlines()[0]} (fix: check the operator's"
                " parameters and the source files)"
            ) from None

    def _hold(self, name: str, table: pa.Table) -> None:
        """Bind an in-memory Arrow table as relation `name` of the day's statement."""
        self.con.register(name, table)
        self.held[name] = table

    # -- stages -------------------------------------------------------------------------------

    def _stages(self) -> int:
        """Count the spine, run the Arrow functions on the day's date-order turn and the
        aggregates another engine computes. Returns the spine's rows."""
        started = time.perf_counter()
        spine = self.plan.spine
        sql = self.plan.statement(spine, set(self.held), f"SELECT count(*) FROM {ident(spine.name)}")
        with self._failures(spine.name):
            rows = self.con.execute(sql, self._params(sql)).fetchall()[0][0]
        self.timings["count_spine"] = time.perf_counter() - started
        if not rows:
            self.order.pass_turn(self.index)
            return 0
        self.order.wait_turn(self.index)
        try:
            for op in self.plan.udfs:
                self._udf(op)
        finally:
            self.order.pass_turn(self.index)
        for op in self.plan.ops:
            if op.engine in ("polars", "daft"):
                self._elsewhere(op, op.engine)
        return rows

    def _elsewhere(self, op: RollingAggregate | PointInTimeJoin, engine: str) -> None:
        """An operator tagged `polars` (a rolling aggregate) or `daft` (it, a point-in-time
        join): the same scanned inputs, computed there, held for the statement."""
        if engine == "daft":
            from daedalus.skeleton import daft_engine as module
        else:
            from daedalus.skeleton import polars_engine as module
        compute = (module.point_in_time_join if isinstance(op, PointInTimeJoin)
                   else module.rolling_aggregate)

        started = time.perf_counter()
        spine, view = op.inputs
        spine_ts = spine_scan(self.plan.pipeline, spine).timestamp_field
        tables = []
        for name in (spine, view):
            sql = self.plan.statement(self.plan.pipeline.op(name), set(self.held))
            with self._failures(name):
                tables.append(self._query(sql).to_arrow_table())
        self._hold(op.name, compute(op, tables[0], tables[1], spine_ts))
        self.timings[op.name] = time.perf_counter() - started

    def _udf(self, op: ArrowUdfTransform) -> None:
        """Feed the function each input value once; hold value → output for the statement."""
        started = time.perf_counter()
        spine = self.plan.pipeline.op(op.inputs[0])
        sql = self.plan.statement(spine, set(self.held), udf_feed_sql(op, self.plan.pipeline))
        with self._failures(op.name):
            keys = self._query(sql).to_arrow_table()[op.input_column]
        values, _ = self.qid_maps[op.name].assign(keys)
        self._hold(udf_values(op), pa.table({op.input_column: keys, op.output_column: values}))
        self.timings[op.name] = time.perf_counter() - started

    def _sink(self, staging: Path) -> tuple[int, list[str]]:
        """The day's one statement (every operator up to the Sink), streamed into the parts."""
        started = time.perf_counter()
        sink = self.plan.sink
        sql = self.plan.statement(sink, set(self.held))
        defaults = {c.name for c in sink.columns if c.has_default} - set(
            output_columns(self.plan.pipeline.op(sink.inputs[0]), self.plan.pipeline)
        )
        duck = self.config.runtime.compute.duckdb_config
        chunk_rows = self.config.runtime.skeleton_chunk_rows
        with PartWriter(staging, chunk_rows, sink.compression, duck.threads or os.cpu_count()) as writer:
            with self._failures(sink.name):
                for batch in self._query(sql).to_arrow_reader(_BATCH_ROWS):
                    writer.write(conform(batch, defaults, self.plan.embedding_columns))
        self.timings[sink.name] = time.perf_counter() - started
        return writer.rows, writer.files
