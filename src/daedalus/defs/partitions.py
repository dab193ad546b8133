"""The one daily partitions definition every training asset, check and job shares.

Moving to hourly is a swap to `HourlyPartitionsDefinition` here, once the feed supports it.
"""

import dagster as dg

PARTITIONS_START = "2026-02-01"

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START)
