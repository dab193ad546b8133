"""`SkeletonPlan`: the source-side operators that feed the skeleton Sink, checked, in run order.

The plan is built from the compiled DAG and refuses the hand edits that would silently give
wrong rows (a join key the spine lacks, a lookback shorter than a ttl or window, a sort or
column nothing produces). `statement` renders one operator as the SQL a day runs, with its
not-yet-materialized inputs inlined as CTEs.
"""

from __future__ import annotations

from dataclasses import dataclass

from daedalus.core.config import Config, parse_duration
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import (
    ArrowUdfTransform,
    OperatorPipeline,
    PointInTimeJoin,
    Project,
    RollingAggregate,
    Scan,
    Sink,
)
from daedalus.skeleton.sql import SPINE_ROW, ident, operator_sql, output_columns, spine_scan


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

    def statement(self, op, held: set[str], select: str | None = None) -> str:
        """`op`'s SQL with every input not in `held` inlined as a CTE, in DAG order; with
        `select`, that query over `op` (as one more CTE) instead of `op`'s own rows."""
        inline: list = []
        stack = list(op.inputs) if select is None else [op.name]
        while stack:
            name = stack.pop()
            if name in held or any(o.name == name for o in inline):
                continue
            dep = self.pipeline.op(name)
            inline.append(dep)
            stack.extend(dep.inputs)
        if select is None:
            if not inline:
                return operator_sql(op, self.pipeline)
            inline.append(op)
            select = f"SELECT * FROM {ident(op.name)}"
        order = [o for o in self.ops if o in inline]
        ctes = ",\n".join(
            f"{ident(o.name)} AS (\n{_indent(operator_sql(o, self.pipeline))}\n)" for o in order
        )
        return f"WITH {ctes}\n{select}" if ctes else select


def _indent(sql: str) -> str:
    return "\n".join("    " + line for line in sql.splitlines())
