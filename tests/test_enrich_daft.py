"""The enrich stage on Daft (the RayUdfTransform tagged `daft`): the Ray Data path's content,
byte for byte, and the brute force; the partition sizing rules of Daft's scaling guide.

The planted days of test_enrich (ids the store lacks, re-embedded ids, empty and capped like
lists, a null id, eleven part files) run through both engines; every enriched column must be
identical in row order, and the files must sort like the rows.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from test_enrich import TEST_ENVELOPE, assert_matches_reference, planted, ray_cluster, read_day  # noqa: F401

from daedalus.core.errors import DaedalusError
from daedalus.enrich import stage as enrich
from daedalus.enrich.batch import PROVENANCE_KEY
from daedalus.enrich.partitions import size_partitions


def enrich_days(planted, engine: str, out: str, runtime=None, messages=None):  # noqa: F811
    config, pipeline, _, days, tmp = planted
    pipeline = pipeline.on_engine(engine) if engine == "daft" else pipeline
    return enrich.run_enrich_stage(pipeline, config, sorted(days), tmp / "out", tmp / out,
                                   envelope=TEST_ENVELOPE, runtime=runtime,
                                   progress=messages.append if messages is not None
                                   else lambda _: None)


def test_daft_writes_the_ray_data_days_content(ray_cluster, planted) -> None:  # noqa: F811
    _, _, store, days, tmp = planted
    messages: list[str] = []
    on_daft = enrich_days(planted, "daft", "daft", messages=messages)
    assert [(r.status, r.rows) for r in on_daft] == [("written", t.num_rows)
                                                     for _, t in sorted(days.items())]
    assert any("daft:" in m and "min rows per partition" in m for m in messages), messages
    enrich_days(planted, "ray", "ray", runtime=ray_cluster)
    for day, skeleton in days.items():
        folder = tmp / "daft" / f"dt={day:%Y-%m-%d}"
        got, want = read_day(folder), read_day(tmp / "ray" / f"dt={day:%Y-%m-%d}")
        assert got.equals(want)  # content and row order; provenance metadata aside
        assert_matches_reference(got, skeleton, store)
        for path in folder.glob("*.parquet"):
            assert json.loads(pq.read_schema(path).metadata[PROVENANCE_KEY])["engine"] == "daft"


def test_a_sink_on_another_engine_than_its_enrichment_is_refused(planted) -> None:  # noqa: F811
    config, pipeline, _, _, _ = planted
    ops = tuple(op.model_copy(update={"engine": "daft"}) if op.kind == "RayUdfTransform" else op
                for op in pipeline.operators)
    planted = (config, pipeline.model_copy(update={"operators": ops}), *planted[2:])
    with pytest.raises(DaedalusError, match=r"sink_enriched.engine: 'pythonic'.*fix: set both"):
        enrich_days(planted, "ray", "bad")


def test_the_scaling_guides_example() -> None:
    """1M rows, 4 nodes, 16 concurrency, batch 64: 256 rows per partition at least, ~3,906
    partitions at most, ~1,000 recommended (each task runs 4 batches)."""
    sizing = size_partitions(1_000_000, nodes=4, concurrency=16, batch_rows=64)
    assert sizing.min_rows_per_partition == 256
    assert sizing.max_partitions == 3906
    assert sizing.recommended == sizing.partitions == 976
    assert "min rows per partition = batch 64 x (16 concurrency / 4 node(s)) = 256" in sizing.why


def test_sizing_at_the_edges() -> None:
    capped = size_partitions(1_000_000, nodes=4, concurrency=16, batch_rows=64, pieces=20)
    assert capped.partitions == 20 and "capped at the day's 20 pieces" in capped.why
    tiny = size_partitions(100, nodes=4, concurrency=16, batch_rows=64)
    assert tiny.max_partitions == 1 and tiny.partitions == 1
    one = size_partitions(1_000_000, nodes=1, concurrency=1, batch_rows=50_000)
    assert (one.min_rows_per_partition, one.max_partitions, one.partitions) == (50_000, 20, 20)
    spread = size_partitions(1_000_000, nodes=8, concurrency=4, batch_rows=50_000)
    assert spread.partitions >= 1 and spread.min_rows_per_partition == 50_000
