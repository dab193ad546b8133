"""Crash safety: a run SIGKILLed at a named point, then rerun, ends exactly where a clean run
does; in between, readers only ever see complete days and no half-built store, and the rerun
removes what the killed run left (staging and scratch folders, temp files).

The CLI runs as a child process in its own session; `DAEDALUS_TEST_CRASH_AT` (see
`daedalus.core.faults`) makes it SIGKILL itself at the point, `DAEDALUS_TEST_PAUSE_AT` stop itself
there so the test can look around (and try a second run) before killing it. Every child's
session is killed at the end, Ray's processes included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reliability import (
    D1,
    D2,
    Child,
    Workspace,
    assert_only_complete_days,
    day_values,
    demo_sources,
    leftovers,
    listening_addresses,
    loopback,
    parquet_files,
    process_state,
    read_day,
    run,
    session_pids,
    stop_session,
    store_rows,
    summary,
    workspace,
)
from test_enrich import assert_matches_reference

from daedalus.cli import main

KILLED = -9
SECRET = "s3cr3t-7f1d9c2b"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return demo_sources(tmp_path_factory.mktemp("demo") / "sources")


@pytest.fixture(scope="module")
def clean_skeleton(tmp_path_factory, demo) -> Workspace:
    """A clean, uninterrupted skeleton run and store build: what every rerun must equal."""
    ws = workspace(tmp_path_factory.mktemp("clean"), demo)
    ws.edit("config/training/aggregations.yaml", "build_batch_size: 50000", "build_batch_size: 100")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT"):
            mp.delenv(name, raising=False)
        assert main(ws.train("--skeleton-only")) == 0
        assert main(["store", "build", *ws.flags()]) == 0
    return ws


def fresh(tmp_path: Path, demo: Path) -> Workspace:
    ws = workspace(tmp_path / "ws", demo)
    ws.edit("config/training/aggregations.yaml", "build_batch_size: 50000", "build_batch_size: 100")
    return ws


# -- the skeleton stage -------------------------------------------------------------------------


def test_skeleton_killed_at_each_point_in_turn_then_rerun_equals_a_clean_run_byte_for_byte(
        tmp_path, demo, clean_skeleton) -> None:
    """Four kills in a row on one output root, each leaving its debris for the next run, then a
    plain rerun: the same bytes as the clean run (days, qid map), nothing temporary left."""
    ws = fresh(tmp_path, demo)
    logs = tmp_path / "logs"

    def kill_at(point: str, *flags: str) -> set:
        child = run(ws.train("--skeleton-only", *flags), logs, DAEDALUS_TEST_CRASH_AT=point)
        assert child.proc.returncode == KILLED, child.stderr
        return assert_only_complete_days(ws.out)

    # day 1's new sessions are in the temp map, not yet in qid_map.parquet: nothing visible
    assert kill_at("qid.before_replace@1", "--day-workers", "2") == set()
    assert list(ws.out.glob(".qid_map.parquet.*.tmp")) and not (ws.out / "qid_map.parquet").exists()
    # day 1 published; day 2 fully written in staging, its sessions already in the map
    assert kill_at("skeleton.before_publish@2") == {D1}
    assert list(ws.out.glob(".staging-dt=2026-02-02-*")) and list(ws.scratch.iterdir())
    # between days: day 2 published (day 1 is up to date and skipped)
    assert kill_at("days.after_publish@1", "--day-workers", "2") == {D1, D2}
    # a forced rewrite of day 1 killed right after the folders were exchanged: the day is the
    # new one, the old one waits in a staging folder
    assert kill_at("days.after_exchange@1", "--force", "--target-date", str(D1)) == {D1, D2}
    assert list(ws.out.glob(".staging-dt=2026-02-01-*"))

    rerun = run(ws.train("--skeleton-only", "--json"), logs)
    assert rerun.proc.returncode == 0, rerun.stderr
    assert [r["status"] for r in summary(rerun)["results"]] == ["skipped", "skipped"]
    assert parquet_files(ws.out) == parquet_files(clean_skeleton.out)
    assert leftovers(ws) == []


# -- the store build ----------------------------------------------------------------------------


def test_store_build_killed_twice_leaves_no_store_and_the_rebuild_is_clean(
        tmp_path, demo, clean_skeleton) -> None:
    ws = fresh(tmp_path, demo)
    logs = tmp_path / "logs"
    for point in ("store.after_first_batch@2", "store.before_publish"):
        killed = run(["store", "build", *ws.flags()], logs, DAEDALUS_TEST_CRASH_AT=point)
        assert killed.proc.returncode == KILLED, killed.stderr
        assert not ws.store.exists()
        assert [p for p in ws.store.parent.iterdir() if ".building-" in p.name]
        assert list(ws.scratch.iterdir())

    rebuilt = run(["store", "build", *ws.flags()], logs)
    assert rebuilt.proc.returncode == 0, rebuilt.stderr
    assert store_rows(ws.store).equals(store_rows(clean_skeleton.store))
    assert leftovers(ws) == []


# -- the enrich stage (Ray) ---------------------------------------------------------------------


@pytest.mark.slow
def test_enrich_killed_between_days_resumes_to_the_same_values_with_other_flags(
        tmp_path, demo, clean_skeleton) -> None:
    """One scenario, two Ray starts (each costs seconds), many checks.

    --skeleton-only --day-workers 2 (bytes equal the clean run's, --day-workers 1); then
    --enrich-only --ray-num-cpus 1, stopped with day 1 published and day 2 fully written but
    not yet published. While it is stopped: readers see day 1 only; a second enrich of day 2 is
    refused in one line, before starting a Ray of its own; every socket its Ray listens on is
    loopback. Its staged day 2 is read, then SIGKILL: no process of its session survives. A
    plain full train with --ray-num-cpus 2 skips what is done and writes day 2: the same values
    as the killed run's staged day 2 (so --ray-num-cpus 1 vs 2 and --skeleton-only +
    --enrich-only vs the full train agree), both days match the brute-force reference of
    test_enrich, the store equals the clean build, nothing temporary is left, and a secret in
    the environment appears in no output or log. (Enriched files are compared by value: each
    records which actor and pid wrote it.)
    """
    logs = tmp_path / "logs"
    env = {"AWS_SECRET_ACCESS_KEY": SECRET}
    ws = workspace(tmp_path / "ws", demo)
    split = run(ws.train("--skeleton-only", "--day-workers", "2"), logs, **env)
    assert split.proc.returncode == 0, split.stderr
    assert parquet_files(ws.out) == parquet_files(clean_skeleton.out)

    paused = Child(ws.train("--enrich-only", "--ray-num-cpus", "1"), logs,
                   DAEDALUS_TEST_PAUSE_AT="enrich.before_publish@2", **env)
    try:
        paused.wait_stopped(timeout=400)
        assert assert_only_complete_days(ws.enriched) == {D1}
        [staged] = ws.enriched.glob(".staging-dt=2026-02-02-*")
        staged_day2 = read_day(staged).replace_schema_metadata(None)

        addresses = listening_addresses(session_pids(paused.pid))
        assert addresses and all(loopback(a) for a in addresses), addresses

        second = run(ws.train("--enrich-only", "--target-date", str(D2)), logs, **env)
        assert second.proc.returncode == 2
        errors = [line for line in second.stderr.splitlines() if not line.startswith("[")]
        assert errors == [f"error: {ws.enriched / 'dt=2026-02-02'}: day {D2} is being written by"
                          f" pid {paused.pid} (fix: wait for that run to finish, then rerun)"]
        assert "ray:" not in second.stderr

        ray_processes = session_pids(paused.pid) - {paused.pid}
        assert ray_processes, "Ray runs in the driver's session"
        assert paused.kill() == KILLED
    finally:
        stop_session(paused.pid)
    assert not [pid for pid in ray_processes if process_state(pid) not in (None, "Z")]
    assert assert_only_complete_days(ws.enriched) == {D1}

    resumed = run(ws.train("--ray-num-cpus", "2", "--json"), logs, **env)
    assert resumed.proc.returncode == 0, resumed.stderr
    assert [(r["stage"], r["day"], r["status"]) for r in summary(resumed)["results"]] == [
        ("skeleton", str(D1), "skipped"), ("skeleton", str(D2), "skipped"),
        ("enrich", str(D1), "skipped"), ("enrich", str(D2), "written")]

    assert parquet_files(ws.out) == parquet_files(clean_skeleton.out)
    enriched = day_values(ws.enriched)
    assert sorted(enriched) == [D1, D2]
    assert enriched[D2].equals(staged_day2)
    vectors = store_vectors(ws.store)
    for day, table in enriched.items():
        assert_matches_reference(table, read_day(ws.out / f"dt={day:%Y-%m-%d}"), vectors)
        assert table["image_embedding"].null_count < table.num_rows
    assert store_rows(ws.store).equals(store_rows(clean_skeleton.store))
    assert leftovers(ws) == []

    for child in (split, paused, second, resumed):
        assert SECRET not in child.stdout + child.stderr
    for path in ws.root.rglob("*"):
        if path.is_file() and "project" not in path.parts:
            assert SECRET.encode() not in path.read_bytes(), path


def store_vectors(path: Path) -> dict[int, np.ndarray]:
    table = store_rows(path)
    flat = table.column(1).combine_chunks().values.to_numpy(zero_copy_only=False)
    return dict(zip(table.column(0).to_pylist(), flat.reshape(table.num_rows, -1), strict=True))
