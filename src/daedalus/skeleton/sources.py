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


def scan_files(config: Config, scan: Scan, day: dt.date) -> list[Path]:
    """The parquet files `scan` reads for `day`: the day's dt partition and its lookback's."""
    root = Path(config.base.sources_root) / scan.source
    return [
        f
        for d in scan_days(day, scan.lookback)
        for f in sorted((root / f"dt={d:%Y-%m-%d}").glob("*.parquet"))
    ]


def first_source_file(config: Config, scan: Scan) -> Path:
    """The first parquet file of any partition of the scan's source: it gives the column types."""
    root = Path(config.base.sources_root) / scan.source
    first = next(iter(sorted(root.glob("dt=*/*.parquet"))), None)
    if first is None:
        raise DaedalusError(
            f"{root}: no parquet files in any dt= partition of source {scan.source!r},"
            " so its column types are unknown (fix: point sources_root or"
            " DAEDALUS_SOURCES_ROOT at the sources, or write one partition)"
        )
    return first


def day_files(config: Config, scan: Scan, day: dt.date, work: Path) -> list[str]:
    """What the scan binds for `day`: its files, or a zero-row stand-in written under `work`."""
    files = [str(f) for f in scan_files(config, scan, day)]
    if files:
        return files
    target = work / f"empty_{scan.name}.parquet"
    if not target.exists():
        schema = pq.read_schema(first_source_file(config, scan))
        pq.write_table(pa.Table.from_batches([], schema=schema), target)
    return [str(target)]


def unreadable_source(config: Config, scans: tuple[Scan, ...], day: dt.date) -> DaedalusError | None:
    """After a DuckDB failure: the day's source file whose data pages do not decode, if any."""
    for scan in scans:
        for path in scan_files(config, scan, day):
            try:
                pq.read_table(path)
            except Exception as exc:  # noqa: BLE001 - any decode failure is a corrupt file
                detail = str(exc).splitlines()[0] if str(exc) else ""
                return DaedalusError(
                    f"{path}: unreadable parquet data ({type(exc).__name__}: {detail})"
                    " (fix: rewrite or remove the file)"
                )
    return None
