"""The enrich stage on a real local Ray cluster and a real Lance store, against a brute force.

The skeleton days here are written by the tests themselves, with planted cases: ids the store
lacks, re-embedded ids (latest dt wins), empty like lists, duplicated ids in a list, capped lists
of 50, a null artwork_id; and several part files, so order across files is pinned down too.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reliability import descendants, listening_addresses

from daedalus.cli import main
from daedalus.core.envelope import RayEnvelope
from daedalus.core.errors import DaedalusError
from daedalus.engine.pipeline import compiled_pipeline
from daedalus.engine.request import RunRequest
from daedalus.engine.runner import run as run_request
from daedalus.enrich import preload
from daedalus.enrich import stage as enrich
from daedalus.enrich.batch import PROVENANCE_KEY
from daedalus.enrich.preload_box import PreloadBox
from daedalus.enrich.ray_runtime import WRITE_TASK_CPUS, RayRuntime, actor_cpus

DIM = 1152
DAY = dt.date(2026, 2, 1)
TS = pa.timestamp("us", tz="UTC")
SKELETON_SCHEMA = pa.schema([
    ("event_timestamp", TS), ("user_id", pa.int64()), ("artwork_id", pa.int64()),
    ("feed_session", pa.string()), ("position", pa.int32()), ("dwell_ms", pa.int32()),
    ("label_click", pa.bool_()), ("label_like", pa.bool_()), ("qid", pa.int64()),
    ("country", pa.string()), ("account_age_days", pa.int32()), ("follower_count", pa.int64()),
    ("is_premium", pa.bool_()), ("views_1d", pa.int64()), ("likes_1d", pa.int64()),
    ("ctr_1d", pa.float64()), ("like_artwork_ids_7d", pa.list_(pa.int64())),
    ("like_count_7d", pa.int64()), ("image_embedding", pa.list_(pa.float16())),
    ("like_artwork_avg_embeds", pa.list_(pa.float16())),
])
TEST_ENVELOPE = RayEnvelope(num_cpus=2, memory_gb=4, object_store_gb=1,
                            system_reserved_memory_gb=0.5)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the session (each start costs seconds); stopped at the end."""
    with RayRuntime(progress=lambda _: None) as runtime:
        runtime.start(TEST_ENVELOPE)
        yield runtime


# -- planted inputs -----------------------------------------------------------------------------


def write_vectors(sources: Path, day: str, ids: list[int], values: np.ndarray) -> None:
    folder = sources / "siglip2_vectors" / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), DIM)
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "image_embedding": column}),
                   folder / "part-0.parquet")


def plant_store(sources: Path, seed: int = 11) -> dict[int, np.ndarray]:
    """Ids 1..40 embedded, 5..9 re-embedded later (those win); 41..60 never embedded."""
    rng = np.random.default_rng(seed)
    first = (rng.standard_normal((40, DIM)) * 0.05).astype(np.float16)
    again = (rng.standard_normal((5, DIM)) * 0.05).astype(np.float16)
    write_vectors(sources, "2026-01-20", list(range(1, 41)), first)
    write_vectors(sources, "2026-01-27", list(range(5, 10)), again)
    truth = {i: first[i - 1] for i in range(1, 41)}
    truth.update({i: again[i - 5] for i in range(5, 10)})
    return truth


