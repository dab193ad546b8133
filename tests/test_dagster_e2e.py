"""The Dagster layer end to end on demo data: real instance, real DuckDB, Ray and Lance.

One partition through the job in process (metadata and checks), `daeda materialize-day`
on a persistent instance, and `dagster dev` on a free loopback port: GraphQL lists the
assets and partitions, a 3-day backfill launched as the UI does completes in date order,
and the server stops cleanly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from dagster_dev import ASSETS_QUERY, dagster_dev, graphql

from daedalus.core.errors import DaedalusError
from daedalus.defs import DaedalusConfig, build_defs
from daedalus.defs.agent import materialize_day
from daedalus.layout.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
TRAINING = dg.AssetKey("dssm_ranking_training")
DAYS = ["2026-02-01", "2026-02-02", "2026-02-03"]
CHECKS = {"row_count_matches_impressions", "no_future_feature_values", "embedding_coverage"}
EMBEDDINGS = ["image_embedding", "like_artwork_avg_embeds"]


@dataclass
class DemoProject:
    """A project folder (config, registry, workspace.yaml) over shared demo sources and store."""

    root: Path
    sources: Path
    store: Path
    home: Path

    @property
    def output_root(self) -> Path:
        return self.root / "out"

    def resource(self) -> DaedalusConfig:
        return DaedalusConfig(
            base_config_path=str(self.root / "config/base.yaml"),
            runtime_config_path=str(self.root / "config/training/runtime.yaml"),
            aggregation_config_path=str(self.root / "config/training/aggregations.yaml"),
            feature_views_dir=str(self.root / "feature_views"),
            feature_services_dir=str(self.root / "feature_services"),
            pipelines_dir=str(self.root / "config/pipelines"), sources_root=str(self.sources),
            store_root=str(self.store), ray_num_cpus=2)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in {"DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT", "RAY_ADDRESS"}}
        return {**env, "DAGSTER_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> tuple[Path, Path]:
    from daedalus.demo.data import DemoDataSpec, generate_demo_data

    root = tmp_path_factory.mktemp("demo")
    generate_demo_data(root / "sources", DemoDataSpec())
    return root / "sources", root / "store"


def _make_project(root: Path, sources: Path, store: Path) -> DemoProject:
    for name in ("config", "feature_views", "feature_services"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("pipelines"))
    shutil.copy(REPO / "workspace.yaml", root / "workspace.yaml")
    home = root / ".dagster_home"
    home.mkdir()
    shutil.copy(REPO / ".dagster_home/dagster.yaml", home / "dagster.yaml")
    _edit(root / "config/base.yaml", "sources_root: data/demo/sources", f"sources_root: {sources}")
    _edit(root / "config/base.yaml", "store_root: data/store", f"store_root: {store}")
    runtime = root / "config/training/runtime.yaml"
    _edit(runtime, "output_root: data/training_output", f"output_root: {root / 'out'}")
    _edit(runtime, "temp_directory: data/tmp/duckdb", f"temp_directory: {root / 'duckdb_tmp'}")
    _edit(runtime, "num_cpus: 16", "num_cpus: 2")
    return DemoProject(root=root, sources=sources, store=store, home=home)


@pytest.fixture
def demo(tmp_path, demo_data) -> DemoProject:
    return _make_project(tmp_path / "project", *demo_data)


def _impressions(demo: DemoProject, day: str) -> int:
    """Brute force: the day's impressions straight from the source files."""
    table = ds.dataset(demo.sources / "feed_impressions" / f"dt={day}", format="parquet").to_table()
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    ts = table.column("event_timestamp").to_pylist()
    return sum(start <= t < start + dt.timedelta(days=1) for t in ts)


def _step_metadata(result: dg.ExecuteInProcessResult, step: str) -> dict:
    event = next(e for e in result.all_events
                 if e.event_type == dg.DagsterEventType.STEP_OUTPUT and e.step_key == step)
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


@dataclass
class Materialized:
    demo: DemoProject
    result: dg.ExecuteInProcessResult
    instance: dg.DagsterInstance


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, demo_data) -> Materialized:
    """Day one through the job, in process, on a persistent instance in a temp DAGSTER_HOME."""
    demo = _make_project(tmp_path_factory.mktemp("job") / "project", *demo_data)
    instance = dg.DagsterInstance.from_config(str(demo.home))
    job = build_defs(demo.resource()).resolve_job_def("dssm_ranking_daily")
    result = job.execute_in_process(partition_key=DAYS[0], instance=instance)
    return Materialized(demo=demo, result=result, instance=instance)


