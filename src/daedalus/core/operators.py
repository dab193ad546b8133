"""The engine-tagged operator DAG that `daeda pipeline compile` emits and `train` runs.

Nine operator kinds, each a frozen pydantic model with a `kind` tag, its
declared `engine`, the `inputs` it reads and the parameters that shape it. The
engine is declared, never inferred: `can_run_on()` is the set of engines this
project implements for the kind, and a hand-edited DAG outside it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from daedalus.core.errors import DaedalusError
from daedalus.core.yamlio import dump_yaml, load_yaml_mapping

Engine = Literal["sql", "sql_arrow_udf", "polars", "daft", "pythonic"]
# Source-side operators run in the skeleton stage: in DuckDB's statement, or (polars, daft) on
# that engine over the same scanned Arrow tables, their result held for the statement. The
# enrichment (RayUdfTransform and its Sink) runs on Ray Data actors (pythonic) or Daft's.


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Op(_Frozen):
    name: str
    inputs: tuple[str, ...] = ()
    engine: Engine
    description: str = ""
    sql: str | None = None
    # Why the skeleton stage holds this operator's output instead of streaming it into the
    # day's one statement; None for operators that stream (filled in by the compiler).
    materialized: str | None = None

    CAN_RUN_ON: ClassVar[frozenset[str]] = frozenset({"sql"})
    # The engine the compiler tags the operator with (where `compute.engine` does not move it).
    DEFAULT_ENGINE: ClassVar[str] = "sql"

    def can_run_on(self) -> frozenset[str]:
        return self.CAN_RUN_ON

    @property
    def default_engine(self) -> str:
        return self.DEFAULT_ENGINE

    @property
    def source_side(self) -> bool:
        """Source-side operators run in the skeleton stage; the rest are the enrichment."""
        return True


class Scan(_Op):
    """Read one view's hive-partitioned parquet for the day, plus a lookback before it."""

    kind: Literal["Scan"] = "Scan"
    view: str
    source: str
    timestamp_field: str
    columns: tuple[str, ...]
    lookback: str | None = None


class Filter(_Op):
    kind: Literal["Filter"] = "Filter"
    predicate: str


class ProjectedColumn(_Frozen):
    name: str
    expr: str


class Project(_Op):
    kind: Literal["Project"] = "Project"
    columns: tuple[ProjectedColumn, ...]
    order_by: tuple[str, ...] = ()


class Join(_Op):
    """Assemble the spine with the per-row feature outputs (left join on the spine row)."""

    kind: Literal["Join"] = "Join"
    how: Literal["left"] = "left"
    on: tuple[str, ...]


class PointInTimeJoin(_Op):
    """Latest view row strictly before each spine row, not older than `ttl` (boundary included)."""

    kind: Literal["PointInTimeJoin"] = "PointInTimeJoin"
    view: str
    keys: tuple[str, ...]
    timestamp_field: str
    ttl: str | None = None
    features: tuple[str, ...]

    CAN_RUN_ON: ClassVar[frozenset[str]] = frozenset({"sql", "daft"})


class RollingSpec(_Frozen):
    name: str
    function: Literal["last_n_list", "count"]
    window: str
    column: str | None = None
    order_by: tuple[str, ...] = ()
    max_items: int | None = None


class RollingAggregate(_Op):
    """Per-entity aggregations over [t - window, t) of one view, for each spine row."""

    kind: Literal["RollingAggregate"] = "RollingAggregate"
    view: str
    entity: str
    timestamp_field: str
    aggregations: tuple[RollingSpec, ...]

    CAN_RUN_ON: ClassVar[frozenset[str]] = frozenset({"sql", "polars", "daft"})


class ArrowUdfTransform(_Op):
    """A vectorized Arrow function over a DuckDB relation (e.g. the stateful qid map)."""

    kind: Literal["ArrowUdfTransform"] = "ArrowUdfTransform"
    udf: Literal["assign_qid"]
    input_column: str
    output_column: str
    state_file: str

    CAN_RUN_ON: ClassVar[frozenset[str]] = frozenset({"sql_arrow_udf"})
    DEFAULT_ENGINE: ClassVar[str] = "sql_arrow_udf"


class RayEnrichment(_Frozen):
    name: str
    kind: Literal["lookup", "avg_pool"]
    store: str
    input_column: str


