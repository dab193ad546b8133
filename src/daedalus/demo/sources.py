"""The five demo sources, each drawn from the world and written one partition at a time.

The feed is written first, day by day; it leaves an `Echo` behind (the likes of liked
impressions, and likes and profile rows planted at exactly the edges of an impression's
window) that the likes and profile writers fold into their own days.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from daedalus.demo.spec import (
    DAY_US,
    EMBEDDING_DIM,
    LIKE_WINDOW_US,
    PROFILE_TTL_US,
    SCHEMAS,
    TS,
    DemoDataSpec,
    PartitionSink,
    day_num,
)
from daedalus.demo.world import (
    COUNTRIES,
    FRESH,
    PROFILE_BACKFILL_DAYS,
    STALE,
    World,
    pick,
    random_stream,
    sample_ids,
)

_SESSION_MEAN_LEN = 8
_GAP_MEAN_US = 15_000_000
_SAME_TS_RATE = 0.01
_NULL_SESSION_RATE = 0.05
_CLICK_RATE = 0.10
_LIKE_RATE = 0.03
_NULL_DWELL_RATE = 0.20
_BACKGROUND_LIKES_PER_IMPRESSION = 0.05
_HEAVY_LIKES_PER_DAY = 12
_PROFILE_DAILY_RATE = 0.85
_STATS_BACKFILL_DAYS = 3
_REEMBED_RATE = 0.02
_EMBEDDING_SCALE = 0.05
_BASE_EMBEDDING_AGE_DAYS = 10
_REEMBEDDING_AGE_DAYS = 2
_VECTOR_CHUNK_ROWS = 50_000


@dataclass
class Echo:
    """What the feed leaves behind in other sources: the likes of liked impressions, and
    likes and profile rows planted at exactly the boundaries of an impression's window."""

    likes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    profiles: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    spanning_sessions: list[str] = field(default_factory=list)

    @staticmethod
    def on_day(parts: list, day: int) -> list[np.ndarray]:
        """The (user, ts, value) rows of `parts` whose timestamp falls on `day`."""
        columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
        keep = columns[1] // DAY_US == day
        return [column[keep] for column in columns]


def write_feed(spec: DemoDataSpec, world: World, sink: PartitionSink) -> Echo:
    """Feed days in order; a session crossing midnight carries its tail into the next day."""
    echo = Echo()
    start = day_num(spec.start_date)
    carry = SCHEMAS["feed_impressions"].empty_table()
    for k in range(spec.days):
        day = start + k
        table = pa.concat_tables([carry, _feed_day(spec, world, day, k < spec.days - 1, echo)])
        ts = table["event_timestamp"].cast(pa.int64()).to_numpy()
        today = ts < (day + 1) * DAY_US
        sink.write("feed_impressions", day, _sort(table.filter(today), "event_timestamp"))
        carry = table.filter(~today)
    sink.write("feed_impressions", start + spec.days, carry)
    return echo


def _sort(table: pa.Table, ts_column: str) -> pa.Table:
    ties = [c for c in ("user_id", "artwork_id", "position") if c in table.schema.names]
    keys = [ts_column, *ties]
    return table.sort_by([(key, "ascending") for key in keys])


