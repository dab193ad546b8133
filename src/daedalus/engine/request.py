"""`RunRequest`: everything one run needs, built once at the edge from CLI flags or the Dagster
resource, so defaults, precedence rules, the output roots and date parsing live here only.

`RequestOptions` is what a caller may set; `None` keeps the config files' value. `build_request`
loads and validates the config and registry, applies the overrides, resolves the DAG (a hand
edit wins over a fresh compile), picks the days and sizes the Ray envelope.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from daedalus.core.compiler import DEFAULT_PIPELINES_DIR
from daedalus.core.config import (
    DEFAULT_AGGREGATION_CONFIG,
    DEFAULT_BASE_CONFIG,
    DEFAULT_RUNTIME_CONFIG,
    ComputeSettings,
    Config,
    ObjectStorage,
    enriched_root_for,
    load_config,
    parse_day,
)
from daedalus.core.envelope import RayEnvelope
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import OperatorPipeline
from daedalus.core.registry import Registry, load_registry
from daedalus.engine.pipeline import resolve_pipeline
from daedalus.storage.objects import ObjectPath
from daedalus.storage.uri import Root, is_uri, parse_root

Stage = Literal["skeleton", "enrich"]
ALL_STAGES: tuple[Stage, ...] = ("skeleton", "enrich")


@dataclass(frozen=True)
class RequestOptions:
    """What a caller may choose for a run; `None` keeps the value of the config files.

    Ray's address: `ray_address`, else `RAY_ADDRESS`, else runtime.yaml's `ray.address`, else a
    local cluster. Days: `first_day`..`last_day`, each end defaulting to feed_start / feed_end
    (one day: both set to it).
    """

    service: str
    base_config_path: str = str(DEFAULT_BASE_CONFIG)
    runtime_config_path: str = str(DEFAULT_RUNTIME_CONFIG)
    aggregation_config_path: str = str(DEFAULT_AGGREGATION_CONFIG)
    feature_views_dir: str = "feature_views"
    feature_services_dir: str = "feature_services"
    pipelines_dir: str = str(DEFAULT_PIPELINES_DIR)
    output_root: str | None = None
    enriched_output_root: str | None = None
    sources_root: str | None = None
    store_root: str | None = None
    first_day: dt.date | None = None
    last_day: dt.date | None = None
    stages: tuple[Stage, ...] = ALL_STAGES
    force: bool = False
    day_workers: int | None = None
    ray_num_cpus: int | None = None
    ray_memory_gb: float | None = None
    ray_object_store_gb: float | None = None
    ray_address: str | None = None
    engine: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    num_workers: int | None = None
    preload_day_embeddings: bool | None = None
    pipeline: OperatorPipeline | None = field(default=None, compare=False)
    origin: str = ""  # prefixes a field named in an error, e.g. "DaedalusConfig."


@dataclass(frozen=True)
class RunRequest:
    """One run: the validated config and registry, the DAG, the days, the stages, the envelope."""

    service: str
    config: Config
    registry: Registry
    pipeline: OperatorPipeline
    pipeline_source: str
    days: tuple[dt.date, ...]
    stages: tuple[Stage, ...]
    envelope: RayEnvelope
    force: bool = False

    @property
    def skeleton_root(self) -> Root:
        """Absolute, so every path a run prints or records reads the same from anywhere; an
        `ObjectPath` for an `s3://` root."""
        root = parse_root(self.config.runtime.output_root, "output_root",
                          self.config.base.object_storage)
        return root.resolve() if isinstance(root, Path) else root

    @property
    def enriched_root(self) -> Root:
        return enriched_root_for(self.skeleton_root)

    @property
    def final_root(self) -> Path:
        """Where the service's finished day lives: enriched when the DAG enriches."""
        return self.enriched_root if self.pipeline.has_enrichment else self.skeleton_root

    @property
    def runs_enrich(self) -> bool:
        return "enrich" in self.stages and self.pipeline.has_enrichment

    def narrowed(self, *, days: tuple[dt.date, ...] | None = None,
                 stages: tuple[Stage, ...] | None = None, force: bool | None = None) -> RunRequest:
        """The same run over other days or stages (a Dagster op runs one day, one stage)."""
        return RunRequest(self.service, self.config, self.registry, self.pipeline,
                          self.pipeline_source, days if days is not None else self.days,
                          stages if stages is not None else self.stages, self.envelope,
                          self.force if force is None else force)


