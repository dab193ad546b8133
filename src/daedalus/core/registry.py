"""The feature registry: feature views (raw sources) and feature services (column contracts).

`feature_views/*.yaml` describe where each source lives and what it holds;
`feature_services/*.yaml` say which columns a training set has and where each
comes from. Loading validates every reference so later layers trust names.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daedalus.core.config import AggregationSpec, Config, parse_duration
from daedalus.core.errors import DaedalusError
from daedalus.core.yamlio import load_yaml_mapping

DType = Literal["int32", "int64", "float32", "float64", "bool", "string", "timestamp"]

ARROW_TYPES: dict[str, pa.DataType] = {
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Field_(_Frozen):
    name: str
    dtype: DType
    nullable: bool = True
    description: str = ""


class FeatureView(_Frozen):
    """One raw source: `<sources_root>/<source>/dt=YYYY-MM-DD/*.parquet`."""

    name: str
    description: str = ""
    source: str
    entities: tuple[Field_, ...] = Field(min_length=1)
    timestamp_field: str
    ttl: str | None = None
    features: tuple[Field_, ...] = ()
    path: Path = Path()

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def ttl_delta(self) -> dt.timedelta | None:
        return parse_duration(self.ttl) if self.ttl else None

    @property
    def columns(self) -> tuple[Field_, ...]:
        ts = Field_(name=self.timestamp_field, dtype="timestamp", nullable=False)
        return (ts, *self.entities, *self.features)

    def feature(self, name: str) -> Field_ | None:
        return next((f for f in self.features if f.name == name), None)


class SpineSpec(_Frozen):
    """The view whose rows are the output rows, and how its columns map to output columns."""

    view: str
    copy_columns: tuple[str, ...]
    labels: dict[str, str] = {}
    qid_from: str | None = None
    qid_column: str = "qid"


class FeatureService(_Frozen):
    """A training set's column contract."""

    name: str
    description: str = ""
    spine: SpineSpec
    features: tuple[str, ...] = ()
    aggregations: tuple[str, ...] = ()
    enrichments: tuple[str, ...] = ()
    path: Path = Path()

    def feature_refs(self) -> list[tuple[str, str]]:
        return [tuple(ref.split(":", 1)) for ref in self.features]  # type: ignore[misc]

    def feature_views(self) -> list[str]:
        """Point-in-time-joined views, in first-reference order."""
        return list(dict.fromkeys(view for view, _ in self.feature_refs()))


@dataclass(frozen=True)
class Registry:
    views: dict[str, FeatureView]
    services: dict[str, FeatureService]
    views_dir: Path
    services_dir: Path

    def view(self, name: str) -> FeatureView:
        if name not in self.views:
            raise DaedalusError(
                f"{self.views_dir}: unknown feature view {name!r}"
                f" (fix: use one of {sorted(self.views)} or add {self.views_dir}/{name}.yaml)")
        return self.views[name]

    def service(self, name: str) -> FeatureService:
        if name not in self.services:
            raise DaedalusError(
                f"{self.services_dir}: unknown feature service {name!r}"
                f" (fix: use one of {sorted(self.services)} or add {self.services_dir}/{name}.yaml)")
        return self.services[name]


def _load_model(model: type[BaseModel], path: Path, what: str) -> BaseModel:
    data = load_yaml_mapping(path, what)
    try:
        return model.model_validate({**data, "path": path})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top)"
        if err["type"] == "extra_forbidden":
            raise DaedalusError(
                f"{path}: {loc}: unknown key (fix: remove it or correct its spelling)") from None
        if err["type"] == "missing":
            raise DaedalusError(f"{path}: {loc}: required key is missing (fix: add `{loc}:`)") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise DaedalusError(f"{path}: {loc}: {msg} (fix: correct `{loc}`)") from None


def _load_dir(directory: Path, model: type[BaseModel], what: str) -> dict:
    if not directory.is_dir():
        raise DaedalusError(
            f"{directory}: {what} directory not found (fix: create it or pass the right path)")
    items: dict = {}
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        item = _load_model(model, path, what)
        if item.name in items:
            raise DaedalusError(
                f"{path}: name: {what} {item.name!r} is also defined in {items[item.name].path}"
                " (fix: give each a unique name)")
        if item.name != path.stem:
            raise DaedalusError(f"{path}: name: {item.name!r} differs from the file name"
                                f" (fix: rename the file to {item.name}.yaml or set name: {path.stem})")
        items[item.name] = item
    return items


