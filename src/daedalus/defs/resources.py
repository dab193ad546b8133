"""`DaedalusConfig`: where the engine reads config and sources and writes output, per run.

The resource only resolves paths into the engine's own `Config`; every rule about
what a path may hold stays in `daedalus.core.config`.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from daedalus.core.config import Config, enriched_root_for, load_config
from daedalus.core.envelope import RayEnvelope
from daedalus.core.errors import DaedalusError
from daedalus.core.registry import Registry, load_registry


class DaedalusConfig(dg.ConfigurableResource):
    """Config files, registry folders, data roots and the Ray envelope of a training run.

    Relative paths resolve against the working directory, like the `daeda` CLI. A field
    left unset (None) keeps the value of the config files, where the env vars
    `DAEDALUS_SOURCES_ROOT` / `DAEDALUS_STORE_ROOT` already apply.

    Args:
        base_config_path: `config/base.yaml` (sources and store roots, dimensions).
        runtime_config_path: `config/training/runtime.yaml` (days, output shape, Ray block).
        aggregation_config_path: `config/training/aggregations.yaml`.
        feature_views_dir: Folder of feature view YAML.
        feature_services_dir: Folder of feature service YAML.
        pipelines_dir: Where a hand-edited `<service>.yaml` DAG overrides the compiled one.
        output_root: Skeleton output root; None keeps runtime.yaml's `output_root`.
        enriched_output_root: Must be `<output_root>_enriched` (contract 00) when given;
            the enrich stage always writes there.
        sources_root: Raw sources root; None keeps base.yaml / `DAEDALUS_SOURCES_ROOT`.
        store_root: Lance stores root; None keeps base.yaml / `DAEDALUS_STORE_ROOT`.
        ray_num_cpus: Ray logical CPUs; None keeps runtime.yaml (clamped to the host).
        ray_memory_gb: Ray memory budget in GiB; None keeps runtime.yaml.
        ray_object_store_gb: Ray object store in GiB; None keeps runtime.yaml.
        ray_address: An existing Ray cluster; None uses `RAY_ADDRESS` or a local Ray.
        audit_max_rows: The leakage check audits every row of the day; a number opts into a
            repeatable sample of at most that many rows (the check's metadata says which).
    """

    base_config_path: str = "config/base.yaml"
    runtime_config_path: str = "config/training/runtime.yaml"
    aggregation_config_path: str = "config/training/aggregations.yaml"
    feature_views_dir: str = "feature_views"
    feature_services_dir: str = "feature_services"
    pipelines_dir: str = "config/pipelines"
    output_root: str | None = None
    enriched_output_root: str | None = None
    sources_root: str | None = None
    store_root: str | None = None
    ray_num_cpus: int | None = Field(default=None, gt=0)
    ray_memory_gb: float | None = Field(default=None, gt=0)
    ray_object_store_gb: float | None = Field(default=None, gt=0)
    ray_address: str | None = None
    audit_max_rows: int | None = Field(default=None, gt=0)

    def load_config(self) -> Config:
        """The engine config with this resource's overrides applied and checked."""
        config = load_config(self.base_config_path, self.runtime_config_path,
                             self.aggregation_config_path)
        base = {k: Path(v) for k, v in (("sources_root", self.sources_root),
                                        ("store_root", self.store_root)) if v}
        if base:
            config = config.model_copy(update={"base": config.base.model_copy(update=base)})
        if self.output_root:
            config = config.with_runtime(output_root=Path(self.output_root))
        expected = enriched_root_for(config.runtime.output_root)
        if self.enriched_output_root and Path(self.enriched_output_root) != expected:
            raise DaedalusError(
                f"DaedalusConfig.enriched_output_root: {self.enriched_output_root!r} is not"
                f" {str(expected)!r}; the enrich stage writes to <output_root>_enriched"
                " (fix: drop enriched_output_root or set it to that path)")
        ray = {k: v for k, v in (("num_cpus", self.ray_num_cpus), ("memory_gb", self.ray_memory_gb),
                                 ("object_store_gb", self.ray_object_store_gb)) if v is not None}
        if ray:
            config = config.with_runtime(ray=config.runtime.ray.model_copy(update=ray))
        return config

    def load_registry(self) -> Registry:
        return load_registry(self.feature_views_dir, self.feature_services_dir)

    def envelope(self, config: Config) -> RayEnvelope:
        address = self.ray_address or os.environ.get("RAY_ADDRESS") or config.runtime.ray.address
        return RayEnvelope.from_settings(config.runtime.ray, address=address)
