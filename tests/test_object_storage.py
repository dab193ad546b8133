"""Output roots in object storage, against a real S3-compatible server (SeaweedFS).

A day written to `s3://` (skeleton and enriched) has the same bytes as on local disk; it is committed by its
manifest, so a run killed between any two requests leaves the previous day or the new one,
whole, and its rerun gives the day an uninterrupted run gives; two writers of a day refuse
each other; bad endpoints, keys, buckets and schemes are one-line errors.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from s3server import ACCESS_KEY

REPO = Path(__file__).resolve().parents[1]
DAYS = ("2026-02-01", "2026-02-02", "2026-02-03")  # runtime.yaml's feed
DAEDA = [sys.executable, "-m", "daedalus.cli"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    subprocess.run([*DAEDA, "demo-data", "--root", str(root)], check=True, cwd=REPO,
                   capture_output=True)
    return root


@pytest.fixture(scope="module")
def local(tmp_path_factory, sources) -> Path:
    """The same days written to local disk once: the bytes every object-store run must match."""
    from conftest import make_project

    project = make_project(tmp_path_factory.mktemp("local_reference"))
    out = project.root.parent / "local_out"
    train(project, sources, str(out), "--ray-num-cpus", "2", stage="")
    return out


def train(project, sources: Path, root: str, *flags: str, env: dict | None = None,
          check: bool = True, stage: str = "--skeleton-only",
          cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [*DAEDA, "pipeline", "train", "dssm_ranking", *project.cli_flags(), "--output-root",
           root, *([stage] if stage else []), *flags]
    run_env = {**os.environ, "DAEDALUS_SOURCES_ROOT": str(sources), **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=run_env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def bucket_root(s3_server) -> str:
    return f"s3://daedalus/t-{uuid.uuid4().hex[:8]}/out"


def client(s3_server):
    return s3_server.client()


def committed_parts(s3_server, root: str, day: str) -> tuple[dict, dict[str, bytes]]:
    """The day's manifest and its parts' bytes, read as every reader of ours reads a day."""
    c = client(s3_server)
    prefix = root.removeprefix("s3://daedalus/")
    manifest = json.loads(c.get_object(Bucket="daedalus",
                                       Key=f"{prefix}/dt={day}/_manifest.json")["Body"].read())
    parts = {name: c.get_object(Bucket="daedalus", Key=f"{prefix}/dt={day}/{name}")["Body"].read()
             for name in manifest["files"]}
    return manifest, parts


def keys(s3_server, root: str) -> list[str]:
    prefix = root.removeprefix("s3://daedalus/")
    pages = client(s3_server).get_paginator("list_objects_v2").paginate(Bucket="daedalus",
                                                                        Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def local_parts(root: Path, day: str) -> dict[str, bytes]:
    manifest = json.loads((root / f"dt={day}/_manifest.json").read_text())
    return {name: (root / f"dt={day}" / name).read_bytes() for name in manifest["files"]}


def same_bytes(s3_parts: dict[str, bytes], local: dict[str, bytes]) -> bool:
    """Equal part by part, in order; object-store names carry their run's prefix."""
    return [s3_parts[k] for k in s3_parts] == [local[k] for k in local]


def same_content(s3_parts: dict[str, bytes], local: dict[str, bytes]) -> bool:
    """Equal values part by part, in order. An enriched part's schema metadata names the actor
    that wrote it (pid, node), so its bytes differ from run to run, on any disk."""
    import io

    import pyarrow.parquet as pq

    def tables(parts):
        return [pq.read_table(io.BytesIO(b)).replace_schema_metadata(None) for b in parts.values()]

    a, b = tables(s3_parts), tables(local)
    return len(a) == len(b) and all(x.equals(y) for x, y in zip(a, b, strict=True))


def upload_sources(s3_server, sources: Path) -> str:
    """The demo sources copied to a fresh prefix of the bucket; returns its URI."""
    prefix = f"t-{uuid.uuid4().hex[:8]}/sources"
    c = client(s3_server)
    for f in sorted(sources.rglob("*.parquet")):
        c.upload_file(str(f), "daedalus", f"{prefix}/{f.relative_to(sources)}")
    return f"s3://daedalus/{prefix}"


def status_lines(project, sources: str | Path, root: str) -> list[str]:
    result = subprocess.run([*DAEDA, "status", "dssm_ranking", *project.cli_flags(),
                             "--output-root", root, "--from", DAYS[0], "--to", DAYS[-1]],
                            cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "DAEDALUS_SOURCES_ROOT": str(sources)})
    assert result.returncode == 0, result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if line.startswith("2026-")]