def skeleton_rows(seed: int, rows: int = 240) -> pa.Table:
    """A skeleton-shaped day: per-user sliding 7-day like windows capped at 50, planted rows."""
    rng = np.random.default_rng(seed)
    users = 7
    likes = {}
    for u in range(users):
        n = 150 if u == 0 else int(rng.integers(0, 40))       # user 0 is a heavy liker
        pool = 4 if u == 1 else 60                             # user 1 repeats ids a lot
        likes[u] = (np.sort(rng.uniform(0, 14, n)), rng.integers(1, pool + 1, n))
    likes[2] = (np.empty(0), np.empty(0, np.int64))            # user 2 never likes
    t = np.sort(rng.uniform(7, 14, rows))
    user = rng.integers(0, users, rows)
    lists = []
    for ti, u in zip(t, user, strict=True):
        ts, ids = likes[int(u)]
        keep = (ts >= ti - 7) & (ts < ti)
        window = sorted(zip(ts[keep], ids[keep].tolist(), strict=True))
        lists.append([a for _, a in window][-50:])
    artwork = rng.integers(1, 61, rows).astype(object)
    artwork[5] = None                                          # a null id: no embedding
    base = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    stamps = [base + dt.timedelta(seconds=float(x - 7) * 12_000) for x in t]
    n = rows
    return pa.table({
        "event_timestamp": pa.array(stamps, TS),
        "user_id": pa.array(user, pa.int64()),
        "artwork_id": pa.array(artwork.tolist(), pa.int64()),
        "feed_session": pa.array([f"s{u}" if i % 9 else None for i, u in enumerate(user)]),
        "position": pa.array(np.arange(n) % 20, pa.int32()),
        "dwell_ms": pa.array([None if i % 5 == 0 else i * 10 for i in range(n)], pa.int32()),
        "label_click": pa.array(np.arange(n) % 3 == 0),
        "label_like": pa.array(np.arange(n) % 7 == 0),
        "qid": pa.array(np.arange(n) // 4, pa.int64()),
        "country": pa.array(["JP" if u % 2 else None for u in user]),
        "account_age_days": pa.array(user * 10, pa.int32()),
        "follower_count": pa.array(user * 100, pa.int64()),
        "is_premium": pa.array(user % 2 == 0),
        "views_1d": pa.array(np.arange(n), pa.int64()),
        "likes_1d": pa.array(np.arange(n) // 2, pa.int64()),
        "ctr_1d": pa.array(np.linspace(0, 1, n)),
        "like_artwork_ids_7d": pa.array(lists, pa.list_(pa.int64())),
        "like_count_7d": pa.array([len(x) for x in lists], pa.int64()),
        "image_embedding": pa.nulls(n, pa.list_(pa.float16())),
        "like_artwork_avg_embeds": pa.nulls(n, pa.list_(pa.float16())),
    }, schema=SKELETON_SCHEMA)


def write_skeleton_day(root: Path, day: dt.date, table: pa.Table, parts: int = 11) -> Path:
    """`dt=.../part-N-0.parquet` with more than ten parts, so the order is not lexical."""
    folder = root / f"dt={day:%Y-%m-%d}"
    folder.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    files = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        name = f"part-{i}-0.parquet"
        pq.write_table(table.slice(lo, hi - lo), folder / name)
        files.append(name)
    (folder / "_manifest.json").write_text(json.dumps({
        "format": 1, "stage": "skeleton", "day": day.isoformat(), "rows": table.num_rows,
        "files": files, "written_at": dt.datetime.now(dt.UTC).isoformat(), "fingerprint": {}}))
    return folder


# -- the brute force ----------------------------------------------------------------------------


def reference(skeleton: pa.Table, store: dict[int, np.ndarray]) -> tuple[list, list]:
    """The data contract (docs/data-contract.md), row by row in plain Python and numpy."""
    images, means = [], []
    for artwork, likes in zip(skeleton["artwork_id"].to_pylist(),
                              skeleton["like_artwork_ids_7d"].to_pylist(), strict=True):
        images.append(store.get(artwork))
        found = [store[i].astype(np.float32) for i in likes if i in store]
        means.append(None if not found else
                     (np.sum(found, axis=0, dtype=np.float32) / np.float32(len(found)))
                     .astype(np.float16))
    return images, means


def read_day(folder: Path) -> pa.Table:
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["files"] == sorted(p.name for p in folder.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(folder / f) for f in manifest["files"]])


def as_fp16(values: list | None) -> np.ndarray | None:
    return None if values is None else np.array(values, dtype=np.float16)


def assert_matches_reference(enriched: pa.Table, skeleton: pa.Table, store) -> None:
    assert enriched.num_rows == skeleton.num_rows
    assert enriched.schema.names == skeleton.schema.names
    plain = [c for c in skeleton.schema.names if not c.endswith(("embedding", "embeds"))]
    assert enriched.select(plain).equals(skeleton.select(plain))
    assert enriched.schema.field("image_embedding").type.value_type == pa.float16()
    images, means = reference(skeleton, store)
    got_images = enriched["image_embedding"].to_pylist()
    got_means = enriched["like_artwork_avg_embeds"].to_pylist()
    for r in range(skeleton.num_rows):
        want, got = images[r], as_fp16(got_images[r])
        assert (want is None) == (got is None), r
        if want is not None:
            assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), r
        want, got = means[r], as_fp16(got_means[r])
        assert (want is None) == (got is None), r
        if want is not None:
            gap = np.abs(got.astype(np.float32) - want.astype(np.float32))
            assert np.all(gap <= np.spacing(np.abs(want)).astype(np.float32)), r


