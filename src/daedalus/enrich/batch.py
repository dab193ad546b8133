"""The batch function: what the enrich actors run on each batch, in plain Arrow and numpy.

An actor (`EnrichBatches`) hands the writers a compact form of each batch (`compact_table`):
the window means as an Arrow dictionary column of the batch's distinct means, and the looked-up
embeddings as row numbers into the day's preloaded matrix, which the writers map zero-copy
too (without preload: a dictionary column of the distinct vectors). The writers expand it
(`expand_table`) into the output's list<halffloat> columns as they write, so the ~4.6 GB a
1M-row day expands to never crosses the object store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from daedalus.core.errors import DaedalusError
from daedalus.enrich.kernel import (
    expand_dictionary,
    fp16_dictionary_array,
    gather_rows,
    like_windows,
    lookup_pool,
    unique_ids,
    window_pool,
)
from daedalus.enrich.plan import Enrichment
from daedalus.store.build import store_on_this_node
from daedalus.store.reader import StoreReader
from daedalus.store.table import EmbeddingTable

# Schema metadata of every enriched file: which actor (id, pid, node) enriched its rows.
PROVENANCE_KEY = b"daedalus.enrich"
# Field metadata of a compact column holding row numbers into a shared store's matrix.
ROWS_OF_KEY = b"daedalus.rows_of"
EMBEDDING_TYPE = pa.list_(pa.float16())
_MISSING_ID = np.iinfo(np.int64).min


def _ids(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.fill_null(_MISSING_ID).to_numpy().astype(np.int64, copy=False)


def _lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, values) of a list column, whatever its slicing or nulls."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).fill_null(0).to_numpy()
    offsets = np.zeros(len(column) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, _ids(pc.list_flatten(column))


def needed_ids(batch: pa.Table, enrichments: Iterable[Enrichment]) -> np.ndarray:
    """Every id the enrichments of one store will look up in this batch, unique, sorted."""
    parts = [np.empty(0, np.int64)]
    for e in enrichments:
        column = batch.column(e.input_column)
        ids = _lists(column)[1] if e.kind == "avg_pool" else _ids(column)
        parts.append(ids[ids != _MISSING_ID])
    return unique_ids(np.concatenate(parts))


def compact_table(batch: pa.Table, enrichments: Iterable[Enrichment],
                  tables: dict[str, EmbeddingTable], columns: list[str],
                  shared: Iterable[str] = ()) -> pa.Table:
    """The batch with each enrichment's column set, in `columns` order, in compact form (what
    the actors hand the writer): a dictionary column of the batch's distinct vectors, or, for
    a lookup in a store the writer holds too (`shared`: the day's preloaded vectors), just
    each row's row number in that store's matrix, tagged with the store's name."""
    shared = set(shared)
    out: dict[str, pa.Array] = {}
    fields: dict[str, pa.Field] = {}
    for e in enrichments:
        table = tables[e.store]
        if e.kind == "lookup" and e.store in shared:
            rows = table.rows_of(_ids(batch.column(e.input_column)))
            out[e.name] = pa.array(rows.astype(np.int32), mask=rows == table.missing_row)
            fields[e.name] = pa.field(e.name, pa.int32(), metadata={ROWS_OF_KEY: e.store})
            continue
        if e.kind == "lookup":
            pooled = lookup_pool(_ids(batch.column(e.input_column)), table)
        else:
            offsets, values = _lists(batch.column(e.input_column))
            group = (_ids(batch.column(e.group_column)) if e.group_column in batch.column_names
                     else np.zeros(batch.num_rows, dtype=np.int64))
            pooled = window_pool(like_windows(group, offsets, values), table)
        out[e.name] = fp16_dictionary_array(pooled)
        fields[e.name] = pa.field(e.name, out[e.name].type)
    arrays = [out[name] if name in out else batch.column(name) for name in columns]
    schema = [fields[name] if name in out else batch.schema.field(name) for name in columns]
    return pa.Table.from_arrays(arrays, schema=pa.schema(schema, metadata=batch.schema.metadata))


def expand_table(table: pa.Table, tables: dict[str, EmbeddingTable] | None = None) -> pa.Table:
    """`compact_table`'s output as written: every compact column becomes list<halffloat>;
    row numbers into a shared store are gathered from `tables`, that store's matrix."""
    fields, arrays = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        store = (field.metadata or {}).get(ROWS_OF_KEY)
        if store is not None:
            matrix = _shared_matrix(tables, store.decode(), field.name)
            column = pa.chunked_array([gather_rows(matrix, c) for c in column.chunks],
                                      type=EMBEDDING_TYPE)
            field = pa.field(field.name, EMBEDDING_TYPE)
        elif pa.types.is_dictionary(field.type):
            column = pa.chunked_array([expand_dictionary(c) for c in column.chunks],
                                      type=EMBEDDING_TYPE)
            field = pa.field(field.name, EMBEDDING_TYPE)
        fields.append(field)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def _shared_matrix(tables: dict[str, EmbeddingTable] | None, store: str, column: str) -> np.ndarray:
    if not tables or store not in tables:
        raise DaedalusError(f"{column}: the writer does not hold store {store!r}'s preloaded"
                            " vectors (fix: rerun the day; if it persists, report it)")
    return tables[store].matrix


def handed_over(handoff: tuple[Any, str]) -> dict[str, EmbeddingTable]:
    """The day's preloaded tables, from the runtime's PreloadBox (waits for the preload);
    mapped zero-copy from the object store. `handoff`: (the box, the day's key)."""
    import ray

    box, key = handoff
    preloaded = ray.get(box.get.remote(key))
    if isinstance(preloaded, str):
        raise DaedalusError(preloaded)
    tables = {}
    for store, refs in preloaded.items():
        ids, matrix = ray.get(list(refs))
        tables[store] = EmbeddingTable(ids=ids, matrix=matrix)
    return tables


def store_readers(readers: dict[str, dict], node_stores: dict[str, dict]) -> dict[str, StoreReader]:
    """Each store's `StoreReader` in an actor (`readers`: its arguments); where a node builds
    its own copy of a store (`node_stores`: how), the reader opens that copy."""
    opened = {}
    for store, args in readers.items():
        recipe = node_stores.get(store)
        if recipe is not None:
            args = {**args, "path": str(store_on_this_node(**recipe))}
        opened[store] = StoreReader(**args)
    return opened


def enrich_batch(batch: pa.Table, enrichments: list[Enrichment], tables: dict[str, EmbeddingTable],
                 readers: dict[str, StoreReader], columns: list[str], provenance: bytes) -> pa.Table:
    """`compact_table` of one batch, with the vectors it needs taken from each reader's store
    (`tables`: the day's preloaded ones) and the actor's provenance in its schema metadata."""
    held = dict(tables)
    for store, reader in readers.items():
        mine = [e for e in enrichments if e.store == store]
        held[store] = reader.table(needed_ids(batch, mine))
    table = compact_table(batch, enrichments, held, columns, shared=tables)
    return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                          PROVENANCE_KEY: provenance})


class EnrichBatches:
    """The actor: holds the day's embeddings (or the store's id index) and enriches batches.

    `spec`: the enrichments (as dicts), the output columns, and either the preload's
    `handoff` or, without preload, each store's `StoreReader` arguments (`readers`) and, where
    each node builds its own copy of a store (`node_stores`), how to build it."""

    def __init__(self, spec: dict[str, Any]):
        import ray

        self.enrichments = [Enrichment(**e) for e in spec["enrichments"]]
        self.columns = spec["columns"]
        self.tables: dict[str, EmbeddingTable] = {}
        if spec["handoff"] is not None:
            self.tables = handed_over(spec["handoff"])
        self.readers = store_readers(spec["readers"], spec.get("node_stores", {}))
        ctx = ray.get_runtime_context()
        self.provenance = json.dumps({"actor_id": ctx.get_actor_id(), "pid": os.getpid(),
                                      "node_id": ctx.get_node_id()}).encode()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return enrich_batch(batch, self.enrichments, self.tables, self.readers, self.columns,
                            self.provenance)