def _check_view(view: FeatureView) -> None:
    names = [c.name for c in view.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DaedalusError(f"{view.path}: features: column {dupes[0]!r} is declared twice"
                            " (fix: declare each column once)")


def _service_columns(service: FeatureService, registry: Registry, config: Config) -> list[str]:
    """Validate a service against the registry and config; return the columns it produces."""
    path = service.path
    spine = registry.views.get(service.spine.view)
    if spine is None:
        raise DaedalusError(f"{path}: spine.view: unknown feature view {service.spine.view!r}"
                            f" (fix: use one of {sorted(registry.views)})")
    spine_cols = {c.name for c in spine.columns}
    produced: list[tuple[str, str]] = []
    for col in service.spine.copy_columns:
        if col not in spine_cols:
            raise DaedalusError(f"{path}: spine.copy_columns: {col!r} is not a column of view"
                                f" {spine.name!r} (fix: use one of {sorted(spine_cols)})")
        produced.append((col, "spine.copy_columns"))
    for out, src in service.spine.labels.items():
        if src not in spine_cols:
            raise DaedalusError(f"{path}: spine.labels.{out}: {src!r} is not a column of view"
                                f" {spine.name!r} (fix: use one of {sorted(spine_cols)})")
        produced.append((out, "spine.labels"))
    if service.spine.qid_from is not None:
        if service.spine.qid_from not in spine_cols:
            raise DaedalusError(f"{path}: spine.qid_from: {service.spine.qid_from!r} is not a column"
                                f" of view {spine.name!r} (fix: use one of {sorted(spine_cols)})")
        produced.append((service.spine.qid_column, "spine.qid_column"))
    for ref in service.features:
        if ref.count(":") != 1:
            raise DaedalusError(f"{path}: features: {ref!r} is not a `view:feature` reference"
                                " (fix: write it as view:feature, e.g. user_profile:country)")
        view_name, feat = ref.split(":")
        view = registry.views.get(view_name)
        if view is None:
            raise DaedalusError(f"{path}: features: {ref!r} names unknown view {view_name!r}"
                                f" (fix: use one of {sorted(registry.views)})")
        if view.feature(feat) is None:
            raise DaedalusError(f"{path}: features: {ref!r}: view {view_name!r} has no feature {feat!r}"
                                f" (fix: use one of {[f.name for f in view.features]})")
        missing_keys = [e.name for e in view.entities if e.name not in spine_cols]
        if missing_keys:
            raise DaedalusError(f"{path}: features: {ref!r}: the spine has no entity key"
                                f" {missing_keys[0]!r} to join {view_name!r} on"
                                " (fix: join views keyed by spine columns)")
        if config.runtime.feature_refs and view_name not in config.runtime.feature_refs:
            raise DaedalusError(f"{config.runtime_path}: feature_refs: view {view_name!r} used by service"
                                f" {service.name!r} is not listed (fix: add {view_name} to feature_refs)")
        produced.append((feat, f"features ({ref})"))
    for name in service.aggregations:
        spec = aggregation_spec(service, name, config)
        view = registry.views.get(spec.view)
        if view is None:
            raise DaedalusError(f"{config.aggregation_path}: aggregation_specs.{name}.view: unknown"
                                f" feature view {spec.view!r} (fix: use one of {sorted(registry.views)})")
        view_cols = {c.name for c in view.columns}
        for col in (spec.entity, spec.column, *spec.order_by):
            if col is not None and col not in view_cols:
                raise DaedalusError(f"{config.aggregation_path}: aggregation_specs.{name}: {col!r} is not"
                                    f" a column of view {spec.view!r} (fix: use one of {sorted(view_cols)})")
        if spec.entity not in spine_cols:
            raise DaedalusError(f"{config.aggregation_path}: aggregation_specs.{name}.entity: the spine"
                                f" has no column {spec.entity!r} (fix: aggregate by a spine key)")
        produced.append((name, "aggregations"))
    enrich = {e.name: e for e in config.aggregations.enrichment_specs}
    for name in service.enrichments:
        spec = enrich.get(name)
        if spec is None:
            raise DaedalusError(f"{path}: enrichments: unknown enrichment {name!r}"
                                f" (fix: define it under enrichment_specs in {config.aggregation_path})")
        produced.append((name, "enrichments"))
    seen: dict[str, str] = {}
    for name, where in produced:
        if name in seen:
            raise DaedalusError(f"{path}: {where}: output column {name!r} collides with the one from"
                                f" {seen[name]} (fix: rename one of them)")
        seen[name] = where
    for name in service.enrichments:
        input_column = enrich[name].input_column
        if input_column not in seen:
            raise DaedalusError(f"{config.aggregation_path}: enrichment_specs.{name}.input_column:"
                                f" {input_column!r} is not a column of service {service.name!r}"
                                f" (fix: use one of {sorted(seen)})")
    return list(seen)


def output_columns(service: FeatureService, registry: Registry, config: Config) -> list[str]:
    """The service's output columns in `output_columns` order, validated both ways."""
    produced = _service_columns(service, registry, config)
    declared = [c.name for c in config.runtime.output_columns]
    for col in config.runtime.output_columns:
        if col.name not in produced and not col.has_default:
            raise DaedalusError(f"{config.runtime_path}: output_columns: {col.name!r} is not produced by"
                                f" service {service.name!r} (fix: remove it, give it a default, or"
                                f" produce it; produced: {produced})")
    missing = [c for c in produced if c not in declared]
    if missing:
        raise DaedalusError(f"{config.runtime_path}: output_columns: service {service.name!r} produces"
                            f" {missing[0]!r} which is not listed (fix: add it to output_columns)")
    return declared


def check_source_schema(view: FeatureView, sources_root: Path | str) -> None:
    """Compare a view's declared columns with its parquet files, when the (local) source
    exists; an object-store source is checked file by file before a run (check_source_files)."""
    if "://" in str(sources_root):
        return
    folder = Path(sources_root) / view.source
    files = sorted(folder.glob("dt=*/*.parquet"))
    if files:
        _check_columns(view, files[-1], open_parquet(files[-1]).schema_arrow)


def check_source_files(view: FeatureView, files: list[Path]) -> None:
    """Every file a run will read, before it reads any: a readable footer, the declared
    columns and types, and no nulls where the view says `nullable: false` (the footer's
    statistics answer that; a file written without them has the column read)."""
    for path in files:
        parquet = open_parquet(path)
        _check_columns(view, path, parquet.schema_arrow)
        for col in view.columns:
            nulls = 0 if col.nullable else column_null_count(parquet, col.name)
            if nulls:
                raise DaedalusError(f"{path}: {col.name}: {nulls:,} null value(s) in a column"
                                    f" {view.path} declares non-null (fix: drop or repair those"
                                    " rows in the source)")


def open_parquet(path) -> pq.ParquetFile:
    """The file's footer, or a one-line error naming a file that is not parquet. `path`: a
    local path, or an object-store path (anything with `open_input()`)."""
    source = path.open_input() if hasattr(path, "open_input") else path  # its own errors
    try:
        return pq.ParquetFile(source)
    except Exception as exc:  # noqa: BLE001 - any read failure is a corrupt file to the user
        raise DaedalusError(f"{path}: not a readable parquet file ({type(exc).__name__})"
                            " (fix: rewrite or remove the file)") from None


def _check_columns(view: FeatureView, path: Path, schema: pa.Schema) -> None:
    for col in view.columns:
        if col.name not in schema.names:
            raise DaedalusError(f"{path}: {col.name}: column declared in {view.path} is missing"
                                f" from the source (fix: add it to the source or remove it from"
                                f" {view.path.name})")
        actual = schema.field(col.name).type
        if not types_compatible(ARROW_TYPES[col.dtype], actual):
            raise DaedalusError(f"{path}: {col.name}: source type {actual} does not match"
                                f" {col.dtype} declared in {view.path} (fix: write"
                                f" {ARROW_TYPES[col.dtype]} or change the declared dtype)")


def column_null_count(parquet: pq.ParquetFile, name: str) -> int:
    meta = parquet.metadata
    index = next(i for i in range(meta.num_columns) if meta.schema.column(i).path == name)
    total = 0
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(index).statistics
        if stats is None or not stats.has_null_count:
            return parquet.read(columns=[name]).column(0).null_count
        total += stats.null_count
    return total


def types_compatible(declared: pa.DataType, actual: pa.DataType) -> bool:
    if pa.types.is_timestamp(declared):
        return pa.types.is_timestamp(actual) and actual.tz is not None and actual.tz.upper() == "UTC"
    if pa.types.is_string(declared):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(actual))
    return declared == actual


