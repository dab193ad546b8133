"""Skeleton stage: DuckDB output equals the brute-force reference on planted edge cases, every
column of every row; days are complete or absent, resumable and independent of --day-workers."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from reference import (
    OUTPUT_TYPES,
    Rules,
    assert_same_rows,
    read_output,
    reference_days,
    write_source,
)

from daedalus.cli import main

D1, D2, D3 = dt.date(2026, 3, 10), dt.date(2026, 3, 11), dt.date(2026, 3, 12)
US = dt.timedelta(microseconds=1)


def at(day: dt.date, h: int = 0, m: int = 0, s: int = 0, us: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, h, m, s, us, tzinfo=dt.UTC)


def imp(t, user, artwork, session="s-main", position=0, click=False, like=False, dwell=1000):
    return {
        "event_timestamp": t,
        "user_id": user,
        "artwork_id": artwork,
        "feed_session": session,
        "position": position,
        "is_click": click,
        "is_like": like,
        "dwell_ms": dwell,
    }


def like(t, user, artwork):
    return {"event_timestamp": t, "user_id": user, "artwork_id": artwork}


def profile(t, user, country="US", age=100, followers=10, premium=False):
    return {
        "feature_timestamp": t,
        "user_id": user,
        "country": country,
        "account_age_days": age,
        "follower_count": followers,
        "is_premium": premium,
    }


def stats(t, artwork, views=10, likes=1, ctr=0.1):
    return {
        "feature_timestamp": t,
        "artwork_id": artwork,
        "views_1d": views,
        "likes_1d": likes,
        "ctr_1d": ctr,
    }


def planted_sources(root: Path) -> None:
    """Every edge case the issue lists, on D1..D2; D3 has no impressions (no partition).

    Users: 1 ordinary, 2 past the 50-like cap, 3 no likes and no profile, 4 profile TTL
    boundary, 5 equal-timestamp profile rows, 6 null sessions. Artworks: 100 ordinary, 101 stats
    at midnight, 102 stats TTL boundary, 103 no stats.
    """
    noon = at(D1, 12)
    p4 = noon - dt.timedelta(days=3)
    six = at(D1, 6)
    s102 = six - dt.timedelta(days=2)
    ten = at(D1, 10)
    impressions = [
        imp(at(D1), 1, 101, "zz"),  # midnight; stats row exactly at t
        imp(at(D1), 3, 100, "aa"),  # equal first-impression time: aa < zz
        imp(ten, 1, 100, "zz", 1, click=True),  # duplicate impression ...
        imp(ten, 1, 100, "zz", 1, click=True),  # ... twice, same values
        imp(ten, 1, 102, "zz", 2, dwell=None),  # same t, same user; like exactly at t
        imp(ten, 2, 103, "cap", 0, like=True),  # past the cap; artwork without stats
        imp(ten + US, 2, 100, "cap", 1),
        imp(noon - US, 4, 100, "ttl", 0),  # profile age 3d - 1us: visible
        imp(noon, 4, 100, "ttl", 1),  # age exactly 3d: visible
        imp(noon + US, 4, 100, "ttl", 2),  # age 3d + 1us: null
        imp(six - US, 5, 102, "st", 0),  # stats age 2d - 1us: visible
        imp(six, 5, 102, "st", 1),  # exactly 2d: visible
        imp(six + US, 5, 102, "st", 2),  # 2d + 1us: null
        imp(at(D1, 14), 6, 100, None, 0),  # null session -> null qid
        imp(at(D1, 14), 6, 101, None, 1, dwell=None),
        imp(at(D1, 23, 59, 59, 999_999), 1, 100, "span", 0),  # a session across midnight
        imp(at(D2), 1, 101, "span", 1),  # D2 midnight, same session
        imp(at(D2, 0, 0, 0, 1), 1, 102, "span", 2),
        imp(at(D2, 9), 3, 100, "aa", 0),  # a known session on a later day
        imp(at(D2, 9), 2, 100, "new", 0),
        imp(at(D2, 11), 5, 103, "b2", 0),
        imp(at(D2, 11), 4, 100, "a2", 0),  # new sessions, same first time: a2 < b2
    ]
    likes = [
        like(ten, 1, 900),  # exactly at t: out of t's window
        like(ten - dt.timedelta(days=7), 1, 901),  # exactly t - 7d: in
        like(ten - dt.timedelta(days=7) - US, 1, 902),  # 1us older: out
        like(at(D1), 1, 903),  # at the midnight impression: out there
        like(at(D1) - US, 1, 904),
        like(at(D1, 23), 1, 905),
        like(at(D1, 23), 1, 905),  # duplicate like: counted twice
        like(at(D2) - US, 1, 906),
    ]
    for i in range(60):  # user 2: 60 likes in the window
        likes.append(like(ten - dt.timedelta(hours=2 + 2 * i), 2, 500 + i))
    for a in (9, 3, 5):  # equal timestamps at the cap cut
        likes.append(like(ten - dt.timedelta(hours=2 + 2 * 48), 2, a))
    likes.append(like(ten - dt.timedelta(days=7, hours=1), 2, 777))  # scanned, before the window
    profiles = [
        profile(at(D1, 8), 1, "JP", 10, 100),
        profile(at(D1, 9), 1, "KR", 11, 101),
        profile(at(D1, 23, 59, 59, 999_999), 1, "DE", 12, 102),  # visible only to the last D1 row
        profile(at(D2, 10), 1, "FR", 13, 103),  # a future row for D1
        profile(p4, 4, "GB", 40, 400),  # the TTL boundary row
        profile(p4 - dt.timedelta(days=1), 4, "BR", 41, 401),
        profile(at(D1, 5), 5, "JP", 50, 20, True),  # equal timestamps for one user:
        profile(at(D1, 5), 5, "US", 51, 10, False),  # the largest values win (US)
        profile(six, 5, "IN", 52, 30),  # exactly at t for one row
        profile(at(D2, 1), 2, "CA", 20, 5, True),
    ]
    artwork_stats = [
        stats(at(D1), 101, 1000, 50, 0.5),  # at midnight: invisible at t
        stats(at(D1) - dt.timedelta(days=1), 101, 900, 40, 0.4),
        stats(at(D2), 101, 1100, 55, 0.55),
        stats(s102, 102, 20, 2, 0.2),  # TTL boundary for artwork 102
        stats(at(D1, 20), 102, 30, 3, 0.3),
        stats(at(D1) - dt.timedelta(hours=1), 100, 5, 0, None),  # a null feature value
        stats(at(D1, 9, 59, 59), 100, 6, 1, 0.16),
    ]
    write_source(root, "feed_impressions", impressions)
    write_source(root, "user_likes", likes)
    write_source(root, "user_profile", profiles)
    write_source(root, "artwork_stats", artwork_stats)


@pytest.fixture
def planted(project):
    """The project fixture with planted sources and the feed range D1..D3."""
    planted_sources(project.root.parent / "sources")
    project.edit(project.runtime, "feed_start: 2026-02-01", f"feed_start: {D1}")
    project.edit(project.runtime, "feed_end: 2026-02-03", f"feed_end: {D3}")
    return project


def train(project, *flags: str) -> int:
    return main(
        [
            "pipeline",
            "train",
            "dssm_ranking",
            "--skeleton-only",
            "--pipelines-dir",
            str(project.pipelines),
            *project.cli_flags(),
            *flags,
        ]
    )


def out_root(project) -> Path:
    return project.root.parent / "out"


def test_planted_edge_cases_match_the_reference_on_every_column(planted, capsys):
    assert train(planted) == 0
    captured = capsys.readouterr()
    assert "2 written, 0 skipped, 1 empty" in captured.out
    assert f"skeleton {D3}: no rows" in captured.err
    expected, qids = reference_days(planted.root.parent / "sources", [D1, D2, D3])
    for day in (D1, D2):
        folder = out_root(planted) / f"dt={day}"
        schema = pq.read_schema(next(folder.glob("part-*.parquet")))
        assert {f.name: f.type for f in schema} == OUTPUT_TYPES
        assert_same_rows(read_output(folder), expected[day], f"dt={day}")
    assert not (out_root(planted) / f"dt={D3}").exists()
    qid_map = pq.read_table(out_root(planted) / "qid_map.parquet").to_pylist()
    assert {r["feed_session"]: r["qid"] for r in qid_map} == qids
    assert [r["feed_session"] for r in qid_map] == [
        "aa",
        "zz",
        "st",
        "cap",
        "ttl",
        "span",
        "new",
        "a2",
        "b2",
    ]


def test_planted_cases_land_where_planted(planted):
    """Spot checks, so a shared misreading of the contract in engine and reference shows up."""
    assert train(planted) == 0
    rows = read_output(out_root(planted) / f"dt={D1}")
    by = {(r["user_id"], r["artwork_id"], r["position"], r["event_timestamp"]): r for r in rows}
    ten = at(D1, 10)
    r = by[(1, 102, 2, ten)]
    assert 900 not in r["like_artwork_ids_7d"] and 902 not in r["like_artwork_ids_7d"]
    assert r["like_artwork_ids_7d"][0] == 901 and r["like_count_7d"] == 3
    assert by[(1, 101, 0, at(D1))]["views_1d"] == 900
    cap = by[(2, 103, 0, ten)]
    assert cap["like_count_7d"] == 63 and len(cap["like_artwork_ids_7d"]) == 50
    assert cap["like_artwork_ids_7d"][:3] == [9, 548, 547]
    assert cap["views_1d"] is None
    ttl = [by[(4, 100, p, at(D1, 12) + d)]["country"] for p, d in ((0, -US), (1, 0 * US), (2, US))]
    assert ttl == ["GB", "GB", None]
    st = [by[(5, 102, p, at(D1, 6) + d)]["views_1d"] for p, d in ((0, -US), (1, 0 * US), (2, US))]
    assert st == [20, 20, None]
    assert by[(5, 102, 1, at(D1, 6))]["country"] == "US"
    assert by[(3, 100, 0, at(D1))]["like_artwork_ids_7d"] == []
    assert by[(3, 100, 0, at(D1))]["country"] is None
    assert all(r["qid"] is None for r in rows if r["feed_session"] is None)
    assert (
        sum(
            1
            for r in rows
            if (r["user_id"], r["artwork_id"], r["event_timestamp"]) == (1, 100, ten)
        )
        == 2
    )
    span = [
        r["qid"]
        for r in rows + read_output(out_root(planted) / f"dt={D2}")
        if r["feed_session"] == "span"
    ]
    assert len(span) == 3 and len(set(span)) == 1


def test_day_workers_two_gives_the_same_bytes_as_one(planted, tmp_path):
    assert train(planted, "--output-root", str(tmp_path / "one"), "--day-workers", "1") == 0
    assert train(planted, "--output-root", str(tmp_path / "two"), "--day-workers", "2") == 0
    for name in (f"dt={D1}/part-0-0.parquet", f"dt={D2}/part-0-0.parquet", "qid_map.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), (
            name
        )


def test_resume_after_deleting_a_day_reproduces_it_exactly(planted, capsys):
    assert train(planted) == 0
    root = out_root(planted)
    before = {p.name: p.read_bytes() for p in (root / f"dt={D1}").glob("*.parquet")}
    qid_before = (root / "qid_map.parquet").read_bytes()
    manifest_d2 = (root / f"dt={D2}" / "_manifest.json").read_bytes()
    shutil.rmtree(root / f"dt={D1}")
    capsys.readouterr()
    assert train(planted, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    status = {r["day"]: r["status"] for r in summary["results"]}
    # D3 has no impressions: recorded empty by the first run, so skipped like D2
    assert status == {str(D1): "written", str(D2): "skipped", str(D3): "skipped"}
    assert {p.name: p.read_bytes() for p in (root / f"dt={D1}").glob("*.parquet")} == before
    assert (root / "qid_map.parquet").read_bytes() == qid_before
    assert (root / f"dt={D2}" / "_manifest.json").read_bytes() == manifest_d2


def test_qids_are_stable_across_runs_and_only_appended(planted, tmp_path):
    """A later run with new sessions keeps every old qid; a lost map is rebuilt from the days."""
    root = tmp_path / "out"
    assert train(planted, "--output-root", str(root), "--target-date", str(D2)) == 0
    first = {
        r["feed_session"]: r["qid"] for r in pq.read_table(root / "qid_map.parquet").to_pylist()
    }
    assert first == {"span": 0, "aa": 1, "new": 2, "a2": 3, "b2": 4}
    assert train(planted, "--output-root", str(root), "--target-date", str(D1)) == 0
    second = {
        r["feed_session"]: r["qid"] for r in pq.read_table(root / "qid_map.parquet").to_pylist()
    }
    assert {s: second[s] for s in first} == first
    assert [second[s] for s in ("zz", "st", "cap", "ttl")] == [5, 6, 7, 8]
    d1 = read_output(root / f"dt={D1}")
    _, expected = reference_days(planted.root.parent / "sources", [D1], known_qids=first)
    assert {r["feed_session"]: r["qid"] for r in d1 if r["feed_session"]} == {
        s: expected[s] for s in {r["feed_session"] for r in d1 if r["feed_session"]}
    }
    (root / "qid_map.parquet").unlink()
    assert train(planted, "--output-root", str(root)) == 0
    rebuilt = {
        r["feed_session"]: r["qid"] for r in pq.read_table(root / "qid_map.parquet").to_pylist()
    }
    assert rebuilt == second


def test_hand_edited_dag_changes_ttl_and_cap(planted, capsys):
    """The SQL is driven by the operator parameters: edit the DAG, the rows follow."""
    assert (
        main(
            [
                "pipeline",
                "compile",
                "dssm_ranking",
                "--output-dir",
                str(planted.pipelines),
                *planted.cli_flags(),
            ]
        )
        == 0
    )
    capsys.readouterr()
    generated = (planted.pipelines / "dssm_ranking.generated.yaml").read_text()
    edited = (
        generated.replace("  ttl: 3d\n", "  ttl: 1d\n")
        .replace("max_items: 50", "max_items: 5")
        .replace("    window: 7d\n", "    window: 3d\n")
    )
    assert edited.count("window: 3d") == 2
    (planted.pipelines / "dssm_ranking.yaml").write_text(edited)
    assert train(planted) == 0
    rules = Rules(profile_ttl=dt.timedelta(days=1), like_cap=5, like_window=dt.timedelta(days=3))
    expected, _ = reference_days(planted.root.parent / "sources", [D1, D2], rules)
    for day in (D1, D2):
        assert_same_rows(read_output(out_root(planted) / f"dt={day}"), expected[day], f"dt={day}")


def test_a_lookback_shorter_than_the_ttl_is_refused(planted, capsys):
    assert (
        main(
            [
                "pipeline",
                "compile",
                "dssm_ranking",
                "--output-dir",
                str(planted.pipelines),
                *planted.cli_flags(),
            ]
        )
        == 0
    )
    generated = (planted.pipelines / "dssm_ranking.generated.yaml").read_text()
    (planted.pipelines / "dssm_ranking.yaml").write_text(
        generated.replace("lookback: 3d", "lookback: 1d")
    )
    capsys.readouterr()
    assert train(planted) == 2
    err = capsys.readouterr().err
    assert "scan_user_profile.lookback: 1d is shorter than the 3d" in err and "fix:" in err
    assert not list(out_root(planted).glob("dt=*"))


def test_skeleton_chunk_rows_splits_parts_in_order(planted):
    planted.edit(planted.runtime, "skeleton_chunk_rows: 250000", "skeleton_chunk_rows: 4")
    assert train(planted) == 0
    folder = out_root(planted) / f"dt={D1}"
    parts = sorted(p.name for p in folder.glob("part-*.parquet"))
    assert parts == [f"part-{i}-0.parquet" for i in range(4)]
    assert [pq.read_metadata(folder / p).num_rows for p in parts] == [4, 4, 4, 4]
    expected, _ = reference_days(planted.root.parent / "sources", [D1])
    assert_same_rows(read_output(folder), expected[D1])
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["rows"] == 16 and manifest["files"] == parts


def test_a_zero_row_partition_is_an_empty_day(planted, capsys):
    folder = planted.root.parent / "sources/feed_impressions" / f"dt={D3}"
    folder.mkdir(parents=True)
    from reference import SCHEMAS

    pq.write_table(SCHEMAS["feed_impressions"].empty_table(), folder / "part-0.parquet")
    assert train(planted, "--target-date", str(D3), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["status"], r["rows"]) for r in summary["results"]] == [("empty", 0)]
    assert not list(out_root(planted).glob("dt=*"))


def test_a_failed_day_leaves_nothing_half_written(planted, capsys):
    bad = (
        planted.root.parent
        / "sources/user_likes"
        / f"dt={D1 - dt.timedelta(days=1)}"
        / "part-9.parquet"
    )
    bad.write_bytes(b"not parquet")
    assert train(planted, "--target-date", str(D1)) == 2
    assert "part-9.parquet: not a readable parquet file" in capsys.readouterr().err
    root = out_root(planted)
    assert not (root / f"dt={D1}").exists()
    assert not root.exists() or not [p for p in root.iterdir() if p.name.startswith(".staging-")]


def test_demo_small_preset_matches_the_reference(project, capsys):
    """The generator's own planted cases (midnight sessions, heavy likers, boundary rows)."""
    from daedalus.demo.data import PRESETS, generate_demo_data

    sources = project.root.parent / "sources"
    spec = PRESETS["small"]
    generate_demo_data(sources, spec)
    assert train(project, "--day-workers", "2", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    days = [spec.start_date + dt.timedelta(days=i) for i in range(spec.days)]
    assert [r["status"] for r in summary["results"]] == ["written"] * spec.days
    expected, qids = reference_days(sources, days)
    for day in days:
        assert_same_rows(read_output(out_root(project) / f"dt={day}"), expected[day], f"dt={day}")
    qid_map = pq.read_table(out_root(project) / "qid_map.parquet").to_pylist()
    assert {r["feed_session"]: r["qid"] for r in qid_map} == qids


def test_assign_qid_keeps_known_sessions_and_numbers_new_ones_in_first_seen_order():
    import pyarrow as pa

    from daedalus.layout.qid import assign_qid

    known = pa.Table.from_batches(
        [], schema=pa.schema([("feed_session", pa.string()), ("qid", pa.int64())])
    )
    qids, added = assign_qid(pa.chunked_array([["b", None, "a", "b"]]), known)
    assert qids.to_pylist() == [0, None, 1, 0]
    known = pa.concat_tables([known, added])
    qids, added = assign_qid(pa.chunked_array([["c"], ["a", None, "d"]]), known)
    assert qids.to_pylist() == [2, 1, None, 3]
    assert added.to_pylist() == [{"feed_session": "c", "qid": 2}, {"feed_session": "d", "qid": 3}]
    qids, added = assign_qid(pa.chunked_array([[None, None]], type=pa.string()), known)
    assert qids.to_pylist() == [None, None] and added.num_rows == 0


def test_a_point_in_time_join_without_ttl_is_refused(planted, capsys):
    assert (
        main(
            [
                "pipeline",
                "compile",
                "dssm_ranking",
                "--output-dir",
                str(planted.pipelines),
                *planted.cli_flags(),
            ]
        )
        == 0
    )
    generated = (planted.pipelines / "dssm_ranking.generated.yaml").read_text()
    (planted.pipelines / "dssm_ranking.yaml").write_text(
        generated.replace("  ttl: 2d\n", "  ttl: null\n")
    )
    capsys.readouterr()
    assert train(planted) == 2
    assert (
        "operators.pit_artwork_stats.ttl: a point-in-time join needs a ttl"
        in capsys.readouterr().err
    )


def test_a_small_memory_limit_and_one_thread_give_the_same_bytes(planted, tmp_path):
    """The day's one statement spills rather than fails: 500MB and one thread, same bytes."""
    assert train(planted, "--output-root", str(tmp_path / "default")) == 0
    planted.edit(planted.runtime, "memory_limit: 750MB", "memory_limit: 500MB")
    planted.edit(planted.runtime, "threads: 2", "threads: 1")
    planted.edit(planted.runtime, "skeleton_chunk_rows: 250000", "skeleton_chunk_rows: 5")
    assert train(planted, "--output-root", str(tmp_path / "small")) == 0
    for day in (D1, D2):
        small = pq.read_table(tmp_path / "small" / f"dt={day}")
        assert small.equals(pq.read_table(tmp_path / "default" / f"dt={day}"))
        assert len(list((tmp_path / "small" / f"dt={day}").glob("part-*"))) > 1


def test_the_day_is_one_statement_and_held_operators_say_why(planted):
    """Nothing between operators is written out: the manifest times the spine count, the qid
    function and the one statement (the Sink); the DAG names what is held, and why."""
    assert train(planted) == 0
    manifest = json.loads((out_root(planted) / f"dt={D1}" / "_manifest.json").read_text())
    assert list(manifest["timings"]) == ["count_spine", "assign_qid", "sink_skeleton"]
    dag = planted.pipelines / "dssm_ranking.generated.yaml"
    assert main(["pipeline", "compile", "dssm_ranking", "--output-dir", str(planted.pipelines),
                 *planted.cli_flags()]) == 0
    from daedalus.core.operators import load_pipeline_yaml

    held = {op.name: op.materialized for op in load_pipeline_yaml(dag).operators if op.materialized}
    assert list(held) == ["assign_qid"] and "Python function" in held["assign_qid"]
    planted.edit(planted.runtime, "engine: duckdb", "engine: polars")
    assert main(["pipeline", "compile", "dssm_ranking", "--output-dir", str(planted.pipelines),
                 *planted.cli_flags()]) == 0
    held = {op.name for op in load_pipeline_yaml(dag).operators if op.materialized}
    assert held == {"assign_qid", "rolling_user_likes"}


def test_a_part_that_fails_to_write_fails_the_writer(tmp_path):
    import pyarrow as pa

    from daedalus.skeleton.writer import PartWriter

    batch = pa.record_batch({"x": pa.array(range(10))})
    with pytest.raises(OSError), PartWriter(tmp_path / "missing", 3, "zstd", threads=2) as writer:
        writer.write(batch)
    with PartWriter(tmp_path, 3, "zstd", threads=2) as writer:
        writer.write(batch)
    assert writer.files == [f"part-{i}-0.parquet" for i in range(4)]
    assert pa.concat_tables(pq.read_table(tmp_path / f) for f in writer.files).equals(
        pa.Table.from_batches([batch]))