@pytest.mark.slow
def test_one_partition_through_the_job_writes_the_day_with_its_metadata(materialized):
    demo, result = materialized.demo, materialized.result
    assert result.success
    expected = _impressions(demo, DAYS[0])
    assert expected > 0

    from daedalus.engine.pipeline import compiled_pipeline

    config, registry = demo.resource().project()
    compiled = compiled_pipeline(registry, "dssm_ranking", config)
    compile_meta = _step_metadata(result, "dssm_ranking_training.compile_pipeline")
    assert compile_meta["operators"] == len(compiled.operators)
    assert [op["name"] for op in compile_meta["dag"]["operators"]] == [
        op.name for op in compiled.operators]

    skeleton = _step_metadata(result, "dssm_ranking_training.skeleton_stage")
    assert skeleton["rows"] == expected
    assert Path(skeleton["output_path"]) == demo.output_root / f"dt={DAYS[0]}"

    (event,) = result.get_asset_materialization_events()
    assert event.asset_key == TRAINING and event.materialization.partition == DAYS[0]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    enriched = demo.root / "out_enriched" / f"dt={DAYS[0]}"
    assert Path(meta["output_path"]) == enriched
    assert meta["rows"] == expected and meta["partition"] == DAYS[0]
    assert meta["embedding_columns"] == EMBEDDINGS
    assert meta["columns"] == [c.name for c in config.runtime.output_columns]
    written = pq.ParquetDataset(enriched).read(columns=["artwork_id"])
    assert written.num_rows == expected

    # Both stages' manifests: the files each read (fingerprinted) and the files each wrote.
    skeleton_manifest = read_manifest(demo.output_root / f"dt={DAYS[0]}")
    enriched_manifest = read_manifest(enriched)
    assert meta["skeleton_manifest_inputs"] == skeleton_manifest["fingerprint"]["inputs"]
    assert set(meta["skeleton_manifest_inputs"]) >= {"feed_impressions", "user_profile",
                                                     "artwork_stats", "user_likes"}
    assert meta["skeleton_manifest_inputs"]["feed_impressions"][0][0] == (
        f"feed_impressions/dt={DAYS[0]}/part-0.parquet")
    assert meta["skeleton_manifest_files"] == skeleton_manifest["files"]
    assert sorted(meta["skeleton_manifest_files"]) == sorted(
        p.name for p in (demo.output_root / f"dt={DAYS[0]}").glob("*.parquet"))
    assert meta["enriched_manifest_inputs"] == enriched_manifest["fingerprint"]["inputs"]
    assert "skeleton" in meta["enriched_manifest_inputs"]
    assert any(k.startswith("store:") for k in meta["enriched_manifest_inputs"])
    assert meta["enriched_manifest_files"] == enriched_manifest["files"]
    assert sorted(meta["enriched_manifest_files"]) == sorted(
        p.name for p in enriched.glob("*.parquet"))

    assert materialized.instance.get_materialized_partitions(TRAINING) == {DAYS[0]}
    run = materialized.instance.get_run_by_id(result.run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == DAYS[0]


@pytest.mark.slow
def test_one_partition_runs_its_checks_and_they_pass(materialized):
    demo, result = materialized.demo, materialized.result
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == CHECKS
    assert all(e.passed for e in evaluations.values())
    assert all(e.partition == DAYS[0] for e in evaluations.values())
    meta = {name: {k: v.value for k, v in e.metadata.items()} for name, e in evaluations.items()}
    expected = _impressions(demo, DAYS[0])
    rows = meta["row_count_matches_impressions"]
    assert rows["output_rows"] == rows["impressions"] == expected
    leakage = meta["no_future_feature_values"]
    assert leakage["audited_rows"] == expected and leakage["leaked_rows"] == 0
    assert leakage["audited"] == f"every row ({expected:,})" and leakage["sampled"] is False
    assert leakage["user_profile: checked_rows"] > 0
    assert leakage["like_artwork_ids_7d: checked_rows"] > 0

    # Brute force: an artwork has an image embedding iff siglip2_vectors holds its id.
    vectors = ds.dataset(demo.sources / "siglip2_vectors", format="parquet",
                         partitioning="hive").to_table(columns=["id"])
    artworks = pq.ParquetDataset(demo.root / "out_enriched" / f"dt={DAYS[0]}").read(
        columns=["artwork_id"]).column("artwork_id")
    covered = pc.sum(pc.is_in(artworks, value_set=vectors.column("id"))).as_py()
    assert meta["embedding_coverage"]["image_embedding: coverage"] == pytest.approx(
        covered / expected)
    assert 0 < meta["embedding_coverage"]["like_artwork_avg_embeds: coverage"] < 1


@pytest.mark.slow
def test_a_day_with_a_planted_future_value_fails_the_leakage_check(materialized):
    """Overwrite one row's country with a value no past profile row has: the check must fail."""
    demo = materialized.demo
    day = demo.root / "out_enriched" / f"dt={DAYS[0]}"
    part = sorted(day.glob("*.parquet"))[0]
    table = pq.read_table(part)
    countries = table.column("country").to_pylist()
    index = next(i for i, c in enumerate(countries) if c is not None)
    countries[index] = "ZZ"
    column = table.schema.get_field_index("country")
    table = table.set_column(column, table.schema.field(column), pa.array(countries, pa.string()))
    pq.write_table(table, part)
    with pytest.raises(DaedalusError, match="no_future_feature_values"):
        materialize_day("dssm_ranking", DAYS[0], defs=build_defs(demo.resource()),
                        instance=materialized.instance)


@pytest.mark.slow
def test_materialize_day_cli_prints_the_summary_and_records_the_run(demo):
    env = {k: v for k, v in demo.env().items() if k != "DAGSTER_HOME"}
    proc = subprocess.run([str(REPO / ".venv/bin/daeda"), "materialize-day", "dssm_ranking",
                           DAYS[1]], cwd=demo.root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["service"] == "dssm_ranking" and summary["date"] == DAYS[1]
    assert summary["rows"] == _impressions(demo, DAYS[1])
    assert Path(summary["output_path"]) == demo.root / "out_enriched" / f"dt={DAYS[1]}"
    assert summary["embedding_columns"] == EMBEDDINGS
    assert summary["checks"] == dict.fromkeys(CHECKS, True)
    # The run lives in the project's .dagster_home, the instance `make dev` serves.
    instance = dg.DagsterInstance.from_config(str(demo.home))
    assert instance.get_materialized_partitions(TRAINING) == {DAYS[1]}
    assert instance.get_run_by_id(summary["run_id"]).status == dg.DagsterRunStatus.SUCCESS


# --------------------------------------------------------------------------------------------
# dagster dev


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_data) -> DemoProject:
    return _make_project(tmp_path_factory.mktemp("dev") / "project", *demo_data)


@pytest.fixture(scope="module")
def dev_server(served):
    """One `dagster dev` for the module."""
    with dagster_dev(served.root, served.env(), "dssm_ranking_training") as server:
        yield server


@pytest.mark.slow
def test_dagster_dev_lists_the_assets_and_their_partitions_over_graphql(dev_server):
    nodes = {tuple(n["assetKey"]["path"]): n for n in dev_server.query(ASSETS_QUERY)["assetNodes"]}
    views = {("feature_view", v) for v in
             ("feed_impressions", "user_profile", "artwork_stats", "user_likes")}
    assert set(nodes) == views | {("dssm_ranking_training",)}
    training = nodes[("dssm_ranking_training",)]
    assert training["isPartitioned"] and training["groupName"] == "training"
    assert training["repository"]["location"]["name"] == "daedalus"
    assert training["partitionKeys"][:3] == DAYS
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    assert training["partitionKeys"][-1] == yesterday
    assert {tuple(d["path"]) for d in training["dependencyKeys"]} == views
    for key in views:
        assert nodes[key]["isPartitioned"] and nodes[key]["kinds"] == ["parquet"]
        assert nodes[key]["partitionKeys"][0] == "2026-01-25"  # the longest lookback back
        assert nodes[key]["groupName"] == "feature_views"


BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status numPartitions error { message }
      runs { runId status startTime tags { key value } }
    }
  }
}
"""


@pytest.mark.slow
def test_three_day_backfill_launched_over_graphql_completes_then_the_server_stops(dev_server,
                                                                                   served):
    demo = served
    params = {"selector": {"partitionSetName": "dssm_ranking_daily_partition_set",
                           "repositorySelector": {"repositoryName": "__repository__",
                                                  "repositoryLocationName": "daedalus"}},
              "partitionNames": DAYS}
    launched = dev_server.query(BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + 600  # ~2 min on a quiet 2-core box; generous under load
    terminal = {"SUCCESS", "FAILURE", "CANCELED"}
    while True:
        backfill = dev_server.query(BACKFILL_STATUS, {"id": launched["backfillId"]})[
            "partitionBackfillOrError"]
        runs = backfill["runs"]
        if (backfill["status"] not in {"REQUESTED", "CANCELING", "FAILING"}
                and len(runs) == len(DAYS) and all(r["status"] in terminal for r in runs)):
            break
        assert time.monotonic() < deadline, (backfill, dev_server.log.read_text()[-3000:])
        time.sleep(2)
    assert backfill["status"].startswith("COMPLETED") and backfill["numPartitions"] == 3
    assert [r["status"] for r in runs] == ["SUCCESS"] * 3
    by_start = sorted(runs, key=lambda r: r["startTime"])
    partitions = [next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition")
                  for r in by_start]
    assert partitions == DAYS

    assert dev_server.stop() == 0 and not dev_server.leftovers
    with pytest.raises(OSError):
        graphql(dev_server.port, "{ version }")
    instance = dg.DagsterInstance.from_config(str(demo.home))
    assert instance.get_materialized_partitions(TRAINING) == set(DAYS)
    for run in runs:
        checks = [e.get_dagster_event().event_specific_data for e in instance.all_logs(
            run["runId"], of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
        assert {c.check_name for c in checks} == CHECKS and all(c.passed for c in checks)
    for day in DAYS:
        written = pq.ParquetDataset(demo.root / "out_enriched" / f"dt={day}").read(
            columns=["event_timestamp"])
        assert written.num_rows == _impressions(demo, day)
