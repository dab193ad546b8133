"""Feature views as external assets; per service a daily-partitioned graph asset and its job.

The ops only call the engine (`executor.run_pipeline`) and describe what it wrote;
no feature logic lives here. A partition is a day: compile → skeleton → enrich.
"""

import datetime as dt
from pathlib import Path

import dagster as dg

from daedalus.audit import written_day
from daedalus.compiler import resolve_pipeline
from daedalus.config import Config, enriched_root_for
from daedalus.defs.partitions import daily_partitions
from daedalus.defs.resources import DaedalusConfig
from daedalus.executor import run_pipeline
from daedalus.operators import OperatorPipeline
from daedalus.registry import Registry, service_views

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
    summary = run_pipeline(pipeline.service, config=config, registry=cfg.load_registry(),
                           pipeline=pipeline, target_date=day, skeleton_only=True,
                           progress=context.log.info)
    written = written_day(summary.output_root, day)
    statuses = sorted({r.status for r in summary.results})
    context.add_output_metadata({
        "rows": written.rows,
        "output_path": dg.MetadataValue.path(str(written.path)),
        "status": ", ".join(statuses),
        "seconds": round(summary.seconds, 2),
    })
    return {"day": day.isoformat(), "rows": written.rows, "output_path": str(written.path)}


@dg.op(out=dg.Out(dg.Nothing))
def enrich_stage(context: dg.OpExecutionContext, cfg: DaedalusConfig, pipeline: OperatorPipeline,
                 skeleton: dict) -> None:
    """Pythonic operators (Ray + Lance) for the day; stats come from parquet footers only."""
    config, day = cfg.load_config(), _day(context)
    summary = run_pipeline(pipeline.service, config=config, registry=cfg.load_registry(),
                           pipeline=pipeline, target_date=day, enrich_only=True,
                           envelope=cfg.envelope(config).clamped_to_machine(),
                           progress=context.log.info)
    written = written_day(_output_root(pipeline, config), day)
    embedding_columns = [e.name for op in pipeline.of_kind("RayUdfTransform")
                         for e in op.enrichments if e.name in written.columns]
    statuses = sorted({r.status for r in summary.results if r.stage == "enrich"})
    context.add_output_metadata({
        "rows": written.rows,
        "columns": list(written.columns),
        "embedding_columns": embedding_columns,
        "output_path": dg.MetadataValue.path(str(written.path)),
        "partition": context.partition_key,
        "skeleton_rows": skeleton["rows"],
        "status": ", ".join(statuses) or "no enrichment",
        "dagster/row_count": written.rows,
    })


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
        tags={SERVICE_TAG: service},
        ins={v: dg.AssetIn(key=view_key(v), dagster_type=dg.Nothing) for v in views},
    )


def training_job(service: str):
    """One partition per run, in process: a step per process would cost a core per step."""
    return dg.define_asset_job(
        name=training_job_name(service),
        selection=dg.AssetSelection.assets(training_asset_name(service)),
        executor_def=dg.in_process_executor,
    )
