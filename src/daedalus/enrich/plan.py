"""The enrich plan: the DAG's one `RayUdfTransform`, its enriched `Sink`, and each enrichment.

`EnrichPlan.build` checks the DAG's shape and the stores its enrichments read, so a DAG the
stage cannot run fails before any day. `Enrichment` is plain data: the actors get it as a dict.
"""

from __future__ import annotations

from dataclasses import dataclass

from daedalus.core.config import Config
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import OperatorPipeline, RayUdfTransform, Sink


@dataclass(frozen=True)
class Enrichment:
    """One output column: `lookup` of a scalar id, or `avg_pool` over a list of ids.

    `group_column` (avg_pool only) is the column of the entity whose like lists overlap from
    row to row (the user), which the kernel pools per."""

    name: str
    kind: str
    input_column: str
    store: str
    group_column: str | None = None


@dataclass(frozen=True)
class EnrichPlan:
    """The operator, the sink it writes to, and its enrichments with their group columns."""

    op: RayUdfTransform
    sink: Sink
    enrichments: tuple[Enrichment, ...]

    @property
    def columns(self) -> list[str]:
        """The output columns, in the sink's order."""
        return [c.name for c in self.sink.columns]

    @property
    def stores(self) -> list[str]:
        return sorted({e.store for e in self.enrichments})

    @property
    def produced(self) -> set[str]:
        """The columns the enrichments set; every other output column is the skeleton's."""
        return {e.name for e in self.enrichments}

    @property
    def plain_columns(self) -> list[str]:
        """The output columns copied from the skeleton day, in output order."""
        produced = self.produced
        return [c for c in self.columns if c not in produced]

    @property
    def read_columns(self) -> list[str]:
        """What the stage reads from the skeleton day: the copied columns, then the group
        columns the enrichments need beyond them."""
        plain = self.plain_columns
        return plain + sorted({e.group_column for e in self.enrichments if e.group_column}
                              - set(plain))

    @classmethod
    def build(cls, pipeline: OperatorPipeline, config: Config) -> EnrichPlan:
        ops = pipeline.of_kind("RayUdfTransform")
        where = f"{pipeline.service} DAG"
        if len(ops) != 1:
            raise DaedalusError(f"{where}: operators: {len(ops)} RayUdfTransform operators, the"
                                " enrich stage runs exactly one (fix: merge their enrichments)")
        op = ops[0]
        sinks = [s for s in pipeline.of_kind("Sink") if s.target == "enriched"]
        if len(sinks) != 1 or sinks[0].inputs != (op.name,):
            raise DaedalusError(f"{where}: operators: the enriched Sink must read {op.name!r}"
                                " (fix: recompile with `daeda pipeline compile`)")
        if sinks[0].engine != op.engine:
            raise DaedalusError(f"{where}: operators.{sinks[0].name}.engine: {sinks[0].engine!r},"
                                f" but {op.name} runs on {op.engine!r}: the enrichment's actors"
                                f" write its sink (fix: set both to {op.engine!r})")
        entity = {a.name: a.entity for a in config.aggregations.aggregation_specs}
        known = {s.name for s in config.aggregations.embedding_stores}
        enrichments = []
        for e in op.enrichments:
            if e.store not in known:
                raise DaedalusError(f"{where}: operators.{op.name}.enrichments: {e.name!r} reads"
                                    f" unknown store {e.store!r} (fix: add it to embedding_stores"
                                    f" in {config.aggregation_path})")
            group = entity.get(e.input_column) if e.kind == "avg_pool" else None
            enrichments.append(Enrichment(e.name, e.kind, e.input_column, e.store, group))
        return cls(op=op, sink=sinks[0], enrichments=tuple(enrichments))
