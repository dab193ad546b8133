"""Deterministic demo sources that follow the data contract (spec/00-data-contract.md).

`generate_demo_data(root, spec)` writes the five raw sources as hive-partitioned parquet,
`<root>/<source>/dt=YYYY-MM-DD/part-0.parquet`, with `dt` the UTC date of each row's
timestamp. The same spec always gives the same bytes.

The data looks like a feed (Zipf-Mandelbrot skew over users and artworks, bursty sessions,
likes that follow liked impressions) and it plants, on purpose, the cases the point-in-time
rules are about, so tests and benchmarks can find them in the files:

- feed_impressions: sessions that start at exactly 00:00:00.000000; one session per pair of
  consecutive feed days that crosses midnight (it appears in both partitions); equal
  timestamps for one user (zero gap inside a session); a few exact duplicate rows; ~5% null
  `feed_session`; ~20% null `dwell_ms`.
- user_likes: a like at exactly the timestamp of one of the user's impressions (must stay
  out of that impression's window) and one at exactly `t - 7 days` (must be in); a few heavy
  likers with well over 50 likes a week (the cap); ~20% of users never like anything.
- user_profile: ~20% of users have no profile; a stale group whose only snapshot is older
  than the 3-day TTL on every feed day, except for rows planted at exactly `t - 3 days`
  (visible, boundary included); profile updates at exactly an impression's `t` (invisible).
- artwork_stats: rows at midnight, so the midnight impressions meet a row at exactly `t`;
  a stale group whose only row is two days before the first feed day, which is visible to
  the midnight impressions of that day and to nothing later.
- siglip2_vectors: ~5% of artworks have no embedding; ~2% are re-embedded in a later `dt`
  with different vectors (the latest `dt` wins).

The summary returned (and kept in `<root>/_demo_data.json`) names the planted heavy likers
and midnight-spanning sessions.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from daedalus.core.errors import DaedalusError

DAY_US = 86_400_000_000
EMBEDDING_DIM = 1152
LIKE_WINDOW_US = 7 * DAY_US
PROFILE_TTL_US = 3 * DAY_US
ARTWORK_STATS_TTL_US = 2 * DAY_US

_TS = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "feed_impressions": pa.schema([
        ("event_timestamp", _TS), ("user_id", pa.int64()), ("artwork_id", pa.int64()),
        ("feed_session", pa.string()), ("position", pa.int32()), ("is_click", pa.bool_()),
        ("is_like", pa.bool_()), ("dwell_ms", pa.int32()),
    ]),
    "user_likes": pa.schema([
        ("event_timestamp", _TS), ("user_id", pa.int64()), ("artwork_id", pa.int64()),
    ]),
    "user_profile": pa.schema([
        ("feature_timestamp", _TS), ("user_id", pa.int64()), ("country", pa.string()),
        ("account_age_days", pa.int32()), ("follower_count", pa.int64()),
        ("is_premium", pa.bool_()),
    ]),
    "artwork_stats": pa.schema([
        ("feature_timestamp", _TS), ("artwork_id", pa.int64()), ("views_1d", pa.int64()),
        ("likes_1d", pa.int64()), ("ctr_1d", pa.float64()),
    ]),
    "siglip2_vectors": pa.schema([
        ("id", pa.int64()), ("image_embedding", pa.list_(pa.float16(), EMBEDDING_DIM)),
    ]),
}

MARKER = "_demo_data.json"


@dataclass(frozen=True)
class DemoDataSpec:
    start_date: dt.date = dt.date(2026, 2, 1)
    days: int = 3
    users: int = 500
    artworks: int = 2000
    events_per_day: int = 5000
    likes_history_days: int = 8
    seed: int = 7


PRESETS: dict[str, DemoDataSpec] = {
    "small": DemoDataSpec(),
    "bench": DemoDataSpec(
        days=1, users=200_000, artworks=500_000, events_per_day=1_000_000, likes_history_days=8
    ),
}

_SESSION_MEAN_LEN = 8
_GAP_MEAN_US = 15_000_000
_SAME_TS_RATE = 0.01
_NULL_SESSION_RATE = 0.05
_CLICK_RATE = 0.10
_LIKE_RATE = 0.03
_NULL_DWELL_RATE = 0.20
_BACKGROUND_LIKES_PER_IMPRESSION = 0.05
_HEAVY_LIKERS = 3
_HEAVY_LIKES_PER_DAY = 12
_NEVER_LIKE_RATE = 0.20
_NO_PROFILE_RATE = 0.20
_STALE_PROFILE_RATE = 0.05
_PROFILE_DAILY_RATE = 0.85
_PROFILE_BACKFILL_DAYS = 4
_NO_STATS_RATE = 0.10
_STALE_STATS_RATE = 0.05
_STATS_BACKFILL_DAYS = 3
_EMBEDDED_RATE = 0.95
_REEMBED_RATE = 0.02
_EMBEDDING_SCALE = 0.05
_BASE_EMBEDDING_AGE_DAYS = 10
_REEMBEDDING_AGE_DAYS = 2
_VECTOR_CHUNK_ROWS = 50_000
_COUNTRIES = ["US", "JP", "KR", "DE", "FR", "GB", "BR", "IN", "CA", "ES", "IT", "TW"]
_COUNTRY_WEIGHTS = [30, 20, 10, 7, 6, 6, 5, 5, 4, 3, 2, 2]

_NONE, _FRESH, _STALE = 0, 1, 2
_EPOCH = dt.date(1970, 1, 1)


def generate_demo_data(
    root: Path, spec: DemoDataSpec, progress: Callable[[str], None] | None = None
) -> dict:
    """Write every contract source for `spec` under `root` and return a summary.

    Source folders left by an earlier run are replaced; folders not written by this
    generator (no marker file at `root`) are never touched: that raises instead.
    """
    root = Path(root)
    _claim_root(root)
    sink = _Sink(root, progress)
    world = _World.draw(spec)
    echo = _write_feed(spec, world, sink)
    _write_likes(spec, world, echo, sink)
    _write_profiles(spec, world, echo, sink)
    _write_artwork_stats(spec, world, sink)
    _write_vectors(spec, world, sink)
    summary = sink.summary(spec, planted={
        "heavy_likers": world.heavy_likers.tolist(),
        "spanning_sessions": echo.spanning_sessions,
    })
    (root / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _claim_root(root: Path) -> None:
    """Refuse to overwrite sources this generator did not write, e.g. a real feed."""
    existing = [root / name for name in SCHEMAS if (root / name).exists()]
    if existing and not (root / MARKER).exists():
        raise DaedalusError(
            f"{root} already holds {', '.join(p.name for p in existing)} and no {MARKER}: "
            "not demo data, refusing to overwrite (fix: pick an empty --root)"
        )
    for folder in existing:
        shutil.rmtree(folder)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("{}\n")


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """One independent stream per (source, day or chunk), so each part is reproducible alone."""
    key = [seed & 0xFFFF_FFFF_FFFF_FFFF, zlib.crc32(stream.encode()), index & 0xFFFF_FFFF]
    return np.random.default_rng(np.random.SeedSequence(key))


def _day_num(day: dt.date) -> int:
    return (day - _EPOCH).days


def _iso(day_num: int) -> str:
    return (_EPOCH + dt.timedelta(days=day_num)).isoformat()


def _zipf_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zipf-Mandelbrot popularity over a random ranking, so id 1 is not always the star."""
    rank = rng.permutation(n)
    return 1.0 / (rank + 1.0 + max(1, n // 500))


def _cdf(weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    return np.cumsum(weights) / total if total > 0 else np.zeros_like(weights)


def _sample_ids(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    index = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(index, cdf.size - 1).astype(np.int64) + 1


def _pick(rng: np.random.Generator, mask: np.ndarray, k: int) -> np.ndarray:
    candidates = np.flatnonzero(mask)
    return np.sort(rng.choice(candidates, min(k, candidates.size), replace=False))


@dataclass(frozen=True)
class _World:
    """Per-user and per-artwork traits drawn once, so every source agrees on who is who."""

    user_cdf: np.ndarray
    liker_cdf: np.ndarray
    artwork_p: np.ndarray
    artwork_cdf: np.ndarray
    likes: np.ndarray
    profile: np.ndarray
    stats: np.ndarray
    embedded: np.ndarray
    heavy_likers: np.ndarray
    country: np.ndarray
    signup_day: np.ndarray
    followers: np.ndarray
    follower_growth: np.ndarray
    premium: np.ndarray

    @classmethod
    def draw(cls, spec: DemoDataSpec) -> _World:
        rng = _rng(spec.seed, "world", 0)
        user_w = _zipf_weights(rng, spec.users)
        likes = rng.random(spec.users) >= _NEVER_LIKE_RATE
        liker_w = np.where(likes, user_w, 0.0)
        heavy = np.argsort(-liker_w, kind="stable")[: min(_HEAVY_LIKERS, int(likes.sum()))]
        artwork_w = _zipf_weights(rng, spec.artworks)
        start = _day_num(spec.start_date)
        return cls(
            user_cdf=_cdf(user_w),
            liker_cdf=_cdf(liker_w),
            artwork_p=artwork_w / artwork_w.sum(),
            artwork_cdf=_cdf(artwork_w),
            likes=likes,
            profile=_states(rng, spec.users, _NO_PROFILE_RATE, _STALE_PROFILE_RATE),
            stats=_states(rng, spec.artworks, _NO_STATS_RATE, _STALE_STATS_RATE),
            embedded=rng.random(spec.artworks) < _EMBEDDED_RATE,
            heavy_likers=np.sort(heavy).astype(np.int64) + 1,
            country=rng.choice(
                len(_COUNTRIES), spec.users, p=np.array(_COUNTRY_WEIGHTS) / sum(_COUNTRY_WEIGHTS)
            ),
            signup_day=start - rng.integers(_PROFILE_BACKFILL_DAYS + 1, 3_000, spec.users),
            followers=np.round(rng.lognormal(3.0, 1.5, spec.users)).astype(np.int64),
            follower_growth=rng.integers(0, 5, spec.users),
            premium=rng.random(spec.users) < 0.15,
        )


def _states(rng: np.random.Generator, n: int, none_rate: float, stale_rate: float) -> np.ndarray:
    r = rng.random(n)
    return np.where(r < none_rate, _NONE, np.where(r < none_rate + stale_rate, _STALE, _FRESH))


class _Sink:
    """Writes partitions and remembers what went where, for the summary."""

    def __init__(self, root: Path, progress: Callable[[str], None] | None):
        self.root = root
        self.progress = progress or (lambda _message: None)
        self.rows: dict[str, int] = {name: 0 for name in SCHEMAS}
        self.days: dict[str, list[int]] = {name: [] for name in SCHEMAS}

    def file(self, source: str, day: int) -> Path:
        folder = self.root / source / f"dt={_iso(day)}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "part-0.parquet"

    def record(self, source: str, day: int, rows: int) -> None:
        self.rows[source] += rows
        self.days[source].append(day)
        self.progress(f"{source} dt={_iso(day)}: {rows:,} rows")

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
                name: [_iso(min(days)), _iso(max(days))] if days else None
                for name, days in self.days.items()
            },
            "planted": planted,
        }


@dataclass
class _Echo:
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


def _write_feed(spec: DemoDataSpec, world: _World, sink: _Sink) -> _Echo:
    """Feed days in order; a session crossing midnight carries its tail into the next day."""
    echo = _Echo()
    start = _day_num(spec.start_date)
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
    spec: DemoDataSpec, world: _World, day: int, span_midnight: bool, echo: _Echo
) -> pa.Table:
    """One day of sessions: a user, a start time, and impressions a few seconds apart."""
    rng = _rng(spec.seed, "feed", day)
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
    user = _sample_ids(rng, world.user_cdf, n_sessions)[session]
    artwork = _sample_ids(rng, world.artwork_cdf, n)
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
            pa.array(ts[rows], type=_TS),
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
    rng: np.random.Generator, world: _World, k: int, fallback: np.ndarray
) -> np.ndarray:
    """Alternate artworks with a stats row every midnight (one lands exactly on `t`) and
    stale ones (their only row is exactly two days before the first feed day)."""
    fresh = np.flatnonzero(world.stats == _FRESH) + 1
    stale = np.flatnonzero(world.stats == _STALE) + 1
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
    world: _World,
    echo: _Echo,
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

    edge = _pick(rng, world.likes[user - 1], plants)
    edge_artwork = _sample_ids(rng, world.artwork_cdf, edge.size)
    echo.likes.append((user[edge], ts[edge] - LIKE_WINDOW_US, edge_artwork))

    update = _pick(rng, world.profile[user - 1] == _FRESH, plants)
    echo.profiles.append((user[update], ts[update], np.ones(update.size, bool)))
    boundary = _pick(rng, world.profile[user - 1] == _STALE, plants)
    boundary_ts = ts[boundary] - PROFILE_TTL_US
    echo.profiles.append((user[boundary], boundary_ts, np.zeros(boundary.size, bool)))


