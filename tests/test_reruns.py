"""Reruns that mean it: a day is recomputed exactly when something it read or was shaped by
changed, replaced atomically, with the reason said; unchanged days are left alone."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from daedalus.cli import main
from daedalus.compiler import compile_service, override_path
from daedalus.days import day_path
from daedalus.demo_data import DemoDataSpec, generate_demo_data
from daedalus.manifest import read_manifest

DAYS = [dt.date(2026, 2, 1), dt.date(2026, 2, 2), dt.date(2026, 2, 3)]
SPEC = DemoDataSpec(days=3, users=150, artworks=400, events_per_day=1500)


@pytest.fixture
def trained(project, tmp_path, capsys):
    config, _ = project.load()
    generate_demo_data(config.base.sources_root, SPEC)
    assert train(project) == 0
    capsys.readouterr()
    return project


def train(project, *extra: str) -> int:
    return main(["pipeline", "train", "dssm_ranking", "--skeleton-only", "--pipelines-dir",
                 str(project.pipelines), *project.cli_flags(), *extra])


def written_at(project) -> dict[dt.date, str]:
    config, _ = project.load()
    return {d: read_manifest(day_path(config.runtime.output_root, d))["written_at"] for d in DAYS}


def recomputed_days(project, before) -> set[dt.date]:
    after = written_at(project)
    return {d for d in DAYS if after[d] != before[d]}


def rewrite_source_file(project, source: str, day: dt.date) -> None:
    """Rewrite a source file with the same rows (new mtime, a late file replaced)."""
    config, _ = project.load()
    path = config.base.sources_root / source / f"dt={day}" / "part-0.parquet"
    table = pq.read_table(path)
    pq.write_table(table, path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))


def test_unchanged_rerun_recomputes_nothing(trained, capsys):
    before = written_at(trained)
    assert train(trained) == 0
    assert recomputed_days(trained, before) == set()
    assert "3 skipped" in capsys.readouterr().out


@pytest.mark.parametrize(("source", "day", "expected"), [
    ("feed_impressions", DAYS[1], {DAYS[1]}),
    ("user_likes", DAYS[0], set(DAYS)),            # 7-day window: read by every later day
    ("user_likes", DAYS[2], {DAYS[2]}),
    ("artwork_stats", DAYS[0], {DAYS[0], DAYS[1], DAYS[2]}),   # TTL 2d: read through D+2
    ("user_profile", DAYS[2], {DAYS[2]}),
])
def test_changed_source_file_recomputes_only_days_that_read_it(trained, capsys, source, day, expected):
    before = written_at(trained)
    rewrite_source_file(trained, source, day)
    assert train(trained) == 0
    assert recomputed_days(trained, before) == expected
    err = capsys.readouterr().err
    for d in expected:
        assert f"skeleton {d}: recomputing, {source} changed since last run" in err


def test_config_change_recomputes_with_reason(trained, capsys):
    before = written_at(trained)
    trained.edit(trained.runtime, "skeleton_chunk_rows: 1000000", "skeleton_chunk_rows: 500")
    assert train(trained) == 0
    assert recomputed_days(trained, before) == set(DAYS)
    assert "recomputing, config changed since last run" in capsys.readouterr().err
    config, _ = trained.load()
    files = read_manifest(day_path(config.runtime.output_root, DAYS[0]))["files"]
    assert len(files) >= 3


def test_feature_view_change_recomputes_and_changes_values(trained, capsys):
    config, _ = trained.load()
    path = day_path(config.runtime.output_root, DAYS[1])
    old_nulls = pq.read_table(path).column("country").null_count
    before = written_at(trained)
    trained.edit(trained.views / "user_profile.yaml", "ttl: 3d", "ttl: 1d")
    assert train(trained) == 0
    assert recomputed_days(trained, before) == set(DAYS)
    assert "compiled DAG changed (operator pit_user_profile, scan_user_profile)" in capsys.readouterr().err
    assert pq.read_table(path).column("country").null_count > old_nulls


def test_hand_edited_dag_override_recomputes(trained, capsys):
    config, registry = trained.load()
    text = compile_service(registry, "dssm_ranking", config).to_yaml()
    override_path("dssm_ranking", trained.pipelines).write_text(text.replace("max_items: 50", "max_items: 5"))
    before = written_at(trained)
    assert train(trained) == 0
    assert recomputed_days(trained, before) == set(DAYS)
    assert "compiled DAG changed (operator" in capsys.readouterr().err
    lists = pq.read_table(day_path(config.runtime.output_root, DAYS[0])).column("like_artwork_ids_7d")
    assert pc.max(pc.list_value_length(lists)).as_py() == 5


def test_force_recomputes_everything(trained, capsys):
    before = written_at(trained)
    assert train(trained, "--force") == 0
    assert recomputed_days(trained, before) == set(DAYS)
    assert "recomputing, --force" in capsys.readouterr().err


def test_dry_run_lists_and_runs_nothing(trained, capsys):
    rewrite_source_file(trained, "feed_impressions", DAYS[2])
    before = written_at(trained)
    assert train(trained, "--dry-run", "--json") == 0
    planned = json.loads(capsys.readouterr().out)
    assert [(p["day"], p["state"]) for p in planned] == [
        ("2026-02-01", "skip"), ("2026-02-02", "skip"), ("2026-02-03", "run")]
    assert planned[2]["reason"].startswith("feed_impressions changed since last run")
    assert recomputed_days(trained, before) == set()


def test_status_reports_absent_complete_stale(trained, capsys):
    config, _ = trained.load()
    rewrite_source_file(trained, "user_likes", DAYS[2])
    assert main(["status", "dssm_ranking", "--from", "2026-02-01", "--to", "2026-02-04", "--json",
                 "--pipelines-dir", str(trained.pipelines), *trained.cli_flags()]) == 0
    states = {(s["day"], s["stage"]): s for s in json.loads(capsys.readouterr().out)}
    assert states[("2026-02-01", "skeleton")]["state"] == "complete"
    assert states[("2026-02-01", "skeleton")]["rows"] == SPEC.events_per_day or \
        states[("2026-02-01", "skeleton")]["rows"] > 0
    assert states[("2026-02-03", "skeleton")]["state"] == "stale"
    assert "user_likes changed" in states[("2026-02-03", "skeleton")]["reason"]
    assert states[("2026-02-04", "skeleton")]["state"] == "absent"
    assert states[("2026-02-01", "enrich")]["state"] == "absent"


def test_existing_qids_never_change_on_recompute(trained):
    config, _ = trained.load()
    out = config.runtime.output_root
    qids_before = pq.read_table(out / "qid_map.parquet").to_pydict()
    before = dict(zip(qids_before["feed_session"], qids_before["qid"], strict=True))
    # a late impression of a brand-new session, at the very start of day 2
    path = config.base.sources_root / "feed_impressions" / f"dt={DAYS[1]}" / "part-0.parquet"
    table = pq.read_table(path)
    late = table.slice(0, 1).to_pydict()
    late["feed_session"] = ["s-late-arrival"]
    late["event_timestamp"] = [dt.datetime(2026, 2, 2, tzinfo=dt.UTC)]
    import pyarrow as pa

    pq.write_table(pa.concat_tables([pa.table(late, schema=table.schema), table]), path)
    assert train(trained) == 0
    after = pq.read_table(out / "qid_map.parquet").to_pydict()
    mapping = dict(zip(after["feed_session"], after["qid"], strict=True))
    assert all(mapping[s] == q for s, q in before.items())
    assert mapping["s-late-arrival"] == max(before.values()) + 1
    day2 = pq.read_table(day_path(out, DAYS[1]))
    late_rows = day2.filter(pc.equal(day2["feed_session"], "s-late-arrival"))
    assert late_rows["qid"].to_pylist() == [mapping["s-late-arrival"]]


def test_reader_during_recompute_sees_one_whole_version(trained):
    """Flip the profile TTL back and forth while a reader reads the day in a loop."""
    config, _ = trained.load()
    folder = day_path(config.runtime.output_root, DAYS[1])
    versions = {pq.read_table(folder).column("country").null_count}
    seen: list = []
    errors: list = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                table = pq.read_table(folder)
                seen.append((table.num_rows, table.column("country").null_count))
            except Exception as exc:  # noqa: BLE001 - any failure to read is the bug
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for ttl in ("1d", "3d", "1d"):
            text = (trained.views / "user_profile.yaml").read_text()
            (trained.views / "user_profile.yaml").write_text(
                text.replace("ttl: 3d", f"ttl: {ttl}").replace("ttl: 1d", f"ttl: {ttl}"))
            assert train(trained, "--target-date", str(DAYS[1])) == 0
            versions.add(pq.read_table(folder).column("country").null_count)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert len(versions) == 2
    rows = pq.read_metadata(folder / read_manifest(folder)["files"][0]).num_rows
    assert seen and all(n == rows and nulls in versions for n, nulls in seen)


