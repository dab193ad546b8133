"""What every engine's RollingAggregate plan shares (the SQL, Polars and Daft): the running
count a spec slices by, and the order of an entity's list."""

from __future__ import annotations

from daedalus.core.operators import RollingAggregate, RollingSpec


def counter(spec: RollingSpec, prefix: str = "") -> str:
    """The running count a spec slices by: every row (a list, or a count of rows), or the
    non-null values of `column`."""
    if spec.function == "last_n_list" or spec.column is None:
        return f"{prefix}n_rows"
    return f"{prefix}n_{spec.column}"


def list_order(spec: RollingSpec, ts: str) -> list[str]:
    """An entity's list order: the spec's `order_by` (else the timestamp), then the column."""
    order = list(spec.order_by) or [ts]
    return [*order, spec.column] if spec.column not in order else order


def counters_and_windows(op: RollingAggregate, prefix: str = "__") -> tuple[list[str], list[str]]:
    """The op's distinct running counts and windows, in first-use order: each engine numbers
    the rows once per count and looks each window's start up once."""
    counters = list(dict.fromkeys(counter(s, prefix) for s in op.aggregations))
    return counters, list(dict.fromkeys(s.window for s in op.aggregations))