def _write_likes(spec: DemoDataSpec, world: _World, echo: _Echo, sink: _Sink) -> None:
    """Background likes, the heavy likers' daily dozen, and the likes the feed echoed."""
    start = _day_num(spec.start_date)
    per_day = round(spec.events_per_day * _BACKGROUND_LIKES_PER_IMPRESSION)
    if not world.likes.any():
        per_day = 0
    for day in range(start - spec.likes_history_days, start + spec.days):
        rng = _rng(spec.seed, "likes", day)
        heavy = np.repeat(world.heavy_likers, _HEAVY_LIKES_PER_DAY)
        user = np.concatenate([_sample_ids(rng, world.liker_cdf, per_day), heavy])
        artwork = _sample_ids(rng, world.artwork_cdf, user.size)
        ts = day * DAY_US + rng.integers(0, DAY_US, user.size)
        echo_user, echo_ts, echo_artwork = echo.on_day(echo.likes, day)
        table = pa.Table.from_arrays(
            [
                pa.array(np.concatenate([ts, echo_ts]), type=_TS),
                pa.array(np.concatenate([user, echo_user])),
                pa.array(np.concatenate([artwork, echo_artwork])),
            ],
            schema=SCHEMAS["user_likes"],
        )
        sink.write("user_likes", day, _sort(table, "event_timestamp"))


