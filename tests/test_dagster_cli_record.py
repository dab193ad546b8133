"""One state, two doors: a day the CLI writes is a materialized partition on the Dagster
instance (same metadata, same data version as a Dagster run), and a day Dagster writes is
up to date in `daeda status`."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from test_dagster_e2e import _make_project

from daedalus.cli import main
from daedalus.defs import build_defs

TRAINING = dg.AssetKey("dssm_ranking_training")
CLI_DAY, DAGSTER_DAY = "2026-02-01", "2026-02-02"


@pytest.mark.slow
def test_cli_days_are_materializations_and_dagster_days_are_up_to_date(tmp_path, monkeypatch,
                                                                        capsys):
    from daedalus.demo.data import DemoDataSpec, generate_demo_data

    sources = tmp_path / "sources"
    generate_demo_data(sources, DemoDataSpec(days=2, users=150, artworks=400, events_per_day=1500))
    demo = _make_project(tmp_path / "project", sources, tmp_path / "store")
    for name in ("DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(demo.home))
    flags = ["--base-config-path", str(demo.root / "config/base.yaml"),
             "--runtime-config-path", str(demo.root / "config/training/runtime.yaml"),
             "--aggregation-config-path", str(demo.root / "config/training/aggregations.yaml"),
             "--feature-views-dir", str(demo.root / "feature_views"),
             "--feature-services-dir", str(demo.root / "feature_services")]
    pipelines = ["--pipelines-dir", str(demo.root / "config/pipelines")]

    # The CLI writes a day: the instance holds it as a materialized partition.
    assert main(["pipeline", "train", "dssm_ranking", "--target-date", CLI_DAY,
                 "--ray-num-cpus", "2", *pipelines, *flags]) == 0
    assert "recorded 1 day(s) as dssm_ranking_training materializations" in capsys.readouterr().err
    instance = dg.DagsterInstance.from_config(str(demo.home))
    assert instance.get_materialized_partitions(TRAINING) == {CLI_DAY}
    recorded = instance.get_latest_materialization_event(TRAINING).asset_materialization
    meta = {k: v.value for k, v in recorded.metadata.items()}
    assert recorded.partition == CLI_DAY and meta["recorded_by"] == "daeda pipeline train"
    assert meta["rows"] > 0 and meta["recomputed"] is True and "image_embedding" in meta["columns"]
    cli_version = recorded.tags["dagster/data_version"]
    schema = {c.name: c.type for c in meta["dagster/column_schema"].columns}
    assert schema["label_click"] == "bool" and schema["image_embedding"] == "list<element: halffloat>"
    declared = build_defs(demo.resource()).resolve_assets_def(TRAINING).specs_by_key[
        TRAINING].metadata  # the definition's schema, from the DAG: the same names and types
    assert {c.name: c.type for c in declared["dagster/column_schema"].columns} == schema
    lineage = meta["dagster/column_lineage"].deps_by_column
    assert [(d.asset_key.path[-1], d.column_name) for d in lineage["qid"]] == [
        ("feed_impressions", "feed_session")]

    # Dagster on that day finds it up to date, with the data version the CLI recorded.
    job = build_defs(demo.resource()).resolve_job_def("dssm_ranking_daily")
    again = job.execute_in_process(partition_key=CLI_DAY, instance=instance)
    (event,) = again.get_asset_materialization_events()
    assert event.materialization.metadata["recomputed"].value is False
    assert event.materialization.tags["dagster/data_version"] == cli_version

    # Dagster writes the next day: `daeda status` calls both stages of it up to date.
    job.execute_in_process(partition_key=DAGSTER_DAY, instance=instance)
    capsys.readouterr()
    assert main(["status", "dssm_ranking", "--from", CLI_DAY, "--to", DAGSTER_DAY, "--json",
                 *pipelines, *flags]) == 0
    states = json.loads(capsys.readouterr().out)
    assert {(s["day"], s["stage"]): s["state"] for s in states} == {
        (d, stage): "complete" for d in (CLI_DAY, DAGSTER_DAY) for stage in ("skeleton", "enrich")}

    # A rerun that writes nothing records nothing.
    assert main(["pipeline", "train", "dssm_ranking", "--target-date", CLI_DAY,
                 "--ray-num-cpus", "2", *pipelines, *flags]) == 0
    assert "recorded" not in capsys.readouterr().err
    assert instance.get_materialized_partitions(TRAINING) == {CLI_DAY, DAGSTER_DAY}

    # Feature views are observed partitions: a source day's changed bytes make exactly the
    # training days that read it stale, in Dagster and in `daeda status`; the same bytes back
    # make nothing stale. feed_impressions has no lookback: its day D feeds training day D only.
    from dagster._utils.test.data_versions import get_stale_status_resolver

    defs = build_defs(demo.resource())
    observe = defs.resolve_job_def("observe_feature_views")
    days = (CLI_DAY, DAGSTER_DAY)

    def stale() -> dict:
        observe.execute_in_process(instance=instance)
        resolver = get_stale_status_resolver(instance, list(defs.assets))
        dagster = {d: resolver.get_status(TRAINING, d).value for d in days}
        capsys.readouterr()
        assert main(["status", "dssm_ranking", "--from", CLI_DAY, "--to", DAGSTER_DAY, "--json",
                     *pipelines, *flags]) == 0
        ours = {s["day"]: s["state"] for s in json.loads(capsys.readouterr().out)
                if s["stage"] == "skeleton"}
        return {d: (dagster[d], ours[d]) for d in days}

    assert stale() == {d: ("FRESH", "complete") for d in days}
    versions = instance.fetch_observations(dg.AssetKey(["feature_view", "user_likes"]),
                                           limit=50).records
    assert {r.partition_key for r in versions} >= {CLI_DAY, DAGSTER_DAY, "2026-01-25"}
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    part = next((sources / "feed_impressions" / f"dt={DAGSTER_DAY}").glob("*.parquet"))
    original = part.read_bytes()
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(part), part, compression="gzip")  # same rows, other bytes
    assert stale() == {CLI_DAY: ("FRESH", "complete"), DAGSTER_DAY: ("STALE", "stale")}
    evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                   cursor=evaluation.cursor)
    assert evaluation.get_requested_partitions(TRAINING) == {DAGSTER_DAY}
    part.write_bytes(original)  # byte-identical again (a new mtime)
    assert stale() == {d: ("FRESH", "complete") for d in days}


def test_runs_that_open_a_fresh_dagster_home_at_once_all_open_it(tmp_path):
    """Two CLI runs recording into a new `$DAGSTER_HOME` at the same moment: without one opener
    at a time, both create the SQLite schema and one dies with a traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    code = ("from daedalus.defs.agent import project_instance\n"
            "with project_instance() as instance: print(instance.get_ref() is not None)")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [(p.wait(), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in outcomes), [err[-500:] for rc, err in outcomes if rc]
