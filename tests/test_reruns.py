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
from daedalus.core.compiler import override_path
from daedalus.demo.data import DemoDataSpec, generate_demo_data
from daedalus.engine.pipeline import compiled_pipeline
from daedalus.layout.days import day_path
from daedalus.layout.manifest import read_manifest

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


def source_file(project, source: str, day: dt.date):
    config, _ = project.load()
    return config.base.sources_root / source / f"dt={day}" / "part-0.parquet"


def rewrite_source_file(project, source: str, day: dt.date) -> None:
    """Replace a source file with the same rows in other bytes (a late file re-exported)."""
    path = source_file(project, source, day)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({"exported": "again"}), path,
                   compression="gzip")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))


def rewrite_identically(project, source: str, day: dt.date) -> None:
    """Replace a source file with the very same bytes (new inode, new mtime)."""
    path = source_file(project, source, day)
    data = path.read_bytes()
    path.with_suffix(".tmp").write_bytes(data)
    os.replace(path.with_suffix(".tmp"), path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))


def test_unchanged_rerun_recomputes_nothing(trained, capsys):
    before = written_at(trained)
    assert train(trained) == 0
    assert recomputed_days(trained, before) == set()
    assert "3 skipped" in capsys.readouterr().out


def test_byte_identical_rewrite_recomputes_nothing(trained, capsys):
    """A feed that re-exports identical files leaves its days up to date; the next change of
    bytes in the same file is still seen (the recorded digest follows the new mtime)."""
    before = written_at(trained)
    rewrite_identically(trained, "user_likes", DAYS[0])
    assert main(["status", "dssm_ranking", "--json", "--pipelines-dir", str(trained.pipelines),
                 *trained.cli_flags()]) == 0
    states = [s for s in json.loads(capsys.readouterr().out) if s["stage"] == "skeleton"]
    assert {s["day"] for s in states} == {str(d) for d in DAYS}
    assert all(s["state"] == "complete" for s in states), states
    assert train(trained) == 0
    assert recomputed_days(trained, before) == set()
    rewrite_source_file(trained, "user_likes", DAYS[0])
    assert train(trained) == 0
    assert recomputed_days(trained, before) == set(DAYS)


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
    trained.edit(trained.runtime, "skeleton_chunk_rows: 250000", "skeleton_chunk_rows: 500")
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
    text = compiled_pipeline(registry, "dssm_ranking", config).to_yaml()
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


def test_json_stdout_is_only_the_summary_while_ray_prints_warnings(trained, capsys, monkeypatch):
    """Ray prints its raylet's warnings ("N PYTHON worker processes have been started ...") on
    the driver's stdout, from a thread, whenever they come; under `--json` they go to stderr."""
    from ray._private.worker import print_to_stdstream

    from daedalus.engine import runner as executor

    real = executor.run

    def warned(*args, **kwargs):
        print_to_stdstream({"lines": ["WARNING: 8 PYTHON worker processes have been started"],
                            "pid": "raylet", "is_err": False}, ignore_prefix=False)
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, "run", warned)
    assert train(trained, "--json") == 0
    out = capsys.readouterr()
    assert [r["day"] for r in json.loads(out.out)["results"]] == [str(d) for d in DAYS]
    assert "8 PYTHON worker processes" in out.err


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




# -- a day that has no impressions (any more) -----------------------------------------------------


def empty_impressions(project, day: dt.date, delete: bool = False) -> bytes:
    """Replace the day's impressions file by a zero-row one (same schema), or delete the
    day's partition; the old file's bytes."""
    config, _ = project.load()
    path = config.base.sources_root / "feed_impressions" / f"dt={day}" / "part-0.parquet"
    old = path.read_bytes()
    if delete:
        path.unlink()
        path.parent.rmdir()
    else:
        pq.write_table(pq.read_table(path).slice(0, 0), path)
    return old


def status_of(project, capsys, day: dt.date) -> dict[str, dict]:
    capsys.readouterr()
    assert main(["status", "dssm_ranking", "--from", str(day), "--to", str(day), "--json",
                 "--pipelines-dir", str(project.pipelines), *project.cli_flags()]) == 0
    return {s["stage"]: s for s in json.loads(capsys.readouterr().out)}


def test_emptied_day_is_retired_with_its_enriched_day(trained, capsys):
    config, _ = trained.load()
    out = config.runtime.output_root
    folder = day_path(out, DAYS[1])
    enriched = day_path(out.with_name(out.name + "_enriched"), DAYS[1])
    enriched.mkdir(parents=True)          # stands in for the enriched day made from it
    pq.write_table(pq.read_table(folder), enriched / "part-0.parquet")
    before = written_at(trained)
    empty_impressions(trained, DAYS[1])
    assert train(trained) == 0
    err = capsys.readouterr().err
    assert f"skeleton {DAYS[1]}: recomputing, feed_impressions changed since last run" in err
    assert (f"skeleton {DAYS[1]}: no impressions now: removed the stale day {folder}"
            f" and its enriched day {enriched}") in err
    assert not folder.exists() and not enriched.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]
    assert recomputed_days(trained, before) == {DAYS[1]}
    assert read_manifest(folder)["rows"] == 0          # the 0-row sidecar, no dt= folder
    assert (out / ".manifests" / f"dt={DAYS[1]}.json").is_file()
    skeleton = status_of(trained, capsys, DAYS[1])["skeleton"]
    assert (skeleton["state"], skeleton["rows"]) == ("empty", 0)