class RayUdfTransform(_Op):
    """Append embedding columns on an actor pool reading a Lance store: Ray Data's
    (`pythonic`) or Daft's (`daft`)."""

    kind: Literal["RayUdfTransform"] = "RayUdfTransform"
    enrichments: tuple[RayEnrichment, ...]

    CAN_RUN_ON: ClassVar[frozenset[str]] = frozenset({"pythonic", "daft"})
    DEFAULT_ENGINE: ClassVar[str] = "pythonic"

    @property
    def source_side(self) -> bool:
        return False


class SinkColumn(_Frozen):
    name: str
    default: Any = None
    has_default: bool = False


class Sink(_Op):
    """Write the day to `<root>/dt=YYYY-MM-DD/`, sorted, Zstd, complete or absent."""

    kind: Literal["Sink"] = "Sink"
    target: Literal["skeleton", "enriched"]
    columns: tuple[SinkColumn, ...]
    sort_by: tuple[str, ...]
    compression: str = "zstd"

    def can_run_on(self) -> frozenset[str]:
        """The skeleton day is DuckDB's statement; the enriched day is written by the
        enrichment's actors, on either of its engines."""
        return frozenset({"sql"}) if self.target == "skeleton" else frozenset({"pythonic", "daft"})

    @property
    def default_engine(self) -> str:
        return "sql" if self.target == "skeleton" else "pythonic"

    @property
    def source_side(self) -> bool:
        return self.target == "skeleton"


Operator = Annotated[
    Scan | Filter | Project | Join | PointInTimeJoin | RollingAggregate | ArrowUdfTransform
    | RayUdfTransform | Sink,
    Field(discriminator="kind"),
]

OPERATOR_KINDS = ("Scan", "Filter", "Project", "Join", "PointInTimeJoin", "RollingAggregate",
                  "ArrowUdfTransform", "RayUdfTransform", "Sink")


class OperatorPipeline(_Frozen):
    """A compiled service: operators in topological order."""

    service: str
    operators: tuple[Operator, ...]

    def op(self, name: str) -> _Op:
        for op in self.operators:
            if op.name == name:
                return op
        raise KeyError(name)

    def of_kind(self, kind: str) -> list[_Op]:
        return [op for op in self.operators if op.kind == kind]

    @property
    def source_side(self) -> list[_Op]:
        return [op for op in self.operators if op.source_side]

    @property
    def enrichment(self) -> list[_Op]:
        return [op for op in self.operators if not op.source_side]

    def on_engine(self, engine: str) -> OperatorPipeline:
        """Every operator on its default engine that can run on `engine` (a `compute.engine`:
        duckdb is the statement's `sql`) tagged with it; the others keep their engine, so a
        hand-edited DAG's own choices stand."""
        tag = "sql" if engine == "duckdb" else engine
        ops = tuple(op.model_copy(update={"engine": tag})
                    if op.engine == op.default_engine and tag in op.can_run_on() else op
                    for op in self.operators)
        return self.model_copy(update={"operators": ops})

    @property
    def has_enrichment(self) -> bool:
        return any(op.kind == "RayUdfTransform" for op in self.operators)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=False)
        for op in data["operators"]:
            if op["materialized"] is None:
                del op["materialized"]  # only the few held operators say why
        return dump_yaml(data)

    def check(self, path: Path | str = "<pipeline>") -> OperatorPipeline:
        """Names unique, inputs earlier in the list, engines within `can_run_on()`."""
        seen: set[str] = set()
        for i, op in enumerate(self.operators):
            where = f"operators[{i}] ({op.name})"
            if op.name in seen:
                raise DaedalusError(f"{path}: {where}.name: duplicate operator name"
                                    " (fix: give each operator a unique name)")
            for inp in op.inputs:
                if inp not in seen:
                    raise DaedalusError(f"{path}: {where}.inputs: {inp!r} is not an earlier operator"
                                        " (fix: list operators in dependency order and name real inputs)")
            if op.engine not in op.can_run_on():
                raise DaedalusError(f"{path}: {where}.engine: {op.kind} cannot run on {op.engine!r}"
                                    f" (fix: use one of {sorted(op.can_run_on())})")
            seen.add(op.name)
        return self


_PIPELINE = TypeAdapter(OperatorPipeline)


def load_pipeline_yaml(path: Path) -> OperatorPipeline:
    data = load_yaml_mapping(path, "operator pipeline")
    try:
        pipeline = _PIPELINE.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top)"
        msg = err["msg"].removeprefix("Value error, ")
        raise DaedalusError(f"{path}: {loc}: {msg} (fix: correct `{loc}` or delete the file to"
                            " use the compiled DAG)") from None
    return pipeline.check(path)
