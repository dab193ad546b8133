"""Feature views as observable, daily-partitioned source assets.

A view's partition is a `dt=` folder of its source; its data version is that folder's content
digest (`layout.manifest.partition_versions`: SHA-256 of each file's bytes), the digest a day's
manifest records for the same files. A training day depends on the view days it reads (the
day and its scan's lookback, a `TimeWindowPartitionMapping`), so Dagster's own staleness
("upstream data changed") marks exactly the training days that read a source day whose bytes
changed, and a byte-identical rewrite marks nothing.

Who observes: the `observe_feature_views` job (every view, every day on disk; its schedule is
stopped by default), and each training run for the days it reads, so a day's materialization
points at the versions it was built from. Observing a whole source hashes all its files
(~1.3 s/GiB, bench/README.md).
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from daedalus.core.operators import OperatorPipeline
from daedalus.core.registry import Registry
from daedalus.defs.partitions import source_partitions
from daedalus.engine.request import RunRequest
from daedalus.layout.days import day_path
from daedalus.layout.manifest import (
    partition_versions,
    read_manifest,
    scan_days,
    source_partition_versions,
)

OBSERVE_JOB = "observe_feature_views"
DATA_VERSION_TAG = "dagster/data_version"


def view_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["feature_view", name])


def view_lookbacks(pipelines: list[OperatorPipeline]) -> dict[str, int]:
    """Per view, the most days before a training day that any service's scan of it reads."""
    days: dict[str, int] = {}
    for pipeline in pipelines:
        for scan in pipeline.of_kind("Scan"):
            back = len(scan_days(dt.date(2000, 1, 1), scan.lookback)) - 1
            days[scan.view] = max(days.get(scan.view, 0), back)
    return days


def feature_view_assets(registry: Registry, lookbacks: dict[str, int]) -> list[dg.SourceAsset]:
    """Every registry view as an observable source asset, partitioned by day."""
    partitions = source_partitions(max(lookbacks.values(), default=0))
    return [_view_asset(view, partitions) for view in registry.views.values()]


def _view_asset(view, partitions: dg.DailyPartitionsDefinition) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=view_key(view.name), partitions_def=partitions, group_name="feature_views",
        description=view.description or None, required_resource_keys={"cfg"},
        tags={"dagster/kind/parquet": ""},
        metadata={"source": view.source, "timestamp_field": view.timestamp_field,
                  "ttl": view.ttl or "none", "yaml": str(view.path)})
    def observe(context) -> dg.DataVersionsByPartition:
        config, _ = context.resources.cfg.project()
        versions = source_partition_versions(config, view.source)
        return dg.DataVersionsByPartition(
            {day: v for day, v in versions.items() if partitions.has_partition_key(day)})

    return observe


def day_observations(request: RunRequest, day: dt.date) -> list[dg.AssetObservation]:
    """The source days the skeleton day's manifest says it read (`fingerprint.inputs`), as
    observations of their views' partitions, data version = content digest. (The views'
    partitions start at the longest lookback of any service; this service's own longest is
    as far back as its day reads, so the keys it checks against are the same.)"""
    partitions = source_partitions(max(view_lookbacks([request.pipeline]).values(), default=0))
    manifest = read_manifest(day_path(request.skeleton_root, day)) or {}
    inputs = manifest.get("fingerprint", {}).get("inputs", {})
    events = []
    for view in request.registry.views.values():
        for key, version in partition_versions(inputs.get(view.source, [])).items():
            if partitions.has_partition_key(key):
                events.append(dg.AssetObservation(asset_key=view_key(view.name), partition=key,
                                                  tags={DATA_VERSION_TAG: version}))
    return events


def observe_job(views: list[dg.SourceAsset]) -> dg.UnresolvedAssetJobDefinition:
    """Observes every view, every day on disk (a group selection would not pick sources)."""
    return dg.define_asset_job(OBSERVE_JOB, selection=dg.AssetSelection.keys(*(v.key for v in views)),
                               executor_def=dg.in_process_executor)


def observe_schedule(job) -> dg.ScheduleDefinition:
    """Hourly observation of every view; stopped until turned on in the UI."""
    return dg.ScheduleDefinition(job=job, cron_schedule="0 * * * *",
                                 default_status=dg.DefaultScheduleStatus.STOPPED)
