"""The Dagster code location's shape: assets, checks, job, schedule, resource, CLI validation."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from daedalus.core.errors import DaedalusError
from daedalus.defs import DaedalusConfig, build_defs
from daedalus.defs.agent import materialize_day

REPO = Path(__file__).resolve().parents[1]
VIEWS = {"feed_impressions", "user_profile", "artwork_stats", "user_likes"}
TRAINING = dg.AssetKey("dssm_ranking_training")


def _cfg(project, **overrides) -> DaedalusConfig:
    return DaedalusConfig(
        base_config_path=str(project.base), runtime_config_path=str(project.runtime),
        aggregation_config_path=str(project.aggregations), feature_views_dir=str(project.views),
        feature_services_dir=str(project.services), pipelines_dir=str(project.pipelines),
        **overrides)


@pytest.fixture
def defs(project) -> dg.Definitions:
    return build_defs(_cfg(project))


def test_module_level_defs_load_from_the_project_root(monkeypatch):
    monkeypatch.chdir(REPO)
    from daedalus.definitions import defs as load_defs

    defs = load_defs()  # lazy: `@dg.definitions` builds them when a Dagster tool asks
    assert isinstance(defs, dg.Definitions)
    assert TRAINING in defs.resolve_asset_graph().get_all_asset_keys()


def test_definitions_hold_exactly_the_views_training_asset_checks_job_schedule_resource(defs):
    graph = defs.resolve_asset_graph()
    assert graph.get_all_asset_keys() == {TRAINING} | {
        dg.AssetKey(["feature_view", v]) for v in VIEWS}
    assert {c.name for c in graph.asset_check_keys} == {
        "row_count_matches_impressions", "no_future_feature_values", "embedding_coverage"}
    assert {c.asset_key for c in graph.asset_check_keys} == {TRAINING}
    assert [j.name for j in defs.jobs] == ["dssm_ranking_daily", "observe_feature_views"]
    assert [s.name for s in defs.schedules] == ["dssm_ranking_daily_schedule",
                                                "observe_feature_views_schedule"]
    (job, observe), (schedule, observing) = defs.jobs, defs.schedules
    assert schedule.job is job and job.name == "dssm_ranking_daily"
    assert observing.job is observe
    assert observing.default_status == dg.DefaultScheduleStatus.STOPPED
    (sensor,) = defs.sensors
    assert sensor.name == "daedalus_automation"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert set(defs.resources) == {"cfg"} and isinstance(defs.resources["cfg"], DaedalusConfig)
    assert defs.executor is dg.in_process_executor


def test_feature_views_are_observable_daily_assets_upstream_of_training(defs):
    """Each view is observable by day, from the longest lookback before the first training
    day; a training day reads its own view day and the lookback's (the partition mapping)."""
    graph = defs.resolve_asset_graph()
    for view in VIEWS:
        node = graph.get(dg.AssetKey(["feature_view", view]))
        assert node.is_external and not node.is_materializable and node.is_observable
        assert node.group_name == "feature_views" and node.kinds == {"parquet"}
        assert node.partitions_def.get_first_partition_key() == "2026-01-25"  # 7d of likes
    training = graph.get(TRAINING)
    reads = {v: graph.get_parent_partition_keys_for_child(
                 "2026-02-10", dg.AssetKey(["feature_view", v]), TRAINING
             ).partitions_subset.get_partition_keys() for v in VIEWS}
    assert {v: (min(keys), max(keys)) for v, keys in reads.items()} == {
        "feed_impressions": ("2026-02-10", "2026-02-10"),
        "user_profile": ("2026-02-07", "2026-02-10"),
        "artwork_stats": ("2026-02-08", "2026-02-10"),
        "user_likes": ("2026-02-03", "2026-02-10")}
    assert training.automation_condition is not None
    assert training.parent_keys == {dg.AssetKey(["feature_view", v]) for v in VIEWS}
    assert training.group_name == "training"
    partitions = training.partitions_def
    assert isinstance(partitions, dg.DailyPartitionsDefinition)
    assert partitions.get_first_partition_key() == "2026-02-01"


def test_training_asset_is_a_graph_of_compile_skeleton_enrich(defs):
    assets_def = defs.resolve_assets_def(TRAINING)
    graph = assets_def.node_def
    assert isinstance(graph, dg.GraphDefinition)
    assert {n.name for n in graph.nodes} == {"compile_pipeline", "skeleton_stage", "enrich_stage"}
    upstream = graph.dependency_structure.input_to_upstream_outputs_for_node
    deps = {name: {d.node_name for ds in upstream(name).values() for d in ds}
            for name in ("skeleton_stage", "enrich_stage")}
    assert deps == {"skeleton_stage": {"compile_pipeline"},
                    "enrich_stage": {"compile_pipeline", "skeleton_stage"}}


