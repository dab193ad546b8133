"""The enrich stage on Daft (the RayUdfTransform tagged `daft`): one day's parts written by a
`@daft.cls` actor pool, on Daft's native runner or on its Ray runner across a cluster.

Daft's distributed-scaling guide splits the work by weight, and so does this plan:

- light data: the day's pieces (`io.skeleton_pieces`: runs of whole skeleton row groups, a
  path and group numbers each) are a small Daft frame, spread over the cluster with
  `repartition`, sized by `partitions.size_partitions` (the plan prints the numbers and why);
- heavy data: each actor (`PieceWriter`) takes one piece at a time (`into_batches(1)`), reads
  it `enrich_batch_rows` rows at a time, gathers and avg-pools the embeddings
  (`batch.compact_table`, the Ray Data path's kernel) and writes the part files itself,
  expanding to list<halffloat> as it writes (`io.write_part`), the writes of one batch
  overlapped with the pooling of the next. The ~4.6 GB of float16 vectors a 1M-row day
  expands to never enter Daft: what comes back is each piece's row count.

A piece's parts are `part-<piece>-<batch>.parquet`, both numbers zero-padded, so names sort
like the rows; the pooled means do not depend on the batching (`kernel`), so the day's
content equals the Ray Data path's byte for byte.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from daedalus.core.daft_runner import daft_nodes
from daedalus.core.envelope import RayEnvelope
from daedalus.enrich.batch import enrich_batch, store_readers
from daedalus.enrich.io import read_piece, skeleton_pieces, write_part
from daedalus.enrich.partitions import size_partitions
from daedalus.enrich.plan import Enrichment, EnrichPlan
from daedalus.storage.objects import ObjectPath

Progress = Callable[[str], None]


def enrich_on_daft(plan: EnrichPlan, day: dt.date, files: list[Path | ObjectPath], rows: int,
                   stores: dict[str, dict], node_stores: dict[str, dict],
                   staging: Path | ObjectPath, batch_rows: int, envelope: RayEnvelope,
                   progress: Progress) -> None:
    """Write the day's enriched parts into `staging` on this process's Daft runner."""
    import daft
    from daft import col

    pieces = skeleton_pieces(files, plan.read_columns, batch_rows)
    pool = envelope.actor_pool_size()
    nodes = daft_nodes()
    sizing = size_partitions(rows, nodes, pool, batch_rows, len(pieces))
    progress(f"enrich {day}: daft: {len(pieces)} piece(s), {pool} actor(s) on {nodes} node(s);"
             f" {sizing.why}")
    frame = daft.from_pydict({"piece": list(range(len(pieces)))})
    if nodes > 1:
        frame = frame.repartition(sizing.partitions)
    spec = {"enrichments": [e.__dict__ for e in plan.enrichments], "columns": plan.columns,
            "plain": plan.plain_columns, "read_columns": plan.read_columns,
            "compression": plan.sink.compression, "batch_rows": batch_rows,
            "readers": stores, "node_stores": node_stores, "staging": staging,
            "pieces": [(path, groups) for path, groups, *_ in pieces]}
    writer = daft.cls(max_concurrency=pool, use_process=True)(PieceWriter)(spec)
    frame.into_batches(1).select(writer.write(col("piece"))).collect()


class PieceWriter:
    """A Daft actor: reads pieces of the skeleton day, enriches them, writes their parts.

    `spec`: the enrichments (as dicts), the output, plain and read columns, the sink's
    compression, the batch size, each store's `StoreReader` arguments (`readers`) and, where
    each node builds its own copy of a store (`node_stores`), how to build it, the staging
    folder, and the day's pieces (file, row groups) by number (`pieces`)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.enrichments = [Enrichment(**e) for e in spec["enrichments"]]
        self.readers = store_readers(spec["readers"], spec["node_stores"])
        self.provenance = json.dumps({"engine": "daft", "pid": os.getpid(),
                                      "node": socket.gethostname()}).encode()

    def write(self, piece: int) -> int:
        """Enrich and write piece number `piece` as `part-<piece>-<batch>.parquet`; returns
        its rows."""
        spec, written = self.spec, 0
        path, groups = spec["pieces"][piece]
        with ThreadPoolExecutor(1, thread_name_prefix="piece-writer") as pool:
            pending = None
            for i, batch in enumerate(read_piece(path, groups, spec["read_columns"],
                                                 spec["batch_rows"])):
                table = enrich_batch(batch, self.enrichments, {}, self.readers,
                                     spec["columns"], self.provenance)
                if pending is not None:
                    written += pending.result()
                target = spec["staging"] / f"part-{piece:05d}-{i:05d}.parquet"
                pending = pool.submit(write_part, table, target, spec["compression"],
                                      spec["plain"])
            if pending is not None:
                written += pending.result()
        return written
