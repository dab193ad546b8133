"""Registry validation: every bad reference is a one-line error naming file and field."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daedalus.core.errors import DaedalusError
from daedalus.core.registry import check_source_schema, output_columns, validate_service


def validate(project, check_sources=False):
    config, registry = project.load()
    service = validate_service(registry, "dssm_ranking", config, check_sources=check_sources)
    return output_columns(service, registry, config)


def test_service_produces_contract_columns_in_order(project):
    assert validate(project) == [
        "event_timestamp", "user_id", "artwork_id", "feed_session", "position", "dwell_ms",
        "label_click", "label_like", "qid", "country", "account_age_days", "follower_count",
        "is_premium", "views_1d", "likes_1d", "ctr_1d", "like_artwork_ids_7d", "like_count_7d",
        "image_embedding", "like_artwork_avg_embeds"]


SERVICE_CASES = [
    ("user_profile:country", "user_profil:country", "features: 'user_profil:country' names unknown view"),
    ("user_profile:country", "user_profile:colour", "view 'user_profile' has no feature 'colour'"),
    ("user_profile:country", "user_profile.country", "is not a `view:feature` reference"),
    ("aggregations: [like_artwork_ids_7d", "aggregations: [like_ids", "unknown aggregation 'like_ids'"),
    ("enrichments: [image_embedding", "enrichments: [image_emb", "unknown enrichment 'image_emb'"),
    ("label_click: is_click", "position: is_click", "output column 'position' collides"),
    ("view: feed_impressions", "view: impressions", "spine.view: unknown feature view 'impressions'"),
    ("qid_from: feed_session", "qid_from: session", "spine.qid_from: 'session' is not a column"),
    ("description: DSSM", "descripton: DSSM", "descripton: unknown key"),
]


@pytest.mark.parametrize(("old", "new", "expect"), SERVICE_CASES)
def test_bad_service_reference(project, old, new, expect):
    path = project.services / "dssm_ranking.yaml"
    project.edit(path, old, new)
    with pytest.raises(DaedalusError) as exc:
        validate(project)
    msg = str(exc.value)
    assert expect in msg and "\n" not in msg
    assert "dssm_ranking.yaml" in msg or "aggregations.yaml" in msg or "runtime.yaml" in msg


VIEW_CASES = [
    ("user_profile.yaml", "ttl: 3d", "ttl: three days", "user_profile.yaml: ttl"),
    ("user_profile.yaml", "ttl: 3d", "ttl: 0d", "user_profile.yaml: ttl"),
    ("user_profile.yaml", "dtype: int32", "dtype: int128", "features.1.dtype"),
    ("user_profile.yaml", "name: user_profile", "name: user_profiles", "differs from the file name"),
    ("user_profile.yaml", "{name: is_premium, dtype: bool}", "{name: country, dtype: bool}",
     "column 'country' is declared twice"),
    ("artwork_stats.yaml", "timestamp_field: feature_timestamp\n", "", "timestamp_field: required key"),
]


@pytest.mark.parametrize(("file", "old", "new", "expect"), VIEW_CASES)
def test_bad_view(project, file, old, new, expect):
    project.edit(project.views / file, old, new)
    with pytest.raises(DaedalusError) as exc:
        validate(project)
    assert expect in str(exc.value) and file in str(exc.value)


def test_duplicate_view_names_across_files(project):
    (project.views / "user_profile.yml").write_text((project.views / "user_profile.yaml").read_text())
    with pytest.raises(DaedalusError, match="is also defined in"):
        validate(project)


def test_unknown_service(project):
    config, registry = project.load()
    with pytest.raises(DaedalusError, match="unknown feature service 'ranking'.*dssm_ranking"):
        validate_service(registry, "ranking", config)


def test_output_columns_must_match_service(project):
    project.edit(project.runtime, "  - like_count_7d\n", "")
    with pytest.raises(DaedalusError, match="runtime.yaml: output_columns: .* produces 'like_count_7d'"):
        validate(project)
    project.edit(project.runtime, "  - qid\n", "  - qid\n  - like_count_7d\n  - bogus\n")
    with pytest.raises(DaedalusError, match="'bogus' is not produced"):
        validate(project)


def test_feature_refs_must_list_joined_views(project):
    project.edit(project.runtime, "feature_refs: [user_profile, artwork_stats, user_likes]",
                 "feature_refs: [user_profile, user_likes]")
    with pytest.raises(DaedalusError, match="feature_refs: view 'artwork_stats'"):
        validate(project)


def _write_profile(project, table):
    config, _ = project.load()
    folder = config.base.sources_root / "user_profile" / "dt=2026-02-01"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "part-0.parquet")


def _profile_table(**overrides):
    cols = {
        "feature_timestamp": pa.array([0], pa.timestamp("us", tz="UTC")),
        "user_id": pa.array([1], pa.int64()),
        "country": pa.array(["JP"], pa.string()),
        "account_age_days": pa.array([3], pa.int32()),
        "follower_count": pa.array([10], pa.int64()),
        "is_premium": pa.array([True], pa.bool_()),
    }
    cols.update(overrides)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def test_source_schema_matches(project):
    _write_profile(project, _profile_table())
    validate(project, check_sources=True)


@pytest.mark.parametrize(("override", "expect"), [
    ({"account_age_days": pa.array([3], pa.int64())},
     "account_age_days: source type int64 does not match int32"),
    ({"follower_count": None}, "follower_count: column declared in"),
    ({"feature_timestamp": pa.array([0], pa.timestamp("us"))}, "feature_timestamp: source type timestamp"),
])
def test_source_schema_mismatch_names_file_and_column(project, override, expect):
    _write_profile(project, _profile_table(**override))
    with pytest.raises(DaedalusError) as exc:
        validate(project, check_sources=True)
    assert expect in str(exc.value) and "part-0.parquet" in str(exc.value)


def test_corrupt_source_file(project):
    config, registry = project.load()
    folder = config.base.sources_root / "user_profile" / "dt=2026-02-01"
    folder.mkdir(parents=True)
    (folder / "part-0.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DaedalusError, match="not a readable parquet file"):
        check_source_schema(registry.view("user_profile"), config.base.sources_root)