def load_registry(views_dir: Path | str = "feature_views",
                  services_dir: Path | str = "feature_services") -> Registry:
    """Load every view and service YAML, checking names and view-internal consistency."""
    views_dir, services_dir = Path(views_dir), Path(services_dir)
    views = _load_dir(views_dir, FeatureView, "feature view")
    for view in views.values():
        _check_view(view)
    services = _load_dir(services_dir, FeatureService, "feature service")
    return Registry(views=views, services=services, views_dir=views_dir, services_dir=services_dir)


def validate_service(registry: Registry, service_name: str, config: Config,
                     check_sources: bool = True) -> FeatureService:
    """Everything a run of `service_name` needs, checked before any work starts."""
    service = registry.service(service_name)
    output_columns(service, registry, config)
    if check_sources:
        for view_name in service_views(service, config):
            check_source_schema(registry.view(view_name), config.base.sources_root)
    return service


def check_service(registry: Registry, service_name: str, config: Config) -> FeatureService:
    """The service's references (views, features, aggregations, enrichments) resolved, without
    comparing its columns with `output_columns`: what `daeda lineage` needs."""
    service = registry.service(service_name)
    _service_columns(service, registry, config)
    return service


def aggregation_spec(service: FeatureService, name: str, config: Config) -> AggregationSpec:
    """The `aggregation_specs` entry a service names, or a one-line error naming the service."""
    for spec in config.aggregations.aggregation_specs:
        if spec.name == name:
            return spec
    known = [a.name for a in config.aggregations.aggregation_specs]
    raise DaedalusError(f"{service.path}: aggregations: unknown aggregation {name!r}"
                        f" (fix: use one of {known} or define it under aggregation_specs in"
                        f" {config.aggregation_path})")


def service_views(service: FeatureService, config: Config) -> list[str]:
    """Every view a service reads: the spine, point-in-time views, aggregated views."""
    views = [service.spine.view, *service.feature_views(),
             *(aggregation_spec(service, a, config).view for a in service.aggregations)]
    return list(dict.fromkeys(views))
