"""The source files a skeleton day reads, and what stands in when they are missing or bad.

A Scan reads its source's `dt=` partition for the day and those of its lookback. A missing
partition is no rows: a zero-row file with the source's schema stands in, so the SQL is the
same every day. A footer that reads fine is checked before the run; a data page that does not
decode shows only when DuckDB reads it, so after a DuckDB failure the day's files are probed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from daedalus.core.config import Config
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import Scan
from daedalus.layout.manifest import scan_days
from daedalus.layout.sources import first_parquet, local_copies, parquet_files, sources_root
from daedalus.storage.objects import open_parquet
from daedalus.storage.uri import Root


def scan_files(config: Config, scan: Scan, day: dt.date) -> list[Root]:
    """The parquet files `scan` reads for `day`: the day's dt partition and its lookback's."""
    root = sources_root(config) / scan.source
    return [f for d in scan_days(day, scan.lookback) for f in parquet_files(root / f"dt={d:%Y-%m-%d}")]


def first_source_file(config: Config, scan: Scan) -> Root:
    """The first parquet file of any partition of the scan's source: it gives the column types."""
    root = sources_root(config) / scan.source
    first = first_parquet(root)
    if first is None:
        raise DaedalusError(
            f"{root}: no parquet files in any dt= partition of source {scan.source!r},"
            " so its column types are unknown (fix: point sources_root or"
            " DAEDALUS_SOURCES_ROOT at the sources, or write one partition)"
        )
    return first


def day_files(config: Config, scan: Scan, day: dt.date, work: Path) -> list[str]:
    """What the scan binds for `day`: its local files (object-store files copied under `work`
    first), or a zero-row stand-in written under `work`."""
    files = local_copies(scan_files(config, scan, day), work / scan.name)
    if files:
        return files
    target = work / f"empty_{scan.name}.parquet"
    if not target.exists():
        schema = open_parquet(first_source_file(config, scan)).schema_arrow
        pq.write_table(pa.Table.from_batches([], schema=schema), target)
    return [str(target)]


def unreadable_source(config: Config, scans: tuple[Scan, ...], day: dt.date) -> DaedalusError | None:
    """After a DuckDB failure: the day's source file whose data pages do not decode, if any."""
    for scan in scans:
        for path in scan_files(config, scan, day):
            try:
                open_parquet(path).read()
            except Exception as exc:  # noqa: BLE001 - any decode failure is a corrupt file
                detail = str(exc).splitlines()[0] if str(exc) else ""
                return DaedalusError(
                    f"{path}: unreadable parquet data ({type(exc).__name__}: {detail})"
                    " (fix: rewrite or remove the file)"
                )
    return None
