"""The demo generator writes the contract's sources, byte-for-byte reproducibly, with the
point-in-time edge cases planted where later tests and benchmarks expect them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from daedalus.core.errors import DaedalusError
from daedalus.demo.data import PRESETS, generate_demo_data
from daedalus.demo.spec import DemoDataSpec

DAY_US = 86_400_000_000
TS = pa.timestamp("us", tz="UTC")
CONTRACT = {
    "feed_impressions": [
        ("event_timestamp", TS), ("user_id", pa.int64()), ("artwork_id", pa.int64()),
        ("feed_session", pa.string()), ("position", pa.int32()), ("is_click", pa.bool_()),
        ("is_like", pa.bool_()), ("dwell_ms", pa.int32()),
    ],
    "user_likes": [("event_timestamp", TS), ("user_id", pa.int64()), ("artwork_id", pa.int64())],
    "user_profile": [
        ("feature_timestamp", TS), ("user_id", pa.int64()), ("country", pa.string()),
        ("account_age_days", pa.int32()), ("follower_count", pa.int64()),
        ("is_premium", pa.bool_()),
    ],
    "artwork_stats": [
        ("feature_timestamp", TS), ("artwork_id", pa.int64()), ("views_1d", pa.int64()),
        ("likes_1d", pa.int64()), ("ctr_1d", pa.float64()),
    ],
    "siglip2_vectors": [("id", pa.int64()), ("image_embedding", pa.list_(pa.float16(), 1152))],
}
TIMESTAMP_COLUMN = {
    "feed_impressions": "event_timestamp",
    "user_likes": "event_timestamp",
    "user_profile": "feature_timestamp",
    "artwork_stats": "feature_timestamp",
}
SPEC = DemoDataSpec()
START_US = (SPEC.start_date - dt.date(1970, 1, 1)).days * DAY_US


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, generate_demo_data(root, SPEC)


@pytest.fixture(scope="module")
def tables(demo) -> dict[str, pa.Table]:
    root, _ = demo
    return {source: _read(root / source) for source in CONTRACT}


def _read(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in sorted(folder.glob("dt=*/*.parquet")))


def _us(table: pa.Table, column: str) -> np.ndarray:
    return table[column].cast(pa.int64()).to_numpy()


def _ints(table: pa.Table, column: str) -> np.ndarray:
    return table[column].to_numpy()


def _key(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """One sortable int64 per (user, timestamp)."""
    return user.astype(np.int64) * (1 << 52) + ts


def test_presets():
    assert PRESETS["small"] == DemoDataSpec()
    bench = PRESETS["bench"]
    assert (bench.days, bench.users, bench.artworks) == (1, 200_000, 500_000)
    assert (bench.events_per_day, bench.likes_history_days) == (1_000_000, 8)


def test_every_file_has_the_contract_schema(demo):
    root, summary = demo
    for source, columns in CONTRACT.items():
        files = sorted((root / source).glob("dt=*/*.parquet"))
        assert files, source
        for f in files:
            schema = pq.read_schema(f)
            assert schema.names == [name for name, _ in columns], f
            assert schema.types == [kind for _, kind in columns], f
        assert summary["rows"][source] == sum(pq.read_metadata(f).num_rows for f in files)


def test_partitions_hold_rows_of_their_own_utc_date(demo):
    root, _ = demo
    for source, column in TIMESTAMP_COLUMN.items():
        for f in (root / source).glob("dt=*/*.parquet"):
            day = dt.date.fromisoformat(f.parent.name.removeprefix("dt="))
            days = np.unique(_us(pq.read_table(f), column) // DAY_US)
            assert days.tolist() == [(day - dt.date(1970, 1, 1)).days], f


def test_date_ranges(demo):
    root, summary = demo
    feed_days = [(SPEC.start_date + dt.timedelta(d)).isoformat() for d in range(SPEC.days)]
    assert sorted(p.name for p in (root / "feed_impressions").iterdir()) == [
        f"dt={d}" for d in feed_days
    ]
    assert summary["rows"]["feed_impressions"] == SPEC.days * SPEC.events_per_day
    likes_from = SPEC.start_date - dt.timedelta(SPEC.likes_history_days)
    assert summary["date_range"]["user_likes"] == [likes_from.isoformat(), feed_days[-1]]
    assert summary["date_range"]["user_profile"][0] == "2026-01-28"
    assert summary["date_range"]["artwork_stats"][0] == "2026-01-29"


def test_same_spec_same_bytes_other_seed_other_data(demo, tmp_path):
    root, _ = demo
    again = tmp_path / "again"
    generate_demo_data(again, SPEC)
    files = sorted(p.relative_to(root) for p in root.rglob("*.parquet"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.parquet"))
    for f in files:
        assert (root / f).read_bytes() == (again / f).read_bytes(), f

    tiny = DemoDataSpec(days=1, users=50, artworks=100, events_per_day=300)
    generate_demo_data(tmp_path / "a", tiny)
    generate_demo_data(tmp_path / "b", dataclasses.replace(tiny, seed=8))
    feed = "feed_impressions/dt=2026-02-01/part-0.parquet"
    assert (tmp_path / "a" / feed).read_bytes() != (tmp_path / "b" / feed).read_bytes()


def test_ids_stay_in_range(tables):
    for source, column, top in [
        ("feed_impressions", "user_id", SPEC.users),
        ("feed_impressions", "artwork_id", SPEC.artworks),
        ("user_likes", "user_id", SPEC.users),
        ("user_likes", "artwork_id", SPEC.artworks),
        ("user_profile", "user_id", SPEC.users),
        ("artwork_stats", "artwork_id", SPEC.artworks),
        ("siglip2_vectors", "id", SPEC.artworks),
    ]:
        ids = _ints(tables[source], column)
        assert ids.min() >= 1 and ids.max() <= top, (source, column)


def test_feed_rates_look_like_a_feed(tables):
    feed = tables["feed_impressions"]
    n = feed.num_rows
    assert 0.03 < feed["feed_session"].null_count / n < 0.08
    assert 0.15 < feed["dwell_ms"].null_count / n < 0.25
    assert 0.08 < np.mean(_ints(feed, "is_click")) < 0.12
    assert 0.015 < np.mean(_ints(feed, "is_like")) < 0.04
    counts = np.bincount(_ints(feed, "user_id"))
    assert counts.max() > 20 * np.median(counts[counts > 0])


def test_feed_plants_midnight_ties_and_duplicates(tables):
    feed = tables["feed_impressions"]
    ts = _us(feed, "event_timestamp")
    midnight_days = np.unique(ts[ts % DAY_US == 0] // DAY_US)
    assert midnight_days.tolist() == [START_US // DAY_US + d for d in range(SPEC.days)]
    assert not np.all(ts % 1_000_000 == 0)

    pairs, counts = np.unique(_key(_ints(feed, "user_id"), ts), return_counts=True)
    assert (counts > 1).sum() > 10
    rows = feed.group_by(feed.column_names).aggregate([([], "count_all")])
    assert 0 < (rows["count_all"].to_numpy() > 1).sum() < 0.01 * feed.num_rows


def test_sessions_number_positions_and_one_crosses_midnight(demo, tables):
    _, summary = demo
    feed = tables["feed_impressions"]
    sessions = feed.filter(pc.is_valid(feed["feed_session"]))
    per_session = sessions.group_by("feed_session").aggregate([
        ("position", "count_distinct"), ("position", "max"), ("user_id", "count_distinct"),
    ])
    distinct = _ints(per_session, "position_count_distinct")
    assert (_ints(per_session, "position_max") + 1 == distinct).all()
    assert (_ints(per_session, "user_id_count_distinct") == 1).all()
    assert distinct.mean() > 3

    days = pa.table({
        "feed_session": sessions["feed_session"],
        "day": _us(sessions, "event_timestamp") // DAY_US,
    }).group_by("feed_session").aggregate([("day", "count_distinct")])
    spanning = days.filter(pc.greater(days["day_count_distinct"], 1))["feed_session"]
    assert sorted(spanning.to_pylist()) == sorted(summary["planted"]["spanning_sessions"])
    assert len(spanning) == SPEC.days - 1


def test_likes_plant_a_heavy_user_and_exact_boundaries(demo, tables):
    _, summary = demo
    likes, feed = tables["user_likes"], tables["feed_impressions"]
    like_user, like_ts = _ints(likes, "user_id"), _us(likes, "event_timestamp")
    keys = np.sort(_key(like_user, like_ts))
    in_week = np.searchsorted(keys, keys + 7 * DAY_US) - np.arange(keys.size)
    heaviest = keys[np.argmax(in_week)] >> 52
    assert in_week.max() > 50 and heaviest in summary["planted"]["heavy_likers"]

    feed_user, feed_ts = _ints(feed, "user_id"), _us(feed, "event_timestamp")
    impressions = _key(feed_user, feed_ts)
    assert np.isin(keys, impressions).sum() >= 3
    assert np.isin(_key(feed_user, feed_ts - 7 * DAY_US), keys).sum() >= 3

    never = np.setdiff1d(np.arange(1, SPEC.users + 1), like_user)
    assert never.size > 0.1 * SPEC.users
    assert not _ints(feed, "is_like")[np.isin(feed_user, never)].any()


def test_profiles_plant_missing_stale_and_boundary_rows(tables):
    profile, feed = tables["user_profile"], tables["feed_impressions"]
    user, ts = _ints(profile, "user_id"), _us(profile, "feature_timestamp")
    feed_user, feed_ts = _ints(feed, "user_id"), _us(feed, "event_timestamp")
    everyone = np.arange(1, SPEC.users + 1)

    no_profile = np.setdiff1d(everyone, user)
    no_likes = np.setdiff1d(everyone, _ints(tables["user_likes"], "user_id"))
    lonely = np.intersect1d(no_profile, no_likes)
    assert lonely.size > 0 and np.isin(lonely, feed_user).any()

    last = np.full(SPEC.users + 1, -1)
    np.maximum.at(last, user, ts)
    assert (last[np.unique(user)] < START_US - 3 * DAY_US).sum() > 3

    at_t = np.isin(_key(user, ts), _key(feed_user, feed_ts))
    assert at_t.sum() >= 3
    at_ttl_edge = np.isin(_key(user, ts), _key(feed_user, feed_ts - 3 * DAY_US))
    assert at_ttl_edge.sum() >= 3


def test_artwork_stats_land_on_midnight_impressions(tables):
    stats, feed = tables["artwork_stats"], tables["feed_impressions"]
    artwork, ts = _ints(stats, "artwork_id"), _us(stats, "feature_timestamp")
    assert (ts % DAY_US == 0).all()
    assert 0.8 < np.unique(artwork).size / SPEC.artworks < 0.95
    ctr = _ints(stats, "ctr_1d")
    assert ((ctr >= 0) & (ctr <= 1)).all()

    feed_artwork, feed_ts = _ints(feed, "artwork_id"), _us(feed, "event_timestamp")
    midnight = feed_ts % DAY_US == 0
    stat_keys = _key(artwork, ts)
    assert np.isin(_key(feed_artwork, feed_ts)[midnight], stat_keys).sum() >= 2

    only_row = {}
    for a, t in zip(artwork.tolist(), ts.tolist(), strict=True):
        only_row.setdefault(a, []).append(t)
    stale = {a for a, rows in only_row.items() if rows == [START_US - 2 * DAY_US]}
    assert len(stale) > 0.02 * SPEC.artworks
    first_midnight = midnight & (feed_ts == START_US)
    assert np.isin(feed_artwork[first_midnight], list(stale)).any()


def test_vectors_miss_some_ids_and_reembed_others(demo, tables):
    root, _ = demo
    parts = sorted((root / "siglip2_vectors").iterdir())
    assert len(parts) == 2
    base, later = (pq.read_table(p) for p in parts)
    ids = _ints(tables["siglip2_vectors"], "id")
    assert 0.9 < np.unique(ids).size / SPEC.artworks < 0.99
    assert np.setdiff1d(_ints(tables["feed_impressions"], "artwork_id"), ids).size > 0

    assert 0 < later.num_rows < 0.05 * base.num_rows
    base_ids = _ints(base, "id")
    assert np.isin(_ints(later, "id"), base_ids).all()
    old = base.take(np.searchsorted(base_ids, _ints(later, "id")))
    old_values = old["image_embedding"].combine_chunks().flatten().to_numpy()
    new_values = later["image_embedding"].combine_chunks().flatten().to_numpy()
    assert old_values.dtype == np.float16
    assert not np.array_equal(old_values, new_values)
    assert 0.03 < np.std(old_values.astype(np.float32)) < 0.07
    assert np.abs(new_values).max() < 1


def test_tiny_specs_still_work_and_rerun_in_place(tmp_path):
    spec = DemoDataSpec(days=2, users=1, artworks=1, events_per_day=1, likes_history_days=0)
    first = generate_demo_data(tmp_path, spec)
    second = generate_demo_data(tmp_path, spec)
    assert first == second
    assert first["rows"]["feed_impressions"] == 2


def test_refuses_to_overwrite_sources_it_did_not_write(tmp_path):
    (tmp_path / "feed_impressions").mkdir()
    with pytest.raises(DaedalusError):
        generate_demo_data(tmp_path, DemoDataSpec(days=1, events_per_day=10))
    assert (tmp_path / "feed_impressions").is_dir()
