"""The SQL every source-side operator runs, as text a person can read in the compiled DAG.

`operator_sql(op, pipeline)` renders one operator as a SELECT over relations named after its
input operators. The skeleton stage binds those names as CTEs of the day's one statement (or,
for the few outputs another engine computes, as in-memory Arrow tables) and the day's
`$parameters`: `$day_start`, `$day_end` and one `$<scan>_files` list per Scan. Values are
always bound; the few literals that must be spliced (Sink defaults) go through `sql_literal`,
the one quoting helper.

Point-in-time rule (docs/data-contract.md): a feature row is visible at impression time `t`
iff its timestamp is `< t` and, with a TTL, `>= t - ttl`. Among visible rows the latest wins;
rows of one key that share that latest timestamp are broken deterministically by keeping the
one with the largest feature values, compared in declared order, NULL lowest.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from daedalus.core.config import DURATION_UNITS, parse_duration
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import (
    ArrowUdfTransform,
    Filter,
    Join,
    OperatorPipeline,
    PointInTimeJoin,
    Project,
    RollingAggregate,
    Scan,
    Sink,
)
from daedalus.skeleton.rolling import counter, counters_and_windows, list_order

SPINE_ROW = "spine_row"
_SIMPLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# DuckDB's reserved keywords (`duckdb_keywords()`, category 'reserved'): a name among them is
# quoted. tests/test_compiler.py checks this list against the locked DuckDB.
RESERVED_WORDS = frozenset(
    """
    all analyse analyze and any array as asc asymmetric both case cast check collate column
    constraint create default deferrable desc describe distinct do else end except false fetch
    for foreign from group having in initially intersect into lambda lateral leading limit not
    null offset on only or order pivot pivot_longer pivot_wider placing primary qualify
    references returning select show some summarize symmetric table then to trailing true union
    unique unpivot using variadic when where window with
    """.split()
)


def ident(name: str) -> str:
    """A column or relation name, double-quoted only when it has to be."""
    if _SIMPLE_NAME.match(name) and name not in RESERVED_WORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: Any) -> str:
    """The one place a value is spliced into SQL text (paths, Sink defaults)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return "'" + str(value).replace("'", "''") + "'"
    raise DaedalusError(
        f"output_columns: default {value!r} is not a SQL literal"
        " (fix: use null, a number, a string or true/false)"
    )


def interval(duration: str) -> str:
    """'7d' → INTERVAL '7 days' (validated by `parse_duration`)."""
    parse_duration(duration)
    amount, unit = duration.strip()[:-1].strip(), duration.strip()[-1]
    return f"INTERVAL '{int(amount)} {DURATION_UNITS[unit]}'"


def files_param(scan: Scan) -> str:
    return f"{scan.name}_files"