def _write_profiles(spec: DemoDataSpec, world: _World, echo: _Echo, sink: _Sink) -> None:
    """Fresh users snapshot most days at a random time; stale users only on the first day."""
    start = _day_num(spec.start_date)
    first = start - _PROFILE_BACKFILL_DAYS
    fresh = np.flatnonzero(world.profile == _FRESH) + 1
    stale = np.flatnonzero(world.profile == _STALE) + 1
    for day in range(first, start + spec.days):
        rng = _rng(spec.seed, "profile", day)
        daily = fresh[rng.random(fresh.size) < _PROFILE_DAILY_RATE]
        user = np.concatenate([daily, stale]) if day == first else daily
        ts = day * DAY_US + rng.integers(0, DAY_US, user.size)
        echo_user, echo_ts, update = echo.on_day(echo.profiles, day)
        user = np.concatenate([user, echo_user])
        ts = np.concatenate([ts, echo_ts])
        update = np.concatenate([np.zeros(user.size - update.size, bool), update])
        table = _profile_rows(world, user, ts, update)
        sink.write("user_profile", day, _sort(table, "feature_timestamp"))


def _profile_rows(world: _World, user: np.ndarray, ts: np.ndarray, update: np.ndarray) -> pa.Table:
    """Values drift by day; an `update` row differs visibly, so a leak of it is detectable."""
    i = user - 1
    day = ts // DAY_US
    followers = world.followers[i] + world.follower_growth[i] * (day - world.signup_day[i])
    return pa.Table.from_arrays(
        [
            pa.array(ts, type=_TS),
            pa.array(user),
            pa.array(_COUNTRIES).take(pa.array(world.country[i])),
            pa.array((day - world.signup_day[i]).astype(np.int32)),
            pa.array(followers + 1_000 * update),
            pa.array(world.premium[i] ^ update),
        ],
        schema=SCHEMAS["user_profile"],
    )