# -- the stage ----------------------------------------------------------------------------------


@pytest.fixture
def planted(project):
    """Sources with a planted store, a two-day skeleton output, small Ray batches."""
    project.edit(project.runtime, "enrich_batch_rows: 50000", "enrich_batch_rows: 64")
    tmp = project.root.parent
    store = plant_store(tmp / "sources")
    days = {DAY: skeleton_rows(1), DAY + dt.timedelta(days=1): skeleton_rows(2, rows=90)}
    for day, table in days.items():
        write_skeleton_day(tmp / "out", day, table)
    config, registry = project.load()
    pipeline = compiled_pipeline(registry, "dssm_ranking", config)
    return config, pipeline, store, days, tmp


def run(planted, runtime=None, envelope: RayEnvelope = TEST_ENVELOPE, days=None,
        messages=None):
    """The enrich stage on `days` (all planted days by default), as the runner calls it."""
    config, pipeline, _, skeleton, tmp = planted
    return enrich.run_enrich_stage(pipeline, config, days or sorted(skeleton), tmp / "out",
                                   tmp / "out_enriched", envelope=envelope, runtime=runtime,
                                   progress=(messages.append if messages is not None
                                             else lambda _: None))


def train(planted, project, runtime, days, messages=None):
    """The enrich stage through the engine: planned (skip or run, and why), then run."""
    config, pipeline, _, _, _ = planted
    request = RunRequest("dssm_ranking", config, project.load()[1], pipeline, "given",
                         tuple(days), ("enrich",), TEST_ENVELOPE)
    summary = run_request(request, runtime=runtime,
                          progress=messages.append if messages is not None else lambda _: None)
    return list(summary.results)


def test_enriched_days_match_the_brute_force_and_ran_in_ray_actors(ray_cluster, planted) -> None:
    import ray

    _, _, store, days, tmp = planted
    results = run(planted, ray_cluster)
    assert [(r.day, r.status, r.rows) for r in results] == [
        (d, "written", t.num_rows) for d, t in sorted(days.items())]
    assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2
    for day, skeleton in days.items():
        folder = tmp / "out_enriched" / f"dt={day:%Y-%m-%d}"
        assert len(list(folder.glob("*.parquet"))) > 1      # sharded by Ray, in order
        assert_matches_reference(read_day(folder), skeleton, store)
        actors = set()
        for path in folder.glob("*.parquet"):
            meta = json.loads(pq.read_schema(path).metadata[PROVENANCE_KEY])
            assert meta["actor_id"] and meta["pid"] != os.getpid()
            assert meta["node_id"] == ray.get_runtime_context().get_node_id()
            actors.add(meta["actor_id"])
        assert len(actors) == TEST_ENVELOPE.actor_pool_size() == 1


def test_flat_files_without_preload_actors_read_the_store_themselves(ray_cluster,
                                                                     planted) -> None:
    """Back-compat flat `YYYY-MM-DD.parquet` skeleton files; the actors take from Lance."""
    config, pipeline, store, days, tmp = planted
    flat_root = tmp / "flat"
    flat_root.mkdir()
    pq.write_table(days[DAY], flat_root / "2026-02-01.parquet")
    envelope = RayEnvelope(**{**TEST_ENVELOPE.__dict__, "preload_day_embeddings": False})
    results = enrich.run_enrich_stage(
        pipeline, config, [DAY, DAY + dt.timedelta(days=5)], flat_root, tmp / "flat_enriched",
        envelope=envelope, runtime=ray_cluster, progress=lambda _: None)
    assert [r.status for r in results] == ["written", "empty"]
    assert "no skeleton day" in results[1].message
    assert_matches_reference(read_day(tmp / "flat_enriched" / "dt=2026-02-01"), days[DAY], store)


