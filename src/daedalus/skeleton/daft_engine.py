"""The RollingAggregate and PointInTimeJoin operators on Daft (`compute.engine: daft`), same
output as DuckDB, each a Daft query (native runner) over the Arrow tables the skeleton day
scanned; the day's DuckDB statement reads the results in place.

`rolling_aggregate` is the numbered-sequence-and-slice plan of the RollingAggregate SQL
(`daedalus.skeleton.sql`):

- marks: per entity and timestamp, how many rows (or non-null values of a column) are at or
  before it, a running sum over the entity's timestamps (equal timestamps collapsed first, so
  an as-of match lands on the whole group);
- for each spine row, `join_asof` finds the count before `t` and before each window start
  `t - window`. Daft's backward as-of join matches `<=`; the marks' timestamps are shifted by
  one microsecond (the timestamps' unit), so `ts + 1us <= probe` is exactly `ts < probe`;
- a list is a slice of the entity's rows in list order: Daft sorts the view by entity and
  list order, and each spine row's list is the run `[first, hi)` of that entity's block,
  gathered from the sorted column by offsets.

NULL entities match nothing (counts 0, lists empty), as in the SQL's ASOF and LEFT joins.

`point_in_time_join` is the SQL's `ASOF LEFT JOIN ... t > feature_ts` with the TTL mask: the
same one-microsecond shift makes Daft's `<=` a `<`, and equal timestamps of one key keep the
row with the largest feature values (NULLs last), as the SQL's `QUALIFY row_number()` does.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from daedalus.core.config import parse_duration
from daedalus.core.operators import PointInTimeJoin, RollingAggregate, RollingSpec
from daedalus.skeleton.rolling import counter, counters_and_windows, list_order

SPINE_ROW = "spine_row"
_E, _TS, _T = "__entity", "__ts", "__t"
_TICK = dt.timedelta(microseconds=1)


def rolling_aggregate(op: RollingAggregate, spine: pa.Table, rows: pa.Table,
                      spine_ts: str) -> pa.Table:
    """`spine_row` plus one column per aggregation, for every spine row (in `spine_row` order).

    `spine` has `spine_row`, the entity and `spine_ts`; `rows` is the view's scanned rows.
    """
    import daft
    from daft import Window, col

    entity, ts = op.entity, op.timestamp_field
    counters, windows = counters_and_windows(op)
    view = daft.from_arrow(rows).where(col(entity).not_null())
    keys = daft.from_arrow(spine.select([SPINE_ROW, entity, spine_ts])).select(
        col(SPINE_ROW), col(entity).alias(_E), col(spine_ts).alias(_T))

    counts = [col(_TS).count("all").alias(c) if c == "__n_rows" else col(c[4:]).count().alias(c)
              for c in counters]
    running = Window().partition_by(_E).order_by(_TS).rows_between(
        Window.unbounded_preceding, Window.current_row)
    marks = (view.select(col(entity).alias(_E), col(ts).alias(_TS), *[
                 col(c[4:]) for c in counters if c != "__n_rows"])
             .groupby(_E, _TS).agg(*counts)
             .select(col(_E), (col(_TS) + _TICK).alias(_TS),
                     *[col(c).sum().over(running).cast(daft.DataType.int64()).alias(c)
                       for c in counters]))
    probes = {"t": col(_T)}
    for w in windows:
        probes[w] = col(_T) - parse_duration(w)
    bounds = keys
    for label, probe in probes.items():
        bounds = (bounds.with_column("__probe", probe)
                  .join_asof(marks, left_on="__probe", right_on=_TS, by=_E, strategy="backward")
                  .select(*[col(n) for n in bounds.column_names],
                          *[col(c).fill_null(0).alias(f"{c}@{label}") for c in counters]))
    bounds = bounds.sort(SPINE_ROW).to_arrow()

    columns = [bounds.column(SPINE_ROW)]
    names = [SPINE_ROW]
    for s in op.aggregations:
        c = counter(s, "__")
        hi = bounds.column(f"{c}@t").to_numpy()
        lo = bounds.column(f"{c}@{s.window}").to_numpy()
        names.append(s.name)
        if s.function == "count":
            columns.append(pa.array(hi - lo, pa.int64()))
            continue
        first = np.maximum(lo, hi - s.max_items) if s.max_items else lo
        columns.append(_slices(view, entity, s, ts, bounds.column(_E), first, hi))
    return pa.Table.from_arrays(columns, names=names)


def _slices(view, entity: str, spec: RollingSpec, ts: str, entities: pa.ChunkedArray,
            first: np.ndarray, hi: np.ndarray) -> pa.ListArray:
    """Each spine row's `[first, hi)` run of its entity's values in list order."""
    from daft import col

    order = list_order(spec, ts)
    ordered = view.sort([col(entity), *[col(c) for c in order]],
                        nulls_first=[False] * (len(order) + 1)).select(
        col(entity), col(spec.column)).to_arrow()
    sorted_entities = ordered.column(entity).to_numpy()
    values = ordered.column(spec.column).combine_chunks()
    present, base = np.unique(sorted_entities, return_index=True)
    wanted = entities.fill_null(0).to_numpy()
    at = np.searchsorted(present, wanted).clip(0, max(present.size - 1, 0))
    starts = (base[at] if present.size else np.zeros_like(wanted)) + first
    lengths = np.where(hi > first, hi - first, 0)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Positions in the sorted column, run by run: int32 where they fit (half the bytes to
    # build and read for the day's tens of millions of list items).
    index = np.int32 if max(len(values), int(offsets[-1])) < 2**31 else np.int64
    take = np.repeat((starts - offsets[:-1]).astype(index), lengths)
    take += np.arange(offsets[-1], dtype=index)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values.take(take),
                                    type=pa.list_(values.type))


def point_in_time_join(op: PointInTimeJoin, spine: pa.Table, rows: pa.Table,
                       spine_ts: str) -> pa.Table:
    """`spine_row` plus the op's features: per spine row, the view's latest row strictly
    before `t` with equal keys (equal timestamps: the largest feature values, NULLs last),
    its features NULL when that row is older than `t - ttl`; NULL keys match nothing."""
    import daft
    from daft import Window, col
    from daft.functions import row_number, when

    keys, ts, features = list(op.keys), op.timestamp_field, list(op.features)
    view = daft.from_arrow(rows.select([*keys, ts, *features]))
    for k in keys:
        view = view.where(col(k).not_null())
    # Equal timestamps for one key are rare: only their rows are ranked (a window over every
    # row, each its own partition, costs ~40x more on the bench day); the rest pass as they are.
    tied = (view.groupby(*keys, ts).agg(col(ts).count("all").alias("__n"))
            .where(col("__n") > 1).select(*keys, ts))
    ties = Window().partition_by(*keys, ts).order_by(
        *features, desc=[True] * len(features), nulls_first=[False] * len(features))
    ranked = (view.join(tied, on=[*keys, ts], how="semi")
              .with_column("__rank", row_number().over(ties)).where(col("__rank") == 1)
              .exclude("__rank"))
    latest = (view.join(tied, on=[*keys, ts], how="anti").concat(ranked)
              .select(*keys, (col(ts) + _TICK).alias(_TS), col(ts).alias("__fts"), *features))
    left = daft.from_arrow(spine.select([SPINE_ROW, *keys, spine_ts])).select(
        col(SPINE_ROW), *keys, col(spine_ts).alias(_T))
    joined = left.join_asof(latest, left_on=_T, right_on=_TS, by=keys, strategy="backward")
    visible = col("__fts").not_null()
    if op.ttl:
        visible = visible & (col("__fts") >= col(_T) - parse_duration(op.ttl))
    out = joined.select(col(SPINE_ROW), *[when(visible, col(f)).otherwise(None).alias(f)
                                          for f in features]).sort(SPINE_ROW).to_arrow()
    fields = {f.name: f.type for f in rows.schema}
    return pa.Table.from_arrays(
        [out.column(SPINE_ROW), *(out.column(f).cast(fields[f]) for f in features)],
        names=[SPINE_ROW, *features])