def build_request(options: RequestOptions) -> RunRequest:
    """Load, validate and resolve everything `options` names; raises one-line DaedalusErrors."""
    config = _configured(options)
    registry = load_registry(options.feature_views_dir, options.feature_services_dir)
    if options.pipeline is not None:
        pipeline, source = options.pipeline, "given"
    else:
        pipeline, override = resolve_pipeline(registry, options.service, config,
                                              Path(options.pipelines_dir))
        source = str(override) if override else "compiled"
    if not options.stages or set(options.stages) - set(ALL_STAGES):
        raise DaedalusError(f"stages: {options.stages!r} (fix: name skeleton and/or enrich)")
    return RunRequest(service=options.service, config=config, registry=registry,
                      pipeline=pipeline, pipeline_source=source, days=_days(options, config),
                      stages=tuple(s for s in ALL_STAGES if s in options.stages),
                      envelope=_envelope(options, config), force=options.force)


def load_project(options: RequestOptions) -> tuple[Config, Registry]:
    """The config (with `options`' overrides) and registry, for commands that run no DAG."""
    return _configured(options), load_registry(options.feature_views_dir,
                                               options.feature_services_dir)


def day_option(text: str | None, flag: str) -> dt.date | None:
    """A day given on the command line or in a resource field, checked under its own name."""
    return None if text is None else parse_day(text, flag)


def _configured(options: RequestOptions) -> Config:
    config = load_config(options.base_config_path, options.runtime_config_path,
                         options.aggregation_config_path)
    base = {k: v if is_uri(v) else Path(v) for k, v in (("sources_root", options.sources_root),
                                    ("store_root", options.store_root)) if v}
    storage = _storage(options, config.base.object_storage)
    if storage != config.base.object_storage:
        base["object_storage"] = storage
    if base:
        config = config.model_copy(update={"base": config.base.model_copy(update=base)})
    if options.output_root:
        root = parse_root(options.output_root, f"{options.origin or '--'}output_root", storage)
        config = config.with_runtime(output_root=options.output_root if isinstance(root, ObjectPath)
                                     else root)
    expected = enriched_root_for(config.runtime.output_root)
    if options.enriched_output_root and str(options.enriched_output_root).rstrip("/") != str(expected):
        raise DaedalusError(
            f"{options.origin}enriched_output_root: {options.enriched_output_root!r} is not"
            f" {str(expected)!r}; the enrich stage writes to <output_root>_enriched"
            " (fix: drop enriched_output_root or set it to that path)")
    if options.engine is not None:
        engines = ComputeSettings.model_fields["engine"].annotation.__args__
        if options.engine not in engines:
            raise DaedalusError(f"{options.origin or '--'}engine: {options.engine!r} is not an"
                                " engine of the skeleton's heavy operators"
                                f" (fix: one of {', '.join(engines)})")
        config = config.with_runtime(compute=config.runtime.compute.model_copy(
            update={"engine": options.engine}))
    if options.day_workers is not None:
        if options.day_workers <= 0:
            raise DaedalusError(f"--day-workers: {options.day_workers} is not a positive count"
                                " (fix: pass 1 or more)")
        config = config.with_runtime(day_workers=options.day_workers)
    ray = {k: v for k, v in (("memory_gb", options.ray_memory_gb),
                             ("object_store_gb", options.ray_object_store_gb)) if v is not None}
    if ray:
        config = config.with_runtime(ray=config.runtime.ray.model_copy(update=ray))
    return config


def _storage(options: RequestOptions, storage: ObjectStorage) -> ObjectStorage:
    """base.yaml's `object_storage` with the caller's s3_* fields over it; keys come as a pair."""
    given = {"endpoint_url": options.s3_endpoint_url, "region": options.s3_region,
             "access_key_id": options.s3_access_key_id,
             "secret_access_key": options.s3_secret_access_key}
    if (given["access_key_id"] is None) != (given["secret_access_key"] is None):
        missing = "s3_secret_access_key" if given["secret_access_key"] is None else "s3_access_key_id"
        raise DaedalusError(f"{options.origin}{missing}: the object store's keys come as a pair"
                            f" (fix: set {missing} too, or neither)")
    update = {k: v for k, v in given.items() if v is not None}
    return ObjectStorage.model_validate({**storage.model_dump(), **update}) if update else storage


def _days(options: RequestOptions, config: Config) -> tuple[dt.date, ...]:
    first = options.first_day or config.runtime.feed_start
    last = options.last_day or config.runtime.feed_end
    if last < first:
        raise DaedalusError(f"--to: {last} is before --from {first} (fix: swap them)")
    return tuple(first + dt.timedelta(days=i) for i in range((last - first).days + 1))


def _envelope(options: RequestOptions, config: Config) -> RayEnvelope:
    address = options.ray_address or os.environ.get("RAY_ADDRESS") or config.runtime.ray.address
    return RayEnvelope.from_settings(config.runtime.ray, num_cpus=options.ray_num_cpus,
                                     address=address, num_workers=options.num_workers,
                                     preload_day_embeddings=options.preload_day_embeddings)
