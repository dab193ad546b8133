"""Compile: the engine-tagged DAG, its YAML round trip, and hand-edited overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from daedalus.cli import main
from daedalus.core.compiler import override_path
from daedalus.core.operators import OPERATOR_KINDS, OperatorPipeline, load_pipeline_yaml
from daedalus.engine.pipeline import compiled_pipeline, resolve_pipeline


def compiled(project):
    config, registry = project.load()
    return compiled_pipeline(registry, "dssm_ranking", config)


def test_dag_uses_all_nine_kinds_with_declared_engines(project):
    pipeline = compiled(project)
    kinds = {op.kind for op in pipeline.operators}
    assert kinds == set(OPERATOR_KINDS)
    for op in pipeline.operators:
        assert op.engine in op.can_run_on()
    assert {op.kind for op in pipeline.enrichment} == {"RayUdfTransform", "Sink"}
    assert pipeline.op("pit_user_profile").ttl == "3d"
    assert pipeline.op("pit_artwork_stats").ttl == "2d"
    rolling = pipeline.op("rolling_user_likes")
    assert [a.name for a in rolling.aggregations] == ["like_artwork_ids_7d", "like_count_7d"]
    assert pipeline.op("scan_user_likes").lookback == "7d"


def test_every_sql_operator_carries_its_sql(project):
    for op in compiled(project).operators:
        if op.engine == "sql":
            assert op.sql and "SELECT" in op.sql.upper(), op.name


def test_yaml_round_trip_is_lossless(project):
    pipeline = compiled(project)
    again = OperatorPipeline.model_validate(yaml.safe_load(pipeline.to_yaml()))
    assert again == pipeline
    assert again.to_yaml() == pipeline.to_yaml()


def test_compile_cli_writes_generated_quietly_and_echoes_with_print(project, capsys, tmp_path):
    out_dir = tmp_path / "pipelines"
    flags = ["--output-dir", str(out_dir), *project.cli_flags()]
    assert main(["pipeline", "compile", "dssm_ranking", *flags]) == 0
    quiet = capsys.readouterr()
    written = out_dir / "dssm_ranking.generated.yaml"
    assert written.is_file() and quiet.out == ""
    assert f"wrote {written} (" in quiet.err and len(quiet.err.splitlines()) == 1
    assert main(["pipeline", "compile", "dssm_ranking", "--print", *flags]) == 0
    echoed = capsys.readouterr().out
    assert load_pipeline_yaml(written) == OperatorPipeline.model_validate(yaml.safe_load(echoed))


def test_generated_dags_are_ignored_by_git_and_overrides_are_not():
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    ignored = subprocess.run(["git", "check-ignore", "-q", "config/pipelines/x.generated.yaml"],
                             cwd=repo)
    override = subprocess.run(["git", "check-ignore", "-q", "config/pipelines/x.yaml"], cwd=repo)
    assert ignored.returncode == 0 and override.returncode == 1


def test_compile_no_write_writes_nothing(project, capsys, tmp_path):
    out_dir = tmp_path / "pipelines"
    assert main(["pipeline", "compile", "dssm_ranking", "--output-dir", str(out_dir), "--no-write",
                 *project.cli_flags()]) == 0
    assert "kind: RollingAggregate" in capsys.readouterr().out
    assert not out_dir.exists()


def test_compile_into_a_file_instead_of_a_folder_is_one_line(project, capsys, tmp_path):
    not_a_folder = tmp_path / "README.md"
    not_a_folder.write_text("hello")
    assert main(["pipeline", "compile", "dssm_ranking", "--output-dir", str(not_a_folder),
                 *project.cli_flags()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output-dir:") and "Traceback" not in err
    assert len(err.splitlines()) == 1 and not_a_folder.read_text() == "hello"


def test_hand_edited_override_takes_precedence(project):
    config, registry = project.load()
    pipeline = compiled_pipeline(registry, "dssm_ranking", config)
    text = pipeline.to_yaml().replace("ttl: 3d", "ttl: 1d")
    override_path("dssm_ranking", project.pipelines).write_text(text)
    resolved, source = resolve_pipeline(registry, "dssm_ranking", config, project.pipelines)
    assert source == override_path("dssm_ranking", project.pipelines)
    assert resolved.op("pit_user_profile").ttl == "1d"


def test_engine_outside_can_run_on_is_refused(project, capsys):
    config, registry = project.load()
    text = compiled_pipeline(registry, "dssm_ranking", config).to_yaml()
    marker = "engine: pythonic\n  description: Ray Data actors"
    assert marker in text
    override_path("dssm_ranking", project.pipelines).write_text(
        text.replace(marker, "engine: sql\n  description: Ray Data actors"))
    rc = main(["pipeline", "train", "dssm_ranking", "--pipelines-dir", str(project.pipelines),
               "--target-date", "2026-02-01", *project.cli_flags()])
    err = capsys.readouterr().err
    assert rc == 2
    assert "dssm_ranking.yaml: operators[" in err and "enrich_embeddings" in err
    assert "RayUdfTransform cannot run on 'sql'" in err and "pythonic" in err
    assert err.count("\n") == 1


def test_override_with_dangling_input_is_refused(project, capsys):
    config, registry = project.load()
    text = compiled_pipeline(registry, "dssm_ranking", config).to_yaml()
    override_path("dssm_ranking", project.pipelines).write_text(
        text.replace("- filter_spine_day\n", "- filter_spine_dya\n", 1))
    rc = main(["pipeline", "train", "dssm_ranking", "--pipelines-dir", str(project.pipelines),
               *project.cli_flags()])
    assert rc == 2
    assert "'filter_spine_dya' is not an earlier operator" in capsys.readouterr().err


def test_lineage_service_and_view(project, capsys):
    assert main(["lineage", "dssm_ranking", "--format", "json", *project.cli_flags()]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert [u["view"] for u in info["upstream_views"]] == [
        "feed_impressions", "user_profile", "artwork_stats", "user_likes"]
    assert info["upstream_views"][0]["role"] == "spine"
    assert all(u["source"] == u["view"] for u in info["upstream_views"])
    assert main(["lineage", "user_likes", "--format", "json", *project.cli_flags()]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view == {"name": "user_likes", "type": "feature_view", "sources": ["user_likes"],
                    "downstream_services": ["dssm_ranking"]}
    assert main(["lineage", "user_likes", *project.cli_flags()]) == 0
    assert "downstream: dssm_ranking" in capsys.readouterr().out
    assert main(["lineage", "nothing", *project.cli_flags()]) == 2


def test_reserved_words_match_the_locked_duckdb():
    """The SQL text quotes exactly DuckDB's reserved keywords; a DuckDB upgrade that adds one fails here."""
    import duckdb

    from daedalus.skeleton.sql import RESERVED_WORDS, ident

    rows = duckdb.execute(
        "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'"
    ).fetchall()
    assert RESERVED_WORDS == frozenset(r[0] for r in rows)
    assert ident("select") == '"select"' and ident("user_id") == "user_id"


