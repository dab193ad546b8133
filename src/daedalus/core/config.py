"""Layered run configuration: base.yaml, training/runtime.yaml, training/aggregations.yaml.

YAML is validated here, at the edge, into frozen pydantic models; everything
downstream trusts them. `DAEDALUS_SOURCES_ROOT` and `DAEDALUS_STORE_ROOT`
override the base file (pydantic-settings: env beats YAML).

Credentials are never read from a config file: `object_storage:` in base.yaml names the
server (endpoint, region); keys come from the `AWS_*` variables or the Dagster resource.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daedalus.core.errors import DaedalusError
from daedalus.core.yamlio import load_yaml_mapping

DEFAULT_BASE_CONFIG = Path("config/base.yaml")
DEFAULT_RUNTIME_CONFIG = Path("config/training/runtime.yaml")
DEFAULT_AGGREGATION_CONFIG = Path("config/training/aggregations.yaml")

_DURATION = re.compile(r"^\s*(\d+)\s*(d|h|m|s)\s*$")
# Duration suffix → the unit name that both timedelta and SQL intervals spell out.
DURATION_UNITS = MappingProxyType({"d": "days", "h": "hours", "m": "minutes", "s": "seconds"})


def parse_duration(text: str) -> dt.timedelta:
    """`7d`, `36h`, `90m`, `30s` → timedelta (positive)."""
    match = _DURATION.match(str(text))
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a positive duration like '7d', '36h', '90m' or '30s'")
    return dt.timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})


def parse_day(text: str, field: str) -> dt.date:
    """`YYYY-MM-DD` → date; a mistake names `field` (the flag or key the text came from)."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise DaedalusError(f"{field}: {text!r} is not a date (fix: use YYYY-MM-DD,"
                            " e.g. 2026-02-01)") from None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _YamlDict(PydanticBaseSettingsSource):
    """Feeds an already-parsed YAML mapping to pydantic-settings, below env vars."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class ObjectStorage(_Frozen):
    """The S3-compatible server behind `s3://` roots. A field left unset follows the ecosystem's
    variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`);
    the keys are set only by a caller (the Dagster resource), never by a file, and the secret
    is never shown."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = Field(None, repr=False)
    secret_access_key: SecretStr | None = Field(None, repr=False)

    @model_validator(mode="after")
    def _pair(self) -> ObjectStorage:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key come as a pair (set both or"
                             " neither)")
        return self


CREDENTIAL_KEYS = ("access_key_id", "secret_access_key")


class BaseConfig(BaseSettings):
    """`config/base.yaml`: where raw sources and stores live, feature dimensions, the object
    store's server."""

    model_config = SettingsConfigDict(env_prefix="DAEDALUS_", extra="forbid", frozen=True)

    sources_root: Path | str = Path("data/demo/sources")  # str: an `s3://` URI, as written
    store_root: Path = Path("data/store")
    embedding_dim: int = Field(1152, gt=0)
    object_storage: ObjectStorage = ObjectStorage()

    yaml_data: ClassVar[dict[str, Any]] = {}

    @field_validator("sources_root", mode="before")
    @classmethod
    def _root(cls, value: Any) -> Path | str:
        return value if is_uri_text(value) else Path(value)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _YamlDict(settings_cls, cls.yaml_data))


class DuckDBSettings(_Frozen):
    threads: int | None = Field(None, gt=0)
    memory_limit: str = "750MB"
    temp_directory: Path = Path("data/tmp/duckdb")
    preserve_insertion_order: bool = False

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not re.match(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", value):
            raise ValueError(f"{value!r} is not a size like '3GB' or '512MiB'")
        return value


class ComputeSettings(_Frozen):
    engine: Literal["duckdb", "polars", "daft"] = "duckdb"
    duckdb_config: DuckDBSettings = DuckDBSettings()


class RaySettings(_Frozen):
    """The Ray envelope for the pythonic operators."""

    num_cpus: int = Field(16, gt=0)
    memory_gb: float = Field(64, gt=0)
    object_store_gb: float = Field(20, gt=0)
    system_reserved_cpus: int = Field(1, ge=0)
    system_reserved_memory_gb: float = Field(4, ge=0)
    num_workers: int | None = Field(None, gt=0)
    preload_day_embeddings: bool = True
    address: str | None = None


class OutputColumn(_Frozen):
    """An output column; `default` set means: fill with this literal when the stage lacks it."""

    name: str
    default: Any = None
    has_default: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict):
            if set(value) - {"name", "default"}:
                extra = sorted(set(value) - {"name", "default"})
                raise ValueError(f"unknown keys {extra}; an entry is a name or {{name, default}}")
            return {**value, "has_default": "default" in value}
        raise ValueError("an output column is a name or a {name, default} mapping")


