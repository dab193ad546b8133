"""Compile a feature service into its engine-tagged operator DAG.

`compile_service` is pure: registry + config in, `OperatorPipeline` out. The
generated DAG is written as `<service>.generated.yaml`; a hand-edited
`<service>.yaml` beside it wins at train time (`resolve_pipeline`).
"""

from __future__ import annotations

from pathlib import Path

from daedalus.core.config import Config
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import (
    ArrowUdfTransform,
    Filter,
    Join,
    OperatorPipeline,
    PointInTimeJoin,
    Project,
    ProjectedColumn,
    RayEnrichment,
    RayUdfTransform,
    RollingAggregate,
    RollingSpec,
    Scan,
    Sink,
    SinkColumn,
)
from daedalus.core.registry import FeatureView, Registry, output_columns, validate_service

DEFAULT_PIPELINES_DIR = Path("config/pipelines")
SPINE_ROW = "spine_row"
QID_MAP_FILE = "qid_map.parquet"


def _scan(view: FeatureView, lookback: str | None) -> Scan:
    return Scan(name=f"scan_{view.name}", engine="sql", view=view.name, source=view.source,
                timestamp_field=view.timestamp_field, columns=tuple(c.name for c in view.columns),
                lookback=lookback,
                description=f"read {view.source} for the day"
                + (f" and {lookback} before" if lookback else ""))


