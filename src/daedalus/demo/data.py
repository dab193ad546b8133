"""Deterministic demo sources that follow the data contract (docs/data-contract.md).

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
and midnight-spanning sessions. The spec and schemas are in `daedalus.demo.spec`, the traits
drawn once in `daedalus.demo.world`, and each source's writer in `daedalus.demo.sources`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from daedalus.core.errors import DaedalusError
from daedalus.demo.sources import (
    write_artwork_stats,
    write_feed,
    write_likes,
    write_profiles,
    write_vectors,
)
from daedalus.demo.spec import SCHEMAS, DemoDataSpec, PartitionSink
from daedalus.demo.world import World

MARKER = "_demo_data.json"

PRESETS: dict[str, DemoDataSpec] = {
    "small": DemoDataSpec(),
    "bench": DemoDataSpec(
        days=1, users=200_000, artworks=500_000, events_per_day=1_000_000, likes_history_days=8
    ),
}


def generate_demo_data(
    root: Path, spec: DemoDataSpec, progress: Callable[[str], None] | None = None
) -> dict:
    """Write every contract source for `spec` under `root` and return a summary.

    Source folders left by an earlier run are replaced; folders not written by this
    generator (no marker file at `root`) are never touched: that raises instead.
    """
    root = Path(root)
    _claim_root(root)
    sink = PartitionSink(root, progress)
    world = World.draw(spec)
    echo = write_feed(spec, world, sink)
    write_likes(spec, world, echo, sink)
    write_profiles(spec, world, echo, sink)
    write_artwork_stats(spec, world, sink)
    write_vectors(spec, world, sink)
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

