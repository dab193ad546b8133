"""The daily partitions definitions: one for every training asset, check and job, and one
for the feature views, which starts earlier by the longest lookback a training day reads.

Moving to hourly is a swap to `HourlyPartitionsDefinition` here, once the feed supports it.
"""

import datetime as dt

import dagster as dg

PARTITIONS_START = "2026-02-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START)


def source_partitions(lookback_days: int) -> dg.DailyPartitionsDefinition:
    """The feature views' days: from `lookback_days` before the first training day."""
    start = dt.date.fromisoformat(PARTITIONS_START) - dt.timedelta(days=lookback_days)
    return dg.DailyPartitionsDefinition(start_date=start.isoformat())
