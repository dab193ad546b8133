"""The RollingAggregate operator on Polars (`compute.engine: polars`), same output as DuckDB.

The same numbered-sequence-and-slice plan as the RollingAggregate SQL of `daedalus.skeleton.sql`,
as one lazy Polars query over the Arrow tables the skeleton day scanned:

- marks: per entity and timestamp, how many rows (or non-null values of a column) are at or
  before it (equal timestamps collapsed first, so an as-of match lands on the whole group);
- for each spine row, `join_asof` (backward, strict) finds the count before `t` and before
  each window start `t - window`; a window's count is the difference;
- a list is the entity's rows in list order, sliced to the window and capped at `max_items`.

NULL entities match nothing (counts 0, lists empty), as in the SQL's ASOF and LEFT joins.
"""

from __future__ import annotations

import pyarrow as pa

from daedalus.core.config import parse_duration
from daedalus.core.operators import RollingAggregate
from daedalus.skeleton.rolling import counter, counters_and_windows, list_order

SPINE_ROW = "spine_row"
_E, _TS, _T = "__entity", "__ts", "__t"


def rolling_aggregate(op: RollingAggregate, spine: pa.Table, rows: pa.Table,
                      spine_ts: str) -> pa.Table:
    """`spine_row` plus one column per aggregation, for every spine row (any order).

    `spine` has `spine_row`, the entity and `spine_ts`; `rows` is the view's scanned rows.
    """
    import polars as pl

    entity, ts = op.entity, op.timestamp_field
    counters, windows = counters_and_windows(op)
    view = pl.from_arrow(rows).lazy().filter(pl.col(entity).is_not_null())
    keys = pl.from_arrow(spine.select([SPINE_ROW, entity, spine_ts])).lazy().select(
        pl.col(SPINE_ROW), pl.col(entity).alias(_E), pl.col(spine_ts).alias(_T))

    counts = [pl.len().alias(c) if c == "__n_rows" else pl.col(c[4:]).count().alias(c)
              for c in counters]
    marks = (view.group_by(pl.col(entity).alias(_E), pl.col(ts).alias(_TS)).agg(counts)
             .sort(_E, _TS)
             .with_columns([pl.col(c).cum_sum().over(_E).cast(pl.Int64) for c in counters])
             .sort(_TS))
    probes = {"t": pl.col(_T)}
    for w in windows:
        probes[w] = pl.col(_T) - pl.lit(parse_duration(w))
    bounds = keys
    for label, probe in probes.items():
        bounds = (bounds.with_columns(probe.alias("__probe")).sort("__probe")
                  .join_asof(marks.select(_E, _TS, *counters), left_on="__probe", right_on=_TS,
                             by=_E, strategy="backward", allow_exact_matches=False,
                             check_sortedness=False)
                  .with_columns([pl.col(c).fill_null(0).alias(f"{c}@{label}")
                                 for c in counters])
                  .drop("__probe", _TS, *counters))

    lists = [s for s in op.aggregations if s.function == "last_n_list"]
    if lists:
        per_entity = []
        for s in lists:
            order = list_order(s, ts)
            per_entity.append(view.sort(order, nulls_last=True, maintain_order=True)
                              .group_by(pl.col(entity).alias(_E), maintain_order=True)
                              .agg(pl.col(s.column).alias(s.name)))
        for frame in per_entity:
            bounds = bounds.join(frame, on=_E, how="left")

    outputs = []
    for s in op.aggregations:
        c = counter(s, "__")
        hi, lo = pl.col(f"{c}@t"), pl.col(f"{c}@{s.window}")
        if s.function == "count":
            outputs.append((hi - lo).cast(pl.Int64).alias(s.name))
            continue
        first = pl.max_horizontal(lo, hi - s.max_items) if s.max_items else lo
        outputs.append(pl.col(s.name).list.slice(first, hi - first)
                       .fill_null(pl.lit([], dtype=pl.List(pl.Int64))).alias(s.name))
    out = bounds.select(pl.col(SPINE_ROW), *outputs).collect()
    table = out.to_arrow()
    return pa.Table.from_arrays(
        [table.column(0), *(_plain(table.column(i)) for i in range(1, table.num_columns))],
        names=table.column_names)


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Polars hands back large_list / string_view; DuckDB writes list and string."""
    t = column.type
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return column.cast(pa.list_(t.value_type))
    return column
