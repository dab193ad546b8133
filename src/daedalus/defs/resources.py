"""`DaedalusConfig`: where the engine reads config and sources and writes output, per run.

The resource only turns its fields into the engine's `RequestOptions`; every rule about
defaults, precedence and what a path may hold stays in `daedalus.engine.request`.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
from pydantic import Field

from daedalus.core.config import Config
from daedalus.core.operators import OperatorPipeline
from daedalus.core.registry import Registry
from daedalus.engine.request import (
    ALL_STAGES,
    RequestOptions,
    RunRequest,
    Stage,
    build_request,
    load_project,
)


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
        enriched_output_root: Must be `<output_root>_enriched` when given;
            the enrich stage always writes there.
        sources_root: Raw sources root; None keeps base.yaml / `DAEDALUS_SOURCES_ROOT`.
        store_root: Lance stores root; None keeps base.yaml / `DAEDALUS_STORE_ROOT`.
        ray_num_cpus: Ray logical CPUs; None keeps runtime.yaml (clamped to the host).
        ray_memory_gb: Ray memory budget in GiB; None keeps runtime.yaml.
        ray_object_store_gb: Ray object store in GiB; None keeps runtime.yaml.
        ray_address: An existing Ray cluster; None uses `RAY_ADDRESS` or a local Ray.
        engine: Where the skeleton's heavy operators run (duckdb; polars: the rolling aggregate;
            daft: it and the point-in-time joins; the same bytes); None keeps runtime.yaml's
            `compute.engine`.
        s3_endpoint_url: The S3-compatible server of `s3://` roots; None keeps base.yaml's
            `object_storage.endpoint_url`, else `AWS_ENDPOINT_URL`.
        s3_region: Its region; None keeps base.yaml, else `AWS_REGION`.
        s3_access_key_id: With `s3_secret_access_key`, the keys; None uses `AWS_ACCESS_KEY_ID` /
            `AWS_SECRET_ACCESS_KEY` (or boto3's chain). Give them as `dg.EnvVar("...")` so the
            run config holds the variable's name, never the key; a local Ray cluster's workers
            get them at start, an existing cluster's nodes use their own.
        s3_secret_access_key: The secret key; shown nowhere by Daedalus (as a literal string,
            not a `dg.EnvVar`, Dagster's UI shows it with the resource's config).
        audit_max_rows: The leakage check audits every row of the day; a number opts into a
            repeatable sample of at most that many rows (the check's metadata says which).
    """

    base_config_path: str = RequestOptions.base_config_path
    runtime_config_path: str = RequestOptions.runtime_config_path
    aggregation_config_path: str = RequestOptions.aggregation_config_path
    feature_views_dir: str = RequestOptions.feature_views_dir
    feature_services_dir: str = RequestOptions.feature_services_dir
    pipelines_dir: str = RequestOptions.pipelines_dir
    output_root: str | None = None
    enriched_output_root: str | None = None
    sources_root: str | None = None
    store_root: str | None = None
    ray_num_cpus: int | None = Field(default=None, gt=0)
    ray_memory_gb: float | None = Field(default=None, gt=0)
    ray_object_store_gb: float | None = Field(default=None, gt=0)
    ray_address: str | None = None
    engine: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    audit_max_rows: int | None = Field(default=None, gt=0)

    def options(self, service: str, day: dt.date | None = None,
                stages: tuple[Stage, ...] = ALL_STAGES,
                pipeline: OperatorPipeline | None = None) -> RequestOptions:
        """This resource's fields as the engine's request options for `service` (one `day`;
        `pipeline`: a DAG already resolved, instead of resolving it again)."""
        fields = self.model_dump(exclude={"audit_max_rows"})
        return RequestOptions(service=service, first_day=day, last_day=day, stages=stages,
                              pipeline=pipeline, origin="DaedalusConfig.", **fields)

    def request(self, service: str, day: dt.date | None = None,
                stages: tuple[Stage, ...] = ALL_STAGES,
                pipeline: OperatorPipeline | None = None) -> RunRequest:
        return build_request(self.options(service, day, stages, pipeline))

    def project(self) -> tuple[Config, Registry]:
        """The config and registry alone, for building definitions (no DAG is resolved)."""
        return load_project(self.options(""))
