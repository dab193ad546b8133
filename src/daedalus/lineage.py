"""Lineage from the registry: services ← views ← sources, both ways."""

from __future__ import annotations

import json

from daedalus.core.config import Config
from daedalus.core.errors import DaedalusError
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
