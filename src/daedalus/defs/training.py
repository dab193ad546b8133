"""Feature views as external assets; per service a daily-partitioned graph asset and its job.

The ops only call the engine (`executor.run_pipeline`) and describe what it wrote;
no feature logic lives here. A partition is a day: compile → skeleton → enrich.
"""

import datetime as dt
import functools
import hashlib
import json
from pathlib import Path

import dagster as dg

from daedalus import __version__
from daedalus.audit import written_day
from daedalus.core.config import Config, enriched_root_for
from daedalus.core.operators import OperatorPipeline
from daedalus.core.registry import Registry, service_views
from daedalus.defs.partitions import daily_partitions
from daedalus.defs.resources import DaedalusConfig
from daedalus.engine.pipeline import resolve_pipeline
from daedalus.engine.runner import plan_pipeline, run_pipeline
from daedalus.layout.days import day_path
from daedalus.layout.manifest import read_manifest

SERVICE_TAG = "daedalus/service"


def view_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["feature_view", name])


def training_asset_name(service: str) -> str:
    return f"{service}_training"


def training_job_name(service: str) -> str:
    return f"{service}_daily"


def feature_view_specs(registry: Registry) -> list[dg.AssetSpec]:
    """Every registry view as an external asset, so the asset graph is the lineage."""
    return [dg.AssetSpec(key=view_key(v.name), group_name="feature_views", kinds={"parquet"},
                         description=v.description or None,
                         metadata={"source": v.source, "timestamp_field": v.timestamp_field,
                                   "ttl": v.ttl or "none", "yaml": str(v.path)})
            for v in registry.views.values()]