def param_names(sql: str) -> list[str]:
    """The `$name` parameters a statement uses, in first-use order."""
    return list(dict.fromkeys(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", sql)))


def _cols(names: Iterable[str], table: str | None = None) -> str:
    prefix = f"{ident(table)}." if table else ""
    return ", ".join(prefix + ident(n) for n in names)


def spine_scan(pipeline: OperatorPipeline, name: str) -> Scan:
    """The Scan an operator's rows come from, following first inputs (the spine's chain)."""
    op = pipeline.op(name)
    while not isinstance(op, Scan):
        if not op.inputs:
            raise ValueError(f"operator {name!r} does not read from a Scan")
        op = pipeline.op(op.inputs[0])
    return op


def output_columns(op, pipeline: OperatorPipeline) -> list[str]:
    """The columns an operator's relation has, in order."""
    if isinstance(op, Scan):
        return list(op.columns)
    if isinstance(op, Filter):
        return output_columns(pipeline.op(op.inputs[0]), pipeline)
    if isinstance(op, Project):
        return [c.name for c in op.columns]
    if isinstance(op, PointInTimeJoin):
        return [SPINE_ROW, *op.features]
    if isinstance(op, RollingAggregate):
        return [SPINE_ROW, *(a.name for a in op.aggregations)]
    if isinstance(op, ArrowUdfTransform):
        return [SPINE_ROW, op.output_column]
    if isinstance(op, Join):
        out: list[str] = []
        for i, name in enumerate(op.inputs):
            cols = output_columns(pipeline.op(name), pipeline)
            out += [c for c in cols if c not in out and (i == 0 or c not in op.on)]
        return out
    if isinstance(op, Sink):
        return [c.name for c in op.columns]
    return []


def _scan_sql(op: Scan) -> str:
    ts = ident(op.timestamp_field)
    start = f"$day_start - {interval(op.lookback)}" if op.lookback else "$day_start"
    return (
        f"SELECT {_cols(op.columns)}\n"
        f"FROM read_parquet(${files_param(op)}, hive_partitioning = false, union_by_name = true)\n"
        f"WHERE {ts} >= {start} AND {ts} < $day_end"
    )


def _filter_sql(op: Filter) -> str:
    return f"SELECT *\nFROM {ident(op.inputs[0])}\nWHERE {op.predicate}"


def _project_sql(op: Project) -> str:
    cols = ",\n       ".join(
        c.expr if c.expr == c.name else f"{c.expr} AS {ident(c.name)}" for c in op.columns
    )
    order = f"\nORDER BY {_cols(op.order_by)}" if op.order_by else ""
    return f"SELECT {cols}\nFROM {ident(op.inputs[0])}{order}"


def _pit_sql(op: PointInTimeJoin, pipeline: OperatorPipeline) -> str:
    spine, view = op.inputs
    t = ident(spine_scan(pipeline, spine).timestamp_field)
    ts = ident(op.timestamp_field)
    keys = list(op.keys)
    ties = ", ".join(f"{ident(f)} DESC NULLS LAST" for f in op.features) or ts
    on = " AND ".join(f"spine_keys.{ident(k)} = feature_rows.{ident(k)}" for k in keys)
    if op.ttl:
        visible = f"feature_rows.{ts} >= spine_keys.{t} - {interval(op.ttl)}"
        feats = ",\n       ".join(
            f"CASE WHEN {visible} THEN feature_rows.{ident(f)} END AS {ident(f)}"
            for f in op.features
        )
    else:
        feats = ",\n       ".join(f"feature_rows.{ident(f)}" for f in op.features)
    return (
        "WITH feature_rows AS (\n"
        "    -- one row per key and timestamp: equal timestamps keep the largest feature values\n"
        f"    SELECT {_cols([*keys, op.timestamp_field, *op.features])}\n"
        f"    FROM {ident(view)}\n"
        f"    QUALIFY row_number() OVER (PARTITION BY {_cols([*keys, op.timestamp_field])}\n"
        f"                               ORDER BY {ties}) = 1\n"
        "),\n"
        "spine_keys AS (\n"
        f"    SELECT {_cols([SPINE_ROW, *keys, spine_scan(pipeline, spine).timestamp_field])}\n"
        f"    FROM {ident(spine)}\n"
        ")\n"
        f"-- latest row strictly before t"
        + (f", masked when older than {op.ttl}" if op.ttl else "")
        + "\n"
        f"SELECT spine_keys.{ident(SPINE_ROW)},\n       {feats}\n"
        "FROM spine_keys ASOF LEFT JOIN feature_rows\n"
        f"  ON {on} AND spine_keys.{t} > feature_rows.{ts}"
    )


def _window_name(window: str) -> str:
    return "before_" + re.sub(r"\s+", "", window)


def _rolling_sql(op: RollingAggregate, pipeline: OperatorPipeline) -> str:
    spine, view = op.inputs
    t = ident(spine_scan(pipeline, spine).timestamp_field)
    ts, entity = ident(op.timestamp_field), ident(op.entity)
    counters, windows = counters_and_windows(op, prefix="")
    lists = [s for s in op.aggregations if s.function == "last_n_list"]

    marks = ",\n           ".join(
        f"sum(count({'*' if c == 'n_rows' else ident(c[2:])})) OVER (PARTITION BY {entity}"
        f" ORDER BY {ts})::BIGINT AS {c}"
        for c in counters
    )
    list_cols = ",\n           ".join(
        f"list({ident(s.column)} ORDER BY {_cols(list_order(s, op.timestamp_field))})"
        f" AS {ident(s.name)}"
        for s in lists
    )
    bounds = [f"coalesce(upto_t.{c}, 0) AS {c}_before_t" for c in counters]
    joins = [
        f"ASOF LEFT JOIN marks AS upto_t\n"
        f"      ON spine_keys.{entity} = upto_t.{entity} AND spine_keys.{t} > upto_t.{ts}"
    ]
    for w in windows:
        alias = f"upto_{_window_name(w)[7:]}"
        bounds += [f"coalesce({alias}.{c}, 0) AS {c}_{_window_name(w)}" for c in counters]
        joins.append(
            f"ASOF LEFT JOIN marks AS {alias}\n      ON spine_keys.{entity} = {alias}.{entity}"
            f" AND spine_keys.{t} - {interval(w)} > {alias}.{ts}"
        )
    outputs = []
    for s in op.aggregations:
        c = counter(s)
        hi, lo = f"{c}_before_t", f"{c}_{_window_name(s.window)}"
        if s.function == "count":
            outputs.append(f"bounds.{hi} - bounds.{lo} AS {ident(s.name)}")
        else:
            first = (
                f"greatest(bounds.{lo}, bounds.{hi} - {s.max_items})"
                if s.max_items
                else f"bounds.{lo}"
            )
            outputs.append(
                f"coalesce(list_slice(entity_lists.{ident(s.name)}, {first} + 1, bounds.{hi}),"
                f" []) AS {ident(s.name)}"
            )
    text = (
        "WITH marks AS (\n"
        "    -- per entity and timestamp: how many rows are at or before it\n"
        f"    SELECT {entity}, {ts},\n           {marks}\n"
        f"    FROM {ident(view)}\n"
        f"    GROUP BY {entity}, {ts}\n"
        "),\n"
    )
    if lists:
        text += (
            "entity_lists AS (\n"
            "    -- every row of the entity in list order; a window is a slice of it\n"
            f"    SELECT {entity},\n           {list_cols}\n"
            f"    FROM {ident(view)}\n"
            f"    GROUP BY {entity}\n"
            "),\n"
        )
    text += (
        "spine_keys AS (\n"
        f"    SELECT {_cols([SPINE_ROW, op.entity, spine_scan(pipeline, spine).timestamp_field])}\n"
        f"    FROM {ident(spine)}\n"
        "),\n"
        "bounds AS (\n"
        "    -- rows before t, and before each window start: [t - window, t) is the difference\n"
        f"    SELECT spine_keys.{ident(SPINE_ROW)}, spine_keys.{entity},\n           "
        + ",\n           ".join(bounds)
        + "\n"
        "    FROM spine_keys\n    " + "\n    ".join(joins) + "\n"
        ")\n"
        f"SELECT bounds.{ident(SPINE_ROW)},\n       " + ",\n       ".join(outputs) + "\n"
        "FROM bounds"
    )
    if lists:
        text += f"\nLEFT JOIN entity_lists ON bounds.{entity} = entity_lists.{entity}"
    return text


def udf_values(op: ArrowUdfTransform) -> str:
    """The relation holding what the Arrow function returned: one row per input value."""
    return f"{op.name}_values"


def udf_feed_sql(op: ArrowUdfTransform, pipeline: OperatorPipeline) -> str:
    """What the Arrow function is fed: each input value once, in order of its first row."""
    spine = op.inputs[0]
    t = spine_scan(pipeline, spine).timestamp_field
    return (
        f"-- each {op.input_column} once, in order of its first impression"
        f" (ties by {op.input_column}), fed to {op.udf}()\n"
        f"SELECT {ident(op.input_column)}\n"
        f"FROM {ident(spine)}\n"
        f"GROUP BY {ident(op.input_column)}\n"
        f"ORDER BY min({ident(t)}), {ident(op.input_column)}"
    )


def _udf_sql(op: ArrowUdfTransform, pipeline: OperatorPipeline) -> str:
    spine, values, key = ident(op.inputs[0]), ident(udf_values(op)), ident(op.input_column)
    return (
        f"-- {op.output_column} per row: {op.udf}() maps each {op.input_column} once, into"
        f" {udf_values(op)}\n"
        f"SELECT {spine}.{ident(SPINE_ROW)}, {values}.{ident(op.output_column)}\n"
        f"FROM {spine}\n"
        f"LEFT JOIN {values} ON {values}.{key} = {spine}.{key}"
    )


def _join_sql(op: Join, pipeline: OperatorPipeline) -> str:
    base = op.inputs[0]
    select = [f"{ident(base)}.{ident(c)}" for c in output_columns(pipeline.op(base), pipeline)]
    seen = set(output_columns(pipeline.op(base), pipeline))
    joins = []
    for name in op.inputs[1:]:
        for c in output_columns(pipeline.op(name), pipeline):
            if c not in seen and c not in op.on:
                select.append(f"{ident(name)}.{ident(c)}")
                seen.add(c)
        on = " AND ".join(f"{ident(name)}.{ident(k)} = {ident(base)}.{ident(k)}" for k in op.on)
        joins.append(f"{op.how.upper()} JOIN {ident(name)} ON {on}")
    return "SELECT " + ",\n       ".join(select) + f"\nFROM {ident(base)}\n" + "\n".join(joins)


def _sink_sql(op: Sink, pipeline: OperatorPipeline) -> str:
    produced = set(output_columns(pipeline.op(op.inputs[0]), pipeline))
    cols = []
    for c in op.columns:
        if c.name in produced:
            cols.append(ident(c.name))
        else:
            cols.append(f"{sql_literal(c.default)} AS {ident(c.name)}")
    return (
        "SELECT " + ",\n       ".join(cols) + f"\nFROM {ident(op.inputs[0])}\n"
        f"ORDER BY {_cols(op.sort_by)}"
    )


def operator_sql(op, pipeline: OperatorPipeline) -> str | None:
    """The SQL text `op` runs (None for pythonic operators)."""
    if not op.source_side:
        return None
    if isinstance(op, Scan):
        return _scan_sql(op)
    if isinstance(op, Filter):
        return _filter_sql(op)
    if isinstance(op, Project):
        return _project_sql(op)
    if isinstance(op, PointInTimeJoin):
        return _pit_sql(op, pipeline)
    if isinstance(op, RollingAggregate):
        return _rolling_sql(op, pipeline)
    if isinstance(op, ArrowUdfTransform):
        return _udf_sql(op, pipeline)
    if isinstance(op, Join):
        return _join_sql(op, pipeline)
    if isinstance(op, Sink):
        return _sink_sql(op, pipeline)
    return None


def day_params(day: dt.date) -> dict[str, dt.datetime]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return {"day_start": start, "day_end": start + dt.timedelta(days=1)}


UDF_MATERIALIZED = (
    "its values come from a Python function on the day's date-order turn, so they are held"
    " in memory (one row per input value) and joined into the day's single statement"
)


def engine_materialized(engine: str) -> str:
    """Why an operator another engine than DuckDB computes is held, not streamed."""
    return (f"engine {engine} computes it from its scanned inputs, so its rows are held in"
            " memory as an Arrow table that the day's single statement reads in place")


def with_sql(pipeline: OperatorPipeline) -> OperatorPipeline:
    """Attach the SQL each source-side operator will run (or, on another engine, the SQL of
    the plan it follows), so the DAG shows it, and say which operators' outputs are held
    rather than streamed, and why."""
    ops = []
    for op in pipeline.operators:
        if op.source_side:
            update: dict[str, Any] = {"sql": operator_sql(op, pipeline), "materialized": None}
            if isinstance(op, ArrowUdfTransform):
                update["materialized"] = UDF_MATERIALIZED
            elif op.engine in ("polars", "daft"):
                update["materialized"] = engine_materialized(op.engine)
            op = op.model_copy(update=update)
        ops.append(op)
    return pipeline.model_copy(update={"operators": tuple(ops)})