def compile_service(registry: Registry, service_name: str, config: Config,
                    check_sources: bool = False) -> OperatorPipeline:
    """Build the DAG: spine → qid, point-in-time joins, rolling aggregates → assemble → sinks."""
    service = validate_service(registry, service_name, config, check_sources=check_sources)
    spine_view = registry.view(service.spine.view)
    ts = spine_view.timestamp_field
    columns = output_columns(service, registry, config)
    sort_by = (ts, "user_id", "artwork_id", "position")
    sort_by = tuple(c for c in sort_by if c in {f.name for f in spine_view.columns})

    ops: list = []
    scan_spine = _scan(spine_view, None)
    ops.append(scan_spine)
    ops.append(Filter(name="filter_spine_day", inputs=(scan_spine.name,), engine="sql",
                      predicate=f"{ts} >= $day_start AND {ts} < $day_end",
                      description="keep impressions in [D 00:00, D+1 00:00) UTC"))
    projected = [ProjectedColumn(name=c, expr=c) for c in service.spine.copy_columns]
    projected += [ProjectedColumn(name=out, expr=src) for out, src in service.spine.labels.items()]
    if service.spine.qid_from:
        projected.append(ProjectedColumn(name=service.spine.qid_from, expr=service.spine.qid_from))
    total_order = sort_by + tuple(c.name for c in spine_view.columns if c.name not in sort_by)
    projected.append(ProjectedColumn(
        name=SPINE_ROW, expr=f"row_number() OVER (ORDER BY {', '.join(total_order)}) - 1"))
    ops.append(Project(name="project_spine", inputs=("filter_spine_day",), engine="sql",
                       columns=tuple(dict((p.name, p) for p in projected).values()),
                       description="the day's spine: copied columns, labels, a stable row number"))
    joined = ["project_spine"]
    if service.spine.qid_from:
        ops.append(ArrowUdfTransform(
            name="assign_qid", inputs=("project_spine",), engine="sql_arrow_udf", udf="assign_qid",
            input_column=service.spine.qid_from, output_column=service.spine.qid_column,
            state_file=QID_MAP_FILE,
            description="stable integer id per session from qid_map.parquet; new sessions appended"))
        joined.append("assign_qid")

    for view_name in service.feature_views():
        view = registry.view(view_name)
        feats = tuple(f for v, f in service.feature_refs() if v == view_name)
        ops.append(_scan(view, view.ttl))
        ops.append(PointInTimeJoin(
            name=f"pit_{view.name}", inputs=("project_spine", f"scan_{view.name}"), engine="sql",
            view=view.name, keys=tuple(e.name for e in view.entities),
            timestamp_field=view.timestamp_field, ttl=view.ttl, features=feats,
            description=f"latest {view.name} row strictly before the impression"
                        + (f", at most {view.ttl} old" if view.ttl else "")))
        joined.append(f"pit_{view.name}")

    aggs = {a.name: a for a in config.aggregations.aggregation_specs}
    by_view: dict[tuple[str, str], list] = {}
    for name in service.aggregations:
        spec = aggs[name]
        by_view.setdefault((spec.view, spec.entity), []).append(spec)
    for (view_name, entity), specs in by_view.items():
        view = registry.view(view_name)
        longest = max(specs, key=lambda s: _seconds(s.window)).window
        ops.append(_scan(view, longest))
        ops.append(RollingAggregate(
            name=f"rolling_{view.name}", inputs=("project_spine", f"scan_{view.name}"),
            engine="sql", view=view.name, entity=entity, timestamp_field=view.timestamp_field,
            aggregations=tuple(RollingSpec(name=s.name, function=s.function, window=s.window,
                                           column=s.column, order_by=s.order_by,
                                           max_items=s.max_items) for s in specs),
            description=f"per-{entity} rolling {', '.join(s.name for s in specs)} over [t - window, t)"))
        joined.append(f"rolling_{view.name}")

    ops.append(Join(name="assemble", inputs=tuple(joined), engine="sql", on=(SPINE_ROW,),
                    description="one row per spine row with every feature column"))
    sink_columns = tuple(SinkColumn(name=c.name, default=c.default, has_default=c.has_default)
                         for c in config.runtime.output_columns if c.name in columns)
    ops.append(Sink(name="sink_skeleton", inputs=("assemble",), engine="sql", target="skeleton",
                    columns=sink_columns, sort_by=sort_by + (SPINE_ROW,),
                    description="dt=YYYY-MM-DD/part-N-0.parquet under output_root"))
    if service.enrichments:
        enrich = {e.name: e for e in config.aggregations.enrichment_specs}
        ops.append(RayUdfTransform(
            name="enrich_embeddings", inputs=("sink_skeleton",), engine="pythonic",
            enrichments=tuple(RayEnrichment(name=n, kind=enrich[n].kind, store=enrich[n].store,
                                            input_column=enrich[n].input_column)
                              for n in service.enrichments),
            description="Ray Data actors append embeddings from the Lance store"))
        ops.append(Sink(name="sink_enriched", inputs=("enrich_embeddings",), engine="pythonic",
                        target="enriched", columns=tuple(SinkColumn(name=c) for c in columns),
                        sort_by=sort_by, description="<output_root>_enriched/dt=YYYY-MM-DD/*.parquet"))

    pipeline = OperatorPipeline(service=service.name, operators=tuple(ops))
    return pipeline.check(f"compiled {service.name}")


def _seconds(window: str) -> float:
    from daedalus.core.config import parse_duration

    return parse_duration(window).total_seconds()


def generated_path(service: str, pipelines_dir: Path = DEFAULT_PIPELINES_DIR) -> Path:
    return Path(pipelines_dir) / f"{service}.generated.yaml"


def override_path(service: str, pipelines_dir: Path = DEFAULT_PIPELINES_DIR) -> Path:
    return Path(pipelines_dir) / f"{service}.yaml"


def write_generated(pipeline: OperatorPipeline, pipelines_dir: Path = DEFAULT_PIPELINES_DIR) -> Path:
    path = generated_path(pipeline.service, pipelines_dir)
    header = (f"# Generated by `daeda pipeline compile {pipeline.service}`; regenerated on every compile.\n"
              f"# To hand-tune, copy to {override_path(pipeline.service, pipelines_dir).name} and edit.\n")
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(header + pipeline.to_yaml())
        tmp.replace(path)
    except OSError as exc:
        raise DaedalusError(f"--output-dir: cannot write {path} ({exc.strerror or exc}) (fix: pass"
                            " a folder, or --no-write to only print the DAG)") from None
    return path