def _day(context: dg.OpExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def _service(context: dg.OpExecutionContext) -> str:
    return context.assets_def.tags_by_key[context.assets_def.key][SERVICE_TAG]


def _output_root(pipeline: OperatorPipeline, config: Config) -> Path:
    """The folder the asset's partition lives in: enriched when the DAG enriches."""
    root = config.runtime.output_root
    return enriched_root_for(root) if pipeline.has_enrichment else root


@dg.op(ins={"feature_views": dg.In(dg.Nothing)}, out=dg.Out(OperatorPipeline))
def compile_pipeline(context: dg.OpExecutionContext, cfg: DaedalusConfig) -> OperatorPipeline:
    """Compile the service to its engine-tagged DAG (a hand-edited override wins)."""
    service = _service(context)
    config, registry = cfg.load_config(), cfg.load_registry()
    pipeline, override = resolve_pipeline(registry, service, config, cfg.pipelines_dir)
    context.add_output_metadata({
        "service": service,
        "operators": len(pipeline.operators),
        "source": str(override) if override else "compiled",
        "dag": dg.MetadataValue.json(pipeline.model_dump(mode="json")),
    })
    return pipeline


@dg.op
def skeleton_stage(context: dg.OpExecutionContext, cfg: DaedalusConfig,
                   pipeline: OperatorPipeline) -> dict:
    """Source-side operators (DuckDB) for the partition's day."""
    config, day = cfg.load_config(), _day(context)
    registry = cfg.load_registry()
    (planned,) = plan_pipeline(pipeline.service, config=config, registry=registry, pipeline=pipeline,
                               target_date=day, skeleton_only=True)
    summary = run_pipeline(pipeline.service, config=config, registry=registry,
                           pipeline=pipeline, target_date=day, skeleton_only=True,
                           progress=context.log.info)
    written = written_day(summary.output_root, day)
    statuses = sorted({r.status for r in summary.results})
    recomputed = planned.state == "run" and bool({"written", "empty"} & set(statuses))
    context.add_output_metadata({
        "rows": written.rows,
        "output_path": dg.MetadataValue.path(str(written.path)),
        "status": ", ".join(statuses),
        "recomputed": recomputed,
        "reason": planned.reason,
        "seconds": round(summary.seconds, 2),
    })
    return {"day": day.isoformat(), "rows": written.rows, "output_path": str(written.path),
            "recomputed": recomputed, "reason": planned.reason}


@dg.op(out=dg.Out(dg.Nothing))
def enrich_stage(context: dg.OpExecutionContext, cfg: DaedalusConfig, pipeline: OperatorPipeline,
                 skeleton: dict):
    """Pythonic operators (Ray + Lance) for the day; stats come from parquet footers only.

    The partition's metadata says whether each stage recomputed the day or found it up to
    date, and why; the day's manifest fingerprint is the asset's data version.
    """
    config, day = cfg.load_config(), _day(context)
    registry = cfg.load_registry()
    planned = plan_pipeline(pipeline.service, config=config, registry=registry, pipeline=pipeline,
                            target_date=day, enrich_only=True)
    summary = run_pipeline(pipeline.service, config=config, registry=registry,
                           pipeline=pipeline, target_date=day, enrich_only=True,
                           envelope=cfg.envelope(config).clamped_to_machine(),
                           progress=context.log.info)
    root = _output_root(pipeline, config)
    written = written_day(root, day)
    embedding_columns = [e.name for op in pipeline.of_kind("RayUdfTransform")
                         for e in op.enrichments if e.name in written.columns]
    statuses = sorted({r.status for r in summary.results if r.stage == "enrich"})
    enrich_recomputed = (bool(planned) and planned[0].state == "run"
                         and bool({"written", "empty"} & set(statuses)))
    recomputed = skeleton["recomputed"] or enrich_recomputed
    reason = skeleton["reason"] if skeleton["recomputed"] else (
        planned[0].reason if planned else "no enrichment")
    manifest = read_manifest(day_path(root, day)) or {}
    fingerprint = manifest.get("fingerprint", {})
    skeleton_manifest = read_manifest(Path(skeleton["output_path"])) or {}
    enriched_manifest = manifest if pipeline.has_enrichment else {}
    metadata = {
        "rows": written.rows,
        "columns": list(written.columns),
        "embedding_columns": embedding_columns,
        "output_path": dg.MetadataValue.path(str(written.path)),
        "partition": context.partition_key,
        "skeleton_rows": skeleton["rows"],
        "status": ", ".join(statuses) or "no enrichment",
        "recomputed": recomputed,
        "reason": reason if recomputed else "up to date",
        "skeleton_recomputed": skeleton["recomputed"],
        "skeleton_reason": skeleton["reason"],
        "enrich_recomputed": enrich_recomputed,
        "enrich_reason": planned[0].reason if planned else "no enrichment",
        "manifest_written_at": manifest.get("written_at", ""),
        "manifest_code_version": fingerprint.get("code_version", ""),
        "manifest_config_hash": fingerprint.get("config", ""),
        "manifest_operators": dg.MetadataValue.json(fingerprint.get("operators", {})),
        "manifest_timings": dg.MetadataValue.json(manifest.get("timings", {})),
        # What each stage's manifest says it read ([file, size, mtime_ns] per source; the
        # enriched day: its skeleton day and store versions) and the files it wrote.
        "skeleton_manifest_inputs": dg.MetadataValue.json(
            skeleton_manifest.get("fingerprint", {}).get("inputs", {})),
        "skeleton_manifest_files": dg.MetadataValue.json(skeleton_manifest.get("files", [])),
        "enriched_manifest_inputs": dg.MetadataValue.json(
            enriched_manifest.get("fingerprint", {}).get("inputs", {})),
        "enriched_manifest_files": dg.MetadataValue.json(enriched_manifest.get("files", [])),
        "dagster/row_count": written.rows,
    }
    version = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return dg.Output(None, metadata=metadata, data_version=dg.DataVersion(version))


def training_asset(service: str, config: Config, registry: Registry) -> dg.AssetsDefinition:
    """`<service>_training`: one partition per day, fed by the service's feature views."""
    views = service_views(registry.service(service), config)

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
        ins={v: dg.AssetIn(key=view_key(v), dagster_type=dg.Nothing) for v in views},
    )


@functools.cache
def training_job_for(service: str):
    """One partition per run, in process: a step per process would cost a core per step.

    One object per service, so `build_defs` and the module-level `training_job` agree.
    """
    return dg.define_asset_job(
        name=training_job_name(service),
        selection=dg.AssetSelection.assets(training_asset_name(service)),
        executor_def=dg.in_process_executor,
    )


@functools.cache
def training_schedule_for(service: str) -> dg.ScheduleDefinition:
    """Daily, derived from the job's partitions: no cron string of its own to maintain."""
    return dg.build_schedule_from_partitioned_job(training_job_for(service))


# The names spec 04 shows, for the project's service; `build_defs` puts these very objects in
# the code location (the asset itself needs the registry, so `build_defs` makes it).
training_job = training_job_for("dssm_ranking")
training_schedule = training_schedule_for("dssm_ranking")
