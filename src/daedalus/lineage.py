"""Lineage from the registry: services ← views ← sources, both ways; and, from a compiled
DAG, each output column back to the feature view fields it is computed from."""

from __future__ import annotations

import json
import re

from daedalus.core.config import Config
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import OperatorPipeline
from daedalus.core.registry import Registry, check_service, service_views


def lineage(registry: Registry, config: Config, name: str) -> dict:
    """For a service: its upstream views and their sources. For a view: sources and services."""
    if name in registry.services:
        service = check_service(registry, name, config)
        views = service_views(service, config)
        return {
            "name": name,
            "type": "feature_service",
            "upstream_views": [
                {"view": v, "source": registry.view(v).source,
                 "role": "spine" if v == service.spine.view else "feature"}
                for v in views
            ],
            "enrichment_stores": sorted({e.store for e in config.aggregations.enrichment_specs
                                         if e.name in service.enrichments}),
        }
    if name in registry.views:
        view = registry.views[name]
        downstream = [s.name for s in registry.services.values() if name in service_views(s, config)]
        return {"name": name, "type": "feature_view", "sources": [view.source],
                "downstream_services": sorted(downstream)}
    raise DaedalusError(f"lineage: {name!r} is neither a feature service nor a feature view"
                        f" (fix: use one of {sorted(registry.services) + sorted(registry.views)})")


def render(info: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(info, indent=2)
    lines = [f"{info['type']}: {info['name']}"]
    if info["type"] == "feature_service":
        lines.append(f"  {'view':<20} {'role':<8} source")
        lines += [f"  {u['view']:<20} {u['role']:<8} {u['source']}" for u in info["upstream_views"]]
        if info["enrichment_stores"]:
            lines.append(f"  stores: {', '.join(info['enrichment_stores'])}")
    else:
        lines.append(f"  sources:    {', '.join(info['sources'])}")
        lines.append(f"  downstream: {', '.join(info['downstream_services']) or '(none)'}")
    return "\n".join(lines)


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def column_lineage(pipeline: OperatorPipeline) -> dict[str, list[tuple[str, str]]]:
    """Each column of the DAG's final sink → the (feature view, field) pairs it reads, from
    the operators themselves: a projected column reads the spine fields its expression
    names, a point-in-time feature its view's field, a rolling aggregate its view's column and
    timestamp, the qid the session, an enrichment whatever its input column reads."""
    ops = {op.name: op for op in pipeline.operators}

    def scan_of(name: str):
        op = ops[name]
        while op.kind != "Scan":
            op = ops[op.inputs[0]]
        return op

    deps: dict[str, list[tuple[str, str]]] = {}
    for op in pipeline.operators:
        if op.kind == "Project":
            scan = scan_of(op.inputs[0])
            for col in op.columns:
                named = [w for w in _WORD.findall(col.expr) if w in scan.columns]
                deps[col.name] = [(scan.view, w) for w in dict.fromkeys(named)]
        elif op.kind == "PointInTimeJoin":
            for feature in op.features:
                deps[feature] = [(op.view, feature)]
        elif op.kind == "RollingAggregate":
            for agg in op.aggregations:
                deps[agg.name] = [(op.view, agg.column or op.entity), (op.view, op.timestamp_field)]
        elif op.kind == "ArrowUdfTransform":
            deps[op.output_column] = list(deps.get(op.input_column, []))
        elif op.kind == "RayUdfTransform":
            for enrichment in op.enrichments:
                deps[enrichment.name] = list(deps.get(enrichment.input_column, []))
    sink = [op for op in pipeline.operators if op.kind == "Sink"][-1]
    return {col.name: deps.get(col.name, []) for col in sink.columns}


def column_types(pipeline: OperatorPipeline, registry: Registry) -> dict[str, str | None]:
    """Each column of the DAG's final sink → its Arrow type (as Arrow prints it), from the
    operators and the views' declared dtypes, before any day is written: a copied or joined
    field has its view's type, a list aggregate a list of it, a count and a qid int64, an
    embedding list<halffloat> (lists as a parquet reader sees them: items named `element`).
    None where an expression's type is not known up front."""
    import pyarrow as pa

    from daedalus.core.registry import ARROW_TYPES

    ops = {op.name: op for op in pipeline.operators}

    def field_type(view: str, name: str) -> pa.DataType | None:
        field = next((f for f in registry.view(view).columns if f.name == name), None)
        return ARROW_TYPES[field.dtype] if field else None

    def scan_of(name: str):
        op = ops[name]
        while op.kind != "Scan":
            op = ops[op.inputs[0]]
        return op

    types: dict[str, pa.DataType | None] = {}
    for op in pipeline.operators:
        if op.kind == "Project":
            view = scan_of(op.inputs[0]).view
            for col in op.columns:
                bare = _WORD.fullmatch(col.expr.strip())
                types[col.name] = field_type(view, col.expr.strip()) if bare else None
        elif op.kind == "PointInTimeJoin":
            for feature in op.features:
                types[feature] = field_type(op.view, feature)
        elif op.kind == "RollingAggregate":
            for agg in op.aggregations:
                if agg.function == "count":
                    types[agg.name] = pa.int64()
                else:
                    item = field_type(op.view, agg.column)
                    types[agg.name] = pa.list_(pa.field("element", item)) if item else None
        elif op.kind == "ArrowUdfTransform":
            types[op.output_column] = pa.int64()  # assign_qid: an integer per session
        elif op.kind == "RayUdfTransform":
            for enrichment in op.enrichments:
                types[enrichment.name] = pa.list_(pa.field("element", pa.float16()))
    sink = [op for op in pipeline.operators if op.kind == "Sink"][-1]
    return {col.name: str(types[col.name]) if types.get(col.name) else None
            for col in sink.columns}
