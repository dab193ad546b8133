"""Days written by `daeda pipeline train` become materializations on the Dagster instance.

The CLI and Dagster share the day manifests, so `daeda status` already sees a day Dagster wrote.
The other direction needs the instance told: each day the CLI writes (or retires as empty) is
reported as a runless materialization of `<service>_training`'s partition, with the metadata
and data version a Dagster run of that partition gives it (`training_metadata`). The instance is
`$DAGSTER_HOME`, else the project's `.dagster_home/` that `make dev` serves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import dagster as dg

from daedalus.core.results import RunSummary
from daedalus.defs.partitions import daily_partitions
from daedalus.defs.training import skeleton_outcome, training_asset_name, training_metadata
from daedalus.engine.request import RunRequest

RECORDED_BY = "daeda pipeline train"


def final_stage(request: RunRequest) -> str:
    """The stage whose day is the training asset's partition."""
    return "enrich" if request.pipeline.has_enrichment else "skeleton"


def record_days(request: RunRequest, summary: RunSummary, instance: dg.DagsterInstance,
                progress: Callable[[str], None] | None = None) -> list[dt.date]:
    """Report each day of `summary` whose final stage ran (written or emptied) as a
    materialization of its training partition; the days recorded."""
    progress = progress or (lambda _msg: None)
    asset = dg.AssetKey(training_asset_name(request.service))
    last = final_stage(request)
    recorded = []
    for day in request.days:
        final = [r for r in summary.results if r.day == day and r.stage == last]
        if not any(r.recomputed for r in final):
            continue        # not run here (skipped, or a stage-only run): nothing new to say
        if not daily_partitions.has_partition_key(day.isoformat()):
            continue
        skeleton = skeleton_outcome(
            request, day, [r for r in summary.results if r.day == day and r.stage == "skeleton"])
        enrich = [r for r in summary.results if r.day == day and r.stage == "enrich"]
        metadata, version = training_metadata(request, day, skeleton, enrich)
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=asset, partition=day.isoformat(),
            metadata={**metadata, "recorded_by": RECORDED_BY},
            tags={"dagster/data_version": version}))
        recorded.append(day)
    if recorded:
        progress(f"recorded {len(recorded)} day(s) as {asset.to_user_string()} materializations"
                 f" on the Dagster instance at {instance.root_directory}")
    return recorded