def test_training_asset_carries_the_dag_the_contract_and_column_lineage(defs, project):
    config, _ = project.load()
    assets_def = defs.resolve_assets_def(TRAINING)
    meta = assets_def.specs_by_key[assets_def.key].metadata
    assert [op["name"] for op in meta["dag"].value["operators"]][-1] == "sink_enriched"
    names = [c if isinstance(c, str) else c["name"] for c in meta["output_contract"].value]
    assert names == [c.name for c in config.runtime.output_columns]
    lineage = meta["dagster/column_lineage"].deps_by_column
    assert set(lineage) == set(names)
    views = {d.asset_key for deps in lineage.values() for d in deps}
    assert views == set(assets_def.keys_by_input_name.values())    # every view feeds a column
    assert [(d.asset_key.path[-1], d.column_name) for d in lineage["views_1d"]] == [
        ("artwork_stats", "views_1d")]


def test_job_runs_in_process_over_the_daily_partitions_with_the_checks(defs):
    job = defs.resolve_job_def("dssm_ranking_daily")
    assert job.executor_def is dg.in_process_executor
    assert job.partitions_def.get_first_partition_key() == "2026-02-01"
    assert job.asset_layer.selected_asset_keys == {TRAINING}
    assert {c.name for c in job.asset_layer.asset_graph.asset_check_keys} == {
        "row_count_matches_impressions", "no_future_feature_values", "embedding_coverage"}


def test_schedule_tick_requests_the_previous_day(defs):
    schedule = defs.resolve_schedule_def("dssm_ranking_daily_schedule")
    assert schedule.cron_schedule == "0 0 * * *" and schedule.job_name == "dssm_ranking_daily"
    tick = dt.datetime(2026, 2, 5, 0, 0, tzinfo=dt.UTC)
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        data = schedule.evaluate_tick(context)
    assert [r.partition_key for r in data.run_requests] == ["2026-02-04"]


def test_resource_overrides_reach_the_engine_config(project, tmp_path):
    cfg = _cfg(project, output_root=str(tmp_path / "o"), sources_root=str(tmp_path / "s"),
               store_root=str(tmp_path / "st"), ray_num_cpus=2, ray_memory_gb=3,
               ray_object_store_gb=1, enriched_output_root=str(tmp_path / "o_enriched"))
    request = cfg.request("dssm_ranking")
    config = request.config
    assert config.runtime.output_root == tmp_path / "o"
    assert request.enriched_root == tmp_path / "o_enriched"
    assert config.base.sources_root == tmp_path / "s" and config.base.store_root == tmp_path / "st"
    envelope = request.envelope
    assert (envelope.num_cpus, envelope.memory_gb, envelope.object_store_gb) == (2, 3, 1)


def test_resource_defaults_keep_the_config_files(project):
    config, _ = _cfg(project).project()
    plain, _ = project.load()
    assert config == plain


def test_enriched_root_other_than_the_contract_is_refused(project, tmp_path):
    cfg = _cfg(project, output_root=str(tmp_path / "o"), enriched_output_root=str(tmp_path / "x"))
    with pytest.raises(DaedalusError, match="enriched_output_root.*_enriched"):
        cfg.project()


@pytest.mark.parametrize(("service", "date", "message"), [
    ("dssm_ranking", "2026-13-01", "is not a date"),
    ("dssm_ranking", "2026-01-31", "not a partition"),
    ("nope", "2026-02-01", "no training asset for service 'nope'"),
])
def test_materialize_day_refuses_bad_arguments_in_one_line(defs, service, date, message):
    with pytest.raises(DaedalusError, match=message) as err:
        materialize_day(service, date, defs=defs, instance=dg.DagsterInstance.ephemeral())
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_dg_check_defs_and_dagster_validate_pass(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dg_check = subprocess.run([str(REPO / ".venv/bin/dg"), "check", "defs"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert dg_check.returncode == 0, dg_check.stderr
    assert "All definitions loaded successfully" in dg_check.stdout + dg_check.stderr
    validate = subprocess.run(
        [str(REPO / ".venv/bin/dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0, validate.stderr
    assert "Validation successful for code location daedalus" in validate.stderr + validate.stdout