def test_sources_and_days_in_object_storage_give_the_local_bytes_and_rerun_as_up_to_date(
        project, sources, s3_env, s3_server, local):
    """Sources, skeleton and enriched days all in the bucket (the Lance store built locally
    from the bucket's siglip2_vectors): the same days as from local disk to local disk."""
    root = bucket_root(s3_server)
    s3_sources = upload_sources(s3_server, sources)
    sources = s3_sources  # every run below reads the bucket's sources
    first = train(project, sources, root, "--ray-num-cpus", "2", stage="")
    assert f"→ {root}/dt={DAYS[0]}" in first.stdout + first.stderr
    assert f"→ {root}_enriched/dt={DAYS[0]}" in first.stdout + first.stderr
    for day in DAYS:
        manifest, parts = committed_parts(s3_server, root, day)
        assert all(name.startswith("r-") and "/" in name for name in manifest["files"])
        assert same_bytes(parts, local_parts(local, day)), day
        manifest, parts = committed_parts(s3_server, f"{root}_enriched", day)
        assert all(name.startswith("r-") and "/" in name for name in manifest["files"])
        assert same_content(parts, local_parts(Path(f"{local}_enriched"), day)), day
    assert any(k.endswith("/qid_map.parquet") for k in keys(s3_server, root))
    audits_read_the_committed_day(project, sources, root, local)
    again = train(project, sources, root, stage="")
    assert again.stdout.count("3 skipped") == 2, again.stdout
    lines = status_lines(project, sources, root)
    assert len(lines) == 6 and all(" complete " in line for line in lines), lines

    # A source object re-uploaded with the same bytes changes nothing; other bytes (same rows,
    # another compression) make exactly that skeleton day stale (a run then redoes its
    # enriched day too, as on local disk).
    import io

    import pyarrow.parquet as pq

    c = client(s3_server)
    key = next(o["Key"] for o in c.list_objects_v2(Bucket="daedalus", Prefix=s3_sources[
        len("s3://daedalus/"):] + f"/feed_impressions/dt={DAYS[1]}/")["Contents"])
    original = c.get_object(Bucket="daedalus", Key=key)["Body"].read()
    c.put_object(Bucket="daedalus", Key=key, Body=original)
    assert all(" complete " in line for line in status_lines(project, sources, root))
    changed = io.BytesIO()
    pq.write_table(pq.read_table(io.BytesIO(original)), changed, compression="gzip")
    c.put_object(Bucket="daedalus", Key=key, Body=changed.getvalue())
    stale = [line.split()[:3] for line in status_lines(project, sources, root)
             if " complete " not in line]
    assert stale == [[DAYS[1], "skeleton", "stale"]]
    c.put_object(Bucket="daedalus", Key=key, Body=original)
    assert all(" complete " in line for line in status_lines(project, sources, root))


def audits_read_the_committed_day(project, sources: Path, root: str, local: Path) -> None:
    """The Dagster checks' readers (leakage audit, embedding coverage) give the same answers
    over the committed object-store day as over the local day, every row and a sample."""
    from daedalus.audit import embedding_coverage, leakage_audit
    from daedalus.storage.uri import parse_root

    config, registry = project.load()
    config = config.model_copy(update={"base": config.base.model_copy(
        update={"sources_root": sources})})
    day = dt.date.fromisoformat(DAYS[0])
    s3_root, s3_enriched = parse_root(root, "root"), parse_root(f"{root}_enriched", "root")
    for max_rows in (None, 1000):
        there = leakage_audit(config, registry, "dssm_ranking", day, s3_root, max_rows=max_rows,
                              batch_rows=2000)
        here = leakage_audit(config, registry, "dssm_ranking", day, local, max_rows=max_rows,
                             batch_rows=2000)
        assert there.audited_rows == here.audited_rows > 0
        assert [(f.group, f.checked_rows, f.leaked_rows) for f in there.findings] == \
               [(f.group, f.checked_rows, f.leaked_rows) for f in here.findings]
    columns = ["image_embedding", "like_artwork_avg_embeds"]
    assert embedding_coverage(config, s3_enriched, day, columns) == \
           embedding_coverage(config, Path(f"{local}_enriched"), day, columns)