def test_unchanged_rerun_over_an_empty_day_recomputes_nothing(trained, capsys):
    empty_impressions(trained, DAYS[1])
    assert train(trained) == 0
    capsys.readouterr()
    before = written_at(trained)
    assert train(trained, "--dry-run", "--json") == 0
    planned = json.loads(capsys.readouterr().out)
    assert [(p["state"], p["reason"]) for p in planned][1] == ("skip", "no impressions")
    assert {p["state"] for p in planned} == {"skip"}
    assert train(trained) == 0
    captured = capsys.readouterr()
    assert recomputed_days(trained, before) == set()
    assert f"skeleton {DAYS[1]}: skipped, no impressions" in captured.err
    assert "recomputing" not in captured.err
    assert "3 skipped" in captured.out
    # and a change of its inputs recomputes it (still empty)
    rewrite_source_file(trained, "user_likes", DAYS[1])
    assert train(trained) == 0
    assert recomputed_days(trained, before) == {DAYS[1], DAYS[2]}
    assert f"skeleton {DAYS[1]}: no rows: no impressions on {DAYS[1]}" in capsys.readouterr().err


def test_empty_day_that_gains_rows_is_written(trained, capsys):
    config, _ = trained.load()
    out = config.runtime.output_root
    rows = read_manifest(day_path(out, DAYS[1]))["rows"]
    old = empty_impressions(trained, DAYS[1], delete=True)
    assert train(trained) == 0
    assert not day_path(out, DAYS[1]).exists()
    assert status_of(trained, capsys, DAYS[1])["skeleton"]["state"] == "empty"
    path = config.base.sources_root / "feed_impressions" / f"dt={DAYS[1]}" / "part-0.parquet"
    path.parent.mkdir()
    path.write_bytes(old)                 # the impressions arrive (again)
    capsys.readouterr()
    assert train(trained) == 0
    assert f"skeleton {DAYS[1]}: recomputing, feed_impressions changed" in capsys.readouterr().err
    assert pq.read_table(day_path(out, DAYS[1])).num_rows == rows
    assert read_manifest(day_path(out, DAYS[1]))["rows"] == rows
    assert not (out / ".manifests" / f"dt={DAYS[1]}.json").exists()
    assert status_of(trained, capsys, DAYS[1])["skeleton"]["state"] == "complete"


@pytest.mark.slow
def test_emptied_day_with_enrich_retires_both_and_skips_after(project, capsys):
    """Full train (skeleton + enrich) of one day; emptied, it goes from both outputs; an
    unchanged rerun then skips both stages; status says empty for both."""
    config, _ = project.load()
    generate_demo_data(config.base.sources_root, DemoDataSpec(days=1, users=100, artworks=200,
                                                             events_per_day=400))
    flags = ["pipeline", "train", "dssm_ranking", "--target-date", str(DAYS[0]),
             "--ray-num-cpus", "2", "--pipelines-dir", str(project.pipelines),
             *project.cli_flags()]
    assert main(flags) == 0
    out = config.runtime.output_root
    enriched = day_path(out.with_name(out.name + "_enriched"), DAYS[0])
    assert read_manifest(enriched)["rows"] > 0
    empty_impressions(project, DAYS[0])
    capsys.readouterr()
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert "no impressions now: removed the stale day" in err
    assert not day_path(out, DAYS[0]).exists() and not enriched.exists()
    assert {s: v["state"] for s, v in status_of(project, capsys, DAYS[0]).items()} == {
        "skeleton": "empty", "enrich": "empty"}
    assert main([*flags, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["status"], r["message"]) for r in summary["results"]] == [
        ("skeleton", "skipped", "no impressions"), ("enrich", "skipped", "no impressions")]


def test_manifest_of_size_and_mtime_entries_reads_as_changed_inputs():
    """A day recorded with [path, size, mtime] entries (no digest) is stale by its inputs,
    named, and never an error."""
    from daedalus.layout.manifest import Fingerprint

    recorded = Fingerprint(inputs={"user_likes": [["user_likes/dt=2026-02-01/part-0.parquet", 10, 5]]},
                           operators={}, config="c")
    now = Fingerprint(inputs={"user_likes": [["user_likes/dt=2026-02-01/part-0.parquet", 10, 6,
                                              "ab" * 16]]}, operators={}, config="c")
    assert now.staleness(recorded) == "user_likes changed since last run" \
        " (user_likes/dt=2026-02-01/part-0.parquet)"
    assert now.staleness(now) is None
