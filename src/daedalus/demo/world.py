"""The demo's world: per-user and per-artwork traits drawn once, so every source agrees on who
is who, and the seeded random streams every source draws from.

Popularity is Zipf-Mandelbrot over a random ranking; each user has a profile state and each
artwork a stats state (absent, fresh, or stale), which the writers turn into planted cases.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from daedalus.demo.spec import DemoDataSpec, day_num

_HEAVY_LIKERS = 3
_NEVER_LIKE_RATE = 0.20
_NO_PROFILE_RATE = 0.20
_STALE_PROFILE_RATE = 0.05
PROFILE_BACKFILL_DAYS = 4
_NO_STATS_RATE = 0.10
_STALE_STATS_RATE = 0.05
_EMBEDDED_RATE = 0.95
COUNTRIES = ("US", "JP", "KR", "DE", "FR", "GB", "BR", "IN", "CA", "ES", "IT", "TW")
_COUNTRY_WEIGHTS = (30, 20, 10, 7, 6, 6, 5, 5, 4, 3, 2, 2)

ABSENT, FRESH, STALE = 0, 1, 2


def random_stream(seed: int, stream: str, index: int) -> np.random.Generator:
    """One independent stream per (source, day or chunk), so each part is reproducible alone."""
    key = [seed & 0xFFFF_FFFF_FFFF_FFFF, zlib.crc32(stream.encode()), index & 0xFFFF_FFFF]
    return np.random.default_rng(np.random.SeedSequence(key))


def _zipf_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zipf-Mandelbrot popularity over a random ranking, so id 1 is not always the star."""
    rank = rng.permutation(n)
    return 1.0 / (rank + 1.0 + max(1, n // 500))


def _cdf(weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    return np.cumsum(weights) / total if total > 0 else np.zeros_like(weights)


def sample_ids(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    index = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(index, cdf.size - 1).astype(np.int64) + 1


def pick(rng: np.random.Generator, mask: np.ndarray, k: int) -> np.ndarray:
    candidates = np.flatnonzero(mask)
    return np.sort(rng.choice(candidates, min(k, candidates.size), replace=False))


@dataclass(frozen=True)
class World:
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
    def draw(cls, spec: DemoDataSpec) -> World:
        rng = random_stream(spec.seed, "world", 0)
        user_w = _zipf_weights(rng, spec.users)
        likes = rng.random(spec.users) >= _NEVER_LIKE_RATE
        liker_w = np.where(likes, user_w, 0.0)
        heavy = np.argsort(-liker_w, kind="stable")[: min(_HEAVY_LIKERS, int(likes.sum()))]
        artwork_w = _zipf_weights(rng, spec.artworks)
        start = day_num(spec.start_date)
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
                len(COUNTRIES), spec.users, p=np.array(_COUNTRY_WEIGHTS) / sum(_COUNTRY_WEIGHTS)
            ),
            signup_day=start - rng.integers(PROFILE_BACKFILL_DAYS + 1, 3_000, spec.users),
            followers=np.round(rng.lognormal(3.0, 1.5, spec.users)).astype(np.int64),
            follower_growth=rng.integers(0, 5, spec.users),
            premium=rng.random(spec.users) < 0.15,
        )


def _states(rng: np.random.Generator, n: int, none_rate: float, stale_rate: float) -> np.ndarray:
    r = rng.random(n)
    return np.where(r < none_rate, ABSENT, np.where(r < none_rate + stale_rate, STALE, FRESH))