def _write_artwork_stats(spec: DemoDataSpec, world: _World, sink: _Sink) -> None:
    """One row per artwork at each midnight; views follow the artwork's feed popularity."""
    start = _day_num(spec.start_date)
    fresh = np.flatnonzero(world.stats == _FRESH)
    stale = np.flatnonzero(world.stats == _STALE)
    for day in range(start - _STATS_BACKFILL_DAYS, start + spec.days):
        rng = _rng(spec.seed, "artwork_stats", day)
        i = np.sort(np.concatenate([fresh, stale])) if day == start - 2 else fresh
        views = rng.poisson(5 + 10 * spec.events_per_day * world.artwork_p[i])
        likes = rng.binomial(views, 0.04)
        clicks = rng.binomial(views, _CLICK_RATE)
        table = pa.Table.from_arrays(
            [
                pa.array(np.full(i.size, day * DAY_US), type=_TS),
                pa.array(i.astype(np.int64) + 1),
                pa.array(views.astype(np.int64)),
                pa.array(likes.astype(np.int64)),
                pa.array(clicks / np.maximum(views, 1)),
            ],
            schema=SCHEMAS["artwork_stats"],
        )
        sink.write("artwork_stats", day, table)


def _write_vectors(spec: DemoDataSpec, world: _World, sink: _Sink) -> None:
    """A base embedding run, then a later run that re-embeds a few ids with new vectors.

    Written in row groups of `_VECTOR_CHUNK_ROWS` so memory stays flat at any size. Values
    come from a table of normal quantiles indexed by random 16-bit words: normal*0.05 in
    distribution, several times cheaper than drawing floats."""
    start = _day_num(spec.start_date)
    rng = _rng(spec.seed, "vectors", 0)
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
                    _rng(spec.seed, stream, chunk), quantiles, ids[lo : lo + _VECTOR_CHUNK_ROWS]
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
