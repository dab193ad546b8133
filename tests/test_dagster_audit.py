"""The asset checks' audits (daedalus.audit) on hand-built sources with planted leaks.

Each case is one output row whose values either come from the row's past (the audit
passes) or could only come from a source row at or after t / outside the TTL or window
(the audit names that feature group and row).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daedalus.audit import (
    embedding_coverage,
    impression_count,
    leakage_audit,
    written_day,
)
from daedalus.demo.data import SCHEMAS

DAY = dt.date(2026, 2, 5)
T = dt.datetime(2026, 2, 5, 12, tzinfo=dt.UTC)
US = dt.timedelta(microseconds=1)
D = dt.timedelta(days=1)


def _write(root: Path, source: str, rows: list[dict], schema: pa.Schema | None = None) -> None:
    schema = schema or SCHEMAS[source]
    ts = schema.names[0]
    by_day: dict[dt.date, list[dict]] = {}
    for row in rows:
        by_day.setdefault(row[ts].date(), []).append(row)
    for day, part in by_day.items():
        folder = root / source / f"dt={day:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=schema), folder / "part-0.parquet")


def _profile(ts, user, country, age=100, followers=5, premium=False) -> dict:
    return {"feature_timestamp": ts, "user_id": user, "country": country,
            "account_age_days": age, "follower_count": followers, "is_premium": premium}


PROFILES = [
    _profile(T - D, 1, "DE"),            # user 1: visible
    _profile(T, 1, "FR"),                # user 1: at t, invisible
    _profile(T - 3 * D, 2, "US"),        # user 2: exactly t - ttl, visible (boundary included)
    _profile(T - 3 * D - US, 3, "JP"),   # user 3: one microsecond too old
]
STATS = [{"feature_timestamp": T - dt.timedelta(hours=1), "artwork_id": 10, "views_1d": 5,
          "likes_1d": 1, "ctr_1d": 0.2}]
LIKES = [
    {"event_timestamp": T - 7 * D, "user_id": 1, "artwork_id": 100},   # window start: in
    {"event_timestamp": T - D, "user_id": 1, "artwork_id": 102},
    {"event_timestamp": T, "user_id": 1, "artwork_id": 101},           # at t: out
    {"event_timestamp": T - 7 * D - US, "user_id": 1, "artwork_id": 103},  # before the window
]

OUT_SCHEMA = pa.schema([
    ("event_timestamp", pa.timestamp("us", tz="UTC")), ("user_id", pa.int64()),
    ("artwork_id", pa.int64()), ("country", pa.string()), ("account_age_days", pa.int32()),
    ("follower_count", pa.int64()), ("is_premium", pa.bool_()), ("views_1d", pa.int64()),
    ("likes_1d", pa.int64()), ("ctr_1d", pa.float64()),
    ("like_artwork_ids_7d", pa.list_(pa.int64())), ("like_count_7d", pa.int64()),
    ("image_embedding", pa.list_(pa.float16())),
])


def _row(user=1, artwork=10, profile=None, stats=True, likes=(100, 102), count=2) -> dict:
    p = profile or {}
    s = STATS[0] if stats else {}
    return {"event_timestamp": T, "user_id": user, "artwork_id": artwork,
            "country": p.get("country"), "account_age_days": p.get("account_age_days"),
            "follower_count": p.get("follower_count"), "is_premium": p.get("is_premium"),
            "views_1d": s.get("views_1d"), "likes_1d": s.get("likes_1d"), "ctr_1d": s.get("ctr_1d"),
            "like_artwork_ids_7d": list(likes), "like_count_7d": count, "image_embedding": None}


def _setup(project, rows: list[dict], stats: list[dict] = STATS):
    config, registry = project.load()
    sources = config.base.sources_root
    _write(sources, "user_profile", PROFILES)
    _write(sources, "artwork_stats", stats)
    _write(sources, "user_likes", LIKES)
    out = config.runtime.output_root
    folder = out / f"dt={DAY:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OUT_SCHEMA), folder / "part-0.parquet")
    return config, registry, out


def _audit(project, rows, stats: list[dict] = STATS):
    config, registry, out = _setup(project, rows, stats)
    report = leakage_audit(config, registry, "dssm_ranking", DAY, out)
    return {f.group: f for f in report.findings}, report


def test_values_from_the_past_pass_including_ttl_and_window_boundaries(project):
    rows = [_row(1, profile=PROFILES[0]), _row(2, profile=PROFILES[2], likes=(), count=0),
            _row(3, likes=(), count=0, stats=False)]
    findings, report = _audit(project, rows)
    assert report.passed and report.audited_rows == 3 and report.output_rows == 3
    assert findings["user_profile"].checked_rows == 2
    assert findings["artwork_stats"].checked_rows == 2
    assert findings["like_artwork_ids_7d"].checked_rows == 1
    assert findings["like_count_7d"].checked_rows == 1


@pytest.mark.parametrize(("row", "group"), [
    (_row(1, profile=PROFILES[1]), "user_profile"),                    # snapshot at exactly t
    (_row(3, profile=PROFILES[3], likes=(), count=0), "user_profile"),  # older than the TTL
    (_row(1, profile=PROFILES[0], likes=(100, 101)), "like_artwork_ids_7d"),  # like at t
    (_row(1, profile=PROFILES[0], likes=(103, 102)), "like_artwork_ids_7d"),  # before window
    (_row(1, profile=PROFILES[0], likes=(102, 102)), "like_artwork_ids_7d"),  # one like, twice
    (_row(1, profile=PROFILES[0], count=3), "like_count_7d"),          # the like at t counted
])
def test_a_value_only_a_later_or_expired_row_explains_is_a_leak(project, row, group):
    good = _row(2, profile=PROFILES[2], likes=(), count=0)
    findings, report = _audit(project, [good, row])
    assert not report.passed
    assert {g: f.leaked_rows for g, f in findings.items() if f.leaked_rows} == {group: 1}
    assert findings[group].examples and findings[group].examples[0]["rid"] == 2


def test_artwork_stats_from_the_future_is_a_leak(project):
    future = dict(STATS[0], feature_timestamp=T + US, views_1d=99)
    past = _row(2, profile=PROFILES[2], likes=(), count=0)
    leaky = dict(past, views_1d=99)
    findings, _ = _audit(project, [past, leaky], stats=[STATS[0], future])
    assert findings["artwork_stats"].checked_rows == 2
    assert findings["artwork_stats"].leaked_rows == 1
    assert findings["artwork_stats"].examples[0]["views_1d"] == 99


def test_audit_samples_only_when_asked_and_the_day_is_larger(project):
    rows = [_row(2, profile=PROFILES[2], likes=(), count=0) for _ in range(50)]
    config, registry, out = _setup(project, rows)
    report = leakage_audit(config, registry, "dssm_ranking", DAY, out, max_rows=20)
    assert report.output_rows == 50 and report.audited_rows == 20 and report.passed
    assert report.sample == "repeatable reservoir sample of 20 of 50 rows (max_rows=20)"
    everything = leakage_audit(config, registry, "dssm_ranking", DAY, out)
    assert everything.audited_rows == 50 and everything.sample == "every row (50)"


def test_missing_day_is_empty_and_passes(project):
    config, registry = project.load()
    report = leakage_audit(config, registry, "dssm_ranking", DAY, config.runtime.output_root)
    assert report.passed and report.output_rows == 0
    assert not written_day(config.runtime.output_root, DAY).exists


def test_impression_count_counts_the_day_partition(project):
    config, registry = project.load()
    rows = [{"event_timestamp": T + dt.timedelta(minutes=i), "user_id": 1, "artwork_id": i,
             "feed_session": None, "position": i, "is_click": False, "is_like": False,
             "dwell_ms": None} for i in range(7)]
    rows.append(dict(rows[0], event_timestamp=dt.datetime(2026, 2, 6, tzinfo=dt.UTC)))
    _write(config.base.sources_root, "feed_impressions", rows)
    assert impression_count(config, registry, "dssm_ranking", DAY) == 7
    assert impression_count(config, registry, "dssm_ranking", DAY + D) == 1
    assert impression_count(config, registry, "dssm_ranking", DAY - D) == 0


def test_embedding_coverage_counts_non_null_vectors(project):
    rows = [_row(2, profile=PROFILES[2], likes=(), count=0) for _ in range(4)]
    rows[1]["image_embedding"] = [0.5] * 4
    config, _, out = _setup(project, rows)
    cover = embedding_coverage(config, out, DAY, ["image_embedding", "like_artwork_avg_embeds"])
    assert cover == {"image_embedding": 0.25, "like_artwork_avg_embeds": None}
    day = written_day(out, DAY)
    assert day.rows == 4 and "image_embedding" in day.columns


def test_every_row_is_audited_in_batches_and_leaks_in_any_batch_are_found(project):
    good = _row(2, profile=PROFILES[2], likes=(), count=0)
    rows = [good] * 7 + [_row(1, profile=PROFILES[1])] + [good] * 4 + [
        _row(1, profile=PROFILES[0], likes=(102, 102)), _row(1, profile=PROFILES[0], count=3)]
    config, registry, out = _setup(project, rows)
    report = leakage_audit(config, registry, "dssm_ranking", DAY, out, batch_rows=3)
    assert report.output_rows == report.audited_rows == len(rows) and report.sample == (
        f"every row ({len(rows)})")
    findings = {f.group: f for f in report.findings}
    assert {g: f.leaked_rows for g, f in findings.items() if f.leaked_rows} == {
        "user_profile": 1, "like_artwork_ids_7d": 1, "like_count_7d": 1}
    # rid is the row's 1-based index in the day, whichever batch held it
    assert [e["rid"] for e in findings["user_profile"].examples] == [8]
    assert [e["rid"] for e in findings["like_artwork_ids_7d"].examples] == [13]
    assert [e["rid"] for e in findings["like_count_7d"].examples] == [14]
    assert findings["user_profile"].checked_rows == len(rows)
    whole = leakage_audit(config, registry, "dssm_ranking", DAY, out)
    assert [(f.group, f.checked_rows, f.leaked_rows) for f in whole.findings] == [
        (f.group, f.checked_rows, f.leaked_rows) for f in report.findings]


def test_an_id_listed_twice_needs_two_visible_likes(project):
    """A list that repeats an id takes the exact path: copies counted against visible rows."""
    twice = _row(1, profile=PROFILES[0], likes=(100, 102, 102), count=3)
    thrice = _row(1, profile=PROFILES[0], likes=(102, 102, 102), count=3)
    with_null = _row(1, profile=PROFILES[0], likes=(102, None), count=3)
    config, registry, out = _setup(project, [twice, thrice, with_null])
    _write(config.base.sources_root, "user_likes",
           [{"event_timestamp": T - 2 * D, "user_id": 1, "artwork_id": 102}])  # a second like
    report = leakage_audit(config, registry, "dssm_ranking", DAY, out)
    (listed,) = [f for f in report.findings if f.group == "like_artwork_ids_7d"]
    assert listed.leaked_rows == 2 and [e["rid"] for e in listed.examples] == [2, 3]
    assert {e["item"] for e in listed.examples} == {102, None}