class RuntimeConfig(_Frozen):
    """`config/training/runtime.yaml`."""

    feed_start: dt.date
    feed_end: dt.date
    output_root: Path | str = Path("data/training_output")  # str: an `s3://` URI, kept as written
    day_workers: int = Field(1, gt=0)
    skeleton_chunk_rows: int = Field(250_000, gt=0)
    enrich_batch_rows: int = Field(50_000, gt=0)
    feature_refs: tuple[str, ...] = ()
    output_columns: tuple[OutputColumn, ...]
    compute: ComputeSettings = ComputeSettings()
    ray: RaySettings = RaySettings()

    @field_validator("output_root", mode="before")
    @classmethod
    def _root(cls, value: Any) -> Path | str:
        return value if is_uri_text(value) else Path(value)

    @model_validator(mode="after")
    def _range(self) -> RuntimeConfig:
        if self.feed_end < self.feed_start:
            raise ValueError(f"feed_end {self.feed_end} is before feed_start {self.feed_start}")
        names = [c.name for c in self.output_columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"output_columns lists {dupes} more than once")
        return self

    def days(self) -> list[dt.date]:
        n = (self.feed_end - self.feed_start).days
        return [self.feed_start + dt.timedelta(days=i) for i in range(n + 1)]


def is_uri_text(value: Any) -> bool:
    """A root written as a URI (`s3://...`), which `Path` would mangle."""
    return isinstance(value, str) and "://" in value


def enriched_root_for(output_root):
    """The enrich stage writes beside the skeleton: `<output_root>_enriched` (docs/data-contract.md).
    Works for a local path, a URI as written, and an object-store path alike."""
    if is_uri_text(output_root):
        return output_root.rstrip("/") + "_enriched"
    if isinstance(output_root, str):
        output_root = Path(output_root)
    return output_root.with_name(output_root.name + "_enriched")


class AggregationSpec(_Frozen):
    """A point-in-time rolling aggregation over one view, per entity, window [t - window, t)."""

    name: str
    view: str
    entity: str
    function: Literal["last_n_list", "count"]
    window: str
    column: str | None = None
    order_by: tuple[str, ...] = ()
    max_items: int | None = Field(None, gt=0)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _shape(self) -> AggregationSpec:
        if self.function == "last_n_list" and (self.column is None or self.max_items is None):
            raise ValueError("a last_n_list aggregation needs `column` and `max_items`")
        return self


class EnrichmentSpec(_Frozen):
    """An embedding column computed by the pythonic enrich stage from a store."""

    name: str
    kind: Literal["lookup", "avg_pool"]
    store: str
    input_column: str


class EmbeddingStoreSpec(_Frozen):
    name: str
    type: Literal["lance"] = "lance"
    path: str
    id_column: str = "id"
    embedding_column: str = "image_embedding"
    embedding_dim: int = Field(1152, gt=0)
    embedding_dtype: Literal["float16"] = "float16"
    build_batch_size: int = Field(50_000, gt=0)
    source_parquet: str = "siglip2_vectors"


