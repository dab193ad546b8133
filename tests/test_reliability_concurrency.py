"""Concurrency: two runs on the same output root at once.

Two trains of the same day: the second is refused in one line naming the day and the pid
that holds it, and the first publishes an intact day. Two trains of different days: they
share `qid_map.parquet` through its lock, the second waits, and no session is lost or
numbered twice. Two store builds: the second waits and reuses the first's store. The first
run is stopped at a chosen point (`DAEDALUS_TEST_PAUSE_AT`) while holding its lock, so the
overlap is certain, not a matter of timing. (The enrich stage's refusal of a second writer of
a day is checked in test_reliability_crash, where a Ray run is stopped anyway.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from reliability import (
    D1,
    D2,
    Child,
    Workspace,
    assert_only_complete_days,
    blocked_on_lock,
    demo_sources,
    leftovers,
    parquet_files,
    read_day,
    stop_session,
    wait_until,
    workspace,
)

from daedalus.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return demo_sources(tmp_path_factory.mktemp("demo") / "sources")


@pytest.fixture(scope="module")
def clean(tmp_path_factory, demo) -> Workspace:
    """Both days in date order, one run, nothing else going on."""
    ws = workspace(tmp_path_factory.mktemp("clean"), demo)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT"):
            mp.delenv(name, raising=False)
        assert main(ws.train("--skeleton-only")) == 0
    return ws


@pytest.fixture
def ws(tmp_path, demo, monkeypatch) -> Workspace:
    for name in ("DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return workspace(tmp_path / "ws", demo)


def test_a_second_train_of_a_day_being_written_is_refused_in_one_line(ws, tmp_path, clean,
                                                                      capsys) -> None:
    first = Child(ws.train("--skeleton-only", "--target-date", str(D1)), tmp_path / "logs",
                  DAEDALUS_TEST_PAUSE_AT="skeleton.before_publish")
    try:
        first.wait_stopped()
        assert main(ws.train("--skeleton-only", "--target-date", str(D1))) == 2
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if not line.startswith("[")]
        assert errors == [f"error: {ws.out / 'dt=2026-02-01'}: day {D1} is being written by pid"
                          f" {first.pid} (fix: wait for that run to finish, then rerun)"]
        assert assert_only_complete_days(ws.out) == set()
        first.resume()
        assert first.wait() == 0, first.stderr
    finally:
        stop_session(first.pid)
    assert assert_only_complete_days(ws.out) == {D1}
    assert [p.name for p in ws.out.iterdir() if p.name.startswith("dt=")] == ["dt=2026-02-01"]
    mine, theirs = parquet_files(ws.out), parquet_files(clean.out)
    assert {k: v for k, v in mine.items() if k.startswith("dt=")} == {
        k: v for k, v in theirs.items() if k.startswith("dt=2026-02-01")}
    assert leftovers(ws) == []


def test_two_days_at_once_share_the_qid_map_and_lose_no_session(ws, tmp_path, clean) -> None:
    """Day 1's run stops holding the map's lock, its grown map written to a temp file; day 2's
    run waits on the lock, then appends after day 1's sessions: the same map as one run."""
    logs = tmp_path / "logs"
    first = Child(ws.train("--skeleton-only", "--target-date", str(D1)), logs,
                  DAEDALUS_TEST_PAUSE_AT="qid.before_replace")
    second = None
    try:
        first.wait_stopped()
        second = Child(ws.train("--skeleton-only", "--target-date", str(D2)), logs)
        wait_until(lambda: blocked_on_lock(second.pid), timeout=120,
                   what="the second run to wait on the qid map's lock")
        first.resume()
        assert first.wait() == 0, first.stderr
        assert second.wait() == 0, second.stderr
    finally:
        stop_session(first.pid)
        if second is not None:
            stop_session(second.pid)
    assert assert_only_complete_days(ws.out) == {D1, D2}
    qid_map = pq.read_table(ws.out / "qid_map.parquet")
    sessions = qid_map["feed_session"]
    assert len(pc.unique(sessions)) == len(sessions)
    assert qid_map["qid"].to_pylist() == list(range(len(sessions)))
    for day in (D1, D2):
        rows = read_day(ws.out / f"dt={day:%Y-%m-%d}")
        mapped = pc.take(qid_map["qid"], pc.index_in(rows["feed_session"], value_set=sessions))
        assert mapped.combine_chunks().equals(rows["qid"].combine_chunks().cast(pa.int64())), day
    assert parquet_files(ws.out) == parquet_files(clean.out)
    assert leftovers(ws) == []


def test_two_store_builds_at_once_one_waits_and_reuses_the_others(ws, tmp_path) -> None:
    logs = tmp_path / "logs"
    first = Child(["store", "build", "--json", *ws.flags()], logs,
                  DAEDALUS_TEST_PAUSE_AT="store.before_publish")
    second = None
    try:
        first.wait_stopped()
        second = Child(["store", "build", "--json", *ws.flags()], logs)
        wait_until(lambda: blocked_on_lock(second.pid), timeout=120,
                   what="the second build to wait on the build lock")
        assert not ws.store.exists()
        first.resume()
        assert first.wait() == 0, first.stderr
        assert second.wait() == 0, second.stderr
    finally:
        stop_session(first.pid)
        if second is not None:
            stop_session(second.pid)
    built, reused = json.loads(first.stdout), json.loads(second.stdout)
    assert built["built_at"] == reused["built_at"] and built["rows"] == reused["rows"] > 0
    assert "building from" in first.stderr and "building from" not in second.stderr
    assert leftovers(ws) == []