def _feed_day(
    spec: DemoDataSpec, world: World, day: int, span_midnight: bool, echo: Echo
) -> pa.Table:
    """One day of sessions: a user, a start time, and impressions a few seconds apart."""
    rng = random_stream(spec.seed, "feed", day)
    n_dup = min(max(2, spec.events_per_day // 5_000), spec.events_per_day // 2)
    n = spec.events_per_day - n_dup

    lengths = rng.geometric(1 / _SESSION_MEAN_LEN, size=n)
    n_sessions = int(np.searchsorted(np.cumsum(lengths), n)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] = n - lengths[:-1].sum()
    first = np.cumsum(lengths) - lengths
    session = np.repeat(np.arange(n_sessions), lengths)
    position = np.arange(n) - first[session]

    gaps = rng.exponential(_GAP_MEAN_US, n).astype(np.int64) + 1
    gaps[rng.random(n) < _SAME_TS_RATE] = 0
    gaps[first] = 0
    offset = np.cumsum(gaps)
    offset -= offset[first][session]
    duration = offset[first + lengths - 1]
    start = rng.integers(0, np.maximum(DAY_US - duration, 1))
    null_session = rng.random(n_sessions) < _NULL_SESSION_RATE
    at_midnight = rng.choice(
        n_sessions, min(n_sessions, max(4, n_sessions // 2_000)), replace=False
    )
    start[at_midnight] = 0

    session_ids = _session_ids(spec.seed, day, n_sessions)
    if span_midnight:
        middle = first + lengths // 2
        spans = (lengths >= 4) & ~null_session & (offset[middle] > 0) & (start > 0)
        if spans.any():
            s = rng.choice(np.flatnonzero(spans))
            start[s] = DAY_US - offset[middle[s]]
            echo.spanning_sessions.append(session_ids[int(s)].as_py())

    ts = day * DAY_US + start[session] + offset
    user = sample_ids(rng, world.user_cdf, n_sessions)[session]
    artwork = sample_ids(rng, world.artwork_cdf, n)
    midnight = np.flatnonzero(ts == day * DAY_US)
    artwork[midnight] = _midnight_artworks(rng, world, midnight.size, artwork[midnight])
    is_click = rng.random(n) < _CLICK_RATE
    is_like = (rng.random(n) < _LIKE_RATE) & world.likes[user - 1]
    dwell = np.clip(rng.lognormal(np.log(3_000), 1.0, n), 50, 600_000).astype(np.int32)
    null_dwell = rng.random(n) < _NULL_DWELL_RATE
    _echo_impressions(rng, world, echo, user, artwork, ts, is_like)

    rows = np.concatenate([np.arange(n), rng.choice(n, n_dup, replace=False)])
    session_of_row = pa.array(session[rows], mask=null_session[session[rows]])
    return pa.Table.from_arrays(
        [
            pa.array(ts[rows], type=TS),
            pa.array(user[rows]),
            pa.array(artwork[rows]),
            session_ids.take(session_of_row),
            pa.array(position[rows].astype(np.int32)),
            pa.array(is_click[rows]),
            pa.array(is_like[rows]),
            pa.array(dwell[rows], mask=null_dwell[rows]),
        ],
        schema=SCHEMAS["feed_impressions"],
    )


def _midnight_artworks(
    rng: np.random.Generator, world: World, k: int, fallback: np.ndarray
) -> np.ndarray:
    """Alternate artworks with a stats row every midnight (one lands exactly on `t`) and
    stale ones (their only row is exactly two days before the first feed day)."""
    fresh = np.flatnonzero(world.stats == FRESH) + 1
    stale = np.flatnonzero(world.stats == STALE) + 1
    if not (fresh.size and stale.size):
        return fallback
    return np.where(np.arange(k) % 2 == 0, rng.choice(fresh, k), rng.choice(stale, k))


def _session_ids(seed: int, day: int, n: int) -> pa.StringArray:
    """"s-<16 hex>" per (seed, day, session); splitmix64 is a bijection, so ids never collide."""
    counter = (np.uint64(day & 0xFFFF_FFFF) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    salt = _splitmix64(np.array([seed & 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64))
    code = _splitmix64(counter ^ salt)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)[(code[:, None] >> shifts) & np.uint64(15)]
    prefix = np.broadcast_to(np.frombuffer(b"s-", np.uint8), (n, 2))
    text = np.ascontiguousarray(np.concatenate([prefix, digits], axis=1))
    offsets = np.arange(n + 1, dtype=np.int32) * text.shape[1]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _echo_impressions(
    rng: np.random.Generator,
    world: World,
    echo: Echo,
    user: np.ndarray,
    artwork: np.ndarray,
    ts: np.ndarray,
    is_like: np.ndarray,
) -> None:
    plants = max(3, ts.size // 10_000)
    liked = np.flatnonzero(is_like)
    delay = rng.integers(1_000_000, 60_000_000, liked.size)
    delay[rng.choice(liked.size, min(plants, liked.size), replace=False)] = 0
    echo.likes.append((user[liked], ts[liked] + delay, artwork[liked]))

    edge = pick(rng, world.likes[user - 1], plants)
    edge_artwork = sample_ids(rng, world.artwork_cdf, edge.size)
    echo.likes.append((user[edge], ts[edge] - LIKE_WINDOW_US, edge_artwork))

    update = pick(rng, world.profile[user - 1] == FRESH, plants)
    echo.profiles.append((user[update], ts[update], np.ones(update.size, bool)))
    boundary = pick(rng, world.profile[user - 1] == STALE, plants)
    boundary_ts = ts[boundary] - PROFILE_TTL_US
    echo.profiles.append((user[boundary], boundary_ts, np.zeros(boundary.size, bool)))


def write_likes(spec: DemoDataSpec, world: World, echo: Echo, sink: PartitionSink) -> None:
    """Background likes, the heavy likers' daily dozen, and the likes the feed echoed."""
    start = day_num(spec.start_date)
    per_day = round(spec.events_per_day * _BACKGROUND_LIKES_PER_IMPRESSION)
    if not world.likes.any():
        per_day = 0
    for day in range(start - spec.likes_history_days, start + spec.days):
        rng = random_stream(spec.seed, "likes", day)
        heavy = np.repeat(world.heavy_likers, _HEAVY_LIKES_PER_DAY)
        user = np.concatenate([sample_ids(rng, world.liker_cdf, per_day), heavy])
        artwork = sample_ids(rng, world.artwork_cdf, user.size)
        ts = day * DAY_US + rng.integers(0, DAY_US, user.size)
        echo_user, echo_ts, echo_artwork = echo.on_day(echo.likes, day)
        table = pa.Table.from_arrays(
            [
                pa.array(np.concatenate([ts, echo_ts]), type=TS),
                pa.array(np.concatenate([user, echo_user])),
                pa.array(np.concatenate([artwork, echo_artwork])),
            ],
            schema=SCHEMAS["user_likes"],
        )
        sink.write("user_likes", day, _sort(table, "event_timestamp"))


def write_profiles(spec: DemoDataSpec, world: World, echo: Echo, sink: PartitionSink) -> None:
    """Fresh users snapshot most days at a random time; stale users only on the first day."""
    start = day_num(spec.start_date)
    first = start - PROFILE_BACKFILL_DAYS
    fresh = np.flatnonzero(world.profile == FRESH) + 1
    stale = np.flatnonzero(world.profile == STALE) + 1
    for day in range(first, start + spec.days):
        rng = random_stream(spec.seed, "profile", day)
        daily = fresh[rng.random(fresh.size) < _PROFILE_DAILY_RATE]
        user = np.concatenate([daily, stale]) if day == first else daily
        ts = day * DAY_US + rng.integers(0, DAY_US, user.size)
        echo_user, echo_ts, update = echo.on_day(echo.profiles, day)
        user = np.concatenate([user, echo_user])
        ts = np.concatenate([ts, echo_ts])
        update = np.concatenate([np.zeros(user.size - update.size, bool), update])
        table = _profile_rows(world, user, ts, update)
        sink.write("user_profile", day, _sort(table, "feature_timestamp"))


def _profile_rows(world: World, user: np.ndarray, ts: np.ndarray, update: np.ndarray) -> pa.Table:
    """Values drift by day; an `update` row differs visibly, so a leak of it is detectable."""
    i = user - 1
    day = ts // DAY_US
    followers = world.followers[i] + world.follower_growth[i] * (day - world.signup_day[i])
    return pa.Table.from_arrays(
        [
            pa.array(ts, type=TS),
            pa.array(user),
            pa.array(COUNTRIES).take(pa.array(world.country[i])),
            pa.array((day - world.signup_day[i]).astype(np.int32)),
            pa.array(followers + 1_000 * update),
            pa.array(world.premium[i] ^ update),
        ],
        schema=SCHEMAS["user_profile"],
    )


def write_artwork_stats(spec: DemoDataSpec, world: World, sink: PartitionSink) -> None:
    """One row per artwork at each midnight; views follow the artwork's feed popularity."""
    start = day_num(spec.start_date)
    fresh = np.flatnonzero(world.stats == FRESH)
    stale = np.flatnonzero(world.stats == STALE)
    for day in range(start - _STATS_BACKFILL_DAYS, start + spec.days):
        rng = random_stream(spec.seed, "artwork_stats", day)
        i = np.sort(np.concatenate([fresh, stale])) if day == start - 2 else fresh
        views = rng.poisson(5 + 10 * spec.events_per_day * world.artwork_p[i])
        likes = rng.binomial(views, 0.04)
        clicks = rng.binomial(views, _CLICK_RATE)
        table = pa.Table.from_arrays(
            [
                pa.array(np.full(i.size, day * DAY_US), type=TS),
                pa.array(i.astype(np.int64) + 1),
                pa.array(views.astype(np.int64)),
                pa.array(likes.astype(np.int64)),
                pa.array(clicks / np.maximum(views, 1)),
            ],
            schema=SCHEMAS["artwork_stats"],
        )
        sink.write("artwork_stats", day, table)


def write_vectors(spec: DemoDataSpec, world: World, sink: PartitionSink) -> None:
    """A base embedding run, then a later run that re-embeds a few ids with new vectors.

    Written in row groups of `_VECTOR_CHUNK_ROWS` so memory stays flat at any size. Values
    come from a table of normal quantiles indexed by random 16-bit words: normal*0.05 in
    distribution, several times cheaper than drawing floats."""
    start = day_num(spec.start_date)
    rng = random_stream(spec.seed, "vectors", 0)
    quantiles = (np.sort(rng.standard_normal(1 << 16)) * _EMBEDDING_SCALE).astype(np.float16)
    embedded = np.flatnonzero(world.embedded).astype(np.int64) + 1
    n_reembed = min(embedded.size, max(1, round(embedded.size * _REEMBED_RATE)))
    reembedded = np.sort(rng.choice(embedded, n_reembed, replace=False))
    runs = [
        ("vectors-base", start - _BASE_EMBEDDING_AGE_DAYS, embedded),
        ("vectors-reembed", start - _REEMBEDDING_AGE_DAYS, reembedded),
    ]
    for stream, day, ids in runs:
        if not ids.size:
            continue
        with pq.ParquetWriter(
            sink.file("siglip2_vectors", day), SCHEMAS["siglip2_vectors"],
            compression="zstd", use_dictionary=False, write_statistics=["id"],
        ) as writer:
            for chunk, lo in enumerate(range(0, ids.size, _VECTOR_CHUNK_ROWS)):
                rows = _vector_rows(
                    random_stream(spec.seed, stream, chunk), quantiles, ids[lo : lo + _VECTOR_CHUNK_ROWS]
                )
                writer.write_table(rows)
        sink.record("siglip2_vectors", day, ids.size)


def _vector_rows(rng: np.random.Generator, quantiles: np.ndarray, ids: np.ndarray) -> pa.Table:
    n_values = ids.size * EMBEDDING_DIM
    words = rng.bit_generator.random_raw(-(-n_values // 4)).view(np.uint16)[:n_values]
    values = quantiles[words]
    flat = pa.Array.from_buffers(pa.float16(), n_values, [None, pa.py_buffer(values)])
    return pa.Table.from_arrays(
        [pa.array(ids), pa.FixedSizeListArray.from_arrays(flat, EMBEDDING_DIM)],
        schema=SCHEMAS["siglip2_vectors"],
    )
