"""Per service a daily-partitioned graph asset over the feature views, and its job.

The ops only build the engine's request, plan the day once, run that plan
(`daedalus.engine.runner.run`) and describe what it wrote; no feature logic lives here. A
partition is a day: compile → skeleton → enrich.
"""

import datetime as dt
import hashlib
import json

import dagster as dg

from daedalus import __version__
from daedalus.audit import written_day
from daedalus.core.config import Config
from daedalus.core.operators import OperatorPipeline
from daedalus.core.registry import Registry, service_views
from daedalus.core.results import DayResult, RunSummary
from daedalus.defs.partitions import daily_partitions
from daedalus.defs.resources import DaedalusConfig
from daedalus.defs.sources import day_observations, view_key, view_lookbacks
from daedalus.engine.pipeline import compiled_pipeline
from daedalus.engine.plan import plan_run
from daedalus.engine.request import RunRequest, Stage
from daedalus.engine.runner import run
from daedalus.layout.days import day_path
from daedalus.layout.manifest import read_manifest
from daedalus.lineage import column_lineage, column_types

SERVICE_TAG = "daedalus/service"

# Declarative automation beside the daily schedule: a day whose source days were updated (a
# new observation of a view day it reads) is materialized again; the day's own fingerprint then
# decides whether anything is recomputed (a byte-identical source rewrite is not). Dagster
# evaluates it only while the `daedalus_automation` sensor runs, which is stopped by default.
REBUILD_WHEN_SOURCES_CHANGE = (
    dg.AutomationCondition.any_deps_updated() & ~dg.AutomationCondition.in_progress()
)


def training_asset_name(service: str) -> str:
    return f"{service}_training"


def training_job_name(service: str) -> str:
    return f"{service}_daily"


def lineage_metadata(pipeline) -> dg.TableColumnLineage:
    """`dagster/column_lineage`: each output column back to its feature views' fields."""
    return dg.TableColumnLineage(deps_by_column={
        column: [dg.TableColumnDep(asset_key=view_key(view), column_name=field)
                 for view, field in deps]
        for column, deps in column_lineage(pipeline).items() if deps})


def column_schema(schema) -> dg.TableSchema:
    """`dagster/column_schema` from a written day's Arrow schema: names and types."""
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema])