class AggregationsConfig(_Frozen):
    """`config/training/aggregations.yaml`."""

    aggregation_specs: tuple[AggregationSpec, ...] = ()
    enrichment_specs: tuple[EnrichmentSpec, ...] = ()
    embedding_stores: tuple[EmbeddingStoreSpec, ...] = ()

    @model_validator(mode="after")
    def _refs(self) -> AggregationsConfig:
        stores = {s.name for s in self.embedding_stores}
        for spec in self.enrichment_specs:
            if spec.store not in stores:
                raise ValueError(f"enrichment {spec.name!r} names unknown store {spec.store!r}"
                                 f" (known: {sorted(stores)})")
        for kind, items in (("aggregation_specs", self.aggregation_specs),
                            ("enrichment_specs", self.enrichment_specs),
                            ("embedding_stores", self.embedding_stores)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} defines {dupes} more than once")
        return self

    def store(self, name: str) -> EmbeddingStoreSpec:
        return next(s for s in self.embedding_stores if s.name == name)


class Config(_Frozen):
    """Everything a run reads, validated, with the files it came from."""

    base: BaseConfig
    runtime: RuntimeConfig
    aggregations: AggregationsConfig
    base_path: Path
    runtime_path: Path
    aggregation_path: Path

    def store_path(self, store: EmbeddingStoreSpec) -> Path:
        """A store's `path` is relative to `store_root` (DAEDALUS_STORE_ROOT overrides it)."""
        path = Path(store.path)
        return path if path.is_absolute() else self.base.store_root / path

    def with_runtime(self, **changes: Any) -> Config:
        return self.model_copy(update={"runtime": self.runtime.model_copy(update=changes)})


def _explain(exc: ValidationError, path: Path) -> DaedalusError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return DaedalusError(f"{path}: {loc}: unknown key (fix: remove it or correct its spelling)")
    if err["type"] == "missing":
        return DaedalusError(f"{path}: {loc}: required key is missing (fix: add `{loc}:`)")
    got = err.get("input")
    secret = bool(set(CREDENTIAL_KEYS) & {str(part) for part in err["loc"]})
    shown = "" if isinstance(got, dict | list) or got is None or secret else f" (got {got!r})"
    return DaedalusError(f"{path}: {loc}: {msg}{shown} (fix: correct `{loc}` in {path})")


def _validate(model: type[BaseModel], data: dict[str, Any], path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, path) from None


def load_base_config(path: Path = DEFAULT_BASE_CONFIG) -> BaseConfig:
    data = load_yaml_mapping(path, "base config")
    unknown = sorted(set(data) - set(BaseConfig.model_fields))
    if unknown:
        raise DaedalusError(f"{path}: {unknown[0]}: unknown key (fix: remove it or correct its spelling)")
    storage = data.get("object_storage")
    for key in CREDENTIAL_KEYS:
        if isinstance(storage, dict) and key in storage:
            raise DaedalusError(
                f"{path}: object_storage.{key}: credentials are not read from config files"
                " (fix: remove it; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the Dagster"
                " resource's s3_* fields from dg.EnvVar)")
    settings_cls = type("_BaseFromFile", (BaseConfig,), {"yaml_data": data})
    try:
        loaded = settings_cls()
    except ValidationError as exc:
        raise _explain(exc, path) from None
    return BaseConfig.model_construct(**{name: getattr(loaded, name)
                                         for name in BaseConfig.model_fields})


def load_config(
    base_path: Path | str = DEFAULT_BASE_CONFIG,
    runtime_path: Path | str = DEFAULT_RUNTIME_CONFIG,
    aggregation_path: Path | str = DEFAULT_AGGREGATION_CONFIG,
) -> Config:
    """Load and validate the three config layers; raises one-line DaedalusErrors."""
    base_path, runtime_path, aggregation_path = map(Path, (base_path, runtime_path, aggregation_path))
    base = load_base_config(base_path)
    runtime = _validate(RuntimeConfig, load_yaml_mapping(runtime_path, "runtime config"), runtime_path)
    aggregations = _validate(
        AggregationsConfig, load_yaml_mapping(aggregation_path, "aggregation config"), aggregation_path
    )
    return Config(base=base, runtime=runtime, aggregations=aggregations, base_path=base_path,
                  runtime_path=runtime_path, aggregation_path=aggregation_path)