def test_resume_skips_done_days_and_reruns_are_idempotent(ray_cluster, planted,
                                                          project) -> None:
    _, _, _, days, tmp = planted
    day = DAY + dt.timedelta(days=1)
    folder = tmp / "out_enriched" / f"dt={day:%Y-%m-%d}"
    assert [r.status for r in train(planted, project, ray_cluster, [day])] == ["written"]
    first = read_day(folder)
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    [again] = train(planted, project, ray_cluster, [day])
    assert (again.status, again.recomputed, again.reason) == ("skipped", False, "up to date")
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps

    # a killed run leaves a staging folder and no day: the next run cleans up and writes it
    shutil.rmtree(folder)
    junk = tmp / "out_enriched" / ".staging-dt=2026-02-02-deadbeef"
    junk.mkdir()
    (junk / "part-00000-0.parquet").write_text("junk")
    assert [r.status for r in train(planted, project, ray_cluster, [day])] == ["written"]
    assert not list((tmp / "out_enriched").glob(".staging-*"))
    assert read_day(folder).equals(first)

    # a rewritten skeleton day makes its enriched day stale: it is enriched again
    shutil.rmtree(tmp / "out" / f"dt={day:%Y-%m-%d}")
    write_skeleton_day(tmp / "out", day, days[day])
    messages: list[str] = []
    [rerun] = train(planted, project, ray_cluster, [day], messages=messages)
    assert (rerun.status, rerun.recomputed) == ("written", True)
    assert "skeleton changed" in rerun.reason
    assert any("recomputing" in m and "skeleton changed" in m for m in messages)
    assert read_day(folder).equals(first)


def test_a_skeleton_day_without_its_columns_is_a_one_line_error(planted) -> None:
    _, _, _, days, tmp = planted
    folder = tmp / "out" / "dt=2026-02-01"
    shutil.rmtree(folder)
    write_skeleton_day(tmp / "out", DAY, days[DAY].drop_columns(["like_artwork_ids_7d"]), parts=1)
    with pytest.raises(DaedalusError, match=r"part-0-0.parquet: like_artwork_ids_7d: column"):
        run(planted, days=[DAY])
    assert not (tmp / "out_enriched" / "dt=2026-02-01").exists()


def test_the_preload_box_waits_for_the_day_and_refuses_it_once_dropped() -> None:
    box = PreloadBox()
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(box.get("2026-02-01/x")))
    waiter.start()
    time.sleep(0.2)
    assert not got
    box.put("2026-02-01/x", {"artwork_embeddings": ("ids", "matrix")})
    waiter.join(5)
    assert got == [{"artwork_embeddings": ("ids", "matrix")}]
    box.drop("2026-02-01/x")
    assert box.get("2026-02-01/x") == "2026-02-01/x: the day's plan is over"


def test_the_actors_wait_for_a_slow_preload(ray_cluster, planted, monkeypatch) -> None:
    """The Ray Data plan starts while the driver still preloads the day: its actors are up
    and wait for the vectors (PreloadBox) rather than enrich with none."""
    _, _, store, days, tmp = planted
    real = preload.day_table

    def slow(*args, **kwargs):
        time.sleep(3)
        return real(*args, **kwargs)

    monkeypatch.setattr(preload, "day_table", slow)
    assert [r.status for r in run(planted, ray_cluster, days=[DAY])] == ["written"]
    folder = tmp / "out_enriched" / "dt=2026-02-01"
    assert_matches_reference(read_day(folder), days[DAY], store)
    timings = json.loads((folder / "_manifest.json").read_text())["timings"]
    assert timings["preload"] >= 3 and timings["ray"] >= timings["preload"]


def test_the_first_day_reads_its_vectors_while_ray_starts(ray_cluster, planted,
                                                          monkeypatch) -> None:
    """A process's first day reads its vectors (no Ray needed) on a thread while Ray starts;
    later days read theirs with Ray up. Both match the brute force."""
    import ray

    _, _, store, days, tmp = planted
    real, ray_up = preload.day_table, []

    def watched(*args, **kwargs):
        ray_up.append(ray.is_initialized())
        return real(*args, **kwargs)

    monkeypatch.setattr(preload, "day_table", watched)
    ray_cluster.close()
    try:
        results = run(planted)  # the stage's own runtime, started on its first day
    finally:
        ray_cluster.start(TEST_ENVELOPE)  # the session's Ray again
    assert [r.status for r in results] == ["written", "written"]
    assert ray_up == [False, True]
    for day, skeleton in days.items():
        folder = tmp / "out_enriched" / f"dt={day:%Y-%m-%d}"
        assert_matches_reference(read_day(folder), skeleton, store)
    first = json.loads((tmp / "out_enriched" / f"dt={DAY}" / "_manifest.json").read_text())
    assert first["timings"]["ray_start"] > 0.5  # a real start, which the day waited for