def _day(context: dg.OpExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def _service(context: dg.OpExecutionContext) -> str:
    return context.assets_def.tags_by_key[context.assets_def.key][SERVICE_TAG]


def _stage_run(context: dg.OpExecutionContext, request: RunRequest, stage: Stage
               ) -> tuple[RunSummary, list[DayResult]]:
    """Plan the stage's day once and run that plan; the day's results for the stage."""
    narrowed = request.narrowed(stages=(stage,))
    summary = run(narrowed, plan_run(narrowed), progress=context.log.info)
    return summary, [r for r in summary.results if r.stage == stage]


@dg.op(ins={"feature_views": dg.In(dg.Nothing)}, out=dg.Out(OperatorPipeline))
def compile_pipeline(context: dg.OpExecutionContext, cfg: DaedalusConfig) -> OperatorPipeline:
    """The service's engine-tagged DAG (a hand-edited override wins), resolved once and handed
    to both stages. Each stage builds its run request from the resource itself: an op's output
    is written to the instance's storage, and a request holds the resource's object-store keys."""
    request = cfg.request(_service(context), _day(context))
    context.add_output_metadata({
        "service": request.service,
        "operators": len(request.pipeline.operators),
        "source": request.pipeline_source,
        "dag": dg.MetadataValue.json(request.pipeline.model_dump(mode="json")),
    })
    return request.pipeline


def _request(context: dg.OpExecutionContext, cfg: DaedalusConfig,
             pipeline: OperatorPipeline) -> RunRequest:
    return cfg.request(_service(context), _day(context), pipeline=pipeline)


def skeleton_outcome(request: RunRequest, day: dt.date, results: list[DayResult]) -> dict:
    """What the skeleton stage left for the day: rows, folder, and whether (why) it ran."""
    written = written_day(request.skeleton_root, day)
    return {"day": day.isoformat(), "rows": written.rows, "output_path": str(written.path),
            "status": ", ".join(sorted({r.status for r in results})),
            "recomputed": any(r.recomputed for r in results),
            "reason": results[0].reason if results else "no skeleton stage"}


def training_metadata(request: RunRequest, day: dt.date, skeleton: dict,
                      enrich_results: list[DayResult]) -> tuple[dict, str]:
    """The training partition's metadata and data version (the day's manifest fingerprint),
    the same for a Dagster run and for a day the CLI wrote and recorded."""
    root = request.final_root
    written = written_day(root, day)
    pipeline = request.pipeline
    embedding_columns = [e.name for op in pipeline.of_kind("RayUdfTransform")
                         for e in op.enrichments if e.name in written.columns]
    statuses = sorted({r.status for r in enrich_results})
    enrich_recomputed = any(r.recomputed for r in enrich_results)
    enrich_reason = enrich_results[0].reason if enrich_results else "no enrichment"
    recomputed = skeleton["recomputed"] or enrich_recomputed
    reason = skeleton["reason"] if skeleton["recomputed"] else enrich_reason
    manifest = read_manifest(day_path(root, day)) or {}
    fingerprint = manifest.get("fingerprint", {})
    skeleton_manifest = read_manifest(day_path(request.skeleton_root, day)) or {}
    enriched_manifest = manifest if pipeline.has_enrichment else {}
    metadata = {
        "rows": written.rows,
        "columns": list(written.columns),
        "embedding_columns": embedding_columns,
        "output_path": dg.MetadataValue.path(str(written.path)),
        "partition": day.isoformat(),
        "skeleton_rows": skeleton["rows"],
        "status": ", ".join(statuses) or "no enrichment",
        "recomputed": recomputed,
        "reason": reason if recomputed else "up to date",
        "skeleton_recomputed": skeleton["recomputed"],
        "skeleton_reason": skeleton["reason"],
        "enrich_recomputed": enrich_recomputed,
        "enrich_reason": enrich_reason,
        "manifest_written_at": manifest.get("written_at", ""),
        "manifest_code_version": fingerprint.get("code_version", ""),
        "manifest_config_hash": fingerprint.get("config", ""),
        "manifest_operators": dg.MetadataValue.json(fingerprint.get("operators", {})),
        "manifest_timings": dg.MetadataValue.json(manifest.get("timings", {})),
        # What each stage's manifest says it read ([file, size, mtime_ns, digest] per source;
        # the enriched day: its skeleton day and store versions) and the files it wrote.
        "skeleton_manifest_inputs": dg.MetadataValue.json(
            skeleton_manifest.get("fingerprint", {}).get("inputs", {})),
        "skeleton_manifest_files": dg.MetadataValue.json(skeleton_manifest.get("files", [])),
        "enriched_manifest_inputs": dg.MetadataValue.json(
            enriched_manifest.get("fingerprint", {}).get("inputs", {})),
        "enriched_manifest_files": dg.MetadataValue.json(enriched_manifest.get("files", [])),
        "dagster/row_count": written.rows,
        "dagster/column_lineage": lineage_metadata(pipeline),
    }
    if written.schema is not None:
        metadata["dagster/column_schema"] = column_schema(written.schema)
    version = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return metadata, version


@dg.op
def skeleton_stage(context: dg.OpExecutionContext, cfg: DaedalusConfig,
                   pipeline: OperatorPipeline) -> dict:
    """Source-side operators (DuckDB) for the partition's day. The source days it read are
    observed (their content digests), so the partition points at the versions it was built
    from (see `daedalus.defs.sources`)."""
    day = _day(context)
    request = _request(context, cfg, pipeline)
    summary, results = _stage_run(context, request, "skeleton")
    for event in day_observations(request, day):
        context.log_event(event)
    outcome = skeleton_outcome(request, day, results)
    context.add_output_metadata({
        "rows": outcome["rows"],
        "output_path": dg.MetadataValue.path(outcome["output_path"]),
        "status": outcome["status"],
        "recomputed": outcome["recomputed"],
        "reason": outcome["reason"],
        "seconds": round(summary.seconds, 2),
    })
    return outcome


@dg.op(out=dg.Out(dg.Nothing))
def enrich_stage(context: dg.OpExecutionContext, cfg: DaedalusConfig,
                 pipeline: OperatorPipeline, skeleton: dict):
    """Pythonic operators (Ray + Lance) for the day; stats come from parquet footers only.

    The partition's metadata says whether each stage recomputed the day or found it up to
    date, and why; the day's manifest fingerprint is the asset's data version.
    """
    request = _request(context, cfg, pipeline)
    _, results = _stage_run(context, request, "enrich")
    metadata, version = training_metadata(request, _day(context), skeleton, results)
    return dg.Output(None, metadata=metadata, data_version=dg.DataVersion(version))


def training_asset(service: str, config: Config, registry: Registry) -> dg.AssetsDefinition:
    """`<service>_training`: one partition per day, fed by the service's feature views."""
    views = service_views(registry.service(service), config)
    pipeline = compiled_pipeline(registry, service, config)
    lookbacks = view_lookbacks([pipeline])
    contract = [c.model_dump(mode="json", exclude={"has_default"}) if c.has_default else c.name
                for c in config.runtime.output_columns]

    def compose(**feature_views):
        pipeline = compile_pipeline(feature_views=list(feature_views.values()))
        return enrich_stage(pipeline, skeleton_stage(pipeline))

    return dg.graph_asset(
        compose,
        name=training_asset_name(service),
        description=registry.service(service).description or None,
        group_name="training",
        partitions_def=daily_partitions,
        kinds={"parquet", "duckdb", "ray"},
        code_version=__version__,
        tags={SERVICE_TAG: service},
        metadata={
            "dag": dg.MetadataValue.json(pipeline.model_dump(mode="json", exclude_none=True)),
            "output_contract": dg.MetadataValue.json(contract),
            "dagster/column_lineage": lineage_metadata(pipeline),
            # Types from the operators and the views' dtypes; each day's own schema is on its
            # materialization.
            "dagster/column_schema": dg.TableSchema(columns=[
                dg.TableColumn(name, kind or "unknown")
                for name, kind in column_types(pipeline, registry).items()]),
        },
        # A day reads each view's day and the days of its scan's lookback.
        ins={v: dg.AssetIn(key=view_key(v), dagster_type=dg.Nothing,
                           partition_mapping=dg.TimeWindowPartitionMapping(
                               start_offset=-lookbacks.get(v, 0)))
             for v in views},
        automation_condition=REBUILD_WHEN_SOURCES_CHANGE,
    )


def training_job_for(service: str) -> dg.JobDefinition:
    """One partition per run, in process: a step per process would cost a core per step."""
    return dg.define_asset_job(
        name=training_job_name(service),
        selection=dg.AssetSelection.assets(training_asset_name(service)),
        executor_def=dg.in_process_executor,
    )


def training_schedule_for(job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """Daily, derived from the job's partitions: no cron string of its own to maintain."""
    return dg.build_schedule_from_partitioned_job(job)
