"""Days written by `daeda pipeline train` become materializations on the Dagster instance.

The CLI and Dagster share the day manifests, so `daeda status` already sees a day Dagster wrote.
The other direction needs the instance told: each day the CLI writes (or retires as empty) is
reported as a runless materialization of `<service>_training`'s partition, with the metadata
and data version a Dagster run of that partition gives it (`training_metadata`), after the
source days it read are reported as observations of their feature views; the materialization's
provenance tags point at those observations, as a Dagster run's do, so Dagster's staleness
sees a later change of those source days. The instance is `$DAGSTER_HOME`, else the project's
`.dagster_home/` that `make dev` serves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import dagster as dg

from daedalus import __version__
from daedalus.core.results import RunSummary
from daedalus.defs.partitions import daily_partitions
from daedalus.defs.sources import DATA_VERSION_TAG, day_observations, view_key
from daedalus.defs.training import skeleton_outcome, training_asset_name, training_metadata
from daedalus.engine.request import RunRequest
from daedalus.layout.manifest import content_fingerprint

RECORDED_BY = "daeda pipeline train"


def provenance_tags(request: RunRequest, day: dt.date, instance: dg.DagsterInstance) -> dict:
    """The tags a Dagster run puts on a materialization to say what it was built from: the
    code version and, per feature view, the latest observation (an event pointer) and a
    digest of the observed versions of the view days this day read."""
    views = dict.fromkeys(scan.view for scan in request.pipeline.of_kind("Scan"))
    observed = day_observations(request, day)
    for event in observed:
        instance.report_runless_asset_event(event)
    tags = {"dagster/code_version": __version__}
    for view in views:
        key = view_key(view)
        latest = instance.fetch_observations(key, limit=1).records
        versions = [[e.partition, 0, 0, e.tags[DATA_VERSION_TAG]]
                    for e in observed if e.asset_key == key]
        tags[f"dagster/input_event_pointer/{key.to_user_string()}"] = (
            str(latest[0].storage_id) if latest else "NULL")
        tags[f"dagster/input_data_version/{key.to_user_string()}"] = content_fingerprint(versions)
    return tags


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
        tags = provenance_tags(request, day, instance)
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=asset, partition=day.isoformat(),
            metadata={**metadata, "recorded_by": RECORDED_BY},
            tags={**tags, DATA_VERSION_TAG: version}))
        recorded.append(day)
    if recorded:
        progress(f"recorded {len(recorded)} day(s) as {asset.to_user_string()} materializations"
                 f" on the Dagster instance at {instance.root_directory}")
    return recorded