def test_a_failed_preload_is_the_error_raised_and_no_day_is_written(ray_cluster, planted,
                                                                   monkeypatch) -> None:
    """The actors, waiting for the preload, fail with its message; the driver raises the
    preload's own error (Ray Data's traceback of the actors' failure stays off the console),
    leaves no day or staging folder, and the next run is unaffected."""
    _, _, store, days, tmp = planted

    def broken(*args, **kwargs):
        time.sleep(1)
        raise DaedalusError("store.lance: id: unreadable (fix: rebuild the store)")

    console = io.StringIO()  # a console handler of Ray Data's logger, as in a terminal
    handler = logging.StreamHandler(console)
    logging.getLogger("ray.data").addHandler(handler)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(preload, "day_table", broken)
            with pytest.raises(DaedalusError, match=r"^store.lance: id: unreadable"):
                run(planted, ray_cluster, days=[DAY])
    finally:
        logging.getLogger("ray.data").removeHandler(handler)
    assert "Traceback" not in console.getvalue() and "unreadable" not in console.getvalue()
    assert not (tmp / "out_enriched" / "dt=2026-02-01").exists()
    assert not list((tmp / "out_enriched").glob(".staging-*"))
    assert [r.status for r in run(planted, ray_cluster, days=[DAY])] == ["written"]
    assert_matches_reference(read_day(tmp / "out_enriched" / "dt=2026-02-01"), days[DAY], store)


LOOPBACK = {ipaddress.ip_address(a) for a in ("127.0.0.1", "::ffff:127.0.0.1", "::1")}


def test_local_ray_listens_on_loopback_only(ray_cluster) -> None:
    import ray

    @ray.remote
    def pid() -> int:
        return os.getpid()

    assert ray.get(pid.remote()) in descendants(os.getpid())
    addresses = listening_addresses(descendants(os.getpid()))
    assert addresses and addresses <= LOOPBACK, addresses


def test_envelope_sizes_the_actor_pool() -> None:
    envelope = RayEnvelope()
    assert envelope.worker_cpu_budget == 15 and envelope.actor_pool_size() == 12
    assert RayEnvelope(num_cpus=2).actor_pool_size() == 1
    assert RayEnvelope(num_cpus=16, num_workers=40).actor_pool_size() == 15
    clamped = RayEnvelope(num_cpus=10_000).clamped_to_machine()
    assert clamped.num_cpus == os.cpu_count() and clamped.notes
    big = RayEnvelope(memory_gb=10**6).clamped_to_machine()    # each note names its knob
    assert big.memory_gb < 10**6 and any("ray.memory_gb" in n for n in big.notes)
    for cpus in (1, 2, 3, 16):      # the actors always leave room for a write task
        envelope = RayEnvelope(num_cpus=cpus)
        held = actor_cpus(envelope) * envelope.actor_pool_size()
        assert held + WRITE_TASK_CPUS <= cpus
    assert actor_cpus(RayEnvelope(num_cpus=2)) == 1.0


@pytest.mark.slow
def test_daeda_pipeline_train_runs_skeleton_then_enrich(ray_cluster, project, capsys) -> None:
    """End to end through the CLI on the small demo preset; checked against the brute force."""
    from daedalus.demo.data import PRESETS, generate_demo_data

    tmp = project.root.parent
    generate_demo_data(tmp / "sources", PRESETS["small"])
    flags = project.cli_flags()
    assert main(["pipeline", "train", "dssm_ranking", "--target-date", "2026-02-02",
                 "--ray-num-cpus", "2", "--json", *flags]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["status"]) for r in summary["results"]] == [
        ("skeleton", "written"), ("enrich", "written")]
    config, _ = project.load()
    path = config.store_path(config.aggregations.store("artwork_embeddings"))
    table = lance.dataset(str(path)).to_table()
    values = table.column(1).combine_chunks().values.to_numpy(zero_copy_only=False)
    store = dict(zip(table.column(0).to_pylist(), values.reshape(-1, DIM), strict=True))
    skeleton = pa.concat_tables(
        pq.read_table(p) for p in sorted((tmp / "out" / "dt=2026-02-02").glob("*.parquet")))
    enriched = read_day(tmp / "out_enriched" / "dt=2026-02-02")
    assert_matches_reference(enriched, skeleton, store)
    assert enriched["image_embedding"].null_count < enriched.num_rows
    assert enriched["like_artwork_avg_embeds"].null_count < enriched.num_rows

    # --enrich-only over what is there: nothing to do
    assert main(["pipeline", "train", "dssm_ranking", "--target-date", "2026-02-02",
                 "--enrich-only", "--json", *flags]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["status"]) for r in summary["results"]] == [("enrich", "skipped")]