def test_column_lineage_follows_the_dag_to_feature_view_fields(project):
    from daedalus.lineage import column_lineage

    config, registry = project.load()
    pipeline = compiled_pipeline(registry, "dssm_ranking", config)
    lineage = column_lineage(pipeline)
    assert list(lineage) == [c.name for c in config.runtime.output_columns]
    assert lineage["label_click"] == [("feed_impressions", "is_click")]
    assert lineage["qid"] == [("feed_impressions", "feed_session")]
    assert lineage["ctr_1d"] == [("artwork_stats", "ctr_1d")]
    assert lineage["like_count_7d"] == [("user_likes", "user_id"), ("user_likes", "event_timestamp")]
    assert lineage["like_artwork_avg_embeds"] == lineage["like_artwork_ids_7d"]
    assert lineage["image_embedding"] == [("feed_impressions", "artwork_id")]
    assert all(lineage.values())


def test_column_types_come_from_the_operators_and_view_dtypes(project):
    """The definition-time schema; test_dagster_cli_record checks it equals a written day's."""
    from daedalus.core.operators import ProjectedColumn
    from daedalus.lineage import column_types

    config, registry = project.load()
    pipeline = compiled_pipeline(registry, "dssm_ranking", config)
    types = column_types(pipeline, registry)
    assert list(types) == [c.name for c in config.runtime.output_columns]
    assert types["event_timestamp"] == "timestamp[us, tz=UTC]" and types["label_click"] == "bool"
    assert types["account_age_days"] == "int32" and types["ctr_1d"] == "double"
    assert types["qid"] == types["like_count_7d"] == "int64"
    assert types["like_artwork_ids_7d"] == "list<element: int64>"
    assert types["image_embedding"] == "list<element: halffloat>"
    spine = pipeline.op("project_spine")
    edited = spine.model_copy(update={"columns": tuple(
        ProjectedColumn(name=c.name, expr="dwell_ms * 2") if c.name == "dwell_ms" else c
        for c in spine.columns)})
    pipeline = pipeline.model_copy(update={"operators": tuple(
        edited if op.name == "project_spine" else op for op in pipeline.operators)})
    assert column_types(pipeline, registry)["dwell_ms"] is None  # an expression: not known
