"""A Dagster rerun of a partition recomputes it only when stale, and says which and why."""

from __future__ import annotations

import os

import dagster as dg
import pyarrow.parquet as pq
import pytest
from test_dagster_e2e import _make_project

from daedalus.defs import build_defs

DAY = "2026-02-01"
TRAINING = dg.AssetKey("dssm_ranking_training")


def _materialization(result: dg.ExecuteInProcessResult):
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    version = event.materialization.tags.get("dagster/data_version")
    return meta, version


@pytest.mark.slow
def test_rerun_of_a_stale_partition_recomputes_and_says_so(tmp_path):
    from daedalus.demo.data import DemoDataSpec, generate_demo_data

    sources = tmp_path / "sources"
    generate_demo_data(sources, DemoDataSpec(days=1, users=150, artworks=400, events_per_day=1500))
    demo = _make_project(tmp_path / "project", sources, tmp_path / "store")
    instance = dg.DagsterInstance.from_config(str(demo.home))
    job = build_defs(demo.resource()).resolve_job_def("dssm_ranking_daily")

    first, v1 = _materialization(job.execute_in_process(partition_key=DAY, instance=instance))
    assert first["recomputed"] is True and first["reason"] == "not written yet"
    assert first["manifest_code_version"] and first["manifest_config_hash"]
    assert "enrich_embeddings" in first["manifest_operators"]

    again, v2 = _materialization(job.execute_in_process(partition_key=DAY, instance=instance))
    assert again["recomputed"] is False and again["reason"] == "up to date"
    assert again["skeleton_reason"] == "up to date" and again["enrich_reason"] == "up to date"
    assert v1 and v1 == v2

    part = next((sources / "user_likes" / f"dt={DAY}").glob("*.parquet"))
    pq.write_table(pq.read_table(part), part.with_suffix(".tmp"), compression="gzip")
    os.replace(part.with_suffix(".tmp"), part)
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    stale, v3 = _materialization(job.execute_in_process(partition_key=DAY, instance=instance))
    assert stale["recomputed"] is True and stale["skeleton_recomputed"] is True
    assert stale["reason"].startswith("user_likes changed since last run")
    assert stale["enrich_recomputed"] is True
    assert v3 != v2

    # Every impression of the day withdrawn: the rerun retires the day and says so.
    impressions = next((sources / "feed_impressions" / f"dt={DAY}").glob("*.parquet"))
    table = pq.read_table(impressions)
    pq.write_table(table.slice(0, 0), impressions.with_suffix(".tmp"))
    os.replace(impressions.with_suffix(".tmp"), impressions)
    gone, _ = _materialization(job.execute_in_process(partition_key=DAY, instance=instance))
    assert gone["recomputed"] is True and gone["skeleton_recomputed"] is True
    assert gone["rows"] == 0 and "empty" in gone["status"]
    assert not (demo.output_root / f"dt={DAY}").exists()

    # `daeda materialize-day` of that empty day hands back no path that does not exist.
    from daedalus.defs.agent import materialize_day

    summary = materialize_day("dssm_ranking", DAY, defs=build_defs(demo.resource()),
                              instance=instance)
    assert summary["rows"] == 0 and summary["output_path"] is None
    assert all(summary["checks"].values())
