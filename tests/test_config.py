"""Config loading: layering, env overrides, and one-line errors for bad values."""

from __future__ import annotations

import datetime as dt

import pytest

from daedalus.cli import main
from daedalus.core.config import load_config, parse_duration
from daedalus.core.errors import DaedalusError


def run_cli(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_repo_config_loads_and_spans_demo_days(project):
    config, _ = project.load()
    assert config.runtime.days() == [dt.date(2026, 2, 1), dt.date(2026, 2, 2), dt.date(2026, 2, 3)]
    assert config.runtime.output_columns[-1].has_default
    assert config.runtime.output_columns[0].has_default is False
    assert config.aggregations.store("artwork_embeddings").embedding_dim == 1152


def test_env_overrides_beat_base_yaml(project, monkeypatch, tmp_path):
    monkeypatch.setenv("DAEDALUS_SOURCES_ROOT", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("DAEDALUS_STORE_ROOT", str(tmp_path / "stores"))
    config, _ = project.load()
    assert config.base.sources_root == tmp_path / "elsewhere"
    store = config.aggregations.store("artwork_embeddings")
    assert config.store_path(store) == tmp_path / "stores" / "artwork_embedding"


def test_durations():
    assert parse_duration("7d") == dt.timedelta(days=7)
    assert parse_duration("36h") == dt.timedelta(hours=36)
    for bad in ("0d", "7x", "d", "-1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


BAD_RUNTIME = [
    ("feed_start: 2026-02-01", "feed_start: [oops", "malformed YAML at line"),
    ("feed_start: 2026-02-01", "feed_start: 2026-13-01", "feed_start"),
    ("feed_end: 2026-02-03", "feed_end: 2026-01-01", "feed_end 2026-01-01 is before feed_start"),
    ("day_workers: 1", "day_workers: 0", "day_workers"),
    ("day_workers: 1", "day_workers: 1\nday_wrokers: 2", "day_wrokers: unknown key"),
    ("memory_limit: 750MB", "memory_limit: lots", "compute.duckdb_config.memory_limit"),
    ("threads: 2", "threads: -1", "compute.duckdb_config.threads"),
    ("engine: duckdb", "engine: spark", "compute.engine"),
    ("num_cpus: 16", "num_cpus: 0", "ray.num_cpus"),
    ("  - like_count_7d\n", "  - like_count_7d\n  - like_count_7d\n", "more than once"),
    ("{name: image_embedding, default: null}", "{name: image_embedding, dflt: null}", "unknown keys"),
    ("feed_start: 2026-02-01\n", "", "feed_start: required key is missing"),
]


@pytest.mark.parametrize(("old", "new", "expect"), BAD_RUNTIME)
def test_bad_runtime_value_is_one_line_naming_file_and_key(project, capsys, old, new, expect):
    project.edit(project.runtime, old, new)
    with pytest.raises(DaedalusError) as exc:
        project.load()
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(project.runtime) in msg
    assert expect in msg
    rc, _, err = run_cli(["lineage", "dssm_ranking", *project.cli_flags()], capsys)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err


BAD_AGGREGATIONS = [
    ("window: 7d                  # [t - 7d, t)", "window: 7x", "aggregation_specs.0.window"),
    ("function: count", "function: median", "aggregation_specs.1.function"),
    ("store: artwork_embeddings\n    input_column: artwork_id",
     "store: nope\n    input_column: artwork_id", "unknown store 'nope'"),
    ("max_items: 50", "max_items: 0", "aggregation_specs.0.max_items"),
    ("embedding_dtype: float16", "embedding_dtype: float64", "embedding_stores.0.embedding_dtype"),
]


@pytest.mark.parametrize(("old", "new", "expect"), BAD_AGGREGATIONS)
def test_bad_aggregation_value_is_one_line(project, old, new, expect):
    project.edit(project.aggregations, old, new)
    with pytest.raises(DaedalusError) as exc:
        project.load()
    msg = str(exc.value)
    assert str(project.aggregations) in msg and expect in msg and "\n" not in msg


def test_bad_base_values(project):
    project.edit(project.base, "embedding_dim: 1152", "embedding_dim: 1152\nsource_root: x")
    with pytest.raises(DaedalusError, match=r"base.yaml: source_root: unknown key"):
        project.load()
    project.edit(project.base, "source_root: x", "")
    project.edit(project.base, "embedding_dim: 1152", "embedding_dim: -3")
    with pytest.raises(DaedalusError, match=r"base.yaml: embedding_dim: .*greater than 0"):
        project.load()


def test_missing_config_file_names_it(project):
    with pytest.raises(DaedalusError, match="runtime config file not found"):
        load_config(project.base, project.root / "nope.yaml", project.aggregations)


def test_top_level_must_be_mapping(project):
    project.runtime.write_text("- a\n- b\n")
    with pytest.raises(DaedalusError, match="expected a mapping at the top level"):
        project.load()


def test_object_storage_settings_layer_over_the_aws_variables(project, monkeypatch, capsys):
    """base.yaml names the server; the caller's (the Dagster resource's) fields win over it;
    the `AWS_*` variables fill what neither sets; keys never come from a file, and come as a
    pair. The secret is in no repr."""
    from daedalus.engine.request import RequestOptions, build_request
    from daedalus.storage.s3 import S3Settings

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env-host:1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    text = project.base.read_text()
    project.base.write_text(text + "object_storage:\n  endpoint_url: http://file-host:2\n")
    options = dict(service="dssm_ranking", base_config_path=str(project.base),
                   runtime_config_path=str(project.runtime),
                   aggregation_config_path=str(project.aggregations),
                   feature_views_dir=str(project.views), feature_services_dir=str(project.services),
                   pipelines_dir=str(project.pipelines))
    settings = S3Settings.resolve(build_request(RequestOptions(**options)).config.base.object_storage)
    assert (settings.endpoint_url, settings.region, settings.access_key_id,
            settings.secret_access_key) == ("http://file-host:2", "eu-west-1", "env-key",
                                            "env-secret-value")
    request = build_request(RequestOptions(**options, s3_endpoint_url="http://resource-host:3",
                                           s3_access_key_id="rk",
                                           s3_secret_access_key="resource-secret-value"))
    settings = S3Settings.resolve(request.config.base.object_storage)
    assert (settings.endpoint_url, settings.access_key_id, settings.secret_access_key) == (
        "http://resource-host:3", "rk", "resource-secret-value")
    assert "resource-secret-value" not in repr(request) + repr(settings)
    with pytest.raises(DaedalusError, match=r"s3_secret_access_key: the object store's keys come"):
        build_request(RequestOptions(**options, s3_access_key_id="rk", origin="DaedalusConfig."))
    with pytest.raises(DaedalusError, match=r"s3_access_key_id: the object store's keys come"):
        build_request(RequestOptions(**options, s3_secret_access_key="s",
                                     origin="DaedalusConfig."))

    for key in ("access_key_id", "secret_access_key"):
        project.base.write_text(text + f"object_storage:\n  {key}: value-that-must-not-show\n")
        assert main(["status", "dssm_ranking", *project.cli_flags()]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"object_storage.{key}: credentials are not read" \
            " from config files" in err and "value-that-must-not-show" not in err


def test_a_path_shipped_to_a_worker_carries_endpoint_and_region_never_a_key(monkeypatch):
    """An `ObjectPath` pickled into a Ray task: the sender's endpoint and region, the receiving
    process's own keys, and one store (one set of clients) per settings there."""
    import pickle

    from daedalus.storage.objects import ObjectPath
    from daedalus.storage.s3 import S3Settings, object_store

    sent = object_store(S3Settings(endpoint_url="http://sender:9000", region="eu-north-1",
                                   access_key_id="sender-key-id",
                                   secret_access_key="sender-secret-value"))
    blob = pickle.dumps([ObjectPath("bucket", "a/b", sent), ObjectPath("bucket", "c", sent)])
    assert b"sender-secret-value" not in blob and b"sender-key-id" not in blob
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "worker-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://elsewhere:1")
    first, second = pickle.loads(blob)
    settings = first.store.settings
    assert (settings.endpoint_url, settings.region, settings.access_key_id,
            settings.secret_access_key) == ("http://sender:9000", "eu-north-1", "worker-key-id",
                                            "worker-secret-value")
    assert first.store is second.store is pickle.loads(blob)[0].store
