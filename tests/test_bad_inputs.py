"""The bad-input catalogue, end to end: `daeda pipeline train` (or `daeda lineage`, for the cases
that say so) on a broken input explains the mistake in one line and writes nothing.

Each case breaks one thing in a throwaway workspace (a copy of the small demo sources and of
the project's config and registry), runs the CLI in-process and asserts: a non-zero exit; on
stderr, besides progress lines, exactly one line, starting `error: `, naming the file, field
or date and the fix; no traceback; no day folder (skeleton or enriched) and, unless the case
says the store was legitimately built before the failure, no store. docs/bad-inputs.md lists
every case with the test that exercises it.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from reliability import D1, D2, REPO, Workspace, demo_sources, workspace

from daedalus.cli import main
from daedalus.core.compiler import override_path
from daedalus.core.config import load_config
from daedalus.core.registry import load_registry
from daedalus.engine.pipeline import compiled_pipeline
from daedalus.layout.days import LOCK_DIR

TS = pa.timestamp("us", tz="UTC")
DIM = 1152


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return demo_sources(tmp_path_factory.mktemp("demo") / "sources")


@pytest.fixture
def ws(tmp_path, demo, monkeypatch) -> Iterator[Workspace]:
    for name in ("DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    yield workspace(tmp_path / "ws", demo, copy_sources=True)
    while HELD_LOCKS:
        os.close(HELD_LOCKS.pop())


HELD_LOCKS: list[int] = []  # day locks a case holds "for another run"; closed after the case


# -- ways to break things -----------------------------------------------------------------------


def part(ws: Workspace, source: str, day: str) -> Path:
    return ws.sources / source / f"dt={day}" / "part-0.parquet"


def rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def set_column(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def null_first(table: pa.Table, name: str) -> pa.Table:
    values = table[name].combine_chunks()
    mask = np.zeros(len(values), bool)
    mask[0] = True
    return set_column(table, name, pc.if_else(pa.array(mask), pa.scalar(None, values.type), values))


def corrupt_pages(path: Path) -> None:
    """Overwrite bytes inside a column chunk; the footer still reads."""
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(0).column(2).data_page_offset + 20
    data[start:start + 180] = b"\xab" * 180
    path.write_bytes(bytes(data))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_vectors(ws: Workspace, day: str, column: pa.Array, ids: list | None = None) -> Path:
    folder = ws.sources / "siglip2_vectors" / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    ids = ids if ids is not None else list(range(9001, 9001 + len(column)))
    path = folder / "part-0.parquet"
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "image_embedding": column}), path)
    return path


@dataclass
class Case:
    """`setup(ws, monkeypatch)` breaks one thing and returns extra CLI args; `expect` are
    substrings of the error line (the file, field or date it must name)."""

    name: str
    setup: Callable
    expect: tuple[str, ...]
    store_may_exist: bool = False
    argv: Callable | None = field(default=None)
    absent: tuple[str, ...] = ()  # substrings the error line must not hold (secrets)
    check: Callable | None = None  # `check(ws)`: more that must not have been written


def _runtime(ws, old, new):
    ws.edit("config/training/runtime.yaml", old, new)
    return []


def _edit(relative: str, old: str, new: str) -> Callable:
    """A setup that replaces `old` by `new` in one project file."""
    return lambda ws, mp: ws.edit(relative, old, new) or []


def _write(relative: str, text: str) -> Callable:
    return lambda ws, mp: (ws.project / relative).write_text(text) and []


def _lineage(name: str) -> Callable:
    return lambda ws: ["lineage", name, *ws.flags()]


def _hand_edited_dag(old: str, new: str, count: int = -1) -> Callable:
    """A setup that compiles the service and saves it, with `old` replaced by `new`, as the
    hand-edited DAG `config/pipelines/dssm_ranking.yaml`."""

    def setup(ws, mp):
        p = ws.project
        config = load_config(p / BASE, p / RUNTIME, p / AGGREGATIONS)
        registry = load_registry(p / "feature_views", p / "feature_services")
        text = compiled_pipeline(registry, "dssm_ranking", config).to_yaml()
        assert old in text, old
        override_path("dssm_ranking", p / "config/pipelines").write_text(
            text.replace(old, new, count))
        return []

    return setup


def _hold_day_lock(ws, mp) -> list[str]:
    """Another run holds the day's lock (a second open file description, as another process
    would have) and has written its pid there."""
    lock_dir = ws.out / LOCK_DIR
    lock_dir.mkdir(parents=True)
    fd = os.open(lock_dir / f"dt={D1}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, b"pid 4242", 0)
    HELD_LOCKS.append(fd)
    return ["--skeleton-only", "--target-date", str(D1)]


PWNED = "pwned"


def _python_tag(relative: str, key: str) -> Callable:
    """A setup that sets `key` in one YAML file to a `!!python/...` tag that would touch a file."""

    def setup(ws, mp):
        payload = f'!!python/object/apply:os.system ["touch {ws.root / PWNED}"]'
        path = ws.project / relative
        text = path.read_text()
        if re.search(rf"^{key}:.", text, flags=re.M):
            path.write_text(re.sub(rf"^{key}:.*$", f"{key}: {payload}", text, count=1, flags=re.M))
        else:  # a key whose value is a block: add the tagged key in front of the others
            path.write_text(f"{key}_x: {payload}\n{text}")
        return ["--skeleton-only"]

    return setup


def _not_pwned(ws) -> None:
    assert not (ws.root / PWNED).exists()


SECRET = "hunter2-9c1e"


def _demo_data_over_foreign_sources(ws, mp) -> list[str]:
    (ws.root / "mine" / "feed_impressions").mkdir(parents=True)
    (ws.root / "mine" / "feed_impressions" / "notes.txt").write_text("mine")
    return []


def _foreign_sources_untouched(ws) -> None:
    files = sorted(str(p.relative_to(ws.root / "mine")) for p in (ws.root / "mine").rglob("*"))
    assert files == ["feed_impressions", "feed_impressions/notes.txt"], files


def _materialize_day(service: str, date: str) -> Callable:
    return lambda ws: ["materialize-day", service, date]


def _dagster_home(ws, mp) -> list[str]:
    mp.setenv("DAGSTER_HOME", str(ws.root / "dagster_home"))
    mp.chdir(REPO)  # `daeda materialize-day` loads the project's definitions from the root
    return []


def _no_dagster_home(ws) -> None:
    assert not (ws.root / "dagster_home").exists()


AGGREGATIONS = "config/training/aggregations.yaml"
BASE = "config/base.yaml"
RUNTIME = "config/training/runtime.yaml"
SERVICE = "feature_services/dssm_ranking.yaml"
PROFILE = "feature_views/user_profile.yaml"


CASES = [
    # -- the command line ----------------------------------------------------------------------
    Case("unparseable_target_date", lambda ws, mp: ["--target-date", "2026-02-30"],
         ("--target-date", "'2026-02-30' is not a date", "YYYY-MM-DD")),
    Case("target_date_not_iso", lambda ws, mp: ["--target-date", "02/01/2026"],
         ("--target-date", "'02/01/2026'")),
    Case("day_workers_zero", lambda ws, mp: ["--day-workers", "0"], ("--day-workers: 0",)),
    Case("day_workers_negative", lambda ws, mp: ["--day-workers", "-3"], ("--day-workers: -3",)),
    Case("day_workers_not_a_number", lambda ws, mp: ["--day-workers", "two"],
         ("--day-workers", "invalid int value: 'two'")),
    Case("ray_num_cpus_zero", lambda ws, mp: ["--ray-num-cpus", "0"], ("--ray-num-cpus: 0",)),
    Case("ray_num_cpus_negative", lambda ws, mp: ["--ray-num-cpus", "-1"], ("--ray-num-cpus: -1",)),
    Case("num_workers_zero", lambda ws, mp: ["--num-workers", "0"], ("--num-workers: 0",)),
    Case("skeleton_only_and_enrich_only", lambda ws, mp: ["--skeleton-only", "--enrich-only"],
         ("--enrich-only", "not allowed with", "--skeleton-only")),
    Case("unknown_service", None, ("unknown feature service 'ranking'", "dssm_ranking"),
         argv=lambda ws: ["pipeline", "train", "ranking", *ws.flags()]),
    Case("unknown_ray_address", lambda ws, mp: ["--ray-address", f"127.0.0.1:{free_port()}"],
         ("ray address: nothing answers at 127.0.0.1:", "ray start --head")),
    Case("unknown_ray_address_from_env",
         lambda ws, mp: mp.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}") or [],
         ("ray address: nothing answers at 127.0.0.1:", "RAY_ADDRESS")),
    Case("ray_address_not_host_port", lambda ws, mp: ["--ray-address", "my-cluster"],
         ("ray address: 'my-cluster' is not host:port",)),
    Case("output_root_not_writable",
         lambda ws, mp: (ws.root / "a-file").write_text("x") and ["--output-root",
                                                                  str(ws.root / "a-file" / "out")],
         ("a-file/out: output root is not writable", "--output-root")),
    Case("store_on_unsupported_filesystem",
         lambda ws, mp: mp.setenv("DAEDALUS_STORE_ROOT", "s3://bucket/stores") or [],
         ("s3:/bucket/stores/artwork_embedding", "the store must be on local disk",
          "DAEDALUS_STORE_ROOT")),
    Case("store_on_a_network_filesystem",
         lambda ws, mp: mp.setattr("daedalus.store.build.filesystem_type",
                                   lambda path, mounts=None: "nfs4") or [],
         ("store/artwork_embedding: embedding store is on a nfs4 network filesystem",
          "DAEDALUS_STORE_ROOT")),
    Case("unknown_store_name", None, ("no store named 'nope'",),
         argv=lambda ws: ["store", "build", "--name", "nope", *ws.flags()]),
    Case("credentials_in_a_ray_address",
         lambda ws, mp: ["--enrich-only", "--ray-address",
                         f"ray://alice:{SECRET}@127.0.0.1:{free_port()}"],
         ("ray address: nothing answers at ray://***@127.0.0.1:",), absent=(SECRET, "alice")),
    Case("a_day_another_run_is_writing", _hold_day_lock,
         (f"out/dt={D1}: day {D1} is being written by pid 4242",
          "wait for that run to finish")),
    Case("lineage_of_an_unknown_name", None, ("nothing",), argv=_lineage("nothing")),
    Case("demo_data_over_sources_it_did_not_write", _demo_data_over_foreign_sources,
         ("mine",), argv=lambda ws: ["demo-data", "--root", str(ws.root / "mine")],
         check=_foreign_sources_untouched),
    Case("materialize_day_date_unparseable", _dagster_home,
         ("materialize-day: DATE: '2026-13-01' is not a date", "YYYY-MM-DD"),
         argv=_materialize_day("dssm_ranking", "2026-13-01"), check=_no_dagster_home),
    Case("materialize_day_outside_the_partitions", _dagster_home,
         ("materialize-day: DATE 2026-01-31 is not a partition",),
         argv=_materialize_day("dssm_ranking", "2026-01-31"), check=_no_dagster_home),
    Case("materialize_day_unknown_service", _dagster_home,
         ("materialize-day: no training asset for service 'nope'", "dssm_ranking"),
         argv=_materialize_day("nope", "2026-02-01"), check=_no_dagster_home),
    # -- the YAML ------------------------------------------------------------------------------
    Case("malformed_view_yaml",
         lambda ws, mp: (ws.project / "feature_views/user_profile.yaml").write_text(
             "name: user_profile\nentities: [oops\n") and [],
         ("user_profile.yaml", "malformed YAML at line")),
    Case("malformed_hand_edited_dag",
         lambda ws, mp: (ws.project / "config/pipelines/dssm_ranking.yaml").write_text(
             "operators:\n  - {name: a\n") and [],
         ("config/pipelines/dssm_ranking.yaml", "malformed YAML")),
    Case("feed_end_before_feed_start",
         lambda ws, mp: _runtime(ws, f"feed_end: {D2}", "feed_end: 2026-01-01"),
         ("runtime.yaml", "feed_end 2026-01-01 is before feed_start 2026-02-01")),
    Case("enrich_batch_rows_overflow",
         lambda ws, mp: _runtime(ws, "enrich_batch_rows: 50000", "enrich_batch_rows: 5000000"),
         ("runtime.yaml: enrich_batch_rows", "at most")),
    Case("unknown_feature_in_service",
         lambda ws, mp: ws.edit("feature_services/dssm_ranking.yaml", "user_profile:country",
                                "user_profile:colour") or [],
         ("dssm_ranking.yaml", "no feature 'colour'")),
    # -- config files (catalogue rows 21-23) ---------------------------------------------------
    Case("aggregation_window_unparseable",
         _edit(AGGREGATIONS, "window: 7d                  # [t - 7d, t)", "window: 7x"),
         ("aggregations.yaml: aggregation_specs.0.window", "'7x'")),
    Case("aggregation_function_unknown", _edit(AGGREGATIONS, "function: count", "function: median"),
         ("aggregations.yaml: aggregation_specs.1.function", "'median'")),
    Case("enrichment_store_unknown",
         _edit(AGGREGATIONS, "store: artwork_embeddings\n    input_column: artwork_id",
               "store: nope\n    input_column: artwork_id"),
         ("aggregations.yaml", "unknown store 'nope'")),
    Case("aggregation_max_items_zero", _edit(AGGREGATIONS, "max_items: 50", "max_items: 0"),
         ("aggregations.yaml: aggregation_specs.0.max_items",)),
    Case("embedding_dtype_unsupported",
         _edit(AGGREGATIONS, "embedding_dtype: float16", "embedding_dtype: float64"),
         ("aggregations.yaml: embedding_stores.0.embedding_dtype", "'float64'")),
    Case("base_unknown_key", _edit(BASE, "embedding_dim: 1152", "embedding_dim: 1152\nsource_root: x"),
         ("base.yaml: source_root: unknown key", "correct its spelling")),
    Case("base_embedding_dim_negative", _edit(BASE, "embedding_dim: 1152", "embedding_dim: -3"),
         ("base.yaml: embedding_dim", "greater than 0")),
    Case("runtime_config_missing",
         lambda ws, mp: (ws.project / RUNTIME).unlink() or [],
         ("runtime.yaml: runtime config file not found", "pass the right path")),
    Case("aggregation_config_missing",
         lambda ws, mp: (ws.project / AGGREGATIONS).unlink() or [],
         ("aggregations.yaml: aggregation config file not found",)),
    Case("runtime_config_not_a_mapping", _write(RUNTIME, "- a\n- b\n"),
         ("runtime.yaml", "expected a mapping at the top level, got list")),
    Case("base_config_not_a_mapping", _write(BASE, "just text\n"),
         ("base.yaml", "expected a mapping at the top level, got str")),
    # -- runtime.yaml (catalogue row 19; row 20 is feed_end_before_feed_start) ----------------
    Case("runtime_malformed_yaml", _edit(RUNTIME, "feed_start: 2026-02-01", "feed_start: [oops"),
         ("runtime.yaml", "malformed YAML at line")),
    Case("runtime_feed_start_not_a_date",
         _edit(RUNTIME, "feed_start: 2026-02-01", "feed_start: 2026-13-01"),
         ("runtime.yaml", "feed_start")),
    Case("runtime_day_workers_zero", _edit(RUNTIME, "day_workers: 1", "day_workers: 0"),
         ("runtime.yaml", "day_workers")),
    Case("runtime_unknown_key", _edit(RUNTIME, "day_workers: 1", "day_workers: 1\nday_wrokers: 2"),
         ("runtime.yaml", "day_wrokers: unknown key")),
    Case("runtime_memory_limit_unparseable", _edit(RUNTIME, "memory_limit: 750MB", "memory_limit: lots"),
         ("runtime.yaml", "compute.duckdb_config.memory_limit")),
    Case("runtime_threads_negative", _edit(RUNTIME, "threads: 2", "threads: -1"),
         ("runtime.yaml", "compute.duckdb_config.threads")),
    Case("runtime_engine_unknown", _edit(RUNTIME, "engine: duckdb", "engine: spark"),
         ("runtime.yaml", "compute.engine")),
    Case("runtime_ray_num_cpus_zero", _edit(RUNTIME, "num_cpus: 16", "num_cpus: 0"),
         ("runtime.yaml", "ray.num_cpus")),
    Case("runtime_output_column_twice",
         _edit(RUNTIME, "  - like_count_7d\n", "  - like_count_7d\n  - like_count_7d\n"),
         ("runtime.yaml", "more than once")),
    Case("runtime_output_column_unknown_key",
         _edit(RUNTIME, "{name: image_embedding, default: null}",
               "{name: image_embedding, dflt: null}"),
         ("runtime.yaml", "unknown keys")),
    Case("runtime_feed_start_missing", _edit(RUNTIME, "feed_start: 2026-02-01\n", ""),
         ("runtime.yaml", "feed_start: required key is missing")),
    # -- a hand-edited DAG (catalogue rows 30-32) ----------------------------------------------
    Case("dag_engine_outside_can_run_on",
         _hand_edited_dag("engine: pythonic\n  description: Ray Data actors",
                          "engine: sql\n  description: Ray Data actors"),
         ("config/pipelines/dssm_ranking.yaml: operators[", "enrich_embeddings",
          "RayUdfTransform cannot run on 'sql'", "pythonic")),
    Case("dag_dangling_input",
         _hand_edited_dag("- filter_spine_day\n", "- filter_spine_dya\n", 1),
         ("config/pipelines/dssm_ranking.yaml", "'filter_spine_dya' is not an earlier operator")),
    Case("dag_lookback_shorter_than_ttl", _hand_edited_dag("lookback: 3d", "lookback: 1d"),
         ("scan_user_profile.lookback: 1d is shorter than the 3d",)),
    Case("dag_point_in_time_join_without_ttl", _hand_edited_dag("  ttl: 2d\n", "  ttl: null\n"),
         ("operators.pit_artwork_stats.ttl: a point-in-time join needs a ttl",)),
    # -- a `!!python/...` tag in any YAML (catalogue row 55): refused, never run ---------------
    Case("python_tag_in_runtime_yaml", _python_tag(RUNTIME, "feed_start"),
         ("runtime.yaml", "python/object/apply"), check=_not_pwned),
    Case("python_tag_in_base_yaml", _python_tag(BASE, "embedding_dim"),
         ("base.yaml", "python/object/apply"), check=_not_pwned),
    Case("python_tag_in_aggregations_yaml", _python_tag(AGGREGATIONS, "aggregation_specs"),
         ("aggregations.yaml", "python/object/apply"), check=_not_pwned),
    Case("python_tag_in_a_view", _python_tag("feature_views/user_likes.yaml", "name"),
         ("user_likes.yaml", "python/object/apply"), check=_not_pwned),
    Case("python_tag_in_a_service", _python_tag(SERVICE, "description"),
         ("dssm_ranking.yaml", "python/object/apply"), check=_not_pwned),
    Case("python_tag_in_a_hand_edited_dag",
         lambda ws, mp: (ws.project / "config/pipelines/dssm_ranking.yaml").write_text(
             f'service: !!python/object/apply:os.system ["touch {ws.root / PWNED}"]\n') and [],
         ("config/pipelines/dssm_ranking.yaml", "python/object/apply"), check=_not_pwned),
    # -- the registry (catalogue rows 26-29) ---------------------------------------------------
    Case("unknown_view_in_service",
         _edit(SERVICE, "user_profile:country", "user_profil:country"),
         ("dssm_ranking.yaml: features: 'user_profil:country' names unknown view 'user_profil'",
          "user_profile")),
    Case("feature_not_a_view_feature_reference",
         _edit(SERVICE, "user_profile:country", "user_profile.country"),
         ("dssm_ranking.yaml: features: 'user_profile.country' is not a `view:feature`",)),
    Case("unknown_aggregation_in_service",
         _edit(SERVICE, "aggregations: [like_artwork_ids_7d", "aggregations: [like_ids"),
         ("dssm_ranking.yaml: aggregations: unknown aggregation 'like_ids'",
          "like_artwork_ids_7d")),
    Case("unknown_enrichment_in_service",
         _edit(SERVICE, "enrichments: [image_embedding", "enrichments: [image_emb"),
         ("dssm_ranking.yaml: enrichments: unknown enrichment 'image_emb'",)),
    Case("output_column_collision_in_service",
         _edit(SERVICE, "label_click: is_click", "position: is_click"),
         ("dssm_ranking.yaml: spine.labels: output column 'position' collides",)),
    Case("unknown_spine_view",
         _edit(SERVICE, "view: feed_impressions", "view: impressions"),
         ("dssm_ranking.yaml: spine.view: unknown feature view 'impressions'",)),
    Case("qid_from_not_a_spine_column",
         _edit(SERVICE, "qid_from: feed_session", "qid_from: session"),
         ("dssm_ranking.yaml: spine.qid_from: 'session' is not a column",)),
    Case("unknown_key_in_service", _edit(SERVICE, "description: DSSM", "descripton: DSSM"),
         ("dssm_ranking.yaml: descripton: unknown key",)),
    Case("view_ttl_unparseable", _edit(PROFILE, "ttl: 3d", "ttl: three days"),
         ("user_profile.yaml: ttl",)),
    Case("view_ttl_zero", _edit(PROFILE, "ttl: 3d", "ttl: 0d"), ("user_profile.yaml: ttl",)),
    Case("view_dtype_unknown", _edit(PROFILE, "dtype: int32", "dtype: int128"),
         ("user_profile.yaml: features.1.dtype",)),
    Case("view_name_differs_from_file", _edit(PROFILE, "name: user_profile", "name: user_profiles"),
         ("user_profile.yaml: name: 'user_profiles' differs from the file name",)),
    Case("view_column_declared_twice",
         _edit(PROFILE, "{name: is_premium, dtype: bool}", "{name: country, dtype: bool}"),
         ("user_profile.yaml: features: column 'country' is declared twice",)),
    Case("view_timestamp_field_missing",
         _edit("feature_views/artwork_stats.yaml", "timestamp_field: feature_timestamp\n", ""),
         ("artwork_stats.yaml: timestamp_field: required key is missing",)),
    Case("two_views_with_one_name",
         lambda ws, mp: (ws.project / "feature_views/user_profile.yml").write_text(
             (ws.project / PROFILE).read_text()) and [],
         ("user_profile.yml: name:", "is also defined in", "user_profile.yaml")),
    Case("output_columns_missing_a_service_column", _edit(RUNTIME, "  - like_count_7d\n", ""),
         ("runtime.yaml: output_columns: service 'dssm_ranking' produces 'like_count_7d'",)),
    Case("output_columns_with_an_unproduced_column",
         _edit(RUNTIME, "  - qid\n", "  - qid\n  - bogus\n"),
         ("runtime.yaml: output_columns: 'bogus' is not produced",)),
    Case("feature_refs_missing_a_joined_view",
         _edit(RUNTIME, "feature_refs: [user_profile, artwork_stats, user_likes]",
               "feature_refs: [user_profile, user_likes]"),
         ("runtime.yaml: feature_refs: view 'artwork_stats'",)),
    # -- `daeda lineage` on a broken service ---------------------------------------------------
    Case("lineage_of_a_service_with_an_unknown_aggregation",
         _edit(SERVICE, "aggregations: [like_artwork_ids_7d", "aggregations: [like_ids"),
         ("dssm_ranking.yaml: aggregations: unknown aggregation 'like_ids'",
          "like_artwork_ids_7d", "aggregations.yaml"),
         argv=_lineage("dssm_ranking")),
    Case("lineage_of_a_view_beside_a_service_with_an_unknown_aggregation",
         _edit(SERVICE, "aggregations: [like_artwork_ids_7d", "aggregations: [like_ids"),
         ("dssm_ranking.yaml: aggregations: unknown aggregation 'like_ids'",),
         argv=_lineage("user_likes")),
    Case("lineage_of_a_service_with_an_unknown_view",
         _edit(SERVICE, "user_profile:country", "user_profil:country"),
         ("dssm_ranking.yaml: features: 'user_profil:country' names unknown view",),
         argv=_lineage("dssm_ranking")),
    # -- the sources ---------------------------------------------------------------------------
    Case("source_column_missing",
         lambda ws, mp: rewrite(part(ws, "feed_impressions", "2026-02-01"),
                                lambda t: t.drop_columns(["is_click"])) or [],
         ("feed_impressions/dt=2026-02-01/part-0.parquet: is_click: column declared in",)),
    Case("type_mismatch_in_an_older_partition",
         lambda ws, mp: rewrite(part(ws, "user_likes", "2026-01-27"),
                                lambda t: t.set_column(2, "artwork_id", t["artwork_id"].cast(
                                    pa.int32()))) or [],
         ("user_likes/dt=2026-01-27/part-0.parquet: artwork_id: source type int32 does not"
          " match int64",)),
    Case("timestamps_without_time_zone",
         lambda ws, mp: rewrite(part(ws, "feed_impressions", "2026-02-02"),
                                lambda t: set_column(t, "event_timestamp",
                                                     t["event_timestamp"].cast(
                                                         pa.timestamp("us")))) or [],
         ("dt=2026-02-02/part-0.parquet: event_timestamp: source type timestamp[us] does not",)),
    Case("timestamps_in_another_time_zone",
         lambda ws, mp: rewrite(part(ws, "user_profile", "2026-01-30"),
                                lambda t: set_column(t, "feature_timestamp",
                                                     t["feature_timestamp"].cast(
                                                         pa.timestamp("us", tz="Asia/Tokyo"))))
         or [],
         ("user_profile/dt=2026-01-30/part-0.parquet: feature_timestamp", "Asia/Tokyo")),
    Case("null_user_id_in_the_spine",
         lambda ws, mp: rewrite(part(ws, "feed_impressions", "2026-02-02"),
                                lambda t: null_first(t, "user_id")) or [],
         ("feed_impressions/dt=2026-02-02/part-0.parquet: user_id: 1 null value(s)",)),
    Case("null_artwork_id_in_artwork_stats",
         lambda ws, mp: rewrite(part(ws, "artwork_stats", "2026-01-31"),
                                lambda t: null_first(t, "artwork_id")) or [],
         ("artwork_stats/dt=2026-01-31/part-0.parquet: artwork_id: 1 null value(s)",)),
    Case("null_timestamp_in_user_likes",
         lambda ws, mp: rewrite(part(ws, "user_likes", "2026-01-30"),
                                lambda t: null_first(t, "event_timestamp")) or [],
         ("user_likes/dt=2026-01-30/part-0.parquet: event_timestamp: 1 null value(s)",)),
    Case("corrupt_parquet_file",
         lambda ws, mp: part(ws, "user_profile", "2026-01-29").write_bytes(b"PAR1 not really")
         and [],
         ("user_profile/dt=2026-01-29/part-0.parquet: not a readable parquet file",)),
    Case("truncated_parquet_file",
         lambda ws, mp: (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))(
             part(ws, "feed_impressions", "2026-02-01")) and [],
         ("feed_impressions/dt=2026-02-01/part-0.parquet: not a readable parquet file",)),
    Case("corrupt_data_pages_behind_a_good_footer",
         lambda ws, mp: corrupt_pages(part(ws, "user_likes", "2026-01-30")) or ["--skeleton-only"],
         ("user_likes/dt=2026-01-30/part-0.parquet: unreadable parquet data",)),
    Case("empty_source_folder",
         lambda ws, mp: [p.unlink() for p in (ws.sources / "artwork_stats").glob("*/*.parquet")]
         and [],
         ("artwork_stats: no parquet files in any dt= partition of source 'artwork_stats'",
          "sources_root")),
    Case("sources_root_elsewhere",
         lambda ws, mp: mp.setenv("DAEDALUS_SOURCES_ROOT", str(ws.root / "nowhere")) or [],
         ("nowhere/feed_impressions: no parquet files", "DAEDALUS_SOURCES_ROOT")),
    Case("corrupt_qid_map",
         lambda ws, mp: (ws.out.mkdir(parents=True) or (ws.out / "qid_map.parquet").write_bytes(
             b"garbage")) and ["--skeleton-only"],
         ("qid_map.parquet: not a readable qid map", "delete it")),
    # -- the embedding source ------------------------------------------------------------------
    Case("embedding_dimension_wrong",
         lambda ws, mp: write_vectors(ws, "2026-01-31", pa.FixedSizeListArray.from_arrays(
             pa.array(np.zeros(2 * 768, np.float16)), 768)) and [],
         ("siglip2_vectors/dt=2026-01-31/part-0.parquet: image_embedding: vectors have 768",
          "embedding_dim 1152")),
    Case("embedding_dtype_wrong",
         lambda ws, mp: write_vectors(ws, "2026-01-31", pa.FixedSizeListArray.from_arrays(
             pa.array(np.zeros(2 * DIM, np.float32)), DIM)) and [],
         ("siglip2_vectors/dt=2026-01-31/part-0.parquet: image_embedding: expected",
          "float>[1152]", "write float16 vectors")),
    Case("embedding_list_of_the_wrong_length",
         lambda ws, mp: write_vectors(ws, "2026-01-31", pa.array(
             [np.zeros(DIM, np.float16), np.zeros(DIM - 1, np.float16)],
             pa.list_(pa.float16()))) and [],
         ("siglip2_vectors/dt=2026-01-31: image_embedding: id 9002 has 1151 values",),
         ),
    Case("null_ids_in_siglip2_vectors",
         lambda ws, mp: write_vectors(ws, "2026-01-31", pa.FixedSizeListArray.from_arrays(
             pa.array(np.zeros(2 * DIM, np.float16)), DIM), ids=[5, None]) and [],
         ("siglip2_vectors/dt=2026-01-31/part-0.parquet: id: 1 null id(s)",)),
    Case("embedding_partition_not_a_date",
         lambda ws, mp: (ws.sources / "siglip2_vectors" / "latest").mkdir() or [],
         ("siglip2_vectors/latest: not a dt=YYYY-MM-DD partition",)),
    Case("embedding_source_missing",
         lambda ws, mp: __import__("shutil").rmtree(ws.sources / "siglip2_vectors") or [],
         ("siglip2_vectors: embedding source folder does not exist",)),
]


def _error_lines(err: str) -> list[str]:
    """stderr without the timestamped progress lines: what explains the failure."""
    return [line for line in err.splitlines() if not re.match(r"^\[\d\d:\d\d:\d\d\] ", line)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case: Case, ws: Workspace, monkeypatch,
                                                  capsys) -> None:
    extra = case.setup(ws, monkeypatch) if case.setup is not None else []
    argv = case.argv(ws) if case.argv is not None else ws.train(*extra)
    started = time.monotonic()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own mistakes exit from inside parse_args
        rc = exc.code
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert rc != 0 and rc == 2, (rc, err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: "), err
    assert "Traceback" not in err
    assert "fix" in line, line
    for text in case.expect:
        assert text in line, (text, line)
    for text in case.absent:
        assert text not in err, (text, err)
    if case.check is not None:
        case.check(ws)
    assert seconds < 30, f"took {seconds:.0f}s to refuse"
    for root in (ws.out, ws.enriched, ws.root / "a-file"):
        assert not list(root.glob("dt=*")) if root.is_dir() else True, root
    assert not list(ws.root.rglob("dt=*/_manifest.json"))
    if not case.store_may_exist:
        assert not ws.store.exists()


def _assert_one_line(rc, err: str, *expect: str) -> str:
    lines = _error_lines(err)
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "fix" in lines[0], err
    for text in expect:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def test_enrich_only_over_a_skeleton_day_missing_a_column(ws: Workspace, capsys) -> None:
    """Row 53: the skeleton day is written by a real run, then loses a column; `--enrich-only`
    names the file and column and writes no enriched day."""
    assert main(ws.train("--skeleton-only", "--target-date", str(D1))) == 0
    capsys.readouterr()
    parts = sorted((ws.out / f"dt={D1}").glob("part-*.parquet"))
    assert parts
    for path in parts:
        rewrite(path, lambda t: t.drop_columns(["like_artwork_ids_7d"]))
    rc = main(ws.train("--enrich-only", "--target-date", str(D1)))
    _assert_one_line(rc, capsys.readouterr().err, f"dt={D1}/part-", "like_artwork_ids_7d: column")
    assert not list(ws.enriched.glob("dt=*")) if ws.enriched.is_dir() else True


def test_dagster_resource_with_an_enriched_root_other_than_the_contract(ws: Workspace, monkeypatch,
                                                                         capsys) -> None:
    """Row 59: `daeda materialize-day` with a DaedalusConfig whose enriched_output_root is not
    `<output_root>_enriched` names the setting and writes no day."""
    import daedalus.defs as defs_module
    from daedalus.defs import DaedalusConfig

    p = ws.project
    cfg = DaedalusConfig(
        base_config_path=str(p / BASE), runtime_config_path=str(p / RUNTIME),
        aggregation_config_path=str(p / AGGREGATIONS), feature_views_dir=str(p / "feature_views"),
        feature_services_dir=str(p / "feature_services"),
        pipelines_dir=str(p / "config/pipelines"), output_root=str(ws.out),
        enriched_output_root=str(ws.root / "elsewhere"))
    real = defs_module.build_defs
    monkeypatch.setattr(defs_module, "build_defs", lambda cfg_=None: real(cfg))
    monkeypatch.setenv("DAGSTER_HOME", str(ws.root / "dagster_home"))
    rc = main(["materialize-day", "dssm_ranking", str(D1)])
    _assert_one_line(rc, capsys.readouterr().err, "DaedalusConfig.enriched_output_root",
                     "elsewhere", "_enriched")
    for root in (ws.out, ws.enriched, ws.root / "elsewhere"):
        assert not list(root.glob("dt=*")) if root.is_dir() else True, root
