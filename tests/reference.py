"""Brute-force reference of the skeleton columns (docs/data-contract.md): plain Python over
the source rows.

Slow and obvious on purpose: for every impression it looks at every row of the user (or
artwork) and applies the contract's words literally. Tests compare the engine's output with it
column by column; other test files can import `reference_days`, `read_output` and
`assert_same_rows` too.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TS = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "feed_impressions": pa.schema(
        [
            ("event_timestamp", TS),
            ("user_id", pa.int64()),
            ("artwork_id", pa.int64()),
            ("feed_session", pa.string()),
            ("position", pa.int32()),
            ("is_click", pa.bool_()),
            ("is_like", pa.bool_()),
            ("dwell_ms", pa.int32()),
        ]
    ),
    "user_likes": pa.schema(
        [("event_timestamp", TS), ("user_id", pa.int64()), ("artwork_id", pa.int64())]
    ),
    "user_profile": pa.schema(
        [
            ("feature_timestamp", TS),
            ("user_id", pa.int64()),
            ("country", pa.string()),
            ("account_age_days", pa.int32()),
            ("follower_count", pa.int64()),
            ("is_premium", pa.bool_()),
        ]
    ),
    "artwork_stats": pa.schema(
        [
            ("feature_timestamp", TS),
            ("artwork_id", pa.int64()),
            ("views_1d", pa.int64()),
            ("likes_1d", pa.int64()),
            ("ctr_1d", pa.float64()),
        ]
    ),
}
PROFILE = ("country", "account_age_days", "follower_count", "is_premium")
STATS = ("views_1d", "likes_1d", "ctr_1d")
OUTPUT_COLUMNS = (
    "event_timestamp",
    "user_id",
    "artwork_id",
    "feed_session",
    "position",
    "dwell_ms",
    "label_click",
    "label_like",
    "qid",
    *PROFILE,
    *STATS,
    "like_artwork_ids_7d",
    "like_count_7d",
    "image_embedding",
    "like_artwork_avg_embeds",
)
SORT_KEY = ("event_timestamp", "user_id", "artwork_id", "position")


@dataclass(frozen=True)
class Rules:
    """The data contract's knobs that a hand-edited DAG may change."""

    profile_ttl: dt.timedelta | None = dt.timedelta(days=3)
    stats_ttl: dt.timedelta | None = dt.timedelta(days=2)
    like_window: dt.timedelta = dt.timedelta(days=7)
    like_cap: int | None = 50


def write_source(root: Path, source: str, rows: list[dict]) -> None:
    """Hive-partitioned parquet by the UTC date of each row's timestamp (docs/data-contract.md)."""
    schema = SCHEMAS[source]
    ts = schema.names[0]
    by_day: dict[dt.date, list[dict]] = defaultdict(list)
    for row in rows:
        by_day[row[ts].astimezone(dt.UTC).date()].append(row)
    for day, part in by_day.items():
        folder = Path(root) / source / f"dt={day:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{len(list(folder.iterdir()))}.parquet"
        pq.write_table(pa.Table.from_pylist(part, schema=schema), folder / name)


def read_source(root: Path, source: str) -> list[dict]:
    files = sorted((Path(root) / source).glob("dt=*/*.parquet"))
    rows: list[dict] = []
    for f in files:
        rows += pq.read_table(f).select(SCHEMAS[source].names).to_pylist()
    return rows


def _none_low(values: tuple) -> tuple:
    return tuple((0,) if v is None else (1, v) for v in values)


def _latest_visible(
    rows: list[dict], t: dt.datetime, ttl: dt.timedelta | None, features: tuple[str, ...]
) -> dict | None:
    """Rows with ts < t (and ts >= t - ttl); the latest wins, equal timestamps: largest values."""
    visible = [
        r
        for r in rows
        if r["feature_timestamp"] < t and (ttl is None or r["feature_timestamp"] >= t - ttl)
    ]
    if not visible:
        return None
    return max(
        visible, key=lambda r: (r["feature_timestamp"], _none_low(tuple(r[f] for f in features)))
    )