def test_a_run_killed_between_requests_leaves_a_whole_day_and_its_rerun_the_clean_day(
        project, sources, s3_env, s3_server, local):
    root = bucket_root(s3_server)
    train(project, sources, root)
    for point in ("objects.before_commit", "objects.after_commit"):
        old_manifest, _ = committed_parts(s3_server, root, DAYS[0])
        killed = train(project, sources, root, "--force", env={"DAEDALUS_TEST_CRASH_AT": point},
                       check=False)
        assert killed.returncode == -9, killed.stderr[-2000:]
        manifest, parts = committed_parts(s3_server, root, DAYS[0])
        if point == "objects.before_commit":
            assert manifest["files"] == old_manifest["files"], "nothing commits before it"
        else:
            assert manifest["files"] != old_manifest["files"]
        assert same_bytes(parts, local_parts(local, DAYS[0])), "the day a reader sees is whole"
    train(project, sources, root, "--force")  # the killed runs' locks lapse with their processes
    for day in DAYS:
        assert same_bytes(committed_parts(s3_server, root, day)[1], local_parts(local, day))
    day_keys = [k for k in keys(s3_server, root) if f"/dt={DAYS[0]}/" in k]
    named = {f"dt={DAYS[0]}/{n}" for n in committed_parts(s3_server, root, DAYS[0])[0]["files"]}
    assert {k.split("/out/", 1)[1] for k in day_keys} == named | {f"dt={DAYS[0]}/_manifest.json"}


def test_two_writers_of_a_day_in_object_storage_refuse_each_other(project, sources, s3_env,
                                                                  s3_server):
    from daedalus.layout.object_days import object_day_lock
    from daedalus.storage.uri import parse_root

    root = bucket_root(s3_server)
    with object_day_lock(parse_root(root, "root"), dt.date.fromisoformat(DAYS[0])):
        refused = train(project, sources, root, check=False)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert f"day {DAYS[0]} is being written by pid {os.getpid()}" in refused.stderr
    train(project, sources, root)  # released: the next run writes the day


