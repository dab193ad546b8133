"""How the Daft enrich spreads a day: the partition sizing rules of Daft's distributed-scaling
guide, as one small function.

Light data (here: the day's pieces, runs of whole skeleton row groups) is spread with a
`repartition`; each partition should carry enough rows to feed every actor on its node a
batch, and several batches per task, so no actor waits on scheduling:

- min rows per partition = batch size x (total concurrency / nodes);
- max partitions = rows / min rows per partition;
- recommended: max partitions / (concurrency per node), so each task runs that many batches
  (the guide's example: 1M rows, 4 nodes, 16 concurrency, batch 64 gives 256 rows and
  ~3,906 partitions at most, and it recommends ~1,000).

A day cannot be cut finer than its pieces, and never into fewer partitions than nodes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionSizing:
    """The numbers a day's plan uses, and `why` in one line."""

    rows: int
    nodes: int
    concurrency: int
    batch_rows: int
    min_rows_per_partition: int
    max_partitions: int
    recommended: int
    partitions: int
    pieces: int | None

    @property
    def why(self) -> str:
        per_node = self.concurrency / self.nodes
        capped = ""
        if self.pieces is not None and self.partitions < self.recommended:
            capped = f", capped at the day's {self.pieces:,} pieces"
        return (f"{self.partitions:,} partition(s) for {self.rows:,} rows: min rows per partition"
                f" = batch {self.batch_rows:,} x ({self.concurrency} concurrency / {self.nodes}"
                f" node(s)) = {self.min_rows_per_partition:,}; max partitions = rows / that ="
                f" {self.max_partitions:,}; recommended = max / {per_node:g} batches per task ="
                f" {self.recommended:,}{capped}")


def size_partitions(rows: int, nodes: int, concurrency: int, batch_rows: int,
                    pieces: int | None = None) -> PartitionSizing:
    """The guide's rules for `rows` over `nodes` with `concurrency` actors in all, each fed
    `batch_rows` at a time; `pieces` (when given) is the most partitions the day can have."""
    nodes, concurrency = max(1, nodes), max(1, concurrency)
    per_node = max(1.0, concurrency / nodes)
    min_rows = max(1, round(batch_rows * per_node))
    max_partitions = max(1, rows // min_rows)
    recommended = max(nodes, round(max_partitions / per_node))
    recommended = min(recommended, max_partitions) if max_partitions >= nodes else max_partitions
    partitions = max(1, min(recommended, pieces) if pieces is not None else recommended)
    return PartitionSizing(rows=rows, nodes=nodes, concurrency=concurrency, batch_rows=batch_rows,
                           min_rows_per_partition=min_rows, max_partitions=max_partitions,
                           recommended=recommended, partitions=partitions, pieces=pieces)