def reference_days(
    sources_root: Path,
    days: list[dt.date],
    rules: Rules = Rules(),
    known_qids: dict[str, int] | None = None,
) -> tuple[dict[dt.date, list[dict]], dict]:
    """Every output row of every day, computed by brute force; and the qid map after them."""
    impressions = read_source(sources_root, "feed_impressions")
    likes_by_user: dict[int, list[dict]] = defaultdict(list)
    for r in read_source(sources_root, "user_likes"):
        likes_by_user[r["user_id"]].append(r)
    profiles: dict[int, list[dict]] = defaultdict(list)
    for r in read_source(sources_root, "user_profile"):
        profiles[r["user_id"]].append(r)
    stats: dict[int, list[dict]] = defaultdict(list)
    for r in read_source(sources_root, "artwork_stats"):
        stats[r["artwork_id"]].append(r)

    qids = dict(known_qids or {})
    out: dict[dt.date, list[dict]] = {}
    for day in sorted(days):
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        end = start + dt.timedelta(days=1)
        rows = [r for r in impressions if start <= r["event_timestamp"] < end]
        first_seen: dict[str, dt.datetime] = {}
        for r in rows:
            s = r["feed_session"]
            if s is not None and (s not in first_seen or r["event_timestamp"] < first_seen[s]):
                first_seen[s] = r["event_timestamp"]
        for s in sorted(first_seen, key=lambda s: (first_seen[s], s)):
            if s not in qids:
                qids[s] = max(qids.values(), default=-1) + 1
        day_rows = []
        for r in rows:
            t = r["event_timestamp"]
            profile = _latest_visible(profiles[r["user_id"]], t, rules.profile_ttl, PROFILE)
            stat = _latest_visible(stats[r["artwork_id"]], t, rules.stats_ttl, STATS)
            window = sorted(
                (lk["event_timestamp"], lk["artwork_id"])
                for lk in likes_by_user[r["user_id"]]
                if t - rules.like_window <= lk["event_timestamp"] < t
            )
            kept = window[-rules.like_cap :] if rules.like_cap else window
            row = {
                "event_timestamp": t,
                "user_id": r["user_id"],
                "artwork_id": r["artwork_id"],
                "feed_session": r["feed_session"],
                "position": r["position"],
                "dwell_ms": r["dwell_ms"],
                "label_click": r["is_click"],
                "label_like": r["is_like"],
                "qid": qids.get(r["feed_session"]) if r["feed_session"] is not None else None,
                **{f: profile[f] if profile else None for f in PROFILE},
                **{f: stat[f] if stat else None for f in STATS},
                "like_artwork_ids_7d": [a for _, a in kept],
                "like_count_7d": len(window),
                "image_embedding": None,
                "like_artwork_avg_embeds": None,
            }
            day_rows.append(row)
        out[day] = day_rows
    return out, qids


def read_output(day_folder: Path) -> list[dict]:
    """A written day's rows, part files in order (part-0-0, part-1-0, ...)."""
    files = sorted(
        Path(day_folder).glob("part-*-0.parquet"), key=lambda p: int(p.name.split("-")[1])
    )
    rows: list[dict] = []
    for f in files:
        rows += pq.read_table(f).to_pylist()
    return rows


def _full_key(row: dict) -> tuple:
    return _none_low(tuple(tuple(v) if isinstance(v, list) else v for v in row.values()))


def assert_same_rows(actual: list[dict], expected: list[dict], where: str = "") -> None:
    """Same columns in order, sorted by the contract key, and the same rows (as multisets)."""
    assert len(actual) == len(expected), f"{where}: {len(actual)} rows, expected {len(expected)}"
    if not expected:
        return
    assert list(actual[0]) == list(OUTPUT_COLUMNS), f"{where}: columns {list(actual[0])}"
    keys = [tuple(r[k] for k in SORT_KEY) for r in actual]
    assert keys == sorted(keys), f"{where}: rows are not sorted by {SORT_KEY}"
    for i, (a, e) in enumerate(
        zip(sorted(actual, key=_full_key), sorted(expected, key=_full_key), strict=True)
    ):
        for col in OUTPUT_COLUMNS:
            assert a[col] == e[col], (
                f"{where}: row {i} ({e['event_timestamp']}, user {e['user_id']},"
                f" artwork {e['artwork_id']}) column {col}: {a[col]!r} != {e[col]!r}"
            )


# The Arrow type of every skeleton output column (docs/data-contract.md).
OUTPUT_TYPES: dict[str, pa.DataType] = {
    "event_timestamp": TS,
    "user_id": pa.int64(),
    "artwork_id": pa.int64(),
    "feed_session": pa.string(),
    "position": pa.int32(),
    "dwell_ms": pa.int32(),
    "label_click": pa.bool_(),
    "label_like": pa.bool_(),
    "qid": pa.int64(),
    "country": pa.string(),
    "account_age_days": pa.int32(),
    "follower_count": pa.int64(),
    "is_premium": pa.bool_(),
    "views_1d": pa.int64(),
    "likes_1d": pa.int64(),
    "ctr_1d": pa.float64(),
    "like_artwork_ids_7d": pa.list_(pa.int64()),
    "like_count_7d": pa.int64(),
    "image_embedding": pa.list_(pa.float16()),
    "like_artwork_avg_embeds": pa.list_(pa.float16()),
}
