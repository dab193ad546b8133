"""What the demo sources are: the contract's schemas and time constants, the spec that sizes a
run, and `PartitionSink`, which writes `<root>/<source>/dt=YYYY-MM-DD/part-0.parquet` files.

Days are handled as day numbers (days since 1970-01-01) and timestamps as UTC microseconds, so
a row's `dt` partition is `ts // DAY_US`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DAY_US = 86_400_000_000
EMBEDDING_DIM = 1152
LIKE_WINDOW_US = 7 * DAY_US
PROFILE_TTL_US = 3 * DAY_US
ARTWORK_STATS_TTL_US = 2 * DAY_US

TS = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "feed_impressions": pa.schema([
        ("event_timestamp", TS), ("user_id", pa.int64()), ("artwork_id", pa.int64()),
        ("feed_session", pa.string()), ("position", pa.int32()), ("is_click", pa.bool_()),
        ("is_like", pa.bool_()), ("dwell_ms", pa.int32()),
    ]),
    "user_likes": pa.schema([
        ("event_timestamp", TS), ("user_id", pa.int64()), ("artwork_id", pa.int64()),
    ]),
    "user_profile": pa.schema([
        ("feature_timestamp", TS), ("user_id", pa.int64()), ("country", pa.string()),
        ("account_age_days", pa.int32()), ("follower_count", pa.int64()),
        ("is_premium", pa.bool_()),
    ]),
    "artwork_stats": pa.schema([
        ("feature_timestamp", TS), ("artwork_id", pa.int64()), ("views_1d", pa.int64()),
        ("likes_1d", pa.int64()), ("ctr_1d", pa.float64()),
    ]),
    "siglip2_vectors": pa.schema([
        ("id", pa.int64()), ("image_embedding", pa.list_(pa.float16(), EMBEDDING_DIM)),
    ]),
}


@dataclass(frozen=True)
class DemoDataSpec:
    """How much demo data to write, from which first feed day, and from which seed."""

    start_date: dt.date = dt.date(2026, 2, 1)
    days: int = 3
    users: int = 500
    artworks: int = 2000
    events_per_day: int = 5000
    likes_history_days: int = 8
    seed: int = 7


_EPOCH = dt.date(1970, 1, 1)


def day_num(day: dt.date) -> int:
    return (day - _EPOCH).days


def iso(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


class PartitionSink:
    """Writes partitions and remembers what went where, for the summary."""

    def __init__(self, root: Path, progress: Callable[[str], None] | None):
        self.root = root
        self.progress = progress or (lambda _message: None)
        self.rows: dict[str, int] = {name: 0 for name in SCHEMAS}
        self.days: dict[str, list[int]] = {name: [] for name in SCHEMAS}

    def file(self, source: str, day: int) -> Path:
        folder = self.root / source / f"dt={iso(day)}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "part-0.parquet"

    def record(self, source: str, day: int, rows: int) -> None:
        self.rows[source] += rows
        self.days[source].append(day)
        self.progress(f"{source} dt={iso(day)}: {rows:,} rows")

    def write(self, source: str, day: int, table: pa.Table) -> None:
        if table.num_rows:
            pq.write_table(table, self.file(source, day), compression="zstd")
            self.record(source, day, table.num_rows)

    def summary(self, spec: DemoDataSpec, planted: dict) -> dict:
        return {
            "root": str(self.root),
            "spec": {**asdict(spec), "start_date": spec.start_date.isoformat()},
            "rows": dict(self.rows),
            "date_range": {
                name: [iso(min(days)), iso(max(days))] if days else None
                for name, days in self.days.items()
            },
            "planted": planted,
        }