def test_bad_object_storage_settings_are_one_line_errors_and_write_nothing(
        project, sources, s3_env, s3_server, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    secret = "wrong-secret-never-shown-12345"
    cases = {
        "does not answer": ({"AWS_ENDPOINT_URL": dead}, bucket_root(s3_server)),
        "refused our credentials": ({"AWS_SECRET_ACCESS_KEY": secret}, bucket_root(s3_server)),
        "bucket 'no-such-bucket' does not exist": ({}, "s3://no-such-bucket/out"),
        "has scheme 'gs'": ({}, "gs://daedalus/out"),
    }
    for expected, (env, root) in cases.items():
        result = train(project, sources, root, env=env, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0, expected
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        assert expected in lines[-1], (expected, result.stderr[-1000:])
        assert secret not in result.stdout + result.stderr
        assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr
    root = bucket_root(s3_server)  # a prefix with no sources under it
    result = train(project, sources, root, check=False,
                   env={"DAEDALUS_SOURCES_ROOT": "s3://daedalus/no-sources-here"})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "s3://daedalus/no-sources-here/feed_impressions: no parquet files in any dt=" in \
        result.stderr.strip().splitlines()[-1], result.stderr[-1000:]
    assert not keys(s3_server, root), "nothing written"
    assert not [k for k in keys(s3_server, "s3://daedalus/") if "/dt=" in k and "t-" not in k]
    assert ACCESS_KEY  # the server's identity is the one the good runs used


def test_the_server_killed_while_a_day_is_written_then_restarted_and_rerun(
        project, sources, local, tmp_path, monkeypatch):
    """Its own server: the run is paused just before its commit, the server killed, the run
    resumed; it fails in one line, the previous day stays whole, and after a restart the
    rerun writes the clean day."""
    import signal
    import time

    from s3server import SeaweedS3

    with SeaweedS3(tmp_path / "own_server") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        root = "s3://daedalus/out"
        train(project, sources, root)
        before, _ = committed_parts(server, root, DAYS[0])
        cmd = [*DAEDA, "pipeline", "train", "dssm_ranking", *project.cli_flags(), "--output-root",
               root, "--skeleton-only", "--force"]
        env = {**os.environ, "DAEDALUS_SOURCES_ROOT": str(sources),
               "DAEDALUS_TEST_PAUSE_AT": "objects.before_commit"}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while Path(f"/proc/{proc.pid}/stat").read_text().split()[2] != "T":
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        server.stop()
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0 and "Traceback" not in err, err[-2000:]
        assert "does not answer" in err.strip().splitlines()[-1], err[-1000:]
        server.start()
        after, parts = committed_parts(server, root, DAYS[0])
        assert after["files"] == before["files"]
        assert same_bytes(parts, local_parts(local, DAYS[0]))
        train(project, sources, root, "--force")
        for day in DAYS:
            assert same_bytes(committed_parts(server, root, day)[1], local_parts(local, day))


@pytest.fixture
def separate_node(tmp_path, s3_env):
    """(address, the joined node's working directory): a two-node cluster on 127.0.0.1 whose
    worker node has its own working directory and scratch, and the bucket's settings in its
    own environment."""
    from test_ray_cluster import CLUSTER_SCRIPT, held_cluster

    worker = tmp_path / "worker_node"
    (worker / "tmp").mkdir(parents=True)
    with held_cluster(CLUSTER_SCRIPT, str(worker), cwd=tmp_path) as address:
        yield address(), worker


@pytest.mark.slow
def test_enrich_on_a_node_with_its_own_folders_writes_the_local_days_into_the_bucket(
        project, sources, s3_server, local, separate_node, tmp_path):
    """Sources and outputs in the bucket; the enrich stage on a head (no CPUs) plus a node that
    runs from its own working directory and scratch. Every part is written by that node
    straight into the bucket, and each day equals the local run's: one day with the vectors
    handed over through Ray's object store (preload), one where the node builds its own Lance
    store in its own folder from the bucket's `siglip2_vectors` (`store_root` relative, no
    preload). No enriched part lands on a local disk."""
    import io

    import pyarrow.parquet as pq

    from daedalus.enrich.batch import PROVENANCE_KEY
    from daedalus.store.build import is_store

    address, worker = separate_node
    driver = tmp_path / "driver"
    driver.mkdir()
    root = bucket_root(s3_server)
    s3_sources = upload_sources(s3_server, sources)
    relative_store = {"DAEDALUS_STORE_ROOT": "node_store"}
    train(project, s3_sources, root, env=relative_store, cwd=driver)  # the skeleton days
    for day, flags in ((DAYS[0], []), (DAYS[1], ["--no-preload-day-embeddings"])):
        enriched = train(project, s3_sources, root, "--ray-address", address, "--num-workers",
                         "2", "--target-date", day, *flags, env=relative_store, cwd=driver,
                         stage="--enrich-only")
        assert f"enrich {day}: wrote" in enriched.stdout + enriched.stderr, enriched.stderr[-2000:]
        _, parts = committed_parts(s3_server, f"{root}_enriched", day)
        assert same_content(parts, local_parts(Path(f"{local}_enriched"), day)), day
        nodes = {json.loads(pq.read_schema(io.BytesIO(b)).metadata[PROVENANCE_KEY])["node_id"]
                 for b in parts.values()}
        assert len(nodes) == 1 and all(nodes), nodes  # the joined node: the head has no CPU
    # The driver built its store in its folder; the node built its own in its own folder.
    assert is_store(driver / "node_store/artwork_embedding")
    assert is_store(worker / "node_store/artwork_embedding")
    assert not list(tmp_path.rglob("*_enriched/**/*.parquet"))
    assert not list(project.root.parent.rglob("*_enriched/**/*.parquet"))

def test_planted_edge_cases_through_both_stages_in_the_bucket_match_the_brute_force(
        project, s3_env, s3_server, tmp_path):
    """The skeleton's planted edge cases (equal timestamps, TTL and window boundaries, midnight,
    no history, the like cap, an empty day) and a planted store (ids re-embedded, ids never
    embedded), with sources and both outputs in the bucket: every column equals the brute
    force, read from the committed days as our readers read them."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from reference import assert_same_rows, reference_days
    from test_enrich import assert_matches_reference, write_vectors
    from test_skeleton import D1, D2, D3, planted_sources

    sources = tmp_path / "planted_sources"
    planted_sources(sources)
    rng = np.random.default_rng(7)
    embedded = [100, 101, 3, 5, 900, 901, 904, 905, *range(500, 530)]  # 102, 103, 9, ... never
    first = (rng.standard_normal((len(embedded), 1152)) * 0.05).astype(np.float16)
    again = (rng.standard_normal((2, 1152)) * 0.05).astype(np.float16)
    write_vectors(sources, "2026-03-01", embedded, first)
    write_vectors(sources, "2026-03-05", [101, 500], again)  # the later embedding wins
    store = dict(zip(embedded, first, strict=True)) | {101: again[0], 500: again[1]}
    project.edit(project.runtime, "feed_start: 2026-02-01", f"feed_start: {D1}")
    project.edit(project.runtime, "feed_end: 2026-02-03", f"feed_end: {D3}")
    project.edit(project.runtime, "enrich_batch_rows: 50000", "enrich_batch_rows: 8")

    root = bucket_root(s3_server)
    result = train(project, upload_sources(s3_server, sources), root, "--ray-num-cpus", "2",
                   stage="")
    assert "2 written, 0 skipped, 1 empty" in result.stdout, result.stdout
    expected, qids = reference_days(sources, [D1, D2, D3])
    for day in (D1, D2):
        _, parts = committed_parts(s3_server, root, day.isoformat())
        skeleton = pa.concat_tables(pq.read_table(io.BytesIO(b)) for b in parts.values())
        assert_same_rows(skeleton.to_pylist(), expected[day], f"s3 dt={day}")
        _, parts = committed_parts(s3_server, f"{root}_enriched", day.isoformat())
        enriched = pa.concat_tables(pq.read_table(io.BytesIO(b)) for b in parts.values())
        assert_matches_reference(enriched.replace_schema_metadata(None),
                                 skeleton.replace_schema_metadata(None), store)
    assert not [k for k in keys(s3_server, root) if f"/dt={D3}/" in k]  # an empty day: no parts
    prefix = root.removeprefix("s3://daedalus/")
    qid_map = pq.read_table(io.BytesIO(client(s3_server).get_object(
        Bucket="daedalus", Key=f"{prefix}/qid_map.parquet")["Body"].read())).to_pylist()
    assert {r["feed_session"]: r["qid"] for r in qid_map} == qids


@pytest.mark.slow
def test_the_dagster_resource_carries_the_storage_settings_and_no_key_is_written(
        project, sources, s3_server, local, monkeypatch, tmp_path, capfd):
    """No `AWS_*` variable anywhere: the endpoint, region and keys come from the Dagster
    resource (the secret as a `dg.EnvVar`), reach the local Ray cluster's writers, and the day
    lands in the bucket equal to the local day. The secret is in no event, run config, log,
    manifest or output line."""
    import dagster as dg
    from s3server import REGION, SECRET_KEY

    from daedalus.defs import DaedalusConfig, build_defs

    s3_sources = upload_sources(s3_server, sources)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAEDALUS_TEST_S3_SECRET", SECRET_KEY)
    root = bucket_root(s3_server)
    resource = DaedalusConfig(
        base_config_path=str(project.base), runtime_config_path=str(project.runtime),
        aggregation_config_path=str(project.aggregations), feature_views_dir=str(project.views),
        feature_services_dir=str(project.services), pipelines_dir=str(project.pipelines),
        sources_root=s3_sources, output_root=root, ray_num_cpus=2,
        s3_endpoint_url=s3_server.endpoint, s3_region=REGION, s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=dg.EnvVar("DAEDALUS_TEST_S3_SECRET"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance = dg.DagsterInstance.from_config(str(home))
    job = build_defs(resource).resolve_job_def("dssm_ranking_daily")
    # The IO manager of a deployed run: op outputs pickled into the instance's storage.
    io_manager = dg.FilesystemIOManager(base_dir=str(home / "storage"))
    result = job.execute_in_process(partition_key=DAYS[0], instance=instance,
                                    resources={"io_manager": io_manager})
    assert result.success
    assert not [name for name in os.environ if name.startswith("AWS_")]  # restored after Ray
    for stage_root, local_root in ((root, local), (f"{root}_enriched", Path(f"{local}_enriched"))):
        manifest, parts = committed_parts(s3_server, stage_root, DAYS[0])
        assert same_content(parts, local_parts(local_root, DAYS[0])), stage_root
        assert SECRET_KEY not in json.dumps(manifest)
    written = [p for p in home.rglob("*") if p.is_file()]
    assert any("compile_pipeline" in str(p) for p in written)  # an op output, on disk
    assert not [p for p in written if SECRET_KEY.encode() in p.read_bytes()]
    out = capfd.readouterr()
    assert SECRET_KEY not in out.out + out.err
